"""Config loading: good files load typed; bad keys and values name the file, key and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_settings, parse_settings

GOOD = """\
[proxy]
listen = "127.0.0.1:7432"
shutdown_timeout = 5

[upstream]
host = "db.internal"
port = 5433
sslmode = "require"

[admin]
listen = "127.0.0.1:9433"
"""


def test_good_config_loads_typed():
    s = parse_settings(GOOD, "x.toml")
    assert (s.proxy.listen.host, s.proxy.listen.port) == ("127.0.0.1", 7432)
    assert s.proxy.shutdown_timeout == 5.0
    assert (s.upstream.host, s.upstream.port, s.upstream.sslmode) == ("db.internal", 5433, "require")
    assert s.admin.listen.port == 9433


def test_defaults_when_sections_are_missing():
    s = parse_settings("", "empty.toml")
    assert str(s.proxy.listen) == "127.0.0.1:6432"
    assert s.upstream.sslmode == "prefer"
    assert str(s.admin.listen) == "127.0.0.1:8433"


@pytest.mark.parametrize(
    "text, key, line, expected",
    [
        ('[proxy]\nlisten = "nope"\n', "proxy.listen", 2, "HOST:PORT"),
        ('[proxy]\n\nlisen = "127.0.0.1:1"\n', "proxy.lisen", 3, "unknown key"),
        ('[upstream]\nport = "5432"\n', "upstream.port", 2, "integer"),
        ('[upstream]\nhost = "h"\nsslmode = "sometimes"\n', "upstream.sslmode", 3, "verify-full"),
        ('[upstream]\nsslmode = "verify-full"\n', "upstream.sslrootcert", 2, "required"),
        ('[proxy]\ntls_cert = "a.crt"\n', "proxy.tls_key", None, "together"),
        ('[proxy]\nshutdown_timeout = true\n', "proxy.shutdown_timeout", 2, "number"),
        ('[frobnicate]\nx = 1\n', "frobnicate", 1, "unknown section"),
        ('[proxy\nlisten=1', "-", 1, "invalid TOML"),
    ],
)
def test_bad_config_names_key_line_and_expectation(text, key, line, expected):
    with pytest.raises(ConfigError) as err:
        parse_settings(text, "bad.toml")
    e = err.value
    assert e.key == key
    assert expected in e.message
    if line is not None:
        assert e.line == line
        assert f"bad.toml:{line}: {key}:" in str(e)


def test_missing_tls_file_is_reported(tmp_path: Path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[proxy]\ntls_cert = "nope.crt"\ntls_key = "nope.key"\n')
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(cfg)


def test_check_command_exit_codes(tmp_path: Path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nport = 99999\n')
    ok = subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    no = subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(bad)],
                        capture_output=True, text=True)
    assert no.returncode == 2
    assert f"{bad}:2: upstream.port:" in no.stderr

"""The [audit] table: defaults, typed values, and errors that name the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.audit import AuditConfigError, AuditSettings, audit_settings_from_dict


def test_defaults_and_relative_paths_resolve_next_to_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "pgveil.toml"
    s = audit_settings_from_dict({}, str(cfg))
    assert s.path == str(tmp_path / "conf" / "pgveil-audit.jsonl")
    assert s.key_file == str(tmp_path / "conf" / "pgveil-audit.key")
    assert (s.fsync, s.on_failure, s.sink, s.include_literals) == ("batch", "fail_closed", "file", False)
    assert s.max_bytes == 100 * 1024 * 1024 and s.instance


def test_values_are_typed(tmp_path: Path) -> None:
    s = audit_settings_from_dict(
        {"path": "/var/log/a.jsonl", "key_file": "k.key", "fsync": "always", "on_failure": "continue",
         "max_bytes": 1 << 20, "include_literals": True, "sink": "postgresql",
         "url": "postgresql://u@db/audit", "instance": "edge-1"}, str(tmp_path / "x.toml"))
    assert s.path == "/var/log/a.jsonl" and s.key_file == str(tmp_path / "k.key")
    assert (s.fsync, s.on_failure, s.max_bytes, s.include_literals) == ("always", "continue", 1 << 20, True)
    assert (s.sink, s.url, s.instance) == ("postgresql", "postgresql://u@db/audit", "edge-1")


@pytest.mark.parametrize("raw, key, expected", [
    ({"fsync": "sometimes"}, "audit.fsync", "'batch', 'always'"),
    ({"on_failure": "ignore"}, "audit.on_failure", "'fail_closed', 'continue'"),
    ({"sink": "syslog"}, "audit.sink", "'file', 'stdout', 'postgresql'"),
    ({"max_bytes": "big"}, "audit.max_bytes", "integer"),
    ({"max_bytes": 10}, "audit.max_bytes", ">= 4096"),
    ({"include_literals": "yes"}, "audit.include_literals", "true or false"),
    ({"path": ""}, "audit.path", "non-empty string"),
    ({"url": "mysql://x"}, "audit.url", "postgresql://"),
    ({"sink": "postgresql"}, "audit.url", "postgresql://"),
    ({"colour": 1}, "audit.colour", "unknown key"),
])
def test_errors_name_the_key_and_what_was_expected(raw: dict, key: str, expected: str) -> None:
    with pytest.raises(AuditConfigError) as err:
        audit_settings_from_dict(raw, "pgveil.toml")
    assert isinstance(err.value, ValueError)
    assert err.value.key == key and expected in err.value.message


def test_for_worker_gives_each_worker_its_own_chain() -> None:
    s = AuditSettings(path="a.jsonl", instance="h").for_worker(2)
    assert (s.path, s.instance) == ("a.jsonl.w2", "h-w2")

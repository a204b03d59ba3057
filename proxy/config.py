"""pgveil's TOML configuration, loaded into typed settings.

Each section is a dataclass; its fields carry their type and, where needed, a check. A bad key
or value raises :class:`ConfigError` naming the file, the dotted key, its line and what was
expected, so ``pgveil check`` can print one precise line per problem.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


class ConfigError(Exception):
    def __init__(self, path: str, key: str, message: str, line: int | None = None) -> None:
        self.path, self.key, self.message, self.line = path, key, message, line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {message}")


@dataclass
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(value: str) -> Address:
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d{1,5})", value)
    if not m or not m.group(1) or not 0 <= int(m.group(2)) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return Address(m.group(1), int(m.group(2)))


@dataclass
class ProxySettings:
    listen: Address = field(default_factory=lambda: Address("127.0.0.1", 6432))
    tls_cert: Path | None = None
    tls_key: Path | None = None
    shutdown_timeout: float = 30.0
    max_message_bytes: int = 256 * 1024 * 1024
    max_connections: int = 10000
    connect_timeout: float = 10.0
    startup_timeout: float = 60.0  # like authentication_timeout: a client must be in by then
    notice_masked: bool = True
    # masked unnamed statements prepared once upstream per session (0: off), see stmt_cache
    statement_cache: int = 64
    console_database: str = "pgveil"
    console_auth_database: str = "postgres"


@dataclass
class UpstreamSettings:
    host: str = "127.0.0.1"
    port: int = 5432
    sslmode: str = "prefer"
    sslrootcert: Path | None = None
    catalog_user: str = "postgres"
    catalog_password: str | None = None
    catalog_refresh_seconds: float = 60.0
    # install an event trigger that reports DDL, and reload the catalog on each report
    watch_ddl: bool = True


@dataclass
class AdminSettings:
    listen: Address | None = field(default_factory=lambda: Address("127.0.0.1", 8433))


@dataclass
class Settings:
    proxy: ProxySettings = field(default_factory=ProxySettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    policy: dict[str, Any] = field(default_factory=dict)
    audit: Any = None  # proxy.audit.settings.AuditSettings when [audit] is present
    jit: Any = None  # proxy.jit.settings.JitSettings when [jit] is present
    admin_tokens: list = field(default_factory=list)
    path: str = "<defaults>"


# --- validation ---------------------------------------------------------------------------
def _line_of(text: str, section: str, key: str) -> int | None:
    """Best-effort line number of ``key`` inside ``[section]`` (tomllib gives none)."""
    lines = text.splitlines()
    in_section = section == ""
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    keyre = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    for i, line in enumerate(lines, 1):
        m = header.match(line)
        if m:
            in_section = m.group(1) == section
            if in_section and not key:
                return i
            continue
        if in_section and key and keyre.match(line):
            return i
    return None


def _convert(value: Any, target: Any, name: str) -> Any:
    t = str(target)
    if "Address" in t:
        if not isinstance(value, str):
            raise ValueError(f"expected a \"HOST:PORT\" string, got {type(value).__name__}")
        return parse_address(value)
    if "Path" in t:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a file path string")
        return Path(value)
    if "bool" in t:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if "float" in t:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if value < 0:
            raise ValueError(f"expected a non-negative number, got {value!r}")
        return float(value)
    if "int" in t:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < 0:
            raise ValueError(f"expected a non-negative integer, got {value!r}")
        return value
    if "str" in t:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    return value


def _load_section(obj: Any, raw: Any, section: str, path: str, text: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(path, section, "expected a table", _line_of(text, section, ""))
    known = {f.name: f for f in fields(obj)}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                path,
                f"{section}.{key}",
                f"unknown key; expected one of: {', '.join(sorted(known))}",
                _line_of(text, section, key),
            )
        try:
            setattr(obj, key, _convert(value, known[key].type, key))
        except ValueError as exc:
            raise ConfigError(path, f"{section}.{key}", str(exc), _line_of(text, section, key))


def load_settings(path: str | Path) -> Settings:
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(path, "-", f"cannot read config file: {exc.strerror}") from exc
    return parse_settings(text, path)


def parse_settings(text: str, path: str = "<string>") -> Settings:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, "-", f"invalid TOML: {exc}", int(m.group(1)) if m else None)
    s = Settings(path=path)
    sections = {"proxy": s.proxy, "upstream": s.upstream, "admin": s.admin}
    later: set[str] = set()
    for name, value in raw.items():
        if name == "admin" and isinstance(value, dict) and "tokens" in value:
            value = dict(value)
            tokens = value.pop("tokens")
            s.admin_tokens = _admin_tokens(tokens, path, text)
        if name in sections:
            _load_section(sections[name], value, name, path, text)
        elif name == "audit":
            s.audit = _audit(value, path, text)
        elif name in ("jit", "state", "webhooks"):
            continue  # read together below
        elif name == "policy":
            if not isinstance(value, dict):
                raise ConfigError(path, "policy", "expected a table", _line_of(text, "policy", ""))
            s.policy = value
            _check_policy(value, path, text)
        elif name in later:
            raise ConfigError(
                path, name, "this section is not supported by this version of pgveil",
                _line_of(text, name, ""),
            )
        else:
            raise ConfigError(
                path,
                name,
                "unknown section; expected one of: admin, audit, jit, policy, proxy, state, "
                "upstream, webhooks",
                _line_of(text, name, "") or _line_of(text, "", name),
            )
    if any(k in raw for k in ("jit", "state", "webhooks")):
        s.jit = _jit(raw, path, text)
    _check(s, path, text)
    return s


def _audit(raw: Any, path: str, text: str) -> Any:
    from .audit.settings import AuditConfigError, audit_settings_from_dict

    if not isinstance(raw, dict):
        raise ConfigError(path, "audit", "expected a table", _line_of(text, "audit", ""))
    try:
        return audit_settings_from_dict(raw, path)
    except AuditConfigError as exc:
        key = exc.key.split(".", 1)[-1]
        raise ConfigError(path, exc.key, exc.message, _line_of(text, "audit", key)) from None


def _jit(raw: dict, path: str, text: str) -> Any:
    from .jit.settings import JitConfigError, jit_settings_from_config

    try:
        return jit_settings_from_config(raw.get("jit", {}), raw.get("state", {}),
                                        raw.get("webhooks", []), str(Path(path).parent))
    except JitConfigError as exc:
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?(?:\.(\w+))?(?:\[(\d+)\])?(?:\.(\w+))?", exc.key)
        line = None
        if m:
            section = m.group(1)
            if m.group(2) is not None:
                line = _line_of_array_item(text, section, int(m.group(2)), m.group(3))
            elif m.group(4) is not None:
                line = _line_of_array_item(text, f"{section}.{m.group(3)}", int(m.group(4)),
                                           m.group(5))
            else:
                line = _line_of(text, section, m.group(3) or "")
        raise ConfigError(path, exc.key, exc.message, line) from None


def _admin_tokens(raw: Any, path: str, text: str) -> list:
    from .web.auth import tokens_from_config

    try:
        return tokens_from_config(raw)
    except ValueError as exc:
        key = getattr(exc, "key", "admin.tokens")
        m = re.fullmatch(r"admin\.tokens\[(\d+)\](?:\.(\w+))?", key)
        line = _line_of_array_item(text, "admin.tokens", int(m.group(1)), m.group(2)) if m else None
        raise ConfigError(path, key, getattr(exc, "message", str(exc)), line) from None


def _check_policy(raw: dict, path: str, text: str) -> None:
    from policy.rules import PolicyError, policy_from_dict

    try:
        policy_from_dict(raw)
    except PolicyError as exc:
        m = re.fullmatch(r"policy\.(\w+)(?:\[(\d+)\])?(?:\.(\w+))?", exc.key)
        line = None
        if m:
            section, index, key = m.group(1), m.group(2), m.group(3)
            if index is not None:
                line = _line_of_array_item(text, f"policy.{section}", int(index), key)
            else:
                line = _line_of(text, "policy", section)
        raise ConfigError(path, exc.key, exc.message, line) from None


def _line_of_array_item(text: str, table: str, index: int, key: str | None) -> int | None:
    """Line of ``key`` in the ``index``-th ``[[table]]`` block."""
    header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
    any_header = re.compile(r"^\s*\[")
    count = -1
    inside = False
    start = None
    for i, line in enumerate(text.splitlines(), 1):
        if header.match(line):
            count += 1
            inside = count == index
            if inside:
                start = i
            continue
        if any_header.match(line):
            inside = False
            continue
        if inside and key and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return i
    return start


def _check(s: Settings, path: str, text: str) -> None:
    up = s.upstream
    if up.sslmode not in SSLMODES:
        raise ConfigError(
            path, "upstream.sslmode", f"expected one of {', '.join(SSLMODES)}, got {up.sslmode!r}",
            _line_of(text, "upstream", "sslmode"),
        )
    if up.sslmode in ("verify-ca", "verify-full") and up.sslrootcert is None:
        raise ConfigError(
            path, "upstream.sslrootcert", f"required when sslmode = {up.sslmode!r}",
            _line_of(text, "upstream", "sslmode"),
        )
    if not 1 <= up.port <= 65535:
        raise ConfigError(path, "upstream.port", "expected a port from 1 to 65535",
                          _line_of(text, "upstream", "port"))
    px = s.proxy
    if (px.tls_cert is None) != (px.tls_key is None):
        key = "proxy.tls_key" if px.tls_key is None else "proxy.tls_cert"
        raise ConfigError(path, key, "tls_cert and tls_key must be set together",
                          _line_of(text, "proxy", key.split(".")[1]))
    for key in ("tls_cert", "tls_key"):
        p = getattr(px, key)
        if p is not None:
            if not p.is_absolute():
                p = Path(path).parent / p if path not in ("<string>", "<defaults>") else p
                setattr(px, key, p)
            if not p.exists():
                raise ConfigError(path, f"proxy.{key}", f"file not found: {p}",
                                  _line_of(text, "proxy", key))
    if up.sslrootcert is not None and not up.sslrootcert.is_absolute() and path not in (
        "<string>", "<defaults>"
    ):
        up.sslrootcert = Path(path).parent / up.sslrootcert
    if px.max_message_bytes < 1024:
        raise ConfigError(path, "proxy.max_message_bytes", "expected at least 1024",
                          _line_of(text, "proxy", "max_message_bytes"))

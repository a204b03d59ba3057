"""The ``[jit]``, ``[state]`` and ``[[webhooks]]`` tables of pgveil.toml, typed and checked.

``jit_settings_from_config(raw_jit, raw_state, raw_webhooks, config_dir)`` is what the config
loader calls with the raw TOML values (empty dict / list when a table is absent). Every key
and value is checked; a bad one raises :class:`JitConfigError` carrying the dotted key
(``jit.max_duration``, ``jit.auto_approve[0].users``, ``webhooks[1].url``) and what was
expected, so the loader can add the file and line.

State URLs:

- ``sqlite:///abs/path/state.db`` — an absolute path (as in ``file:///`` URLs);
- ``sqlite:state.db`` or ``sqlite://./state.db`` — relative to the config file's folder;
- ``postgresql://user@host:port/db`` (or ``postgres://``) — a shared PostgreSQL store;
  its tables live in the schema named by ``[state] schema`` (default ``pgveil``).

Defaults: no ``[state]`` → ``sqlite:pgveil-state.db`` next to the config file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from .durations import parse_duration

# Every event kind the service emits (webhooks default to all of them).
EVENTS: tuple[str, ...] = (
    "request.created",
    "request.approved",
    "request.denied",
    "request.cancelled",
    "request.expired",
    "grant.created",
    "grant.used",
    "grant.expired",
    "grant.revoked",
)
FORMATS = ("json", "slack")


class JitConfigError(ValueError):
    """A bad key or value in ``[jit]``, ``[state]`` or ``[[webhooks]]``; ``key`` is dotted."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class AutoApproveRule:
    """One ``[[jit.auto_approve]]`` entry: requests it covers are approved as ``auto:<index>``."""

    index: int
    users: tuple[str, ...]
    columns: tuple[str, ...] = ()   # "schema.table.column" or "schema.table.*"
    tables: tuple[str, ...] = ()    # "schema.table": any column
    actions: tuple[str, ...] = ()   # action rule names
    max_duration: int = 3600

    @property
    def name(self) -> str:
        return f"auto:{self.index}"


@dataclass(frozen=True)
class StateSettings:
    url: str = "sqlite:pgveil-state.db"
    kind: str = "sqlite"            # "sqlite" | "postgresql"
    path: str = "pgveil-state.db"   # sqlite: resolved file path (or ":memory:")
    dsn: str = ""                   # postgresql: conninfo / URL handed to psycopg
    schema: str = "pgveil"
    channel: str = "pgveil_jit"
    connect_timeout: float = 3.0


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    events: tuple[str, ...] = EVENTS
    secret: str | None = field(default=None, repr=False)
    format: str = "json"
    timeout: float = 5.0            # seconds per attempt
    max_attempts: int = 6
    backoff: float = 0.5            # first retry delay; doubles each attempt
    max_backoff: float = 60.0
    max_queue: int = 1000           # pending deliveries; beyond this, events are dropped (counted)


@dataclass(frozen=True)
class JitSettings:
    approvers: tuple[str, ...] = ()
    default_duration: int = 30 * 60
    max_duration: int = 8 * 3600
    self_approval: bool = False
    min_approvals: int = 1
    hold_seconds: float = 30.0
    request_ttl: int = 24 * 3600    # a pending request expires after this long
    auto_approve: tuple[AutoApproveRule, ...] = ()
    state: StateSettings = field(default_factory=StateSettings)
    webhooks: tuple[WebhookSettings, ...] = ()


# -- checks ---------------------------------------------------------------------------------


def _str_list(key: str, value: Any, *, nonempty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise JitConfigError(key, f"expected a list of non-empty strings, got {value!r}")
    if nonempty and not value:
        raise JitConfigError(key, "expected at least one entry")
    return tuple(value)


def _duration(key: str, value: Any) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise JitConfigError(key, str(exc)) from None


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise JitConfigError(key, f"expected true or false, got {value!r}")
    return value


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise JitConfigError(key, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _number(key: str, value: Any, minimum: float, *, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (
        strict and value == minimum
    ):
        op = ">" if strict else ">="
        raise JitConfigError(key, f"expected a number {op} {minimum}, got {value!r}")
    return float(value)


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise JitConfigError(key, f"expected a table, got {type(value).__name__}")
    return value


def _unknown(prefix: str, raw: Mapping[str, Any], known: set[str]) -> None:
    for k in raw:
        if k not in known:
            raise JitConfigError(
                f"{prefix}.{k}", f"unknown key; expected one of: {', '.join(sorted(known))}"
            )


def _qualified(key: str, name: str, parts: int) -> str:
    bits = name.split(".")
    if len(bits) != parts or not all(bits):
        shape = "schema.table" if parts == 2 else "schema.table.column"
        raise JitConfigError(key, f"expected {shape}, got {name!r}")
    return name


# -- the entry point ------------------------------------------------------------------------


def jit_settings_from_config(
    raw_jit: Mapping[str, Any] | None,
    raw_state: Mapping[str, Any] | None,
    raw_webhooks: Sequence[Any] | None,
    config_dir: str,
) -> JitSettings:
    jit = _table("jit", raw_jit)
    _unknown(
        "jit", jit,
        {"approvers", "default_duration", "max_duration", "self_approval", "min_approvals",
         "hold_seconds", "request_ttl", "auto_approve"},
    )
    kw: dict[str, Any] = {}
    if "approvers" in jit:
        kw["approvers"] = _str_list("jit.approvers", jit["approvers"])
    if "max_duration" in jit:
        kw["max_duration"] = _duration("jit.max_duration", jit["max_duration"])
    max_duration = kw.get("max_duration", JitSettings.max_duration)
    if "default_duration" in jit:
        kw["default_duration"] = _duration("jit.default_duration", jit["default_duration"])
    default_duration = kw.get("default_duration", JitSettings.default_duration)
    if default_duration > max_duration:
        raise JitConfigError(
            "jit.default_duration", f"is longer than jit.max_duration ({max_duration} s)"
        )
    if "self_approval" in jit:
        kw["self_approval"] = _bool("jit.self_approval", jit["self_approval"])
    if "min_approvals" in jit:
        kw["min_approvals"] = _int("jit.min_approvals", jit["min_approvals"], 1)
    if "hold_seconds" in jit:
        kw["hold_seconds"] = _number("jit.hold_seconds", jit["hold_seconds"], 0)
    if "request_ttl" in jit:
        kw["request_ttl"] = _duration("jit.request_ttl", jit["request_ttl"])
    if "auto_approve" in jit:
        kw["auto_approve"] = _auto_rules(jit["auto_approve"], default_duration, max_duration)
    kw["state"] = _state(_table("state", raw_state), config_dir)
    kw["webhooks"] = _webhooks(raw_webhooks)
    return JitSettings(**kw)


def _auto_rules(raw: Any, default_duration: int, max_duration: int) -> tuple[AutoApproveRule, ...]:
    if not isinstance(raw, list):
        raise JitConfigError("jit.auto_approve", "expected an array of tables ([[jit.auto_approve]])")
    rules = []
    for i, r in enumerate(raw):
        p = f"jit.auto_approve[{i}]"
        if not isinstance(r, Mapping):
            raise JitConfigError(p, "expected a table")
        _unknown(p, r, {"users", "columns", "tables", "actions", "max_duration"})
        if "users" not in r:
            raise JitConfigError(f"{p}.users", "required: the database users this rule approves")
        users = _str_list(f"{p}.users", r["users"], nonempty=True)
        columns = tuple(
            _qualified(f"{p}.columns", c, 3) for c in _str_list(f"{p}.columns", r.get("columns", []))
        )
        tables = tuple(
            _qualified(f"{p}.tables", t, 2) for t in _str_list(f"{p}.tables", r.get("tables", []))
        )
        actions = _str_list(f"{p}.actions", r.get("actions", []))
        if not (columns or tables or actions):
            raise JitConfigError(p, "a rule needs columns, tables or actions")
        dur = default_duration
        if "max_duration" in r:
            dur = _duration(f"{p}.max_duration", r["max_duration"])
        if dur > max_duration:
            raise JitConfigError(f"{p}.max_duration", f"is longer than jit.max_duration ({max_duration} s)")
        rules.append(AutoApproveRule(i, users, columns, tables, actions, dur))
    return tuple(rules)


def _state(raw: Mapping[str, Any], config_dir: str) -> StateSettings:
    _unknown("state", raw, {"url", "schema", "channel", "connect_timeout"})
    url = raw.get("url", StateSettings.url)
    if not isinstance(url, str) or not url:
        raise JitConfigError("state.url", f"expected a URL string, got {url!r}")
    kw: dict[str, Any] = {"url": url}
    if "schema" in raw:
        s = raw["schema"]
        if not isinstance(s, str) or not s.isidentifier():
            raise JitConfigError("state.schema", f"expected a plain identifier, got {s!r}")
        kw["schema"] = s.lower()
    if "channel" in raw:
        c = raw["channel"]
        if not isinstance(c, str) or not c.isidentifier():
            raise JitConfigError("state.channel", f"expected a plain identifier, got {c!r}")
        kw["channel"] = c.lower()
    if "connect_timeout" in raw:
        kw["connect_timeout"] = _number("state.connect_timeout", raw["connect_timeout"], 0, strict=True)
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if rest.startswith("///"):
            path = rest[2:]                 # sqlite:///abs/path -> /abs/path
        elif rest.startswith("//"):
            path = rest[2:]                 # sqlite://./rel or sqlite://rel
            if not path:
                raise JitConfigError("state.url", "expected a file path after sqlite://")
        else:
            path = rest
        if not path:
            raise JitConfigError("state.url", "expected a file path, e.g. sqlite:pgveil-state.db")
        if path != ":memory:":
            path = os.path.expanduser(path)
            if not os.path.isabs(path):
                path = os.path.normpath(os.path.join(config_dir, path))
        return StateSettings(kind="sqlite", path=path, **kw)
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return StateSettings(kind="postgresql", path="", dsn=url, **kw)
    raise JitConfigError(
        "state.url", f"expected sqlite:… or postgresql://…, got scheme {scheme or url!r}"
    )


def _webhooks(raw: Any) -> tuple[WebhookSettings, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise JitConfigError("webhooks", "expected an array of tables ([[webhooks]])")
    out = []
    for i, w in enumerate(raw):
        p = f"webhooks[{i}]"
        if not isinstance(w, Mapping):
            raise JitConfigError(p, "expected a table")
        _unknown(p, w, {"url", "events", "secret", "format", "timeout", "max_attempts",
                        "backoff", "max_backoff", "max_queue"})
        url = w.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise JitConfigError(f"{p}.url", f"expected an http:// or https:// URL, got {url!r}")
        kw: dict[str, Any] = {"url": url}
        if "events" in w:
            events = _str_list(f"{p}.events", w["events"], nonempty=True)
            for e in events:
                if e not in EVENTS:
                    raise JitConfigError(f"{p}.events", f"unknown event {e!r}; expected some of: {', '.join(EVENTS)}")
            kw["events"] = events
        if "secret" in w:
            s = w["secret"]
            if not isinstance(s, str) or not s:
                raise JitConfigError(f"{p}.secret", "expected a non-empty string")
            kw["secret"] = s
        if "format" in w:
            if w["format"] not in FORMATS:
                raise JitConfigError(f"{p}.format", f"expected 'json' or 'slack', got {w['format']!r}")
            kw["format"] = w["format"]
        if "timeout" in w:
            kw["timeout"] = _number(f"{p}.timeout", w["timeout"], 0, strict=True)
        if "max_attempts" in w:
            kw["max_attempts"] = _int(f"{p}.max_attempts", w["max_attempts"], 1)
        if "backoff" in w:
            kw["backoff"] = _number(f"{p}.backoff", w["backoff"], 0)
        if "max_backoff" in w:
            kw["max_backoff"] = _number(f"{p}.max_backoff", w["max_backoff"], 0)
        if "max_queue" in w:
            kw["max_queue"] = _int(f"{p}.max_queue", w["max_queue"], 1)
        out.append(WebhookSettings(**kw))
    return tuple(out)

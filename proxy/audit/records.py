"""The audit record: one JSON line, hash-chained to the previous one and signed.

A line is the JSON object of the record, keys in a fixed human-friendly order, followed by
its MAC as the last key::

    {"seq":42,"ts":"…","instance":"db1","type":"intent",…,"prev":"<sha256 of line 41>","mac":"<hmac>"}

* ``seq`` counts records of one chain (one instance) from 1, with no gaps.
* ``prev`` is the SHA-256 of the previous record's line bytes (64 zeros for the first).
* ``mac`` is HMAC-SHA256, with the instance's key, over the line's bytes up to the MAC with a
  closing ``}`` — the exact bytes, so no canonical re-encoding is needed to check it.

Editing any byte breaks the MAC; removing, duplicating or reordering lines breaks ``seq``
and ``prev``; without the key nobody can re-chain. Truncation is covered by the head file
(see :mod:`proxy.audit.sinks.file`).

Record types: ``intent`` (a statement about to run; its ``seq`` is the ``rid``),
``complete`` (its outcome, ``rid`` pointing at the intent), ``statement`` (both in one
record: the intent's members, ``ts`` when it was sent, then ``rows``, ``duration_ms`` and
``sqlstate``) and ``event`` (``event`` names it: ``start``, ``stop``, ``grant.approved``…).
With ``fsync = "batch"``, a query (kind ``select``) forwarded first and answered before
the next group commit is one ``statement`` record; one still running at a commit (or whose
answer starts to reach the client before it ends) gets an ``intent`` then and a
``complete`` when it ends. Other statements always get an ``intent`` when they are sent.
With ``fsync = "always"`` every statement has an ``intent``, durable before it is forwarded. Statement data is minimized: the caller
passes normalized SQL; fields that could carry values (``sql``, ``params``…) are removed
unless ``include_literals`` is set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

GENESIS = "0" * 64
TYPES = ("intent", "complete", "statement", "event")
# Keys the log sets itself; a caller may not pass them.
RESERVED = frozenset({"seq", "ts", "instance", "type", "prev", "mac", "v"})
# Keys that may carry literal or result values: dropped unless include_literals.
LITERAL_FIELDS = frozenset({"sql", "query", "params", "parameters", "literals", "values", "result"})
_MAC_TAIL = re.compile(rb',"mac":"([0-9a-f]{64})"\}\Z')


_ts_cache: list[Any] = [-1, ""]


def utc_timestamp(now: float | None = None) -> str:
    """``2025-01-31T12:00:00.123456Z`` (the formatted second is cached: this is hot)."""
    t = time.time() if now is None else now
    secs = int(t)
    if _ts_cache[0] != secs:
        _ts_cache[0], _ts_cache[1] = secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{_ts_cache[1]}.{int((t - secs) * 1e6):06d}Z"


_ts_bytes: list[Any] = [-1, b""]


def utc_timestamp_bytes(now: float) -> bytes:
    """:func:`utc_timestamp` as bytes, for the records' hot path."""
    secs = int(now)
    if _ts_bytes[0] != secs:
        _ts_bytes[0], _ts_bytes[1] = secs, time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode()
    return b"%s.%06dZ" % (_ts_bytes[1], int((now - secs) * 1e6))


def line_hash(line: bytes) -> str:
    """The chain link: SHA-256 of one record's line (without the newline)."""
    return hashlib.sha256(line).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_jsonable
).encode


def encode(record: Mapping[str, Any]) -> bytes:
    """A record as compact JSON bytes, in its key order."""
    return _encode(record).encode()


class Sealer:
    """Turns a record body into a signed line, and checks lines. Holds the key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        # HMAC-SHA256 (RFC 2104) with the padded-key states computed once: the same bytes
        # as hmac.digest, for half its cost per record on this path
        block = hashlib.sha256(key).digest() if len(key) > 64 else key
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(self, body: bytes) -> str:
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def seal_chain(self, prev: str, prefixes: list[bytes]) -> tuple[list[bytes], str]:
        """The lines of record prefixes chained from ``prev`` (see :mod:`.sealing`), and
        the hash of the last line. The hot loop of the writer: the MAC is taken over the
        line's head and its closing brace without joining them."""
        lines: list[bytes] = []
        append = lines.append
        inner0, outer0, sha256 = self._inner, self._outer, hashlib.sha256
        link = prev.encode()
        for prefix in prefixes:
            head = b'%s,"prev":"%s"' % (prefix, link)
            inner = inner0.copy()
            inner.update(head)
            inner.update(b"}")
            outer = outer0.copy()
            outer.update(inner.digest())
            line = b'%s,"mac":"%s"}' % (head, outer.hexdigest().encode())
            append(line)
            link = sha256(line).hexdigest().encode()
        return lines, link.decode()

    def seal(self, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` (without ``mac``) and append its MAC: the line, no newline."""
        body = _encode(record).encode()
        return body[:-1] + b',"mac":"' + self.mac(body).encode() + b'"}'

    def check(self, line: bytes) -> bool:
        """True when the line ends with a MAC that matches the bytes before it."""
        m = _MAC_TAIL.search(line)
        if m is None:
            return False
        body = line[: m.start()] + b"}"
        return hmac.compare_digest(self.mac(body).encode(), m.group(1))


def has_mac_tail(line: bytes) -> bool:
    return _MAC_TAIL.search(line) is not None


def build(
    seq: int,
    instance: str,
    type_: str,
    fields: Mapping[str, Any],
    prev: str,
    *,
    include_literals: bool,
    now: float | None = None,
) -> dict[str, Any]:
    """The record dict in line order: seq, ts, instance, type, the caller's fields, prev."""
    rec: dict[str, Any] = {"seq": seq, "ts": utc_timestamp(now), "instance": instance, "type": type_}
    for k, v in fields.items():
        if k in RESERVED:
            raise ValueError(f"audit field {k!r} is set by the audit log itself")
        if v is None or (not include_literals and k in LITERAL_FIELDS):
            continue
        rec[k] = v
    rec["prev"] = prev
    return rec


def parse(line: bytes | str) -> dict[str, Any] | None:
    """The record of one line, or None when it is not a JSON object."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


# -- typed helpers for the proxy ----------------------------------------------------------


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """Shallow and fast (``asdict`` deep-copies): this runs once per statement."""
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class StatementIntent:
    """What is known before a statement is forwarded. ``normalized`` has no literals."""

    session: str
    user: str
    database: str
    fingerprint: str
    normalized: str
    decision: str                       # "forward" | "rewrite" | "deny" | "hold"
    protocol: str = "simple"            # "simple" | "extended"
    client: str | None = None
    application_name: str | None = None
    kind: str | None = None             # select, insert, ddl, copy…
    tables: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    reason: str | None = None           # why denied / held (policy text, no values)
    request: str | None = None          # approval request id for "hold"
    sql: str | None = None              # raw text: written only with include_literals
    params: list[Any] | None = None     # parameter values: only with include_literals

    def to_fields(self) -> dict[str, Any]:
        return _drop_none(self.__dict__)


@dataclass
class StatementResult:
    """What is known after the statement: rows, time, outcome."""

    rows: int | None = None
    duration_ms: float | None = None
    sqlstate: str | None = None         # "00000" on success
    decision: str | None = None         # when it changed (a held statement approved → "forward")
    session: str | None = None

    def to_fields(self) -> dict[str, Any]:
        d = _drop_none(self.__dict__)
        if "duration_ms" in d:
            d["duration_ms"] = round(float(d["duration_ms"]), 3)
        return d



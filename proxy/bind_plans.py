"""Bind plans: a client's repeated Bind/Describe/Execute/Sync of one prepared statement.

``pgbench -M prepared``, libpq's ``PQexecPrepared`` and most drivers' prepared statements
send the same four messages for every execution: a Bind of the same statement to the
unnamed portal (only the parameter values change), a Describe of that portal, an Execute
and a Sync. Following them one by one — framing, decoding the names, the guard's and the
tracker's calls per message — costs more than the rest of the statement.

The same four messages also follow an unnamed Parse in every batch of drivers that do
not keep statements (``pgbench -M extended``, psycopg's default): when the guard answers that
Parse from its parse plan (:mod:`proxy.query_plans`), the rest of the batch is replayed the
same way, from a plan learnt for the unnamed statement (``fresh``: its statement object is
new each time, so its decision and upstream name are what must match).

A session learns a plan per statement name from one such batch handled the full way, and
replays it for later batches whose bytes match: the same statement name and the very same
Describe/Execute/Sync bytes after the Bind. The session replays only while the guard maps
that name to the same statement object, with the same decision and upstream name, and that
decision used no grant (a grant can end between two Binds: the full way checks it each
time); while nothing else is in flight (no open batch, no partial message, no search_path
change awaiting its Sync); and while the audit log takes records without waiting for
durability or logging parameters. The replay makes the same
calls and sends the same bytes as the full way; a plan is kept only when the bytes it would
have sent for its teaching batch equal what the full way sent.

Pure: no I/O. The session applies the state changes (:meth:`Session._replay_bind`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_B, _D, _E, _S = 66, 68, 69, 83
MAX_PLANS = 64  # per session, by statement name; past that the plans start afresh
_DESCRIBE_UNNAMED_PORTAL = b"D\x00\x00\x00\x06P\x00"


@dataclass(slots=True, frozen=True)
class BindPlan:
    stmt: str          # the client's statement name
    names: bytes       # the Bind's two names as sent: b"\0" + stmt + b"\0" (unnamed portal)
    tail: bytes        # Describe/Execute/Sync exactly as they followed the Bind
    upstream: bytes    # the names to send instead (b"" when the Bind goes out unchanged)
    prepared: Any      # the guard's Prepared for stmt (None without a guard): identity
    decision: Any      # its decision when learnt: identity
    upstream_name: str
    fresh: bool = False  # learnt after a Parse in the same batch: the statement object is
    #                      new every time; its decision and upstream name must still match


def batch_shape(buf: bytes, upto: int, spans: list[tuple[int, int, int]]
                ) -> tuple[str, bytes, bytes] | None:
    """``(stmt, names, tail)`` when ``buf`` is exactly Bind (unnamed portal), Describe of
    the unnamed portal, Execute of the unnamed portal and Sync; else None."""
    if len(spans) != 4 or upto != len(buf):
        return None
    (t0, a0, b0), (t1, a1, _), (t2, a2, _), (t3, _, _) = spans
    if t0 != _B or t1 != _D or t2 != _E or t3 != _S or a0 != 0:
        return None
    if buf[a1 : a1 + 7] != _DESCRIBE_UNNAMED_PORTAL or buf[a2 + 5] != 0 or buf[5] != 0:
        return None
    end = buf.find(b"\x00", 6, b0)
    if end < 0:
        return None
    try:
        stmt = buf[6:end].decode()
    except UnicodeDecodeError:
        return None
    return stmt, buf[5 : end + 1], buf[b0:]


def make_plan(shape: tuple[str, bytes, bytes], prepared: Any, decision: Any,
              upstream_name: str, fresh: bool = False) -> BindPlan:
    stmt, names, tail = shape
    upstream = b"" if upstream_name == stmt else b"\x00" + upstream_name.encode() + b"\x00"
    return BindPlan(stmt, names, tail, upstream, prepared, decision, upstream_name, fresh)


def matches(plan: BindPlan, data: bytes) -> bool:
    """Whether ``data`` is one whole batch of the plan's shape (only the values differ)."""
    n = len(data)
    size = n - 1 - len(plan.tail)  # the Bind's length field, if data has the plan's shape
    return (size >= 4 + len(plan.names) and data[0] == _B
            and int.from_bytes(data[1:5], "big") == size
            and data.startswith(plan.names, 5) and data.endswith(plan.tail))


def replay_bytes(plan: BindPlan, data: bytes) -> bytes:
    """What goes upstream for a batch that :func:`matches` the plan."""
    if not plan.upstream:
        return data
    size = int.from_bytes(data[1:5], "big") + len(plan.upstream) - len(plan.names)
    return b"".join((b"B", size.to_bytes(4, "big"), plan.upstream,
                     data[5 + len(plan.names) :]))

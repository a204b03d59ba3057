"""Upstream prepared statements for masked unnamed statements (extended protocol).

A client using the extended protocol without naming its statements (psycopg, JDBC and
pgbench -M extended all do) sends ``Parse("", text)`` before every execution, so the
server parses, analyses and plans the text every time. When pgveil has rewritten that text
with masks, the masked derived table makes this several times more work for the server
than the client's own statement. So, per session, the *rewritten* text is prepared once
upstream under a name of pgveil's, and later ``Parse("")`` of the same text becomes::

    client:   Parse("", text)          Bind("", "")              Describe(S, "")
    upstream: Parse("", "")            Bind("", "pgveil_c…_3")   Describe(S, "pgveil_c…_3")

The empty Parse costs the server nothing and answers the client's ParseComplete in order.

A masked simple-protocol Query whose literals can be parameters (:mod:`policy.params`) is
sent the same way, as one extended-protocol batch the client never sees::

    client:   Query("SELECT … WHERE id = 5")
    upstream: [Parse("pgveil_c…_3", "SELECT … WHERE id = $1")] Bind("", "pgveil_c…_3", "5")
              Describe(P, "") Execute("", 0) Sync

ParseComplete and BindComplete are swallowed; RowDescription, DataRow, CommandComplete,
ErrorResponse and ReadyForQuery are what the simple Query would have produced.
Bind, Describe and Close of the unnamed statement are pointed at the upstream name by
:class:`~proxy.statements.StatementMap` (``Prepared.shared`` keeps a client Close from
closing the cached statement).

A name is used only after the server confirmed its Parse (ParseComplete); one whose Parse
failed or was skipped is forgotten. The cache is keyed by the rewritten text, the parameter
types and the catalog version, so DDL seen through pgveil starts afresh; it is cleared when
the client runs DISCARD or DEALLOCATE (which drop these statements too) and when the server
reports that a cached statement is gone or its result type changed (then the client sees
that one error, as it would for its own prepared statement). Statements prepared under a
grant are never cached: they must be re-decided when the grant ends.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict

from .protocol import messages as m

#: cached statements per session (``[proxy] statement_cache``); the least recently used
#: one is closed beyond this
LIMIT = 64


class StatementCache:
    __slots__ = ("limit", "ready", "pending", "counter", "to_close", "hits", "created", "prefix")

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        # a per-session random part: a client's own statement cannot take a name of ours
        self.prefix = f"pgveil_c{secrets.token_hex(3)}_"
        self.ready: OrderedDict[tuple, str] = OrderedDict()  # key -> confirmed upstream name
        self.pending: dict[str, tuple] = {}  # upstream name -> key, Parse not yet answered
        self.counter = 0
        self.to_close: list[str] = []
        self.hits = 0
        self.created = 0

    def lookup(self, key: tuple) -> tuple[bytes, int, str, bool]:
        """The cached upstream statement for ``key``, or a new name to prepare it under:
        ``(Close messages to send first, how many, name, new)``. A new name is used only
        once :meth:`confirm` is called for it."""
        closes = len(self.to_close)
        prefix = self._closes()
        name = self.ready.get(key)
        if name is not None:
            self.ready.move_to_end(key)
            self.hits += 1
            return prefix, closes, name, False
        self.counter += 1
        self.created += 1
        name = f"{self.prefix}{self.counter}"
        self.pending[name] = key
        return prefix, closes, name, True

    def ready_name(self, key: tuple) -> str | None:
        """The confirmed upstream name for ``key`` (marked as just used), or None."""
        name = self.ready.get(key)
        if name is not None:
            self.ready.move_to_end(key)
            self.hits += 1
        return name

    def take_closes(self) -> bytes:
        """Close messages for statements to drop, to send before anything else."""
        return self._closes()

    def confirm(self, name: str) -> None:
        """The server answered the Parse of ``name``: it exists upstream now."""
        key = self.pending.pop(name, None)
        if key is None:
            self.to_close.append(name)  # cleared meanwhile: close it at the next chance
            return
        if key in self.ready:
            self.to_close.append(name)  # a twin prepared in the same pipeline
            return
        self.ready[key] = name
        while len(self.ready) > self.limit:
            _, old = self.ready.popitem(last=False)
            self.to_close.append(old)

    def failed(self, name: str) -> None:
        """The Parse of ``name`` failed or was skipped: it does not exist upstream."""
        self.pending.pop(name, None)

    def clear(self) -> None:
        """Forget everything (DISCARD, DEALLOCATE, or the server lost a statement). Names
        that may still exist are closed at the next chance."""
        self.to_close.extend(self.ready.values())
        self.ready.clear()
        self.pending.clear()

    def _closes(self) -> bytes:
        if not self.to_close:
            return b""
        out = b"".join(m.msg(b"C", b"S" + m.cstr(name)) for name in self.to_close)
        self.to_close = []
        return out

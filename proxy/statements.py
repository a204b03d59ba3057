"""Prepared statements and portals of a masked session, across the end of a grant.

A statement prepared (Parse) while a grant was live was rewritten *without* the masks the
grant lifted. Grants are checked per statement, so when such a grant ends the statement must
not run again as prepared. At the next Bind that names it, the guard re-decides its text
and, without the client noticing, prepares it again upstream under a new name::

    client:   Bind(stmt="s1")
    upstream: Close(S, "s1") Parse("s1#pgveil2", masked text) Bind(stmt="s1#pgveil2")

and later Describe/Close of "s1" are pointed at the new name. The server answers the two
injected messages (CloseComplete, ParseComplete); the relay swallows exactly those. If the
result shape would change (a stripped column), the client gets PostgreSQL's own
"cached plan must not change result type" (0A000) instead.

A portal bound from such a statement is closed when the grant ends: its next Execute finds
no portal (34000), as after a COMMIT.

Which server answer belongs to an injected message is tracked per answer type ('1'
ParseComplete, '3' CloseComplete) in order, with the batch (Sync) each was sent in: when an
error makes the server skip the rest of a batch, its ReadyForQuery discards what was skipped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .protocol import messages as m


@dataclass(slots=True)
class Prepared:
    query: str
    param_types: list[int]
    decision: Any
    upstream: str  # the name it has upstream
    generation: int = 1
    shared: bool = False  # upstream is a cached statement (stmt_cache): never close it
    version: int = 0  # the catalog version its decision was made with


@dataclass
class Answers:
    """Expected '1' and '3' answers, oldest first: (batch, swallow)."""

    parse: deque = field(default_factory=deque)
    close: deque = field(default_factory=deque)
    bind: deque = field(default_factory=deque)  # only injected Binds (all swallowed)


class StatementMap:
    def __init__(self) -> None:
        self.prepared: dict[str, Prepared] = {}
        self.portals: dict[str, str] = {}  # portal -> client statement name
        self.answers = Answers()
        self.batch = 0  # the client's open batch (incremented after each Sync / Query)
        self.closed = 0  # batches the server has finished (ReadyForQuery)
        self.version = 0  # the catalog version of the decisions being recorded (parsed)

    # ------------------------------------------------------------------ bookkeeping
    def expect(self, kind: str, swallow: bool, confirm=None) -> None:
        """An answer ('1' ParseComplete, '2' BindComplete of an injected Bind, '3'
        CloseComplete) is due for a message sent now. ``confirm``: a callback
        ``(ok)`` told whether the server answered it (True) or skipped it (False)."""
        q = self.answers.parse if kind == "1" else (
            self.answers.close if kind == "3" else self.answers.bind)
        q.append((self.batch, swallow, confirm))

    def end_batch(self) -> None:
        self.batch += 1

    def answered(self, kind: int) -> bool:
        """The server sent '1', '2' or '3': True if it answers an injected message (drop
        it). Client Binds are not tracked: a '2' nobody expects is the client's."""
        if kind == 50:
            q = self.answers.bind
            if not q or q[0][0] != self.closed:
                return False  # the client's own Bind, in a batch pgveil did not inject into
        else:
            q = self.answers.parse if kind == 49 else self.answers.close
        if not q:
            return False
        _, swallow, confirm = q.popleft()
        if confirm is not None:
            confirm(True)
        return swallow

    def ready(self) -> None:
        """ReadyForQuery: whatever of the finished batch was not answered was skipped."""
        self.closed += 1
        for q in (self.answers.parse, self.answers.close, self.answers.bind):
            while q and q[0][0] < self.closed:
                confirm = q.popleft()[2]
                if confirm is not None:
                    confirm(False)

    def upstream_name(self, name: str) -> str:
        p = self.prepared.get(name)
        return p.upstream if p is not None else name

    # ------------------------------------------------------------------ client messages
    def parsed(self, name: str, query: str, param_types: list[int], decision: Any,
               upstream: str | None = None, confirm=None) -> None:
        shared = upstream is not None
        new = Prepared(query, param_types, decision, upstream or name, shared=shared,
                       version=self.version)
        old = self.prepared.get(name) if name else None
        if old is None:
            self.prepared[name] = new
            self.expect("1", False, confirm)
            return
        # a named statement that exists: the server refuses this Parse (42P05) and keeps
        # the one it has — unless it was deallocated meanwhile (SQL DEALLOCATE). The record
        # changes only once ParseComplete says the server took the new one (else the
        # re-checks at Bind, after a grant ends, would look at a statement that is not there)

        def took(ok: bool) -> None:
            if ok and self.prepared.get(name) is old:
                self.prepared[name] = new
            if confirm is not None:
                confirm(ok)

        self.expect("1", False, took)

    def closing(self, what: str, name: str) -> bytes | None:
        """A client Close: point it at the upstream name. Returns a replacement, or None."""
        self.expect("3", False)
        if what == "S":
            p = self.prepared.pop(name, None)
            if p is not None and p.upstream != name and not p.shared:
                return m.msg(b"C", b"S" + m.cstr(p.upstream))
        else:
            self.portals.pop(name, None)
        return None

    def describing(self, what: str, name: str) -> bytes | None:
        if what == "S":
            p = self.prepared.get(name)
            if p is not None and p.upstream != name:
                return m.msg(b"D", b"S" + m.cstr(p.upstream))
        return None

    def reprepare(self, name: str, new_sql: str) -> bytes:
        """Messages that replace statement ``name`` upstream with ``new_sql``."""
        p = self.prepared[name]
        out = []
        if name:  # a named statement cannot be re-Parsed in place: close it, use a new name
            out.append(m.msg(b"C", b"S" + m.cstr(p.upstream)))
            self.expect("3", True)
            p.generation += 1
            p.upstream = f"{name}#pgveil{p.generation}"
        out.append(m.encode_parse(m.Parse(p.upstream, new_sql, p.param_types)))
        self.expect("1", True)
        return b"".join(out)

    def close_portal(self, portal: str) -> bytes:
        self.portals.pop(portal, None)
        self.expect("3", True)
        return m.msg(b"C", b"P" + m.cstr(portal))

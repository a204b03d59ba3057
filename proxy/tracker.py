"""Which statement each server response belongs to: the basis of audit and statement metrics.

PostgreSQL answers in order. A simple Query is answered by results and one ReadyForQuery; an
extended-protocol Execute by exactly one of CommandComplete, EmptyQueryResponse,
PortalSuspended or ErrorResponse — unless an earlier error in the same batch made the server
skip it, in which case nothing comes until the Sync's ReadyForQuery. The tracker keeps a
queue of what the client sent (statements and Sync markers) and pops it as answers come.

It knows nothing about sockets or logs: ``begin`` is called when a statement is sent (the
audit intent), ``end`` when it is answered (the completion).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(slots=True)
class Running:
    ref: Any  # what ``begin`` returned (the audit rid)
    info: Any  # StatementInfo
    extended: bool
    started: float
    rows: int = 0
    sqlstate: str | None = None


_SYNC = None  # queue marker for an extended-protocol Sync


def rows_of(tag: bytes) -> int:
    """Row count of a CommandComplete tag ("SELECT 5", "INSERT 0 5", "UPDATE 3"…)."""
    tail = tag.rstrip(b"\x00").rpartition(b" ")[2]
    return int(tail) if tail.isdigit() else 0


class StatementTracker:
    __slots__ = ("begin", "end", "queue", "prepared", "portals", "failed", "raw", "rows")

    def __init__(self, begin: Callable[[Any, bool, Any], Any],
                 end: Callable[[Running, bool], None], rows: bool = True) -> None:
        self.begin = begin  # (info, extended) -> ref
        self.end = end  # (running, executed) -> None
        self.rows = rows  # count rows from CommandComplete tags (the audit records them)
        self.queue: deque = deque()
        self.prepared: dict[str, Any] = {}
        self.portals: dict[str, str] = {}
        self.failed = False  # an error was seen since the last Sync
        self.raw: dict[tuple[str, str], Any] = {}  # include_literals: texts and parameters

    # ------------------------------------------------------------------ client messages
    def query(self, info: Any, raw: str | None = None) -> None:
        self.queue.append(Running(self.begin(info, False, raw), info, False,
                                  time.perf_counter()))

    def parse(self, name: str, info: Any, raw: str | None = None) -> None:
        self.prepared[name] = info
        if raw is not None:
            self.raw[("S", name)] = raw

    def bind(self, portal: str, statement: str, params: list | None = None) -> None:
        self.portals[portal] = statement
        if params is not None:
            self.raw[("P", portal)] = params

    def close(self, what: str, name: str) -> None:
        if what == "S":
            self.prepared.pop(name, None)
        else:
            self.portals.pop(name, None)

    def execute(self, portal: str, unknown: Callable[[], Any]) -> None:
        stmt = self.portals.get(portal, "")
        info = self.prepared.get(stmt, None)
        if info is None:
            info = unknown()
        raw = None
        if self.raw:
            raw = {"sql": self.raw.get(("S", stmt)), "params": self.raw.get(("P", portal))}
        self.queue.append(Running(self.begin(info, True, raw), info, True,
                                  time.perf_counter()))

    def sync(self) -> None:
        self.queue.append(_SYNC)

    def forget_syncs(self, n: int) -> None:
        """The last ``n`` Syncs arrived during copy-in: the server ignores them."""
        q = self.queue
        for i in range(len(q) - 1, -1, -1):
            if n == 0:
                break
            if q[i] is _SYNC:
                del q[i]
                n -= 1

    def function_call(self, info: Any) -> None:
        """A FunctionCall message: answered like a simple Query."""
        self.queue.append(Running(self.begin(info, False, None), info, False,
                                  time.perf_counter()))

    # ------------------------------------------------------------------ server messages
    def _head(self) -> Running | None:
        for item in self.queue:
            if item is _SYNC:
                return None
            return item
        return None

    def command_complete(self, tag: bytes) -> None:
        head = self._head()
        if head is None:
            return
        if self.rows:
            head.rows += rows_of(tag)
        if head.extended:
            self.queue.popleft()
            self.end(head, True)

    def empty_or_suspended(self) -> None:
        head = self._head()
        if head is not None and head.extended:
            self.queue.popleft()
            self.end(head, True)

    def error(self, sqlstate: str) -> None:
        head = self._head()
        if head is None:
            self.failed = True
            return
        if head.sqlstate is None:
            head.sqlstate = sqlstate
        if head.extended:
            self.queue.popleft()
            self.end(head, True)
            self.failed = True

    def ready(self) -> None:
        q = self.queue
        if q and q[0] is not _SYNC and not q[0].extended:
            self.end(q.popleft(), True)
            return
        while q:
            item = q.popleft()
            if item is _SYNC:
                break
            self.end(item, False)  # skipped: an earlier error ended the batch
        self.failed = False

    def abandon(self) -> None:
        """The session ended: whatever is still running ends unanswered."""
        while self.queue:
            item = self.queue.popleft()
            if item is not _SYNC:
                if item.sqlstate is None:
                    item.sqlstate = "08006"
                self.end(item, False)

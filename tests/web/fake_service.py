"""An in-memory stand-in with the JitService interface the web layer uses.

It keeps the rules the web layer's behaviour depends on (self-approval refused, only pending
requests decided, too-long durations refused, store outage) and records what it was asked,
so tests can check the web layer passed the caller's identity through.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

try:
    from proxy.jit.service import JitError  # the real error type, once it exists
except Exception:  # pragma: no cover
    class JitError(Exception):  # type: ignore[no-redef]
        def __init__(self, code: str, message: str, hint: str | None = None) -> None:
            super().__init__(message)
            self.code, self.message, self.hint = code, message, hint

_UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60,
          "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
          "days": 86400}


def _seconds(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return int(value)
    parts = str(value).split()
    if len(parts) == 1 and parts[0].isdigit():
        return int(parts[0])
    if len(parts) == 2 and parts[0].isdigit() and parts[1] in _UNITS:
        return int(parts[0]) * _UNITS[parts[1]]
    raise JitError("bad_duration", f"cannot read duration {value!r}", "e.g. '30 minutes'")


def _normalize(statement: str) -> str:
    """Literal-free text, as the real service stores it."""
    try:
        from policy.fingerprint import normalize
        return normalize(statement)
    except Exception:  # pragma: no cover
        return " ".join(statement.lower().split())


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


@dataclass
class FakeRequest:
    id: str
    user: str
    reason: str
    requested_by: str
    table: str | None = None
    columns: tuple[str, ...] = ()
    action: str | None = None
    fingerprint: str | None = None
    statement: str | None = None
    duration_s: int = 3600
    state: str = "pending"
    created_at: float = field(default_factory=time.time)
    decided_at: float | None = None
    decided_by: str | None = None
    deny_reason: str | None = None
    approvals: tuple[str, ...] = ()
    grant_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "user": self.user, "table": self.table,
                "columns": list(self.columns), "action": self.action,
                "statement": self.statement, "duration_s": self.duration_s,
                "reason": self.reason, "requested_by": self.requested_by,
                "created_at": _iso(self.created_at), "created_at_epoch": self.created_at,
                "decided_at": _iso(self.decided_at), "decided_at_epoch": self.decided_at,
                "decided_by": self.decided_by, "deny_reason": self.deny_reason,
                "approvals": list(self.approvals), "grant_id": self.grant_id}


@dataclass
class FakeGrant:
    id: str
    user: str
    reason: str
    requested_by: str
    approved_by: str
    expires_at: float
    table: str | None = None
    columns: tuple[str, ...] = ()
    action: str | None = None
    created_at: float = field(default_factory=time.time)
    max_uses: int | None = None
    uses: int = 0
    revoked_at: float | None = None

    def live(self) -> bool:
        return (self.revoked_at is None and time.time() < self.expires_at
                and (self.max_uses is None or self.uses < self.max_uses))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "table": self.table,
                "columns": list(self.columns), "action": self.action, "reason": self.reason,
                "requested_by": self.requested_by, "approved_by": self.approved_by,
                "created_at": _iso(self.created_at), "expires_at": _iso(self.expires_at),
                "expires_at_epoch": self.expires_at, "max_uses": self.max_uses,
                "uses": self.uses, "revoked_at": _iso(self.revoked_at)}


class FakeJitService:
    def __init__(self, *, max_duration: int = 8 * 3600, default_duration: int = 3600) -> None:
        self.max_duration = max_duration
        self.default_duration = default_duration
        self.healthy = True
        self._requests: dict[str, FakeRequest] = {}
        self._grants: dict[str, FakeGrant] = {}
        self._uses: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    # -- helpers for tests -------------------------------------------------------------
    def record_use(self, grant_id: str, statement: str = "SELECT ssn FROM customers") -> None:
        g = self._grants[grant_id]
        g.uses += 1
        self._uses.insert(0, {"at": time.time(), "grant_id": g.id, "user": g.user,
                              "table": g.table, "statement": statement})

    def _check_store(self) -> None:
        if not self.healthy:
            raise JitError("store_unavailable", "the state store is unavailable",
                           "try again in a moment")

    def _duration(self, duration: Any) -> int:
        seconds = _seconds(duration, self.default_duration)
        if seconds > self.max_duration:
            raise JitError("too_long", f"duration {seconds}s exceeds the maximum "
                           f"{self.max_duration}s", "ask for a shorter duration")
        return seconds

    def _pending(self, request_id: str) -> FakeRequest:
        r = self._requests.get(str(request_id))
        if r is None:
            raise JitError("not_found", f"no request {request_id}", "see `pgveil requests`")
        if r.state != "pending":
            raise JitError("not_pending", f"request {request_id} is {r.state}", None)
        return r

    # -- the interface -----------------------------------------------------------------
    async def create_request(self, *, user: str, table: str | None = None,
                             columns: tuple[str, ...] = (), action: str | None = None,
                             fingerprint: str | None = None, statement: str | None = None,
                             duration: Any = None, reason: str, requested_by: str) -> FakeRequest:
        self.calls.append(("create_request", dict(user=user, table=table, columns=columns,
                                                  action=action, requested_by=requested_by)))
        if (table is None) == (action is None):
            raise JitError("bad_request", "name either a table (with columns) or an action")
        if table is not None and not columns:
            raise JitError("bad_request", "name the columns to unmask, or * for all of them")
        if table is not None and (len(table.split(".")) != 2 or not all(table.split("."))):
            raise JitError("bad_request", f"table {table!r} must be qualified as schema.table")
        if statement:
            statement = _normalize(statement)
        self._check_store()
        seconds = self._duration(duration)
        r = FakeRequest(id=f"r{next(self._ids)}", user=user, table=table,
                        columns=tuple(columns), action=action, fingerprint=fingerprint,
                        statement=statement, duration_s=seconds, reason=reason,
                        requested_by=requested_by)
        self._requests[r.id] = r
        return r

    async def approve(self, request_id: str, approver: str, *, via: str,
                      max_uses: int | None = None) -> FakeRequest:
        self.calls.append(("approve", dict(id=request_id, approver=approver, via=via,
                                           max_uses=max_uses)))
        self._check_store()
        r = self._pending(request_id)
        if approver in (r.requested_by, r.user):
            raise JitError("self_approval", f"{approver} cannot approve their own request "
                           f"{r.id}", "ask another approver")
        now = time.time()
        g = FakeGrant(id=f"g{next(self._ids)}", user=r.user, table=r.table, columns=r.columns,
                      action=r.action, reason=r.reason, requested_by=r.requested_by,
                      approved_by=approver, expires_at=now + r.duration_s, max_uses=max_uses)
        self._grants[g.id] = g
        r.state, r.decided_at, r.decided_by, r.grant_id = "approved", now, approver, g.id
        r.approvals = (approver,)
        return r

    async def deny(self, request_id: str, approver: str, reason: str) -> FakeRequest:
        self.calls.append(("deny", dict(id=request_id, approver=approver, reason=reason)))
        self._check_store()
        r = self._pending(request_id)
        r.state, r.decided_at, r.decided_by, r.deny_reason = "denied", time.time(), approver, reason
        return r

    async def cancel(self, request_id: str, by: str) -> FakeRequest:
        self.calls.append(("cancel", dict(id=request_id, by=by)))
        self._check_store()
        r = self._pending(request_id)
        r.state, r.decided_at, r.decided_by = "cancelled", time.time(), by
        return r

    async def grant(self, *, user: str, table: str | None = None, columns: tuple[str, ...] = (),
                    action: str | None = None, fingerprint: str | None = None, duration: Any,
                    reason: str, granted_by: str, max_uses: int | None = None) -> FakeGrant:
        self.calls.append(("grant", dict(user=user, table=table, granted_by=granted_by,
                                         max_uses=max_uses)))
        self._check_store()
        seconds = self._duration(duration)
        g = FakeGrant(id=f"g{next(self._ids)}", user=user, table=table, columns=tuple(columns),
                      action=action, reason=reason, requested_by=granted_by,
                      approved_by=granted_by, expires_at=time.time() + seconds,
                      max_uses=max_uses)
        self._grants[g.id] = g
        return g

    async def revoke(self, grant_id: str, by: str) -> FakeGrant:
        self.calls.append(("revoke", dict(id=grant_id, by=by)))
        self._check_store()
        g = self._grants.get(str(grant_id))
        if g is None:
            raise JitError("not_found", f"no grant {grant_id}", "see `pgveil grants`")
        if not g.live():
            raise JitError("not_active", f"grant {grant_id} is no longer active")
        g.revoked_at = time.time()
        return g

    def requests(self, state: str | None = None, user: str | None = None) -> list[FakeRequest]:
        return [r for r in self._requests.values()
                if (state is None or r.state == state) and (user is None or r.user == user)]

    def grants(self, active_only: bool = True, user: str | None = None) -> list[FakeGrant]:
        return [g for g in self._grants.values()
                if (not active_only or g.live()) and (user is None or g.user == user)]

    def recent_uses(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._uses[:limit]

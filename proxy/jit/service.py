"""The JIT service: requests, approvals, grants, uses and expiry, with an in-memory index.

Every decision the query path needs is answered from memory: ``grant_set()`` returns the
current immutable :class:`policy.grants.GrantSet` (replaced, never mutated, and pushed to
``on_change`` whenever it changes). The store is written through, never waited on by a
statement:

- ``record_use`` counts in memory at once (a grant that reaches ``max_uses`` leaves the
  GrantSet before the call returns) and a background task persists the counts;
- a background task ends grants on time (to ~1 s; the policy also checks ``expires_at`` per
  statement), emits ``grant.expired`` once across instances, and expires stale requests;
- changes made by other instances arrive through the store (NOTIFY for PostgreSQL) and are
  applied to memory; ``wait_for`` waiters are woken by local and remote decisions alike.

Fail closed: while the store is unreachable, every operation that would create or change a
grant or request raises ``JitError("store_unavailable")``; grants already in memory keep
working until they expire (or reach max_uses).

Events (``request.created``, ``request.approved``, ``request.denied``, ``request.cancelled``,
``request.expired``, ``grant.created``, ``grant.used`` (first use only), ``grant.expired``,
``grant.revoked``, plus ``request.approval`` for each partial approval when
``min_approvals`` > 1) go to ``on_event(kind, fields)`` and to the webhooks. Each is emitted
by the instance that made the change, only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any, Callable

from policy.grants import GrantSet

from .durations import format_duration, parse_duration
from .model import (
    APPROVED, CANCELLED, DENIED, EXPIRED, PENDING, REQUEST_STATES, GrantRecord, Request, new_id,
)
from .settings import AutoApproveRule, JitSettings
from .store import HISTORY_SECONDS, Conflict, Store, StoreUnavailable, open_store
from .webhooks import WebhookDispatcher

log = logging.getLogger("pgveil.jit")

VIAS = ("console", "api", "cli")
MAX_SWEEP_INTERVAL = 1.0
CAS_RETRIES = 3


class JitError(Exception):
    """A refused JIT operation. ``code``: not_found, not_approver, self_approval,
    already_approved, not_pending, not_active, forbidden, too_long, bad_duration,
    bad_request, conflict, store_unavailable."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        self.code, self.message, self.hint = code, message, hint
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


def _unavailable(exc: BaseException | None = None) -> JitError:
    detail = f" ({exc})" if exc else ""
    return JitError(
        "store_unavailable",
        f"the JIT state store is unreachable{detail}; requests and approvals are refused",
        "Existing grants keep working until they expire. Try again when the store is back.",
    )


class JitService:
    def __init__(
        self,
        settings: JitSettings,
        instance: str,
        on_change: Callable[[GrantSet], Any] | None = None,
        on_event: Callable[[str, dict], Any] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.on_change = on_change
        self.on_event = on_event
        self.clock = clock
        self.origin = f"{instance}/{new_id('')}"
        self.store = store or open_store(settings.state, self.origin)
        self.webhooks = WebhookDispatcher(settings.webhooks, instance, clock)
        self._requests: dict[str, Request] = {}
        self._grants: dict[str, GrantRecord] = {}
        self._set = GrantSet()
        self._set_key: frozenset = frozenset()
        self._waiters: dict[str, asyncio.Event] = {}
        self._pending_uses: dict[str, int] = {}
        self._inflight_uses: dict[str, int] = {}
        self._recent_uses: deque[dict[str, Any]] = deque(maxlen=1000)
        self._uses_wake: asyncio.Event | None = None
        self._sweep_wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._uses_wake = asyncio.Event()
        self._sweep_wake = asyncio.Event()
        self.store.on_remote = self._on_remote
        self.store.on_reload = self._reload
        self.store.on_health = self._on_health
        try:
            await self.store.open()
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        if self.store.kind != "postgresql":   # the PostgreSQL listener reloads on connect
            await self._reload()
        await self.webhooks.start()
        self._tasks = [
            asyncio.create_task(self._sweeper(), name="pgveil-jit-sweep"),
            asyncio.create_task(self._uses_flusher(), name="pgveil-jit-uses"),
        ]
        self._started = True
        if not self.store.healthy:
            self._emit_local("store.unavailable", {"instance": self.instance, "store": self.store.kind})

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pending_uses and self.store.healthy:
            try:
                await asyncio.wait_for(self._flush_uses(), 2.0)
            except (asyncio.TimeoutError, StoreUnavailable):
                log.warning("JIT: %d grant use counts not persisted at shutdown", len(self._pending_uses))
        await self.webhooks.close()
        await self.store.close()
        self._started = False

    async def __aenter__(self) -> "JitService":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- queries (memory only) ---------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.store.healthy

    def grant_set(self) -> GrantSet:
        return self._set

    def is_approver(self, user: str) -> bool:
        return user in self.settings.approvers

    def requests(self, state: str | None = None, user: str | None = None) -> list[Request]:
        if state is not None and state not in REQUEST_STATES:
            raise JitError("bad_request", f"unknown request state {state!r}",
                           f"use one of: {', '.join(REQUEST_STATES)}")
        out = [r.copy() for r in self._requests.values()
               if (state is None or r.state == state) and (user is None or r.user == user)]
        out.sort(key=lambda r: r.created_at, reverse=True)
        return out

    def request(self, request_id: str) -> Request:
        r = self._requests.get(request_id)
        if r is None:
            raise JitError("not_found", f"no request {request_id}", "SHOW REQUESTS lists them.")
        return r.copy()

    def grants(self, active_only: bool = True, user: str | None = None) -> list[GrantRecord]:
        now = self.clock()
        out = [g.copy() for g in self._grants.values()
               if (not active_only or g.live(now)) and (user is None or g.subject == user)]
        out.sort(key=lambda g: g.created_at, reverse=True)
        return out

    def recent_uses(self, limit: int = 50) -> list[dict]:
        return list(self._recent_uses)[::-1][:limit]

    @property
    def webhook_stats(self) -> list[dict[str, Any]]:
        return self.webhooks.stats

    # -- the query path ----------------------------------------------------------------------
    def record_use(self, grant_id: str) -> None:
        """Count one use of ``grant_id`` (call from the event loop). Never blocks."""
        g = self._grants.get(grant_id)
        if g is None:
            return
        now = self.clock()
        g.uses += 1
        g.last_used_at = now
        if g.first_used_at is None:
            g.first_used_at = now
        self._recent_uses.append({
            "grant_id": g.id, "user": g.subject, "table": g.table, "columns": list(g.columns),
            "action": g.action, "at": now, "instance": self.instance, "uses": g.uses,
        })
        self._pending_uses[grant_id] = self._pending_uses.get(grant_id, 0) + 1
        if self._uses_wake is not None:
            self._uses_wake.set()
        if g.max_uses is not None and g.uses >= g.max_uses:
            self._rebuild()
            if self._sweep_wake is not None:
                self._sweep_wake.set()

    async def wait_for(self, request_id: str, timeout: float) -> Request:
        """The request once decided, or as it is when ``timeout`` seconds have passed."""
        r = self._requests.get(request_id)
        if r is None:
            raise JitError("not_found", f"no request {request_id}")
        if r.state == PENDING and timeout > 0:
            ev = self._waiters.get(request_id)
            if ev is None:
                ev = self._waiters[request_id] = asyncio.Event()
            await _wait_event(ev, timeout)
        return self._requests[request_id].copy()

    # -- requests ----------------------------------------------------------------------------
    async def create_request(
        self,
        *,
        user: str,
        table: str | None = None,
        columns: tuple[str, ...] | list[str] = (),
        action: str | None = None,
        fingerprint: str | None = None,
        statement: str | None = None,
        duration: str | int | float | None = None,
        reason: str = "",
        requested_by: str | None = None,
    ) -> Request:
        table, cols = self._check_scope(user, table, columns, action)
        seconds = self._duration(duration)
        self._require_store()
        if statement:
            statement = _normalize(statement)
        requested_by = requested_by or user
        if action is not None:
            for r in self._requests.values():
                if (r.state == PENDING and r.user == user and r.action == action
                        and r.fingerprint == fingerprint):
                    return r.copy()   # the same held statement again: one request
        now = self.clock()
        req = Request(
            id=new_id("r_"), user=user, table=table, columns=cols, action=action,
            fingerprint=fingerprint if action else None, statement=statement if action else None,
            duration_s=seconds, reason=reason or "", requested_by=requested_by, created_at=now,
            max_uses=1 if action else None, version=1,
        )
        rule = self._auto_rule(req)
        grant = None
        if rule is not None:
            grant = self._grant_for(req, rule.name, (rule.name,), now)
            req = req.copy(state=APPROVED, decided_at=now, decided_by=rule.name,
                           approvals=(rule.name,), grant_id=grant.id)
        try:
            await self.store.create_request(req, grant)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        self._requests[req.id] = req
        self._emit("request.created", req.to_dict())
        if grant is not None:
            self._grants[grant.id] = grant
            self._rebuild()
            self._emit("request.approved", {**req.to_dict(), "auto_rule": rule.index if rule else None})
        return req.copy()

    async def approve(self, request_id: str, approver: str, *, via: str = "api",
                      max_uses: int | None = None) -> Request:
        if via not in VIAS:
            raise JitError("bad_request", f"unknown channel {via!r}")
        if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1):
            raise JitError("bad_request", f"max_uses must be a positive integer, got {max_uses!r}")
        self._require_store()
        for _ in range(CAS_RETRIES):
            req = self._pending(request_id)
            self._check_approver(req, approver, via, "approve")
            if not self.settings.self_approval and approver in (req.user, req.requested_by):
                raise JitError("self_approval", f"{approver} cannot approve their own request {req.id}",
                               "Ask another approver.")
            if approver in req.approvals:
                raise JitError("already_approved", f"{approver} already approved request {req.id}",
                               f"It needs {self.settings.min_approvals} distinct approvers.")
            now = self.clock()
            approvals = req.approvals + (approver,)
            new = req.copy(approvals=approvals, version=req.version + 1)
            grant = None
            if len(approvals) >= self.settings.min_approvals:
                if max_uses is not None:
                    new.max_uses = max_uses
                grant = self._grant_for(new, approver, approvals, now)
                new.state, new.decided_at, new.decided_by, new.grant_id = APPROVED, now, approver, grant.id
            if await self._cas(req, new, grant):
                break
        else:
            raise JitError("conflict", f"request {request_id} keeps changing; try again")
        if grant is None:
            self._emit("request.approval", {**new.to_dict(), "approver": approver, "via": via,
                                            "needed": self.settings.min_approvals})
        else:
            self._emit("request.approved", {**new.to_dict(), "via": via})
        return new.copy()

    async def deny(self, request_id: str, approver: str, reason: str = "", *, via: str = "api") -> Request:
        self._require_store()
        for _ in range(CAS_RETRIES):
            req = self._pending(request_id)
            self._check_approver(req, approver, via, "deny")
            new = req.copy(state=DENIED, decided_at=self.clock(), decided_by=approver,
                           deny_reason=reason or "", version=req.version + 1)
            if await self._cas(req, new, None):
                break
        else:
            raise JitError("conflict", f"request {request_id} keeps changing; try again")
        self._emit("request.denied", {**new.to_dict(), "via": via})
        return new.copy()

    async def cancel(self, request_id: str, by: str, *, via: str = "api") -> Request:
        self._require_store()
        for _ in range(CAS_RETRIES):
            req = self._pending(request_id)
            if via == "console" and by not in (req.user, req.requested_by) and not self.is_approver(by):
                raise JitError("forbidden", f"{by} cannot cancel request {req.id} of {req.user}")
            new = req.copy(state=CANCELLED, decided_at=self.clock(), decided_by=by,
                           version=req.version + 1)
            if await self._cas(req, new, None):
                break
        else:
            raise JitError("conflict", f"request {request_id} keeps changing; try again")
        self._emit("request.cancelled", new.to_dict())
        return new.copy()

    # -- grants ------------------------------------------------------------------------------
    async def grant(
        self,
        *,
        user: str,
        table: str | None = None,
        columns: tuple[str, ...] | list[str] = (),
        action: str | None = None,
        fingerprint: str | None = None,
        duration: str | int | float | None = None,
        reason: str = "",
        granted_by: str,
        max_uses: int | None = None,
    ) -> GrantRecord:
        """A direct grant by an admin (no request)."""
        table, cols = self._check_scope(user, table, columns, action)
        seconds = self._duration(duration)
        if max_uses is not None and (isinstance(max_uses, bool) or not isinstance(max_uses, int) or max_uses < 1):
            raise JitError("bad_request", f"max_uses must be a positive integer, got {max_uses!r}")
        self._require_store()
        now = self.clock()
        g = GrantRecord(
            id=new_id("g_"), subject=user, table=table, columns=cols, action=action,
            fingerprint=fingerprint if action else None, reason=reason or "", requested_by=granted_by,
            approved_by=granted_by, created_at=now, expires_at=now + seconds,
            max_uses=max_uses if max_uses is not None else (1 if action else None), version=1,
        )
        try:
            await self.store.create_grant(g)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        self._grants[g.id] = g
        self._rebuild()
        self._emit("grant.created", g.to_dict())
        return g.copy()

    async def revoke(self, grant_id: str, by: str, *, via: str = "api") -> GrantRecord:
        g = self._grants.get(grant_id)
        if g is None:
            raise JitError("not_found", f"no grant {grant_id}", "SHOW GRANTS lists them.")
        if via == "console" and by != g.subject and not self.is_approver(by):
            raise JitError("forbidden", f"{by} cannot revoke grant {grant_id} of {g.subject}")
        if not g.live(self.clock()):
            raise JitError("not_active", f"grant {grant_id} is no longer active")
        self._require_store()
        now = self.clock()
        try:
            done = await self.store.revoke_grant(grant_id, now, by)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        if not done:
            await self._refresh_grant(grant_id)
            raise JitError("not_active", f"grant {grant_id} was already revoked")
        g = self._grants[grant_id]
        g.revoked_at, g.revoked_by, g.ended = now, by, g.ended or "revoked"
        g.version += 1
        self._rebuild()
        self._emit("grant.revoked", g.to_dict())
        return g.copy()

    async def sweep(self) -> None:
        """End grants and requests whose time is up (the background task calls this)."""
        now = self.clock()
        self._rebuild()
        if not self.store.healthy:
            return
        for g in list(self._grants.values()):
            if g.ended is None and g.revoked_at is None and not g.live(now):
                why = "used_up" if now < g.expires_at else "expired"
                try:
                    won = await self.store.claim_end(g.id, why)
                except StoreUnavailable:
                    return
                g.ended = g.ended or why
                if won:
                    self._emit("grant.expired", g.to_dict())
        self._prune(now)
        ttl = self.settings.request_ttl
        for r in list(self._requests.values()):
            if r.state == PENDING and now >= r.created_at + ttl:
                new = r.copy(state=EXPIRED, decided_at=now, decided_by="pgveil", version=r.version + 1)
                try:
                    if await self._cas(r, new, None, quiet=True):
                        self._emit("request.expired", new.to_dict())
                except JitError:
                    return

    def _prune(self, now: float) -> None:
        """Forget decided requests and ended grants older than the history window."""
        horizon = now - HISTORY_SECONDS
        for rid in [r.id for r in self._requests.values()
                    if r.state != PENDING and (r.decided_at or r.created_at) < horizon]:
            del self._requests[rid]
        for gid in [g.id for g in self._grants.values()
                    if g.ended is not None and max(g.expires_at, g.revoked_at or 0) < horizon
                    and g.id not in self._pending_uses and g.id not in self._inflight_uses]:
            del self._grants[gid]

    # -- internals: rules --------------------------------------------------------------------
    def _require_store(self) -> None:
        if not self.store.healthy:
            raise _unavailable()

    def _check_scope(self, user: str, table: str | None, columns: Any,
                     action: str | None) -> tuple[str | None, tuple[str, ...]]:
        if not user or not isinstance(user, str):
            raise JitError("bad_request", "a request needs the database user it is for")
        if (table is None) == (action is None):
            raise JitError("bad_request", "name either a table (with columns) or an action")
        if action is not None:
            if not action or not isinstance(action, str):
                raise JitError("bad_request", "an empty action name")
            return None, ()
        assert table is not None
        parts = table.split(".")
        if len(parts) != 2 or not all(parts):
            raise JitError("bad_request", f"table {table!r} must be qualified as schema.table",
                           "For example public.customers.")
        cols = tuple(columns or ())
        if not cols or not all(isinstance(c, str) and c for c in cols):
            raise JitError("bad_request", "name the columns to unmask, or * for all of them")
        if "*" in cols:
            cols = ("*",)
        return table, tuple(dict.fromkeys(cols))

    def _duration(self, duration: Any) -> int:
        if duration is None or duration == "":
            return self.settings.default_duration
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise JitError("bad_duration", str(exc), "For example '30 minutes' or '2h'.") from None
        if seconds > self.settings.max_duration:
            limit = format_duration(self.settings.max_duration)
            raise JitError("too_long", f"{format_duration(seconds)} is longer than the maximum of {limit}",
                           f"Ask for {limit} or less.")
        return seconds

    def _auto_rule(self, req: Request) -> AutoApproveRule | None:
        for rule in self.settings.auto_approve:
            if req.user not in rule.users or req.duration_s > rule.max_duration:
                continue
            if req.action is not None:
                if req.action in rule.actions:
                    return rule
                continue
            t = req.table
            if t in rule.tables or f"{t}.*" in rule.columns:
                return rule
            if req.columns != ("*",) and all(f"{t}.{c}" in rule.columns for c in req.columns):
                return rule
        return None

    def _check_approver(self, req: Request, approver: str, via: str, verb: str) -> None:
        if not approver:
            raise JitError("not_approver", "an approver name is required")
        if via == "console" and not self.is_approver(approver):
            raise JitError("not_approver", f"{approver} is not an approver",
                           "Approvers are listed in [jit] approvers.")

    def _pending(self, request_id: str) -> Request:
        r = self._requests.get(request_id)
        if r is None:
            raise JitError("not_found", f"no request {request_id}", "SHOW REQUESTS lists them.")
        if r.state != PENDING:
            raise JitError("not_pending", f"request {request_id} is already {r.state}")
        return r

    def _grant_for(self, req: Request, approver: str, approvals: tuple[str, ...], now: float) -> GrantRecord:
        return GrantRecord(
            id=new_id("g_"), subject=req.user, table=req.table, columns=req.columns,
            action=req.action, fingerprint=req.fingerprint, reason=req.reason,
            requested_by=req.requested_by, approved_by=",".join(approvals), created_at=now,
            expires_at=now + req.duration_s, max_uses=req.max_uses, request_id=req.id, version=1,
        )

    # -- internals: state --------------------------------------------------------------------
    async def _cas(self, old: Request, new: Request, grant: GrantRecord | None, quiet: bool = False) -> bool:
        """Write ``new`` over ``old``; False (after re-reading) when someone else won."""
        try:
            await self.store.update_request(new, old.version, grant)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        except Conflict:
            await self._refresh_request(old.id)
            return False
        self._apply_request(new)
        if grant is not None:
            self._grants[grant.id] = grant
            self._rebuild()
        return True

    async def _refresh_request(self, request_id: str) -> None:
        try:
            r = await self.store.get_request(request_id)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        if r is not None:
            self._apply_request(r)

    async def _refresh_grant(self, grant_id: str) -> None:
        try:
            g = await self.store.get_grant(grant_id)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from exc
        if g is not None:
            self._apply_grant(g)
            self._rebuild()

    def _apply_request(self, r: Request) -> None:
        cur = self._requests.get(r.id)
        if cur is not None and cur.version > r.version:
            return
        self._requests[r.id] = r
        if r.state != PENDING:
            ev = self._waiters.pop(r.id, None)
            if ev is not None:
                ev.set()

    def _apply_grant(self, g: GrantRecord) -> None:
        cur = self._grants.get(g.id)
        local = self._pending_uses.get(g.id, 0) + self._inflight_uses.get(g.id, 0)
        g.uses = max(g.uses + local, cur.uses if cur else 0)   # uses only ever grow
        if cur is not None:
            g.first_used_at = g.first_used_at or cur.first_used_at
            g.last_used_at = max(g.last_used_at or 0, cur.last_used_at or 0) or None
            if cur.revoked_at is not None and g.revoked_at is None:
                g.revoked_at, g.revoked_by = cur.revoked_at, cur.revoked_by   # never un-revoke
        self._grants[g.id] = g

    def _rebuild(self) -> None:
        now = self.clock()
        live = [g for g in self._grants.values() if g.live(now)]
        key = frozenset((g.id, g.expires_at, g.max_uses) for g in live)
        if key == self._set_key:
            return
        self._set_key = key
        self._set = GrantSet(g.policy_grant() for g in live)
        if self.on_change is not None:
            try:
                self.on_change(self._set)
            except Exception:
                log.exception("JIT on_change callback failed")
        if self._sweep_wake is not None:
            self._sweep_wake.set()

    async def _reload(self) -> None:
        """Replace memory with the store's content (start, reconnect, another process wrote)."""
        reqs, grants = await self.store.load_all(self.clock() - HISTORY_SECONDS)
        seen = set()
        for r in reqs:
            self._apply_request(r)
            seen.add(r.id)
        for rid in [k for k in self._requests if k not in seen]:
            if self._requests[rid].state == PENDING:   # gone from the store: forget it
                del self._requests[rid]
        gseen = set()
        for g in grants:
            self._apply_grant(g)
            gseen.add(g.id)
        for gid in [k for k in self._grants if k not in gseen]:
            del self._grants[gid]
        self._rebuild()

    async def _on_remote(self, kind: str, ident: str) -> None:
        if kind == "request":
            r = await self.store.get_request(ident)
            if r is not None:
                self._apply_request(r)
        elif kind == "grant":
            g = await self.store.get_grant(ident)
            if g is not None:
                self._apply_grant(g)
                self._rebuild()

    def _on_health(self, ok: bool) -> None:
        if not self._started:   # start() reports the initial state itself
            return
        self._emit_local("store.available" if ok else "store.unavailable",
                         {"instance": self.instance, "store": self.store.kind})

    # -- internals: background tasks ---------------------------------------------------------
    async def _sweeper(self) -> None:
        assert self._sweep_wake is not None
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("JIT sweep failed")
            now = self.clock()
            nxt = min((g.expires_at for g in self._grants.values() if g.live(now)), default=math.inf)
            delay = min(MAX_SWEEP_INTERVAL, max(0.01, nxt - now))
            await _wait_event(self._sweep_wake, delay)
            self._sweep_wake.clear()

    async def _uses_flusher(self) -> None:
        assert self._uses_wake is not None
        while True:
            await self._uses_wake.wait()
            self._uses_wake.clear()
            try:
                await self._flush_uses()
            except StoreUnavailable:
                await asyncio.sleep(1.0)     # kept in _pending_uses; try again
                self._uses_wake.set()
            except Exception:
                log.exception("JIT: persisting grant uses failed")
                await asyncio.sleep(1.0)
                self._uses_wake.set()

    async def _flush_uses(self) -> None:
        batch, self._pending_uses = self._pending_uses, {}
        for gid, n in batch.items():
            self._inflight_uses[gid] = self._inflight_uses.get(gid, 0) + n
        try:
            while batch:
                gid, n = next(iter(batch.items()))
                g = self._grants.get(gid)
                at = (g.last_used_at if g and g.last_used_at else self.clock())
                before = await self.store.add_uses(gid, n, at)
                del batch[gid]
                self._inflight_uses[gid] -= n
                if not self._inflight_uses[gid]:
                    del self._inflight_uses[gid]
                if before == 0 and g is not None:
                    self._emit("grant.used", {**g.to_dict(), "instance": self.instance})
        finally:
            for gid, n in batch.items():   # not written: back to pending
                self._pending_uses[gid] = self._pending_uses.get(gid, 0) + n
                self._inflight_uses[gid] -= n
                if not self._inflight_uses[gid]:
                    del self._inflight_uses[gid]

    # -- events ------------------------------------------------------------------------------
    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        self._emit_local(kind, fields)
        try:
            self.webhooks.emit(kind, fields)
        except Exception:  # pragma: no cover
            log.exception("JIT webhook enqueue failed")

    def _emit_local(self, kind: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:
                log.exception("JIT on_event callback failed")


async def _wait_event(ev: asyncio.Event, timeout: float) -> bool:
    """Wait for ``ev`` up to ``timeout`` s. (Not ``asyncio.wait_for``: on Python 3.11 it can
    swallow a cancellation that races with the event being set.)"""
    if ev.is_set():
        return True
    waiter = asyncio.ensure_future(ev.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()
    return ev.is_set()


def _normalize(statement: str) -> str:
    """Literal-free text (the caller should already pass it; this makes sure)."""
    try:
        from policy.fingerprint import normalize
    except Exception:  # pragma: no cover
        return statement
    try:
        return normalize(statement)
    except Exception:
        return "?"

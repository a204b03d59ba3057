"""Runs console commands against the JIT service and answers in protocol messages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..protocol import messages as m
from .commands import HELP, ConsoleSyntaxError, parse, split_statements


def _ts(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _result(names: list[str], rows: list[list[Any]], tag: str) -> bytes:
    return (m.row_description(names)
            + b"".join(m.data_row([None if v is None else str(v) for v in r]) for r in rows)
            + m.command_complete(tag))


def _error(code: str, message: str, hint: str | None = None) -> bytes:
    return m.error_response(code, message, hint=hint)


class ConsoleHandler:
    """One per console session; ``user`` is who authenticated against the upstream."""

    def __init__(self, service: Any, user: str, approvers: frozenset[str]) -> None:
        self.service = service
        self.user = user
        self.approvers = approvers

    async def run(self, text: str) -> bytes:
        statements = split_statements(text)
        if not statements:
            return m.empty_query_response()
        out = []
        for stmt in statements:
            reply = await self.run_one(stmt)
            out.append(reply)
            if reply[:1] == b"E":
                break
        return b"".join(out)

    async def run_one(self, stmt: str) -> bytes:
        try:
            cmd = parse(stmt)
        except ConsoleSyntaxError as exc:
            return _error("42601", f"pgveil console: {exc}", hint="Commands:\n" + HELP)
        if self.service is None:
            return _error("0A000", "pgveil console: just-in-time access is not configured",
                          hint="Add a [jit] section to the pgveil config.")
        from ..jit.service import JitError

        try:
            return await getattr(self, f"_{cmd.verb}")(cmd)
        except JitError as exc:
            return _error("42501" if exc.code in ("not_approver", "self_approval") else "55000",
                          f"pgveil: {exc.message}", hint=getattr(exc, "hint", None))

    async def _help(self, cmd) -> bytes:
        return _result(["command"], [[line] for line in HELP.splitlines()], "SHOW")

    async def _request(self, cmd) -> bytes:
        req = await self.service.create_request(
            user=self.user, table=cmd.table, columns=cmd.columns, duration=cmd.duration,
            reason=cmd.reason, requested_by=self.user)
        d = req.to_dict()
        return _result(["request_id", "state", "expires_at"],
                       [[d["id"], d["state"], _ts(_grant_expiry(self.service, d))]], "REQUEST 1")

    async def _show_requests(self, cmd, everyone: bool = False) -> bytes:
        if everyone or self.user in self.approvers:
            reqs = self.service.requests(state=None if everyone else "pending")
            if not everyone:
                mine = [r for r in self.service.requests(user=self.user)
                        if r.to_dict()["state"] != "pending"]
                reqs = list(reqs) + mine
        else:
            reqs = self.service.requests(user=self.user)
        rows = []
        for r in reqs:
            d = r.to_dict()
            scope = d.get("action") or f"{d.get('table')} ({', '.join(d.get('columns') or [])})"
            rows.append([d["id"], d["state"], d["user"], scope, d.get("duration_s"),
                         d.get("reason"), _ts(d.get("created_at")), d.get("decided_by")])
        return _result(["request_id", "state", "user", "scope", "duration_s", "reason",
                        "created_at", "decided_by"], rows, f"SELECT {len(rows)}")

    async def _show_all_requests(self, cmd) -> bytes:
        if self.user not in self.approvers:
            return _error("42501", "pgveil: only approvers can list every request",
                          hint="SHOW REQUESTS lists your own.")
        return await self._show_requests(cmd, everyone=True)

    async def _show_grants(self, cmd) -> bytes:
        grants = self.service.grants(
            active_only=True, user=None if self.user in self.approvers else self.user)
        rows = []
        for g in grants:
            d = g.to_dict()
            scope = d.get("action") or f"{d.get('table')} ({', '.join(d.get('columns') or [])})"
            rows.append([d["id"], d["user"], scope, _ts(d.get("expires_at")), d.get("uses"),
                         d.get("max_uses"), d.get("approved_by"), d.get("reason")])
        return _result(["grant_id", "user", "scope", "expires_at", "uses", "max_uses",
                        "approved_by", "reason"], rows, f"SELECT {len(rows)}")

    async def _cancel(self, cmd) -> bytes:
        req = await self.service.cancel(cmd.request_id, by=self.user, via="console")
        return _result(["request_id", "state"], [[req.to_dict()["id"], req.to_dict()["state"]]],
                       "CANCEL 1")

    async def _approve(self, cmd) -> bytes:
        if self.user not in self.approvers:
            return _error("42501", f"pgveil: {self.user} is not an approver",
                          hint="Approvers are listed in [jit] approvers.")
        req = await self.service.approve(cmd.request_id, self.user, via="console")
        d = req.to_dict()
        return _result(["request_id", "state", "grant_id"], [[d["id"], d["state"], d.get("grant_id")]],
                       "APPROVE 1")

    async def _deny(self, cmd) -> bytes:
        if self.user not in self.approvers:
            return _error("42501", f"pgveil: {self.user} is not an approver",
                          hint="Approvers are listed in [jit] approvers.")
        req = await self.service.deny(cmd.request_id, self.user, cmd.reason, via="console")
        d = req.to_dict()
        return _result(["request_id", "state"], [[d["id"], d["state"]]], "DENY 1")


def _grant_expiry(service: Any, req: dict) -> Any:
    gid = req.get("grant_id")
    if not gid:
        return None
    for g in service.grants(active_only=True):
        d = g.to_dict()
        if d["id"] == gid:
            return d.get("expires_at")
    return None

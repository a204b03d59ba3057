"""The admin JSON API: ``/api/requests`` and ``/api/grants``, bearer-token authenticated.

Every handler is wrapped by :func:`_endpoint`, which authenticates (401 with
``WWW-Authenticate: Bearer`` when no valid token, 403 when the role is too weak), parses the
JSON body, and turns errors into ``{"error", "message", "hint"}`` bodies: a ``JitError``
from the service keeps its code (``not_found`` 404, ``not_pending`` 409, ``self_approval`` /
``not_approver`` 403, ``too_long`` 400, ``store_unavailable`` 503); a bad field is 400 with
``field`` naming it. The caller's token name is who asks, approves, denies or revokes.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from .auth import Identity
from .common import (REQUEST_STATES, InputError, estimate_exposure, is_jit_error,
                     jit_error_body, log, optional_text, parse_columns, parse_duration,
                     parse_max_uses, require_text, to_dict)
from .state import WebState, get_state

#: The CLI names itself with this header so approvals are recorded ``via="cli"``.
VIA_HEADER = "X-Pgveil-Client"

Handler = Callable[[web.Request, WebState, Identity, dict[str, Any]], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, headers={"Cache-Control": "no-store", **(headers or {})},
        content_type="application/json",
        text=json.dumps(data, default=str, ensure_ascii=False) + "\n")


def error_response(status: int, code: str, message: str, hint: str | None = None,
                   **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="pgveil"'} if status == 401 else None
    return json_response({"error": code, "message": message, "hint": hint, **extra},
                         status=status, headers=headers)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _endpoint(role: str, *, body: bool = False) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            state = get_state(request.app)
            who = state.authority.identify(bearer_token(request))
            if who is None:
                return error_response(401, "unauthorized", "a valid bearer token is required",
                                      "send 'Authorization: Bearer <token>' "
                                      "(the CLI reads PGVEIL_TOKEN)")
            if not who.allows(role):
                return error_response(403, "forbidden",
                                      f"token {who.name!r} has role {who.role!r}; "
                                      f"this needs {role!r}")
            data: dict[str, Any] = {}
            if body:
                raw = await request.read()
                if raw.strip():
                    try:
                        data = json.loads(raw)
                    except (ValueError, UnicodeDecodeError):
                        return error_response(400, "bad_request", "request body is not valid JSON")
                    if not isinstance(data, dict):
                        return error_response(400, "bad_request",
                                              "request body must be a JSON object")
            try:
                return await handler(request, state, who, data)
            except InputError as exc:
                return error_response(400, "bad_request", exc.message, field=exc.field)
            except Exception as exc:
                if is_jit_error(exc):
                    status, payload = jit_error_body(exc)
                    return json_response(payload, status=status)
                if isinstance(exc, (ValueError, TypeError)):
                    return error_response(400, "bad_request", str(exc))
                log.exception("admin API %s %s failed", request.method, request.path)
                return error_response(500, "internal", "internal error; see the pgveil log")
        return run
    return wrap


def _state_filter(request: web.Request) -> str | None:
    state = request.query.get("state") or None
    if state is not None and state not in REQUEST_STATES:
        raise InputError("state", f"expected one of {', '.join(REQUEST_STATES)}")
    return state


def find_request(state: WebState, request_id: str) -> dict[str, Any] | None:
    for r in state.service.requests():
        d = to_dict(r)
        if str(d.get("id")) == request_id:
            return d
    return None


def _scope(body: dict[str, Any]) -> tuple:
    """The fields a request and a direct grant share: who, why, and what for how long."""
    user = require_text(body, "user", max_len=200)
    reason = require_text(body, "reason")
    table = optional_text(body, "table", max_len=400)
    action = optional_text(body, "action", max_len=200)
    fingerprint = optional_text(body, "fingerprint", max_len=200)
    columns = parse_columns(body.get("columns"))
    if columns and not table:
        raise InputError("table", "missing field 'table' (columns name columns of a table)")
    if not table and not action:
        raise InputError("table", "missing field 'table' (or 'action')")
    return user, reason, table, action, fingerprint, columns, parse_duration(body.get("duration"))


@_endpoint("requester", body=True)
async def create_request(request: web.Request, state: WebState, who: Identity,
                         body: dict[str, Any]) -> web.StreamResponse:
    user, reason, table, action, fingerprint, columns, duration = _scope(body)
    req = await state.service.create_request(
        user=user, table=table, columns=columns, action=action, fingerprint=fingerprint,
        statement=None, duration=duration, reason=reason, requested_by=who.name)
    d = to_dict(req)
    return json_response(d, status=201, headers={"Location": f"/api/requests/{d.get('id')}"})


@_endpoint("requester")
async def list_requests(request: web.Request, state: WebState, who: Identity,
                        body: dict[str, Any]) -> web.StreamResponse:
    items = [to_dict(r) for r in state.service.requests(
        state=_state_filter(request), user=request.query.get("user") or None)]
    if not who.allows("approver"):  # a requester sees only what it asked for
        items = [r for r in items if r.get("requested_by") == who.name]
    if request.query.get("exposure") in ("1", "true", "yes"):
        for r in items:
            r["exposure"] = await estimate_exposure(state.exposure, r.get("table"))
    return json_response(items)


@_endpoint("requester")
async def get_request(request: web.Request, state: WebState, who: Identity,
                      body: dict[str, Any]) -> web.StreamResponse:
    d = find_request(state, request.match_info["id"])
    if d is None or (not who.allows("approver") and d.get("requested_by") != who.name):
        return error_response(404, "not_found", f"no request {request.match_info['id']}")
    d["exposure"] = await estimate_exposure(state.exposure, d.get("table"))
    return json_response(d)


@_endpoint("approver", body=True)
async def approve_request(request: web.Request, state: WebState, who: Identity,
                          body: dict[str, Any]) -> web.StreamResponse:
    max_uses = parse_max_uses(body.get("max_uses"))
    via = "cli" if request.headers.get(VIA_HEADER, "").lower() == "cli" else "api"
    req = await state.service.approve(request.match_info["id"], who.name, via=via,
                                      max_uses=max_uses)
    return json_response(to_dict(req))


@_endpoint("approver", body=True)
async def deny_request(request: web.Request, state: WebState, who: Identity,
                       body: dict[str, Any]) -> web.StreamResponse:
    reason = require_text(body, "reason")
    req = await state.service.deny(request.match_info["id"], who.name, reason)
    return json_response(to_dict(req))


@_endpoint("requester", body=True)
async def cancel_request(request: web.Request, state: WebState, who: Identity,
                         body: dict[str, Any]) -> web.StreamResponse:
    rid = request.match_info["id"]
    if not who.allows("approver"):
        d = find_request(state, rid)
        if d is None or d.get("requested_by") != who.name:
            return error_response(404, "not_found", f"no request {rid} of yours")
    req = await state.service.cancel(rid, who.name)
    return json_response(to_dict(req))


@_endpoint("approver")
async def list_grants(request: web.Request, state: WebState, who: Identity,
                      body: dict[str, Any]) -> web.StreamResponse:
    active_only = request.query.get("all", "") not in ("1", "true", "yes")
    items = state.service.grants(active_only=active_only, user=request.query.get("user") or None)
    return json_response([to_dict(g) for g in items])


@_endpoint("admin", body=True)
async def create_grant(request: web.Request, state: WebState, who: Identity,
                       body: dict[str, Any]) -> web.StreamResponse:
    user, reason, table, action, fingerprint, columns, duration = _scope(body)
    if duration is None:
        raise InputError("duration", "missing field 'duration'")
    max_uses = parse_max_uses(body.get("max_uses"))
    grant = await state.service.grant(
        user=user, table=table, columns=columns, action=action, fingerprint=fingerprint,
        duration=duration, reason=reason, granted_by=who.name, max_uses=max_uses)
    d = to_dict(grant)
    return json_response(d, status=201, headers={"Location": f"/api/grants/{d.get('id')}"})


@_endpoint("admin")
async def revoke_grant(request: web.Request, state: WebState, who: Identity,
                       body: dict[str, Any]) -> web.StreamResponse:
    grant = await state.service.revoke(request.match_info["id"], who.name)
    return json_response(to_dict(grant))


@_endpoint("approver")
async def list_uses(request: web.Request, state: WebState, who: Identity,
                    body: dict[str, Any]) -> web.StreamResponse:
    try:
        limit = max(1, min(int(request.query.get("limit", "50")), 1000))
    except ValueError:
        raise InputError("limit", "expected an integer") from None
    return json_response(list(state.service.recent_uses(limit=limit)))


def add_api_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/requests", create_request)
    r.add_get("/api/requests", list_requests)
    r.add_get("/api/requests/{id}", get_request)
    r.add_post("/api/requests/{id}/approve", approve_request)
    r.add_post("/api/requests/{id}/deny", deny_request)
    r.add_post("/api/requests/{id}/cancel", cancel_request)
    r.add_get("/api/grants", list_grants)
    r.add_post("/api/grants", create_grant)
    r.add_delete("/api/grants/{id}", revoke_grant)
    r.add_get("/api/uses", list_uses)

"""The approver page at ``/``: server-rendered HTML forms, no JavaScript.

Sign-in trades a token for a server-side session (random id in an HttpOnly, SameSite=Strict
cookie). Every POST form carries the session's CSRF token in a hidden field, checked in
constant time; the sign-in form, which has no session yet, uses a double-submit cookie
instead. A POST whose ``Origin`` (or, without one, ``Referer``) names another host is refused.
Each action redirects back to ``/`` (post/redirect/get) with a flash message; JitErrors such
as self-approval are shown there.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from . import render
from .auth import Session
from .common import (InputError, estimate_exposure, is_jit_error, jit_error_body, log,
                     parse_max_uses, to_dict)
from .state import get_state

SESSION_COOKIE = "pgveil_session"
LOGIN_COOKIE = "pgveil_login"
MAX_FORM_BYTES = 16 * 1024
_LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
#: The channel approvals from this page are recorded under. Not "console": to the JIT
#: service that is the psql console, whose approvers come from ``[jit] approvers``; here the
#: token's role has already been checked, as for the API.
PAGE_VIA = "api"


def _csp(nonce: str) -> str:
    return ("default-src 'none'; "
            f"style-src 'nonce-{nonce}'; img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")


def html_response(body: str, *, nonce: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": _csp(nonce),
                                 "X-Frame-Options": "DENY",
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin",
                                 "Cache-Control": "no-store"})


def _cookie_args(request: web.Request, max_age: int | None) -> dict[str, Any]:
    return {"httponly": True, "samesite": "Strict", "secure": request.secure, "path": "/",
            "max_age": max_age}


def _same_origin(request: web.Request) -> bool:
    """False when Origin (or, lacking it, Referer) names a different host than ours."""
    source = request.headers.get("Origin")
    if source is None:
        source = request.headers.get("Referer")
        if not source:
            return True
    if source == "null":
        return False
    try:
        netloc = urlsplit(source).netloc
    except ValueError:
        return False
    return netloc.lower() == (request.host or "").lower()


def _session(request: web.Request) -> Session | None:
    return get_state(request.app).sessions.get(request.cookies.get(SESSION_COOKIE))


def _forbidden(message: str) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    body = render.page("pgveil · forbidden",
                       f'<div class="flash error" role="alert">{render.e(message)}</div>'
                       '<p><a href="/">Back to the approver page</a></p>', nonce=nonce)
    return html_response(body, nonce=nonce, status=403)


async def _checked_form(request: web.Request) -> tuple[Session, Any] | web.Response:
    """The session and form of a POST, or the 403 to send back."""
    if not _same_origin(request):
        return _forbidden("Cross-site request refused.")
    session = _session(request)
    if session is None:
        return _forbidden("Your session has expired or you are signed out; sign in again.")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return _forbidden("Form too large.")
    form = await request.post()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        return _forbidden("Missing or wrong CSRF token; reload the page and try again.")
    return session, form


def _back() -> web.Response:
    """303 to the page (post/redirect/get)."""
    return web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store"})


async def index(request: web.Request) -> web.Response:
    state = get_state(request.app)
    session = _session(request)
    nonce = secrets.token_urlsafe(16)
    if session is None:
        return _login_page(request, nonce)
    flash_html = render.flashes(session.flashes)
    session.flashes.clear()
    svc = state.service
    pending_items = sorted((to_dict(r) for r in svc.requests(state="pending")),
                           key=lambda r: str(r.get("created_at") or ""))
    pending = [(r, await estimate_exposure(state.exposure, r.get("table")))
               for r in pending_items]
    grants = [to_dict(g) for g in svc.grants(active_only=True)]
    try:
        uses = list(svc.recent_uses(limit=50))
    except Exception:
        log.debug("recent_uses failed", exc_info=True)
        uses = []
    decided = [to_dict(r) for r in svc.requests()]
    decided = [r for r in decided if r.get("state") != "pending"]
    decided.sort(key=lambda r: str(r.get("decided_at") or r.get("created_at") or ""),
                 reverse=True)
    body = render.dashboard(pending=pending, grants=grants, uses=uses, decided=decided[:20],
                            csrf=session.csrf, can_revoke=session.identity.allows("admin"),
                            flash_html=flash_html, healthy=bool(getattr(svc, "healthy", True)))
    return html_response(render.page("pgveil · approvals", body, nonce=nonce,
                                     who=session.identity, csrf=session.csrf), nonce=nonce)


def _login_page(request: web.Request, nonce: str, *, error: str | None = None,
                status: int = 200) -> web.Response:
    # Reuse a pending sign-in token so two open sign-in tabs both work.
    login_csrf = request.cookies.get(LOGIN_COOKIE) or ""
    if not _LOGIN_TOKEN.fullmatch(login_csrf):
        login_csrf = secrets.token_urlsafe(32)
    resp = html_response(render.page("pgveil · sign in",
                                      render.login(login_csrf=login_csrf, error=error),
                                      nonce=nonce), nonce=nonce, status=status)
    resp.set_cookie(LOGIN_COOKIE, login_csrf, **_cookie_args(request, 1800))
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    state = get_state(request.app)
    nonce = secrets.token_urlsafe(16)
    if not _same_origin(request):
        return _forbidden("Cross-site request refused.")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return _forbidden("Form too large.")
    form = await request.post()
    sent, expected = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
    if (not isinstance(sent, str) or not expected
            or not hmac.compare_digest(sent.encode(), expected.encode())):
        return _forbidden("Missing or wrong CSRF token; reload the page and sign in again.")
    token = form.get("token")
    who = state.authority.identify(token.strip() if isinstance(token, str) else None)
    if who is None:
        return _login_page(request, nonce, error="Unknown token.", status=401)
    if not who.allows("approver"):
        return _login_page(request, nonce, status=403,
                           error=f"Token {who.name!r} has role {who.role!r}; "
                                 "the approver page needs an approver or admin token.")
    state.sessions.drop(request.cookies.get(SESSION_COOKIE))
    session = state.sessions.create(who)
    resp = _back()
    resp.set_cookie(SESSION_COOKIE, session.id,
                    **_cookie_args(request, int(state.sessions.max_seconds)))
    resp.del_cookie(LOGIN_COOKIE, path="/")
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    checked = await _checked_form(request)
    if isinstance(checked, web.Response):
        return checked
    session, _ = checked
    get_state(request.app).sessions.drop(session.id)
    resp = _back()
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


async def _act(session: Session, ok_text: str, coro: Any) -> None:
    try:
        await coro
    except InputError as exc:
        session.flashes.append(("error", exc.message))
    except Exception as exc:
        if is_jit_error(exc):
            _, payload = jit_error_body(exc)
            text = payload["message"] + (f" — {payload['hint']}" if payload.get("hint") else "")
            session.flashes.append(("error", text))
        elif isinstance(exc, (ValueError, TypeError)):
            session.flashes.append(("error", str(exc)))
        else:
            log.exception("approver page action failed")
            session.flashes.append(("error", "Internal error; see the pgveil log."))
    else:
        session.flashes.append(("ok", ok_text))


async def approve(request: web.Request) -> web.StreamResponse:
    checked = await _checked_form(request)
    if isinstance(checked, web.Response):
        return checked
    session, form = checked
    rid = request.match_info["id"]
    try:
        max_uses = parse_max_uses(form.get("max_uses"))
    except InputError as exc:
        session.flashes.append(("error", f"Request {rid}: {exc.message}"))
        return _back()
    svc = get_state(request.app).service
    await _act(session, f"Approved request {rid}.",
               svc.approve(rid, session.identity.name, via=PAGE_VIA, max_uses=max_uses))
    return _back()


async def deny(request: web.Request) -> web.StreamResponse:
    checked = await _checked_form(request)
    if isinstance(checked, web.Response):
        return checked
    session, form = checked
    rid = request.match_info["id"]
    reason = form.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        session.flashes.append(("error", f"Request {rid}: a reason is needed to deny it."))
        return _back()
    if len(reason) > 2000:
        session.flashes.append(("error", f"Request {rid}: the reason is too long."))
        return _back()
    svc = get_state(request.app).service
    await _act(session, f"Denied request {rid}.",
               svc.deny(rid, session.identity.name, reason.strip()))
    return _back()


async def revoke(request: web.Request) -> web.StreamResponse:
    checked = await _checked_form(request)
    if isinstance(checked, web.Response):
        return checked
    session, _ = checked
    gid = request.match_info["id"]
    if not session.identity.allows("admin"):
        session.flashes.append(("error", "Revoking a grant needs an admin token."))
        return _back()
    svc = get_state(request.app).service
    await _act(session, f"Revoked grant {gid}.", svc.revoke(gid, session.identity.name))
    return _back()


def add_page_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", index)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_post("/requests/{id}/approve", approve)
    r.add_post("/requests/{id}/deny", deny)
    r.add_post("/grants/{id}/revoke", revoke)

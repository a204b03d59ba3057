"""The approver page without a browser: sign-in, CSRF, Origin checks, escaping, actions."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import LiveServer


def _login_csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def sign_in(live: LiveServer, token: str = "alice-token") -> tuple[Any, str]:
    """An opener holding a session cookie, and the session's CSRF token."""
    op = live.opener()
    page = live.http("GET", "/", opener=op)
    assert page.status == 200 and 'id="token"' in page.text
    r = live.http("POST", "/login", form={"token": token, "csrf": _login_csrf(page.text)},
                  opener=op)
    assert r.status == 200, r.text
    assert 'id="whoami"' in r.text
    return op, _login_csrf(r.text)


def test_login_page_and_security_headers(live: LiveServer) -> None:
    r = live.http("GET", "/")
    assert r.status == 200
    assert "text/html" in r.headers["Content-Type"]
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "<script" not in r.text
    assert r.headers["X-Frame-Options"] == "DENY"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_session_cookie_attributes(live: LiveServer) -> None:
    op = live.opener(follow=False)
    page = live.http("GET", "/", opener=op)
    r = live.http("POST", "/login", form={"token": "alice-token",
                                          "csrf": _login_csrf(page.text)}, opener=op)
    assert r.status == 303
    cookies = r.headers.get_all("Set-Cookie")
    session = next(c for c in cookies if c.startswith("pgveil_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    sid = session.split(";")[0].split("=", 1)[1]
    assert len(sid) >= 40 and "alice" not in sid  # random, not the token or the name
    state = live.app[__import__("proxy.web", fromlist=["WEB_STATE"]).WEB_STATE]
    assert state.sessions.get(sid).identity.name == "alice"


@pytest.mark.parametrize("token,status,text", [
    ("wrong", 401, "Unknown token"),
    ("carol-token", 403, "needs an approver or admin token"),
])
def test_login_refused(live: LiveServer, token: str, status: int, text: str) -> None:
    op = live.opener()
    page = live.http("GET", "/", opener=op)
    r = live.http("POST", "/login", form={"token": token, "csrf": _login_csrf(page.text)},
                  opener=op)
    assert r.status == status and text in r.text
    assert 'id="whoami"' not in live.http("GET", "/", opener=op).text


def test_login_needs_csrf(live: LiveServer) -> None:
    op = live.opener()
    live.http("GET", "/", opener=op)
    assert live.http("POST", "/login", form={"token": "alice-token"}, opener=op).status == 403
    assert live.http("POST", "/login", form={"token": "alice-token", "csrf": "forged"},
                     opener=op).status == 403
    # a fresh client with no login cookie at all
    assert live.http("POST", "/login", form={"token": "alice-token", "csrf": "x"}).status == 403


def test_pending_request_is_shown_with_exposure(live: LiveServer) -> None:
    rid = live.pending(reason="ticket 123 <b>bold</b>")
    live.pending(user="erin", table=None, columns=(), action="truncate",
                 statement="TRUNCATE public.orders", reason="cleanup", duration=600)
    live.pending(user="frank", table="public.orders", columns=("total",), reason="audit")
    op, _ = sign_in(live)
    html = live.http("GET", "/", opener=op).text
    assert f'id="req-{rid}"' in html
    assert "public.customers" in html and "ssn, email" in html
    assert "≈ 12,345 rows" in html and "≈ 1 row<" in html
    assert "30 min" in html and "10 min" in html
    assert "truncate public . orders" in html.lower()
    assert "ticket 123 &lt;b&gt;bold&lt;/b&gt;" in html


def test_xss_is_escaped_everywhere(live: LiveServer) -> None:
    evil = '<script>alert("x")</script>'
    rid = live.pending(user=evil, reason=evil, requested_by=evil, table=f"public.{evil}",
                       columns=(evil,))
    live.pending(user=evil, reason=evil, requested_by=evil, table=None, columns=(),
                 action=evil, statement=f"DELETE FROM {evil}")
    g = live.call(live.service.grant(user=evil, table=f"public.{evil}", columns=(evil,),
                                     duration=60, reason=evil, granted_by="bob"))
    live.service.use(g.to_dict()["id"])
    op, csrf = sign_in(live, "bob-token")
    html = live.http("GET", "/", opener=op).text
    assert "<script" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    # and in a flash message built from a JitError carrying attacker text
    live.http("POST", f"/requests/{rid}/deny", form={"csrf": csrf, "reason": evil}, opener=op)
    html = live.http("GET", "/", opener=op).text
    assert "<script" not in html


@pytest.mark.parametrize("path", ["/requests/{rid}/approve", "/requests/{rid}/deny",
                                  "/grants/{gid}/revoke", "/logout"])
def test_csrf_rejected(live: LiveServer, path: str) -> None:
    rid = live.pending()
    gid = live.call(live.service.grant(user="dave", table="public.customers", columns=("ssn",),
                                       duration=60, reason="x", granted_by="bob")).id
    op, csrf = sign_in(live, "bob-token")
    url = path.format(rid=rid, gid=gid)
    for form in ({"reason": "x"}, {"reason": "x", "csrf": "wrong"}, {"reason": "x", "csrf": ""}):
        r = live.http("POST", url, form=form, opener=op)
        assert r.status == 403, (form, r.status)
        assert "CSRF" in r.text
    # nothing happened
    assert live.service.changes("approve", "deny", "revoke") == []
    assert 'id="whoami"' in live.http("GET", "/", opener=op).text
    # another session's token does not work either
    _, other_csrf = sign_in(live, "alice-token")
    assert live.http("POST", url, form={"csrf": other_csrf, "reason": "x"},
                     opener=op).status == 403


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Referer": "http://evil.example/page"},
])
def test_cross_origin_rejected(live: LiveServer, headers: dict[str, str]) -> None:
    rid = live.pending()
    op, csrf = sign_in(live)
    r = live.http("POST", f"/requests/{rid}/approve", form={"csrf": csrf}, headers=headers,
                  opener=op)
    assert r.status == 403 and "Cross-site" in r.text
    assert live.service.requests(state="pending")


def test_same_origin_header_accepted(live: LiveServer) -> None:
    rid = live.pending()
    op, csrf = sign_in(live)
    r = live.http("POST", f"/requests/{rid}/approve", form={"csrf": csrf},
                  headers={"Origin": live.url}, opener=op)
    assert r.status == 200 and f"Approved request {rid}" in r.text


def test_post_without_session(live: LiveServer) -> None:
    rid = live.pending()
    r = live.http("POST", f"/requests/{rid}/approve", form={"csrf": "x"})
    assert r.status == 403 and "sign in again" in r.text


def test_approve_deny_revoke_flow(live: LiveServer) -> None:
    a, b = live.pending(), live.pending(user="erin", reason="debugging")
    op, csrf = sign_in(live, "bob-token")
    r = live.http("POST", f"/requests/{a}/approve", form={"csrf": csrf, "max_uses": "2"},
                  opener=op)
    assert f"Approved request {a}" in r.text
    assert live.service.changes("approve")[-1] == ("approve", (a, "bob"),
                                                   {"via": "api", "max_uses": 2})
    gid = live.service.requests(state="approved")[0].grant_id
    assert f'id="grant-{gid}"' in r.text and "0 / 2" in r.text
    # flash shows once
    assert "Approved request" not in live.http("GET", "/", opener=op).text
    r = live.http("POST", f"/requests/{b}/deny", form={"csrf": csrf, "reason": "use staging"},
                  opener=op)
    assert f"Denied request {b}" in r.text and "use staging" in r.text
    r = live.http("POST", f"/grants/{gid}/revoke", form={"csrf": csrf}, opener=op)
    assert f"Revoked grant {gid}" in r.text and 'id="no-grants"' in r.text


def test_errors_are_flashed(live: LiveServer) -> None:
    own = live.pending(requested_by="alice")
    other = live.pending()
    op, csrf = sign_in(live)
    r = live.http("POST", f"/requests/{own}/approve", form={"csrf": csrf}, opener=op)
    assert "cannot approve their own request" in r.text
    assert "ask another approver" in r.text.lower()
    assert 'class="flash error"' in r.text
    r = live.http("POST", f"/requests/{other}/deny", form={"csrf": csrf, "reason": " "},
                  opener=op)
    assert "a reason is needed" in r.text
    r = live.http("POST", f"/requests/{other}/approve", form={"csrf": csrf, "max_uses": "0"},
                  opener=op)
    assert "max_uses" in r.text
    live.call(live.service.deny(other, "bob", "no"))
    r = live.http("POST", f"/requests/{other}/approve", form={"csrf": csrf}, opener=op)
    assert "denied" in r.text and 'class="flash error"' in r.text


def test_approver_cannot_revoke(live: LiveServer) -> None:
    gid = live.call(live.service.grant(user="dave", table="public.customers", columns=("ssn",),
                                       duration=60, reason="x", granted_by="bob")).id
    op, csrf = sign_in(live)  # alice is an approver
    html = live.http("GET", "/", opener=op).text
    assert f'id="grant-{gid}"' in html and 'class="revoke"' not in html
    r = live.http("POST", f"/grants/{gid}/revoke", form={"csrf": csrf}, opener=op)
    assert "needs an admin token" in r.text
    assert live.service.grants()


def test_logout(live: LiveServer) -> None:
    op, csrf = sign_in(live)
    r = live.http("POST", "/logout", form={"csrf": csrf}, opener=op)
    assert r.status == 200 and 'id="token"' in r.text
    rid = live.pending()
    assert live.http("POST", f"/requests/{rid}/approve", form={"csrf": csrf},
                     opener=op).status == 403


def test_sessions_expire() -> None:
    from proxy.web.auth import Identity, SessionStore
    now = [1000.0]
    store = SessionStore(idle_seconds=60, max_seconds=300, clock=lambda: now[0])
    s = store.create(Identity("alice", "approver"))
    now[0] += 59
    assert store.get(s.id) is s
    now[0] += 59
    assert store.get(s.id) is s  # activity keeps it alive
    now[0] += 61
    assert store.get(s.id) is None
    s = store.create(Identity("alice", "approver"))
    for _ in range(6):
        now[0] += 55
        store.get(s.id)
    assert store.get(s.id) is None  # absolute limit


def test_store_outage_banner(live: LiveServer) -> None:
    op, _ = sign_in(live)
    live.service.set_healthy(False)
    assert "state store is unavailable" in live.http("GET", "/", opener=op).text

"""The admin JSON API: the auth matrix, each endpoint, JitError mapping, input errors."""

from __future__ import annotations

import pytest

from .conftest import LiveServer

ALICE, BOB, CAROL = "alice-token", "bob-token", "carol-token"

# (method, path template, body, the weakest role allowed)
ENDPOINTS = [
    ("GET", "/api/requests", None, "approver*"),
    ("POST", "/api/requests", {"user": "dave", "table": "public.customers",
                               "columns": ["ssn"], "duration": "10 minutes",
                               "reason": "ticket 1"}, "requester"),
    ("POST", "/api/requests/{rid}/approve", {}, "approver"),
    ("POST", "/api/requests/{rid}/deny", {"reason": "no"}, "approver"),
    ("GET", "/api/grants", None, "approver"),
    ("POST", "/api/grants", {"user": "dave", "table": "public.customers", "columns": ["ssn"],
                             "duration": 600, "reason": "incident"}, "admin"),
    ("DELETE", "/api/grants/{gid}", None, "admin"),
    ("GET", "/api/uses", None, "approver"),
]
RANK = {"requester": 0, "approver": 1, "admin": 2}
WHO = {"carol": (CAROL, "requester"), "alice": (ALICE, "approver"), "bob": (BOB, "admin")}


def _grant(live: LiveServer) -> str:
    g = live.call(live.service.grant(user="dave", table="public.customers", columns=("ssn",),
                                     duration=600, reason="x", granted_by="bob"))
    return g.to_dict()["id"]


@pytest.mark.parametrize("method,path,body,role", ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_auth_matrix(live: LiveServer, method: str, path: str, body, role: str) -> None:
    # no token, a wrong token, a malformed header: 401 with a Bearer challenge
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic Ym9iOng="}):
        rid, gid = live.pending(), _grant(live)
        r = live.http(method, path.format(rid=rid, gid=gid), json_body=body, headers=headers)
        assert r.status == 401, (headers, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json["error"] == "unauthorized"
    for name, (token, token_role) in WHO.items():
        rid, gid = live.pending(), _grant(live)
        r = live.http(method, path.format(rid=rid, gid=gid), token=token, json_body=body)
        needed = role.rstrip("*")
        if role.endswith("*") and token_role == "requester":
            assert r.status == 200, (name, r.text)  # a requester sees only its own
        elif RANK[token_role] >= RANK[needed]:
            assert r.status in (200, 201), (name, r.status, r.text)
        else:
            assert r.status == 403, (name, r.status, r.text)
            assert r.json["error"] == "forbidden"


def test_create_request_uses_token_name(live: LiveServer) -> None:
    r = live.http("POST", "/api/requests", token=CAROL, json_body={
        "user": "dave", "table": "public.customers", "columns": "ssn, email",
        "duration": "30 minutes", "reason": "ticket 123"})
    assert r.status == 201
    d = r.json
    assert d["state"] == "pending" and d["id"]
    assert r.headers["Location"] == f"/api/requests/{d['id']}"
    assert d["requested_by"] == "carol"
    assert d["columns"] == ["ssn", "email"]
    assert d["duration_s"] == 1800


def test_create_action_request(live: LiveServer) -> None:
    r = live.http("POST", "/api/requests", token=ALICE, json_body={
        "user": "dave", "action": "truncate", "reason": "cleanup", "duration": 300})
    assert r.status == 201
    assert r.json["action"] == "truncate" and r.json["table"] is None


@pytest.mark.parametrize("body,field", [
    ({"table": "t", "reason": "r"}, "user"),
    ({"user": "u", "table": "t"}, "reason"),
    ({"user": "u", "reason": "r"}, "table"),
    ({"user": "u", "columns": ["a"], "reason": "r"}, "table"),
    ({"user": "u", "table": "t", "columns": 5, "reason": "r"}, "columns"),
    ({"user": "u", "table": "t", "reason": "r", "duration": -5}, "duration"),
    ({"user": 7, "table": "t", "reason": "r"}, "user"),
])
def test_create_request_missing_fields(live: LiveServer, body, field: str) -> None:
    r = live.http("POST", "/api/requests", token=ALICE, json_body=body)
    assert r.status == 400, r.text
    assert r.json["error"] == "bad_request"
    assert r.json["field"] == field
    assert field in r.json["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_bad_json(live: LiveServer, raw: bytes) -> None:
    r = live.http("POST", "/api/requests", token=ALICE, raw=raw,
                  headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert "JSON" in r.json["message"]


def test_list_requests_filters(live: LiveServer) -> None:
    a = live.pending(user="dave")
    b = live.pending(user="erin")
    live.call(live.service.deny(b, "alice", "no"))
    r = live.http("GET", "/api/requests?state=pending", token=ALICE)
    assert [x["id"] for x in r.json] == [a]
    r = live.http("GET", "/api/requests?user=erin", token=ALICE)
    assert [x["id"] for x in r.json] == [b]
    assert live.http("GET", "/api/requests", token=ALICE).json.__len__() == 2
    r = live.http("GET", "/api/requests?state=bogus", token=ALICE)
    assert r.status == 400 and r.json["field"] == "state"
    r = live.http("GET", "/api/requests?exposure=1", token=ALICE)
    assert {x["exposure"] for x in r.json} == {12345}


def test_requester_sees_only_own_requests(live: LiveServer) -> None:
    live.pending(requested_by="dave")
    mine = live.http("POST", "/api/requests", token=CAROL, json_body={
        "user": "carol", "table": "public.orders", "columns": "total",
        "reason": "r"}).json["id"]
    r = live.http("GET", "/api/requests", token=CAROL)
    assert [x["id"] for x in r.json] == [mine]
    assert live.http("GET", f"/api/requests/{mine}", token=CAROL).status == 200
    other = live.pending()
    assert live.http("GET", f"/api/requests/{other}", token=CAROL).status == 404
    assert live.http("POST", f"/api/requests/{other}/cancel", token=CAROL).status == 404
    r = live.http("POST", f"/api/requests/{mine}/cancel", token=CAROL)
    assert r.status == 200 and r.json["state"] == "cancelled"


def test_get_request_with_exposure(live: LiveServer) -> None:
    rid = live.pending()
    r = live.http("GET", f"/api/requests/{rid}", token=ALICE)
    assert r.status == 200
    assert r.json["exposure"] == 12345
    assert live.http("GET", "/api/requests/nope", token=ALICE).status == 404


def test_approve_and_grants(live: LiveServer) -> None:
    rid = live.pending()
    r = live.http("POST", f"/api/requests/{rid}/approve", token=ALICE, json_body={"max_uses": 3})
    assert r.status == 200, r.text
    assert r.json["state"] == "approved" and r.json["decided_by"] == "alice"
    assert live.service.changes("approve")[-1] == (
        "approve", (rid, "alice"), {"via": "api", "max_uses": 3})
    grants = live.http("GET", "/api/grants", token=ALICE).json
    assert len(grants) == 1
    g = grants[0]
    assert g["id"] == r.json["grant_id"] and g["user"] == "dave" and g["max_uses"] == 3
    r = live.http("DELETE", f"/api/grants/{g['id']}", token=BOB)
    assert r.status == 200 and r.json["revoked_at"]
    assert live.http("GET", "/api/grants", token=ALICE).json == []
    assert len(live.http("GET", "/api/grants?all=1", token=ALICE).json) == 1


def test_approve_without_body(live: LiveServer) -> None:
    rid = live.pending()
    r = live.http("POST", f"/api/requests/{rid}/approve", token=ALICE)
    assert r.status == 200
    assert live.service.changes("approve")[-1][2]["max_uses"] is None


@pytest.mark.parametrize("max_uses", [0, -1, "x", 1.5, True])
def test_approve_bad_max_uses(live: LiveServer, max_uses) -> None:
    rid = live.pending()
    r = live.http("POST", f"/api/requests/{rid}/approve", token=ALICE,
                  json_body={"max_uses": max_uses})
    assert r.status == 400 and r.json["field"] == "max_uses"


def test_deny(live: LiveServer) -> None:
    rid = live.pending()
    r = live.http("POST", f"/api/requests/{rid}/deny", token=ALICE, json_body={})
    assert r.status == 400 and r.json["field"] == "reason"
    r = live.http("POST", f"/api/requests/{rid}/deny", token=ALICE,
                  json_body={"reason": "not needed"})
    assert r.status == 200
    assert r.json["state"] == "denied" and r.json["deny_reason"] == "not needed"


def test_admin_grant(live: LiveServer) -> None:
    r = live.http("POST", "/api/grants", token=BOB, json_body={
        "user": "dave", "table": "public.customers", "columns": ["ssn"], "duration": "1 hours",
        "reason": "incident 9", "max_uses": 5})
    assert r.status == 201, r.text
    assert r.json["user"] == "dave" and r.json["approved_by"] == "bob"
    assert r.json["max_uses"] == 5
    r = live.http("POST", "/api/grants", token=BOB, json_body={
        "user": "dave", "table": "public.customers", "reason": "x"})
    assert r.status == 400 and r.json["field"] == "duration"


@pytest.mark.parametrize("setup,call,status,code", [
    ("none", ("POST", "/api/requests/r999/approve", {}), 404, "not_found"),
    ("decided", ("POST", "/api/requests/{rid}/approve", {}), 409, "not_pending"),
    ("decided", ("POST", "/api/requests/{rid}/deny", {"reason": "x"}), 409, "not_pending"),
    ("self", ("POST", "/api/requests/{rid}/approve", {}), 403, "self_approval"),
    ("none", ("POST", "/api/requests", {"user": "u", "table": "public.t", "columns": ["a"],
                                        "reason": "r", "duration": "2 days"}), 400, "too_long"),
    ("none", ("POST", "/api/requests", {"user": "u", "table": "public.t", "columns": ["a"],
                                        "reason": "r", "duration": "a fortnight"}), 400,
     "bad_duration"),
    ("none", ("POST", "/api/requests", {"user": "u", "table": "unqualified", "columns": ["a"],
                                        "reason": "r"}), 400, "bad_request"),
    ("revoked", ("DELETE", "/api/grants/{gid}", None), 409, "not_active"),
    ("down", ("POST", "/api/requests/{rid}/approve", {}), 503, "store_unavailable"),
    ("none", ("DELETE", "/api/grants/g999", None), 404, "not_found"),
])
def test_jit_error_mapping(live: LiveServer, setup: str, call, status: int, code: str) -> None:
    rid = live.pending(requested_by="alice" if setup == "self" else "dave")
    gid = ""
    if setup == "revoked":
        gid = _grant(live)
        live.call(live.service.revoke(gid, "bob"))
    if setup == "decided":
        live.call(live.service.deny(rid, "bob", "no"))
    if setup == "down":
        live.service.set_healthy(False)
    method, path, body = call
    token = BOB if method == "DELETE" else ALICE
    r = live.http(method, path.format(rid=rid, gid=gid), token=token, json_body=body)
    assert r.status == status, r.text
    assert r.json["error"] == code
    assert r.json["message"]
    assert "hint" in r.json


def test_internal_errors_do_not_leak(live: LiveServer, monkeypatch) -> None:
    async def boom(*a, **k):
        raise RuntimeError("secret detail")
    monkeypatch.setattr(live.service.inner, "approve", boom)
    rid = live.pending()
    r = live.http("POST", f"/api/requests/{rid}/approve", token=ALICE)
    assert r.status == 500
    assert "secret" not in r.text


def test_uses(live: LiveServer) -> None:
    g = live.call(live.service.grant(user="dave", table="public.customers", columns=("ssn",),
                                     duration=600, reason="x", granted_by="bob"))
    live.service.use(g.to_dict()["id"])
    r = live.http("GET", "/api/uses?limit=10", token=ALICE)
    assert r.status == 200 and r.json[0]["grant_id"] == g.to_dict()["id"]
    assert live.http("GET", "/api/uses?limit=x", token=ALICE).status == 400

"""Signed webhooks from a real pgveil process to a receiver in the test.

The receiver is ``http.server`` on 127.0.0.1 (a free port, a thread; shut down at the end of
the module). Each delivery is checked against ``X-Pgveil-Signature: sha256=<HMAC-SHA256 of
the exact body>`` computed here with the configured secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from helpers import wait_until
from jit_e2e_fixtures import jit_db, schema_path, start_proxy, tokens, watch  # noqa: F401 (fixtures)
from jit_e2e_helpers import (
    ANALYST, MASKED_SSN, SSN_1, Api, JitProxy, Tokens, console_request, jit_toml, policy_toml,
    ssn_of,
)

SECRET = secrets.token_hex(16)


class Receiver:
    """Every POST it got, as (headers, body bytes), in arrival order."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()},
                                                body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self, kind: str | None = None, **match: object) -> list[tuple[dict, dict]]:
        with self.lock:
            got = list(self.deliveries)
        out = []
        for headers, body in got:
            doc = json.loads(body)
            if kind is not None and doc.get("event") != kind:
                continue
            if any(doc.get("data", {}).get(k) != v for k, v in match.items()):
                continue
            out.append((headers, doc))
        return out

    def signed_correctly(self) -> list[bool]:
        with self.lock:
            got = list(self.deliveries)
        return [h.get("x-pgveil-signature") == "sha256=" + hmac.new(
            SECRET.encode(), body, hashlib.sha256).hexdigest() for h, body in got]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        r.thread.join(5)


# Both variants matter: grant uses were once counted only by the audit tracker, so without
# [audit] no grant.used was sent and max_uses was never enforced.
@pytest.fixture(scope="module")
def proxies(pg, jit_db, tokens: Tokens, receiver: Receiver, start_proxy,
            tmp_path_factory) -> dict[str, JitProxy]:
    """Two proxies posting to the same receiver: without [audit] (as configured by default)
    and with it."""
    out = {}
    for variant in ("no-audit", "audit"):
        work = tmp_path_factory.mktemp(f"jit-hooks-{variant}")
        extra = [
            tokens.toml(), policy_toml(sorted({"postgres", pg.superuser})),
            jit_toml(state_url=f"sqlite:///{work / 'state.db'}"),
            "[[webhooks]]", f'url = "{receiver.url}"', f'secret = "{SECRET}"', "backoff = 0.1", "",
        ]
        if variant == "audit":
            extra += ["[audit]", f'path = "{work / "audit.jsonl"}"',
                      f'key_file = "{work / "audit.key"}"', ""]
        proxy = start_proxy(f"pgveil-hooks-{variant}", "\n".join(extra))
        proxy.state_path = work / "state.db"  # type: ignore[attr-defined]
        out[variant] = proxy
    return out


VARIANTS = ["no-audit", "audit"]


MAX_USES_VARIANTS = VARIANTS


def _stored_uses(state: Path, grant_id: str) -> int:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT uses FROM grants WHERE id = ?", (grant_id,)).fetchone()
    return -1 if row is None else int(row[0])


def _approved_grant(proxy: JitProxy, tokens: Tokens, receiver: Receiver, reason: str) -> str:
    rid, _ = console_request(proxy, ANALYST, "public.customers", "ssn", "10 minutes", reason)
    created = wait_until(lambda: receiver.events("request.created", id=rid), timeout=10,
                         message="request.created webhook")
    headers, doc = created[0]
    assert headers["x-pgveil-event"] == "request.created" and headers["x-pgveil-delivery"]
    assert headers["x-pgveil-signature"].startswith("sha256=")
    assert doc["event"] == "request.created" and doc["id"] == headers["x-pgveil-delivery"]
    assert doc["data"]["user"] == ANALYST and doc["data"]["reason"] == reason
    assert doc["data"]["state"] == "pending"

    approved = Api(proxy.admin_url, tokens.approver).approve(rid)
    gid = approved["grant_id"]
    got = wait_until(lambda: receiver.events("request.approved", id=rid), timeout=10,
                     message="request.approved webhook")
    assert got[0][1]["data"]["decided_by"] == "boss" and got[0][1]["data"]["grant_id"] == gid
    assert len(receiver.events("request.created", id=rid)) == 1
    return gid


def _assert_all_signed(receiver: Receiver) -> None:
    ok = receiver.signed_correctly()
    assert ok and all(ok), f"bad signatures on {ok.count(False)} of {len(ok)} deliveries"
    with receiver.lock:  # the data carries no values: the real ssn never goes out
        assert not any(SSN_1.encode() in body for _, body in receiver.deliveries)


def test_request_events_are_signed(proxies, tokens, receiver, watch):
    proxy = watch(proxies["no-audit"])
    gid = _approved_grant(proxy, tokens, receiver, "INC-8 webhook")
    Api(proxy.admin_url, tokens.admin).revoke(gid)
    wait_until(lambda: receiver.events("grant.revoked", id=gid), timeout=10,
               message="grant.revoked webhook")
    _assert_all_signed(receiver)


@pytest.mark.parametrize("variant", VARIANTS)
def test_grant_used_is_sent_once_after_the_first_use(proxies, variant, jit_db, tokens, receiver,
                                                      watch):
    proxy = watch(proxies[variant])
    gid = _approved_grant(proxy, tokens, receiver, f"INC-8 first use ({variant})")
    assert not receiver.events("grant.used", id=gid), "grant.used before any statement used it"

    with psycopg.connect(proxy.dsn(jit_db, ANALYST), autocommit=True) as conn:
        try:
            assert ssn_of(conn) == SSN_1
            used = wait_until(lambda: receiver.events("grant.used", id=gid), timeout=5,
                              message="grant.used webhook after the first use")
            assert used[0][1]["data"]["user"] == ANALYST
            for cid in (2, 3, 4, 5):
                assert ssn_of(conn, cid) != MASKED_SSN
            # every use is persisted (the emitter of grant.used has seen them all) ...
            wait_until(lambda: _stored_uses(proxy.state_path, gid) == 5, timeout=10,
                       message="5 uses persisted in the state store")
        finally:
            # ... then one more event as a fence: once it arrived, nothing queued before it
            # is still due
            Api(proxy.admin_url, tokens.admin).revoke(gid)
            wait_until(lambda: receiver.events("grant.revoked", id=gid), timeout=10,
                       message="grant.revoked webhook")
        assert ssn_of(conn) == MASKED_SSN

    assert len(receiver.events("grant.used", id=gid)) == 1, "grant.used must be sent once"
    _assert_all_signed(receiver)


@pytest.mark.parametrize("variant", MAX_USES_VARIANTS)
def test_max_uses_is_enforced(proxies, variant, jit_db, tokens, watch):
    proxy = watch(proxies[variant])
    admin = Api(proxy.admin_url, tokens.admin)
    g = admin.call("POST", "/api/grants", {
        "user": ANALYST, "table": "public.customers", "columns": ["ssn"], "duration": 600,
        "reason": f"two looks ({variant})", "max_uses": 2})
    try:
        seen: list[str] = []
        with psycopg.connect(proxy.dsn(jit_db, ANALYST), autocommit=True) as conn:
            for _ in range(4):
                try:
                    seen.append(ssn_of(conn))
                except psycopg.errors.InsufficientPrivilege as exc:
                    seen.append(f"error: {exc.diag.message_primary}")
        assert seen == [SSN_1, SSN_1, MASKED_SSN, MASKED_SSN], seen
        assert g["id"] not in [x["id"] for x in admin.grants()]
    finally:
        if g["id"] in [x["id"] for x in admin.grants()]:
            admin.revoke(g["id"])

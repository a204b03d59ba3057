"""Two pgveil instances sharing one PostgreSQL state store (LISTEN/NOTIFY between them).

Both instances front the same data database; their JIT state lives in a dedicated database
on the same server. A grant approved on instance A must lift the mask in a session on
instance B within a second, and a revocation on B must mask A's open session again within a
second. Latencies are measured from the moment the admin API call returned, and printed.
"""

from __future__ import annotations

import time
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from helpers import unique_name
from jit_e2e_fixtures import jit_db, schema_path, start_proxy, tokens, watch  # noqa: F401 (fixtures)
from jit_e2e_helpers import (
    ANALYST, MASKED_SSN, SSN_1, Api, JitProxy, Tokens, console_request, jit_toml, policy_toml,
    ssn_of,
)

PROPAGATION_DEADLINE = 1.0


@pytest.fixture(scope="module")
def state_db(pg) -> Iterator[str]:
    name = unique_name("jitstate")
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string(None))
    try:
        yield name
    finally:
        pg.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)).as_string(None))


@pytest.fixture(scope="module")
def pair(pg, jit_db, state_db, tokens: Tokens, start_proxy) -> tuple[JitProxy, JitProxy]:
    url = f"postgresql://{pg.superuser}@{pg.host}:{pg.port}/{state_db}"
    extra = "\n".join([tokens.toml(), policy_toml(sorted({"postgres", pg.superuser})),
                       jit_toml(state_url=url)])
    return start_proxy("pgveil-a", extra), start_proxy("pgveil-b", extra)


def _until(predicate, deadline: float, interval: float = 0.005) -> float | None:
    """Poll until ``predicate()``; the monotonic time it first held, or None past ``deadline``."""
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def test_grant_on_a_is_seen_on_b_and_revoke_on_b_is_seen_on_a(pair, jit_db, state_db, tokens, pg,
                                                             watch):
    a, b = (watch(p) for p in pair)
    assert a.alive and b.alive

    with psycopg.connect(a.dsn(jit_db, ANALYST), autocommit=True) as on_a, \
            psycopg.connect(b.dsn(jit_db, ANALYST), autocommit=True) as on_b:
        assert ssn_of(on_a) == MASKED_SSN and ssn_of(on_b) == MASKED_SSN

        rid, state = console_request(a, ANALYST, "public.customers", "ssn", "10 minutes",
                                     "INC-7 cluster")
        assert state == "pending"
        api_a, api_b = Api(a.admin_url, tokens.approver), Api(b.admin_url, tokens.admin)
        # B learnt of the request made on A (it can list it)
        seen = _until(lambda: any(r["id"] == rid for r in api_b.requests(state="pending")),
                      time.monotonic() + PROPAGATION_DEADLINE)
        assert seen is not None, "instance B never saw the pending request created on A"

        approved = api_a.approve(rid)
        t0 = time.monotonic()
        assert ssn_of(on_a) == SSN_1  # the approving instance: at once
        t_b = _until(lambda: ssn_of(on_b) == SSN_1, t0 + PROPAGATION_DEADLINE)
        assert t_b is not None, f"B's session did not see the grant within {PROPAGATION_DEADLINE}s"
        grant_latency = t_b - t0

        api_b.revoke(approved["grant_id"])
        t1 = time.monotonic()
        assert ssn_of(on_b) == MASKED_SSN  # the revoking instance: at once
        t_a = _until(lambda: ssn_of(on_a) == MASKED_SSN, t1 + PROPAGATION_DEADLINE)
        assert t_a is not None, f"A's session was not masked again within {PROPAGATION_DEADLINE}s"
        revoke_latency = t_a - t1
        assert ssn_of(on_a) == MASKED_SSN and ssn_of(on_b) == MASKED_SSN

    # the grant and its revocation are rows of the shared store, written once
    rows = pg.execute("SELECT revoked_by FROM pgveil.grants WHERE id = %s",
                      [approved["grant_id"]], dbname=state_db)
    assert rows == [("secadmin",)], rows
    print(f"\ncross-instance propagation: grant A→B {grant_latency * 1000:.0f} ms, "
          f"revoke B→A {revoke_latency * 1000:.0f} ms")

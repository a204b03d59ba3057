"""Grants end mid-session: prepared statements are prepared again masked, portals close."""

from __future__ import annotations

import hashlib
import json
import secrets
import urllib.request

import psycopg
import pytest

from helpers import ProxyProcess, unique_name

TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def shop(pg):
    db = unique_name("grants")
    pg.execute(f"CREATE DATABASE {db}")
    pg.execute("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gl_user') "
               "THEN CREATE ROLE gl_user LOGIN; END IF; END$$")
    with psycopg.connect(pg.dsn(db), autocommit=True) as c:
        c.execute("CREATE TABLE people (id int PRIMARY KEY, name text, ssn text, secret text)")
        c.execute("INSERT INTO people SELECT g, 'n' || g, 'ssn-' || g, 'sec-' || g "
                  "FROM generate_series(1, 50) g")
        c.execute("GRANT SELECT ON people TO gl_user")
    yield db
    pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture(scope="module")
def proxy(pg, shop, tmp_path_factory):
    work = tmp_path_factory.mktemp("grant-lifecycle")
    extra = f"""
[[admin.tokens]]
name = "root"
token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
role = "admin"

[policy]
exempt_users = ["{pg.superuser}"]

[[policy.mask]]
table = "public.people"
column = "ssn"
mask = "redact"

[[policy.mask]]
table = "public.people"
column = "secret"
mask = "strip"

[jit]
approvers = ["root"]

[state]
url = "sqlite:///{work}/state.db"
"""
    p = ProxyProcess(workdir=work, upstream_host=pg.host, upstream_port=pg.port,
                     extra_config=extra, name="grant-lifecycle").start()
    yield p
    p.kill()


def api(proxy, method, path, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{proxy.admin_port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def grant(proxy, columns):
    return api(proxy, "POST", "/api/grants", {"user": "gl_user", "table": "public.people",
                                               "columns": columns, "duration": "10 minutes",
                                               "reason": "test"})["id"]


def test_prepared_statement_is_prepared_again_masked_when_the_grant_ends(proxy, shop):
    with psycopg.connect(proxy.dsn(shop, "gl_user"), autocommit=True) as conn:
        q = "SELECT ssn FROM people WHERE id = %s"
        assert conn.execute(q, [1], prepare=True).fetchone() == ("REDACTED",)
        gid = grant(proxy, ["ssn"])
        conn.execute(q, [1], prepare=True)  # a new statement text? no: same text, re-decided
        with conn.cursor() as cur:
            cur.execute("SELECT ssn FROM people WHERE id = %s AND true", [2], prepare=True)
            assert cur.fetchone() == ("ssn-2",)
            for i in range(3, 6):  # reuse the prepared statement while the grant is live
                cur.execute("SELECT ssn FROM people WHERE id = %s AND true", [i], prepare=True)
                assert cur.fetchone() == (f"ssn-{i}",)
            api(proxy, "DELETE", f"/api/grants/{gid}")
            for i in range(6, 9):  # same client statement name, now masked
                cur.execute("SELECT ssn FROM people WHERE id = %s AND true", [i], prepare=True)
                assert cur.fetchone() == ("REDACTED",)
        # it really was prepared again upstream, under a new name, and the old one is gone
        names = [r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements")]
        assert any("#pgveil2" in n for n in names), names
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stripped_column_changes_shape_and_fails_like_postgres(proxy, shop):
    with psycopg.connect(proxy.dsn(shop, "gl_user"), autocommit=True) as conn:
        gid = grant(proxy, ["secret"])
        q = "SELECT id, secret FROM people WHERE id = %s"
        with conn.cursor() as cur:
            cur.execute(q, [1], prepare=True)
            assert cur.fetchone() == (1, "sec-1")
            api(proxy, "DELETE", f"/api/grants/{gid}")
            with pytest.raises(psycopg.errors.FeatureNotSupported,
                               match="cached plan must not change result type"):
                cur.execute(q, [2], prepare=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sql_cursor_under_a_grant_is_refused(proxy, shop):
    with psycopg.connect(proxy.dsn(shop, "gl_user")) as conn:  # a transaction: named cursor
        gid = grant(proxy, ["ssn"])
        with conn.cursor(name=unique_name("cur")) as cur:  # server-side: DECLARE
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                # DECLARE of a grant-unmasked query would outlive the grant
                cur.execute("SELECT ssn FROM people ORDER BY id")
                cur.fetchmany(5)
        conn.rollback()
        api(proxy, "DELETE", f"/api/grants/{gid}")


def test_protocol_portal_opened_under_a_grant_is_closed_when_it_ends(proxy, shop):
    asyncpg = pytest.importorskip("asyncpg")
    import asyncio

    async def run():
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user="gl_user",
                                     database=shop, ssl=False)
        try:
            gid = grant(proxy, ["ssn"])
            async with conn.transaction():
                cur = await conn.cursor("SELECT ssn FROM people ORDER BY id")  # Bind + portal
                first = await cur.fetch(5)  # Execute with a row limit
                assert [r[0] for r in first] == [f"ssn-{i}" for i in range(1, 6)]
                api(proxy, "DELETE", f"/api/grants/{gid}")
                with pytest.raises(asyncpg.PostgresError) as err:
                    await cur.fetch(5)  # the portal is gone: no more unmasked rows
                assert err.value.sqlstate == "34000"
            assert await conn.fetchval("SELECT ssn FROM people WHERE id = 1") == "REDACTED"
        finally:
            await conn.close()

    asyncio.run(run())

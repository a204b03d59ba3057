"""Masked unnamed statements are prepared once upstream per session (proxy/stmt_cache.py).

The client keeps sending Parse("") + Bind + Execute; the server should see one prepared
statement of pgveil's per rewritten text, and the client must not be able to tell —
results, errors and DISCARD behave as without the cache.
"""

from __future__ import annotations

import psycopg
import pytest

from helpers import ProxyProcess, unique_name

USER = "sc_user"


@pytest.fixture(scope="module")
def shop(pg):
    db = unique_name("stmtcache")
    pg.execute(f"CREATE DATABASE {db}")
    pg.execute(f"DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{USER}') "
               f"THEN CREATE ROLE {USER} LOGIN; END IF; END$$")
    with psycopg.connect(pg.dsn(db), autocommit=True) as c:
        c.execute("CREATE TABLE people (id int PRIMARY KEY, name text, email text, ssn text)")
        c.execute("INSERT INTO people SELECT g, 'n' || g, 'user' || g || '@example.com', "
                  "'ssn-' || g FROM generate_series(1, 50) g")
        c.execute("CREATE TABLE vault (id int PRIMARY KEY, ssn text)")
        c.execute("INSERT INTO vault VALUES (1, 'v-1')")
        c.execute(f"GRANT SELECT ON people TO {USER}")
    yield db
    pg.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _proxy(pg, tmp_path_factory, cache_size: int) -> ProxyProcess:
    work = tmp_path_factory.mktemp("stmt-cache")
    extra = f"""
[policy]
exempt_users = ["{pg.superuser}"]

[[policy.mask]]
table = "public.people"
column = "ssn"
mask = "redact"

[[policy.mask]]
table = "public.people"
column = "email"
mask = "email"

[[policy.mask]]
table = "public.vault"
column = "ssn"
mask = "redact"
"""
    return ProxyProcess(workdir=work, upstream_host=pg.host, upstream_port=pg.port,
                        extra_config=extra, name=f"stmt-cache-{cache_size}",
                        proxy_extra=f"notice_masked = false\nstatement_cache = {cache_size}")


@pytest.fixture(scope="module")
def proxy(pg, shop, tmp_path_factory):
    p = _proxy(pg, tmp_path_factory, 2).start()
    yield p
    p.kill()


def _connect(proxy, shop):
    # prepare_threshold=None: psycopg never names its statements, every execute is Parse("")
    return psycopg.connect(proxy.dsn(shop, user=USER), autocommit=True, prepare_threshold=None)


def _cached(conn) -> list[tuple[str, str]]:
    return conn.execute("SELECT name, statement FROM pg_prepared_statements "
                        "WHERE name LIKE 'pgveil_c%' ORDER BY name").fetchall()


def test_one_upstream_statement_serves_every_execution(proxy, shop):
    with _connect(proxy, shop) as c:
        for i in range(1, 21):
            row = c.execute("SELECT id, name, email, ssn FROM people WHERE id = %s",
                            (i,)).fetchone()
            assert row == (i, f"n{i}", "u***@example.com", "REDACTED")
        cached = _cached(c)
        assert len(cached) == 1 and "pgveil_src" in cached[0][1]
        # binary results and Describe of the unnamed statement go to the cached one too
        cur = c.cursor(binary=True)
        assert cur.execute("SELECT id, ssn FROM people WHERE id = %s", (3,)).fetchone() == (
            3, "REDACTED")
        assert [d.name for d in cur.description] == ["id", "ssn"]


def test_limit_closes_the_least_recently_used(proxy, shop):
    with _connect(proxy, shop) as c:
        for col in ("ssn", "email", "name, ssn", "email, ssn", "ssn"):
            for i in (1, 2):
                c.execute(f"SELECT {col} FROM people WHERE id = %s", (i,)).fetchone()
        # statement_cache = 2 in this proxy: older ones were closed upstream
        assert len(_cached(c)) <= 2
        assert c.execute("SELECT ssn FROM people WHERE id = %s", (5,)).fetchone() == ("REDACTED",)


def test_discard_all_and_deallocate_all_start_afresh(proxy, shop):
    with _connect(proxy, shop) as c:
        q = "SELECT ssn FROM people WHERE id = %s"
        assert c.execute(q, (1,)).fetchone() == ("REDACTED",)
        c.execute("DISCARD ALL")
        assert _cached(c) == []
        assert c.execute(q, (2,)).fetchone() == ("REDACTED",)
        assert len(_cached(c)) == 1
        c.execute("DEALLOCATE ALL")
        assert c.execute(q, (3,)).fetchone() == ("REDACTED",)
        assert len(_cached(c)) == 1


def test_a_failed_parse_is_not_cached(proxy, shop):
    q = "SELECT id, ssn FROM people WHERE id = %s"
    with psycopg.connect(proxy.dsn(shop, user=USER), prepare_threshold=None) as c:
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1/0")
        # the Parse of pgveil's statement fails too (the transaction is aborted) ...
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute(q, (1,))
        c.rollback()
        # ... so it must not be taken for a prepared one: Bind would find nothing (26000)
        assert c.execute(q, (2,)).fetchone() == (2, "REDACTED")
        assert c.execute(q, (3,)).fetchone() == (3, "REDACTED")
        assert len(_cached(c)) == 1


def test_permission_errors_come_at_execution_as_without_the_cache(pg, proxy, shop):
    with _connect(proxy, shop) as c:
        q = "SELECT id, ssn FROM vault WHERE id = %s"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(q, (1,))
        with psycopg.connect(pg.dsn(shop), autocommit=True) as admin:
            admin.execute(f"GRANT SELECT ON vault TO {USER}")
        try:
            assert c.execute(q, (1,)).fetchone() == (1, "REDACTED")
        finally:
            with psycopg.connect(pg.dsn(shop), autocommit=True) as admin:
                admin.execute(f"REVOKE SELECT ON vault FROM {USER}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(q, (1,))


def test_pipeline_of_identical_statements(proxy, shop):
    with _connect(proxy, shop) as c:
        with c.pipeline():
            curs = [c.execute("SELECT id, ssn FROM people WHERE id = %s", (i,))
                    for i in range(1, 9)]
        assert [cur.fetchone() for cur in curs] == [(i, "REDACTED") for i in range(1, 9)]
        # twins prepared before the first answer are closed again, not piled up
        for i in range(3):
            c.execute("SELECT id, ssn FROM people WHERE id = %s", (i,))
        assert len(_cached(c)) <= 2


def test_changed_result_type_is_reported_once_then_works(pg, proxy, shop):
    with _connect(proxy, shop) as c:
        q = "SELECT id, name FROM people WHERE id = %s AND ssn IS NOT NULL"
        assert c.execute(q, (1,)).fetchone() == (1, "n1")
        with psycopg.connect(pg.dsn(shop), autocommit=True) as admin:
            admin.execute("ALTER TABLE people ALTER COLUMN name TYPE varchar(40)")
        try:
            try:
                row = c.execute(q, (1,)).fetchone()
            except psycopg.errors.FeatureNotSupported as exc:  # cached plan … result type
                assert "result type" in str(exc)
                row = c.execute(q, (1,)).fetchone()
            assert row == (1, "n1")
        finally:
            with psycopg.connect(pg.dsn(shop), autocommit=True) as admin:
                admin.execute("ALTER TABLE people ALTER COLUMN name TYPE text")


def test_cache_off(pg, shop, tmp_path_factory):
    p = _proxy(pg, tmp_path_factory, 0).start()
    try:
        with _connect(p, shop) as c:
            for i in (1, 2, 3):
                assert c.execute("SELECT ssn FROM people WHERE id = %s", (i,)).fetchone() == (
                    "REDACTED",)
            assert _cached(c) == []
    finally:
        p.kill()


# -- simple-protocol queries sent as prepared statements with parameters --------------------
SIMPLE_BATTERY = [
    "SELECT id, name, email, ssn FROM people WHERE id = 5",
    "SELECT id, name, email, ssn FROM people WHERE id = 6",
    "SELECT id, ssn FROM people WHERE name = 'n7'",
    "SELECT id, ssn FROM people WHERE name = 'it''s' OR name = 'n8'",
    "SELECT id, email FROM people WHERE id IN (1, 2, 3) ORDER BY 1",
    "SELECT id, email FROM people WHERE id IN (4, 2) ORDER BY 1 DESC",
    "SELECT id FROM people WHERE id BETWEEN 2 AND 4 ORDER BY id",
    "SELECT id, ssn FROM people WHERE id = '5'",
    "SELECT id, ssn FROM people WHERE id = '5x'",
    "SELECT id, ssn FROM people WHERE id = 99999999999",
    "SELECT id, ssn FROM people WHERE id > 2.5 ORDER BY 2, 1 LIMIT 2",
    "SELECT id = 5 AS five, ssn FROM people WHERE id = 5",
    "SELECT id = 3 AS three, count(*) FROM people WHERE ssn IS NOT NULL GROUP BY id = 3 ORDER BY 1",
    "SELECT id, ssn FROM people WHERE name = E'n\\x39'",
    "SELECT id, ssn FROM people WHERE name = 'n'\n'9'",
    "SELECT id, ssn FROM people WHERE id = -3 OR id = 10",
    "SELECT 'x' AS lit, ssn FROM people WHERE id = 1",
    "SELECT 'y' AS lit, ssn FROM people WHERE id = 2",  # the same skeleton, another literal
    "SELECT id, ssn FROM people WHERE name = 'n1' AND id = 1",
    "SELECT id, ssn FROM people WHERE id = 5 AND name = $1",  # no parameters in a Query
    "SELECT id, ssn FROM people WHERE id = 6 AND name = $1",
    "SELECT id, ssn FROM people WHERE id = 7 AND name <> $$x$$",
]


def _simple_results(proxy, shop) -> list:
    out = []
    with psycopg.connect(proxy.dsn(shop, user=USER), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as c:
        for sql in SIMPLE_BATTERY:
            # the second time the cached statement is used, the third a query plan
            for _ in range(3):
                try:
                    cur = c.execute(sql)
                    out.append((sql, [d.name for d in cur.description],
                                [d.type_code for d in cur.description], cur.fetchall()))
                except psycopg.Error as exc:
                    out.append((sql, "error", exc.sqlstate))
        with c.transaction():
            out.append(c.execute("SELECT id, ssn FROM people WHERE id = 4").fetchall())
        try:
            with c.transaction():
                c.execute("SELECT 1/0")
        except psycopg.errors.DivisionByZero:
            pass
        c.autocommit = False
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("SELECT id, ssn FROM people WHERE id = 4")
        c.rollback()
        out.append(c.execute("SELECT id, ssn FROM people WHERE id = 4").fetchall())
        c.rollback()
        cached = _cached(c)
    return out, cached


def test_simple_queries_as_prepared_statements_answer_the_same(pg, proxy, shop,
                                                               tmp_path_factory):
    with_cache, cached = _simple_results(proxy, shop)
    off = _proxy(pg, tmp_path_factory, 0).start()
    try:
        without, none = _simple_results(off, shop)
    finally:
        off.kill()
    assert none == []
    assert with_cache == without
    # the ones that were parameterised really went through pgveil's prepared statements
    assert any("$1" in text for _, text in cached)
    assert ("SELECT id, ssn FROM people WHERE id = '5x'", "error", "22P02") in with_cache


def test_simple_query_statement_is_reused_across_literals(proxy, shop):
    with psycopg.connect(proxy.dsn(shop, user=USER), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as c:
        c.execute("DISCARD ALL")
        for i in range(1, 31):
            assert c.execute(f"SELECT id, ssn FROM people WHERE id = {i}").fetchone() == (
                i, "REDACTED")
        cached = _cached(c)
        assert len(cached) == 1 and "$1" in cached[0][1] and "REDACTED" in cached[0][1]


def test_client_extended_batch_then_simple_query_in_one_write(proxy, shop):
    """The client's own BindComplete is delivered, pgveil's is swallowed, in order."""
    import struct

    from helpers import RawConnection, message

    def cstr(s: str) -> bytes:
        return s.encode() + b"\x00"

    sql = "SELECT id, ssn FROM people WHERE id = $1"
    parse = message(b"P", cstr("") + cstr(sql) + struct.pack("!hI", 1, 23))
    bind = message(b"B", cstr("") + cstr("") + struct.pack("!hh", 0, 1)  # no formats, 1 value
                   + struct.pack("!i", 1) + b"2" + struct.pack("!h", 0))  # "2"; text results
    execute = message(b"E", cstr("") + struct.pack("!i", 0))
    sync = message(b"S")
    query = message(b"Q", cstr("SELECT id, ssn FROM people WHERE id = 3"))
    with RawConnection(proxy.host, proxy.port) as raw:
        raw.startup(USER, shop)
        for _ in range(3):  # the third time both sides use cached statements
            raw.send(parse + bind + execute + sync + query)
            first = [t for t, _ in raw.read_until(b"Z")]
            second = raw.read_until(b"Z")
            assert first == [b"1", b"2", b"D", b"C", b"Z"]
            assert [t for t, _ in second] == [b"T", b"D", b"C", b"Z"]
            row = second[1][1]
            assert row.endswith(b"3" + struct.pack("!i", 8) + b"REDACTED")


def test_a_simple_query_drops_the_unnamed_statement_as_postgres_does(proxy, shop):
    """After a Query, Bind of the unnamed statement fails (26000) even when pgveil had
    pointed it at a cached statement."""
    import struct

    from helpers import RawConnection, message, parse_error_fields

    def cstr(s: str) -> bytes:
        return s.encode() + b"\x00"

    parse = message(b"P", cstr("") + cstr("SELECT id, ssn FROM people WHERE id = $1")
                    + struct.pack("!hI", 1, 23))
    bind = message(b"B", cstr("") + cstr("") + struct.pack("!hh", 0, 1) + struct.pack("!i", 1)
                   + b"4" + struct.pack("!h", 0))
    execute = message(b"E", cstr("") + struct.pack("!i", 0))
    sync = message(b"S")
    with RawConnection(proxy.host, proxy.port) as raw:
        raw.startup(USER, shop)
        for _ in range(2):  # the second Parse is served from the cache
            raw.send(parse + bind + execute + sync)
            assert [t for t, _ in raw.read_until(b"Z")] == [b"1", b"2", b"D", b"C", b"Z"]
        raw.send(message(b"Q", cstr("SELECT 1")))
        raw.read_until(b"Z")
        raw.send(bind + execute + sync)
        answer = raw.read_until(b"Z")
        assert answer[0][0] == b"E", answer
        assert parse_error_fields(answer[0][1])["C"] == "26000"

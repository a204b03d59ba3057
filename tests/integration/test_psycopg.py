"""psycopg 3 through pgveil: every test runs directly and through the proxy (``target``).

Covers the simple and extended protocols, pipeline mode, binary results, COPY in both
directions and formats, LISTEN/NOTIFY, cancellation, large rows, notices, ParameterStatus
and startup parameters. Where a result is data, the proxy run also reads it directly from
the database and the two must be byte-for-byte equal.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import os
import random
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors
from psycopg.types.json import Jsonb

from helpers import unique_name, wait_active

pytestmark = pytest.mark.timeout(90)


# -- basics ----------------------------------------------------------------------------------


def test_simple_query_protocol(target):
    with target.connect() as conn:
        cur = conn.execute("SELECT 1 AS a, 'two' AS b; SELECT 3", prepare=False)
        # Multi-statement simple query: psycopg exposes the result sets one by one.
        assert cur.fetchall() == [(1, "two")]
        assert [d.name for d in cur.description] == ["a", "b"]
        assert cur.nextset()
        assert cur.fetchall() == [(3,)]
        # Errors come back with the server's SQLSTATE and the session stays usable.
        with pytest.raises(errors.UndefinedTable) as exc:
            conn.execute("SELECT * FROM no_such_table_xyz", prepare=False)
        assert exc.value.sqlstate == "42P01"
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_backend_pid_matches_backend_key_data(target):
    with target.connect() as conn:
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert conn.info.backend_pid == pid
        # ... and that is really the server process serving this session.
        with target.pg.connect() as mon:
            row = mon.execute(
                "SELECT usename FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
        assert row == (target.pg.superuser,)


def test_extended_protocol_with_params(target, scratch_table):
    t = scratch_table
    with target.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text, score numeric, at timestamptz)")
        at = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {t} VALUES (%s, %s, %s, %s)",
                [(i, f"name {i}", decimal.Decimal(i) / 7, at) for i in range(100)],
            )
        rows = conn.execute(
            f"SELECT id, name, score, at FROM {t} WHERE id >= %s AND name LIKE %s ORDER BY id",
            [95, "name%"],
        ).fetchall()
        assert [r[0] for r in rows] == [95, 96, 97, 98, 99]
        assert rows[0][1] == "name 95" and rows[0][3] == at
        assert rows[0][2] == pytest.approx(decimal.Decimal(95) / 7)
        # Prepared on the server after repeated use (prepare=True forces it now).
        for i in range(10):
            assert conn.execute(f"SELECT name FROM {t} WHERE id = %s", [i], prepare=True).fetchone() == (
                f"name {i}",
            )
        # NULLs, empty strings, unicode.
        assert conn.execute("SELECT %s::text, %s::text, %s::text", [None, "", "žluťoučký 🐘"]).fetchone() == (
            None,
            "",
            "žluťoučký 🐘",
        )
        # An error in the extended protocol, then the session carries on.
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT %s::int / 0", [1])
        assert conn.execute("SELECT %s::int + 1", [1]).fetchone() == (2,)


def test_transactions_and_server_side_cursor(target, scratch_table):
    t = scratch_table
    with target.connect(autocommit=False) as conn:
        conn.execute(f"CREATE TABLE {t} AS SELECT g AS i FROM generate_series(1, 1000) g")
        conn.commit()
        conn.execute(f"DELETE FROM {t}")
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (1000,)
        with conn.cursor(name="c1") as cur:  # DECLARE/FETCH under the hood
            cur.itersize = 100
            cur.execute(f"SELECT i FROM {t} ORDER BY i")
            assert sum(r[0] for r in cur) == 500500
        conn.commit()


# -- pipeline mode ---------------------------------------------------------------------------


def test_pipeline_many_statements_with_error_in_the_middle(target, scratch_table):
    t = scratch_table
    with target.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (i int PRIMARY KEY)")
        # A pipeline of many statements, results read after they were all sent.
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int * 2", [i]) for i in range(200)]
        assert [c.fetchone()[0] for c in curs] == [i * 2 for i in range(200)]

        # Two sync points; the second segment has a failing statement in its middle.
        # (psycopg raises as soon as it reads the error, which may be before the block ends.)
        with pytest.raises(errors.UniqueViolation):
            with conn.pipeline() as p:
                for i in range(10):
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", [i])
                p.sync()
                for i in range(10, 20):
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", [i])
                conn.execute(f"INSERT INTO {t} VALUES (%s)", [5])  # duplicate key
                for i in range(20, 30):
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", [i])
        # The first segment committed; the failing segment (one implicit transaction) was
        # rolled back and the statements after the error skipped.
        assert [r[0] for r in conn.execute(f"SELECT i FROM {t} ORDER BY i")] == list(range(10))
        # A new pipeline on the same connection works.
        with conn.pipeline():
            for i in range(30, 40):
                conn.execute(f"INSERT INTO {t} VALUES (%s)", [i])
            last = conn.execute(f"SELECT count(*) FROM {t}")
        assert last.fetchone() == (20,)
        # The connection is usable afterwards, in and out of pipeline mode.
        with conn.pipeline():
            cur = conn.execute("SELECT 'after'")
        assert cur.fetchone() == ("after",)


def test_pipeline_prepared_statements(target):
    with target.connect() as conn:
        with conn.pipeline():
            curs = [
                conn.execute("SELECT %s::text || '-' || %s::int", [f"k{i}", i], prepare=True)
                for i in range(300)
            ]
        assert [c.fetchone()[0] for c in curs] == [f"k{i}-{i}" for i in range(300)]


# -- binary results --------------------------------------------------------------------------

BINARY_QUERY = """
SELECT 42::int2, 2147483647::int4, '-9223372036854775808'::int8, 1.5::float4, 2.25::float8,
       12345678901234567890.123456789::numeric, true, 'text'::text, 'ch'::varchar,
       '\\xdeadbeef'::bytea, '2024-02-29'::date, '12:34:56.789'::time,
       '2024-02-29 12:34:56.789+02'::timestamptz, '2024-02-29 12:34:56'::timestamp,
       '1 day 02:03:04'::interval, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid,
       '{"a": [1, 2, {"b": null}]}'::jsonb, ARRAY[1, NULL, 3]::int4[], ARRAY['x', 'y z']::text[],
       '192.168.0.1/24'::inet, NULL::int4, 'pg_class'::regclass::oid
"""


def test_binary_results(target, direct):
    with target.connect() as conn:
        cur = conn.cursor(binary=True)
        row = cur.execute(BINARY_QUERY).fetchone()
        assert all(res_fmt == 1 for res_fmt in
                   [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)])
    assert row[0] == 42 and row[2] == -9223372036854775808
    assert row[5] == decimal.Decimal("12345678901234567890.123456789")
    assert row[9] == b"\xde\xad\xbe\xef"
    assert row[12] == dt.datetime(2024, 2, 29, 10, 34, 56, 789000, tzinfo=dt.timezone.utc)
    assert row[15] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert row[16] == {"a": [1, 2, {"b": None}]}
    assert row[17] == [1, None, 3] and row[18] == ["x", "y z"]
    assert row[20] is None
    with direct.connect() as dconn:
        assert dconn.cursor(binary=True).execute(BINARY_QUERY).fetchone() == row
        # text format gives the same values
        assert dconn.execute(BINARY_QUERY).fetchone() == row


def test_binary_params_roundtrip(target):
    payload = bytes(random.Random(7).getrandbits(8) for _ in range(100_000))
    with target.connect() as conn:
        cur = conn.cursor(binary=True)
        got = cur.execute(
            "SELECT %b::bytea, %b::jsonb, %b::int8[], %b::timestamptz",
            [payload, Jsonb({"k": "v", "n": [1, 2]}), [1, 2, 3],
             dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)],
        ).fetchone()
    assert got == (payload, {"k": "v", "n": [1, 2]}, [1, 2, 3], dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))


# -- COPY --------------------------------------------------------------------------------------

N_COPY_ROWS = 60_000  # ~4.5 MB of text


def _copy_lines() -> list[str]:
    return [f"{i}\tname number {i}\t{'x' * (i % 97)}\n" for i in range(N_COPY_ROWS)]


def _copy_out(conn: psycopg.Connection, stmt: str) -> bytes:
    chunks = []
    with conn.cursor().copy(stmt) as copy:
        for chunk in copy:
            chunks.append(bytes(chunk))
    return b"".join(chunks)


def test_copy_text_in_and_out(target, direct, pg):
    t = unique_name("copy")
    lines = _copy_lines()
    try:
        with target.connect() as conn:
            conn.execute(f"CREATE TABLE {t} (id int, name text, pad text)")
            with conn.cursor().copy(f"COPY {t} FROM STDIN") as copy:
                for start in range(0, len(lines), 5000):
                    copy.write("".join(lines[start : start + 5000]))
            assert conn.execute(f"SELECT count(*), sum(id) FROM {t}").fetchone() == (
                N_COPY_ROWS, sum(range(N_COPY_ROWS))
            )
            out = _copy_out(conn, f"COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT")
            # COPY with an error in the data: the server's error comes back.
            with pytest.raises(errors.InvalidTextRepresentation):
                with conn.cursor().copy(f"COPY {t} FROM STDIN") as copy:
                    copy.write("1\tok\tok\nnot-a-number\tx\tx\n")
            assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (N_COPY_ROWS,)
        assert len(out) > 3_000_000
        assert out == "".join(lines).encode()
        with direct.connect() as dconn:
            assert _copy_out(dconn, f"COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT") == out
    finally:
        pg.execute(f"DROP TABLE IF EXISTS {t}")


def test_copy_binary_in_and_out(target, direct, pg):
    src, dst = unique_name("copysrc"), unique_name("copydst")
    try:
        pg.execute(
            f"CREATE TABLE {src} AS SELECT g AS id, md5(g::text) AS h, g * 1.5 AS n, "
            f"now() AS at, repeat('y', g % 200)::bytea AS b FROM generate_series(1, 40000) g"
        )
        pg.execute(f"CREATE TABLE {dst} (LIKE {src})")
        stmt = f"COPY (SELECT * FROM {src} ORDER BY id) TO STDOUT (FORMAT BINARY)"
        with target.connect() as conn:
            data = _copy_out(conn, stmt)
            assert data.startswith(b"PGCOPY\n\xff\r\n\0")
            assert len(data) > 4_000_000
            with conn.cursor().copy(f"COPY {dst} FROM STDIN (FORMAT BINARY)") as copy:
                for start in range(0, len(data), 65536):
                    copy.write(data[start : start + 65536])
            assert conn.execute(
                f"SELECT count(*) FROM (SELECT * FROM {src} EXCEPT ALL SELECT * FROM {dst}) d"
            ).fetchone() == (0,)
            assert conn.execute(f"SELECT count(*) FROM {dst}").fetchone() == (40000,)
        with direct.connect() as dconn:
            assert hashlib.sha256(_copy_out(dconn, stmt)).digest() == hashlib.sha256(data).digest()
    finally:
        pg.execute(f"DROP TABLE IF EXISTS {src}, {dst}")


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------


def test_listen_notify(target):
    channel = unique_name("chan")
    with target.connect() as listener, target.connect() as notifier:
        listener.execute(f"LISTEN {channel}")
        (notifier_pid,) = notifier.execute("SELECT pg_backend_pid()").fetchone()
        assert notifier.info.backend_pid == notifier_pid
        notifier.execute(f"NOTIFY {channel}, 'hello'")
        notifier.execute("SELECT pg_notify(%s, %s)", [channel, "second é"])
        got = list(listener.notifies(timeout=10, stop_after=2))
        assert [(n.channel, n.payload) for n in got] == [(channel, "hello"), (channel, "second é")]
        assert all(n.pid == notifier_pid for n in got)
        # A session notifying itself sees its own PID.
        listener.execute(f"NOTIFY {channel}, 'self'")
        (own,) = list(listener.notifies(timeout=10, stop_after=1))
        assert own.payload == "self" and own.pid == listener.info.backend_pid


# -- cancel -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel(target, pg, method):
    with target.connect() as conn:
        pid = conn.info.backend_pid

        def canceller():
            wait_active(pg, pid)
            getattr(conn, method)()

        th = threading.Thread(target=canceller, daemon=True)
        th.start()
        t0 = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as exc:
            conn.execute("SELECT pg_sleep(30)")
        elapsed = time.monotonic() - t0
        th.join(10)
        assert exc.value.sqlstate == "57014"
        assert "canceling statement due to user request" in str(exc.value)
        assert elapsed < 10
        assert conn.execute("SELECT 'still alive'").fetchone() == ("still alive",)


def test_cancel_hits_only_its_own_session(target, pg):
    """Two sessions run the same statement; cancelling one must leave the other alone."""
    with target.connect() as a, target.connect() as b:
        results: dict[str, object] = {}

        def run(name, conn):
            try:
                results[name] = conn.execute("SELECT pg_sleep(1), 'completed'").fetchone()
            except psycopg.Error as exc:
                results[name] = exc

        threads = [threading.Thread(target=run, args=(n, c), daemon=True) for n, c in (("a", a), ("b", b))]
        for th in threads:
            th.start()
        wait_active(pg, a.info.backend_pid)
        wait_active(pg, b.info.backend_pid)
        a.cancel_safe()
        for th in threads:
            th.join(15)
    assert isinstance(results["a"], errors.QueryCanceled)
    assert results["b"] == ("", "completed")


def test_cancel_of_idle_session_is_harmless(target):
    with target.connect() as conn:
        conn.cancel_safe()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_is_delivered_before_cancel_returns(target):
    """cancel_safe() returns when the server has closed the cancel connection, i.e. once the
    request was processed. A proxy that closes the client's cancel connection first and
    forwards later lets a cancel meant for an idle session hit the *next* statement."""
    with target.connect() as conn:
        for _ in range(10):
            conn.cancel_safe()
            # If the cancel were still in flight, it would land on this sleep.
            assert conn.execute("SELECT pg_sleep(0.05), 'kept'").fetchone() == ("", "kept")


# -- sizes, notices, parameters ---------------------------------------------------------------


def test_rows_over_one_megabyte(target):
    blob = os.urandom(2 * 1024 * 1024)
    with target.connect() as conn:
        (text_value,) = conn.execute("SELECT repeat('abc', 1000000)").fetchone()
        assert len(text_value) == 3_000_000
        rows = conn.execute(
            "SELECT g, repeat(chr(64 + g), 1200000) FROM generate_series(1, 3) g"
        ).fetchall()
        assert [(g, len(s), s[0]) for g, s in rows] == [(g, 1_200_000, chr(64 + g)) for g in (1, 2, 3)]
        # A 2 MB parameter and result, text and binary.
        assert conn.execute("SELECT %s::bytea", [blob]).fetchone()[0] == blob
        assert conn.cursor(binary=True).execute("SELECT %b::bytea", [blob]).fetchone()[0] == blob
        (length,) = conn.execute("SELECT length(%s::text)", ["z" * 5_000_000]).fetchone()
        assert length == 5_000_000


def test_notices_arrive(target):
    notices: list[tuple[str, str, str | None]] = []
    with target.connect() as conn:
        # Diagnostic objects are only valid inside the handler: copy what we check.
        conn.add_notice_handler(
            lambda d: notices.append((d.severity, d.message_primary, d.message_hint))
        )
        conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; "
            "RAISE NOTICE USING MESSAGE = 'with hint', HINT = 'a hint'; END $$"
        )
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert notices == [
        ("NOTICE", "hello 42", None),
        ("WARNING", "careful", None),
        ("NOTICE", "with hint", "a hint"),
    ]


def test_parameter_status(target):
    with target.connect() as conn:
        assert conn.info.parameter_status("server_version")
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        conn.execute("SET application_name = 'pgveil-ps-test'")
        assert conn.info.parameter_status("application_name") == "pgveil-ps-test"
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.info.timezone.key == "Asia/Tokyo"


def test_server_parameters_match_direct(target, direct):
    keys = ["server_version", "server_encoding", "integer_datetimes", "standard_conforming_strings",
            "DateStyle", "IntervalStyle", "is_superuser", "session_authorization"]
    with target.connect() as conn, direct.connect() as dconn:
        assert {k: conn.info.parameter_status(k) for k in keys} == {
            k: dconn.info.parameter_status(k) for k in keys
        }
        assert conn.info.server_version == dconn.info.server_version


def test_startup_parameters_forwarded(target, scratch_db, pg):
    schema = unique_name("s")
    pg.execute(f"CREATE SCHEMA {schema}", dbname=scratch_db)
    pg.execute(f"CREATE TABLE {schema}.only_here (v text)", dbname=scratch_db)
    pg.execute(f"INSERT INTO {schema}.only_here VALUES ('found')", dbname=scratch_db)
    with target.connect(
        dbname=scratch_db,
        application_name="pgveil startup test",
        options=f"-c search_path={schema},public -c statement_timeout=12345",
    ) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (scratch_db,)
        assert conn.execute("SHOW search_path").fetchone() == (f"{schema},public",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("12345ms",)
        assert conn.execute("SELECT v FROM only_here").fetchone() == ("found",)
        assert conn.info.parameter_status("application_name") == "pgveil startup test"
        assert conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone() == ("pgveil startup test",)


def test_unknown_database_error(target):
    with pytest.raises(psycopg.OperationalError) as exc:
        target.connect(dbname="no_such_db_for_pgveil")
    assert 'database "no_such_db_for_pgveil" does not exist' in str(exc.value)


def test_json_roundtrip(target):
    doc = {"nested": {"list": list(range(50)), "s": "ünïcode"}, "n": None}
    with target.connect() as conn:
        assert conn.execute("SELECT %s::jsonb", [json.dumps(doc)]).fetchone()[0] == doc

"""Less-travelled corners of the protocol that real drivers still use.

Flush without Sync (JDBC, node-postgres describe statements that way), the FunctionCall
message (libpq's large-object API), empty queries, CopyFail, very large messages, long
pipelines, bursts of notifications, pooled connections, and no leaked upstream backends.
Each runs directly and through the proxy.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import asyncpg
import psycopg
import pytest
from psycopg import errors

from helpers import RawConnection, message, parse_error_fields, unique_name, wait_until

pytestmark = pytest.mark.timeout(90)


def test_flush_without_sync(target):
    with RawConnection(target.host, target.port) as raw:
        raw.startup(target.pg.superuser, target.pg.dbname)
        raw.send(
            message(b"P", b"s1\0SELECT $1::int + 1 AS n\0\0\0")
            + message(b"D", b"Ss1\0")
            + message(b"H")
        )
        # The answers must arrive now, before any Sync.
        types = [raw.read_message()[0] for _ in range(3)]
        assert types == [b"1", b"t", b"T"]
        raw.send(
            message(b"B", b"\0s1\0" + struct.pack("!hhI", 0, 1, 2) + b"41" + struct.pack("!h", 0))
            + message(b"E", b"\0" + struct.pack("!I", 0))
            + message(b"H")
        )
        got = [raw.read_message() for _ in range(3)]
        assert [t for t, _ in got] == [b"2", b"D", b"C"]
        assert got[1][1].endswith(b"42")
        raw.send(message(b"S"))
        assert raw.read_until(b"Z")[-1] == (b"Z", b"I")


def test_function_call_message(target):
    """FunctionCall ('F'), as libpq's PQfn/large objects use: int4pl(2, 3) = 5."""
    int4pl_oid = 177
    payload = (
        struct.pack("!Ihh", int4pl_oid, 0, 2)
        + struct.pack("!I", 1) + b"2"
        + struct.pack("!I", 1) + b"3"
        + struct.pack("!h", 0)
    )
    with RawConnection(target.host, target.port) as raw:
        raw.startup(target.pg.superuser, target.pg.dbname)
        raw.send(message(b"F", payload))
        msgs = raw.read_until(b"Z")
    assert msgs == [(b"V", struct.pack("!I", 1) + b"5"), (b"Z", b"I")]


def test_empty_query(target):
    with RawConnection(target.host, target.port) as raw:
        raw.startup(target.pg.superuser, target.pg.dbname)
        assert raw.simple_query("") == [(b"I", b""), (b"Z", b"I")]
        assert raw.simple_query(";") == [(b"I", b""), (b"Z", b"I")]
    with target.connect() as conn:
        cur = conn.execute("", prepare=False)
        assert cur.description is None
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_copy_fail_from_client(target, scratch_table):
    t = scratch_table
    with target.connect() as conn:
        conn.execute(f"CREATE TABLE {t} (v int)")
        with pytest.raises(ZeroDivisionError):
            with conn.cursor().copy(f"COPY {t} FROM STDIN") as copy:
                copy.write("1\n2\n")
                raise ZeroDivisionError("client-side failure")  # psycopg sends CopyFail
        # Had the CopyFail not reached the server, it would still be in COPY IN mode.
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,)


def test_very_large_messages(target):
    blob = os.urandom(30 * 1024 * 1024)
    with target.connect() as conn:
        cur = conn.cursor(binary=True)
        (echo,) = cur.execute("SELECT %b::bytea", [blob]).fetchone()
        assert echo == blob
        (total,) = conn.execute(
            "SELECT sum(length(r)) FROM (SELECT repeat('r', 1000) AS r FROM generate_series(1, 1000)) s"
        ).fetchone()
        assert total == 1_000_000
        # 50 MB of result rows, streamed.
        n = 0
        with conn.cursor() as c:
            for (row,) in c.stream("SELECT repeat('z', 1000) FROM generate_series(1, 50000)"):
                n += len(row)
        assert n == 50_000_000


def test_long_pipeline(target):
    with target.connect() as conn:
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int, repeat('p', 300)", [i]) for i in range(10_000)]
        got = [c.fetchone() for c in curs]
    assert [g[0] for g in got] == list(range(10_000))
    assert all(g[1] == "p" * 300 for g in got)


def test_notification_burst(target):
    channel = unique_name("burst")
    n = 5000

    async def main():
        listener = await asyncpg.connect(**target.asyncpg_kwargs())
        notifier = await asyncpg.connect(**target.asyncpg_kwargs())
        try:
            got: list[str] = []
            done = asyncio.Event()

            def on_notify(conn, pid, ch, payload):
                got.append(payload)
                if len(got) == n:
                    done.set()

            await listener.add_listener(channel, on_notify)
            await notifier.execute(f"SELECT pg_notify('{channel}', g::text) FROM generate_series(1, {n}) g")
            # The listener keeps running queries while the burst arrives.
            for i in range(20):
                assert await listener.fetchval("SELECT $1::int", i) == i
            await asyncio.wait_for(done.wait(), 30)
            return got
        finally:
            await listener.close()
            await notifier.close()

    got = asyncio.run(main())
    assert got == [str(i) for i in range(1, n + 1)]


def test_asyncpg_pool(target):
    async def main():
        pool = await asyncpg.create_pool(min_size=4, max_size=10, **target.asyncpg_kwargs())
        try:
            async def job(i):
                async with pool.acquire() as conn:
                    await conn.execute("SET application_name = 'pooled'")
                    return await conn.fetchval("SELECT $1::int * $1::int", i)

            results = await asyncio.gather(*(job(i) for i in range(500)))
            # The pool resets connections (RESET ALL, UNLISTEN, ...) between uses.
            async with pool.acquire() as conn:
                app = await conn.fetchval("SHOW application_name")
            return results, app
        finally:
            await pool.close()

    results, app = asyncio.run(main())
    assert results == [i * i for i in range(500)]
    assert app != "pooled"


def test_no_leaked_backends(target, pg):
    app = unique_name("leak")
    conns = [target.connect(application_name=app) for _ in range(10)]
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    assert pg.execute(count, [app]) == [(10,)]
    for c in conns[:5]:
        c.close()  # polite: sends Terminate
    for c in conns[5:]:
        # rude: the socket just goes away
        socket.socket(fileno=os.dup(c.pgconn.socket)).shutdown(socket.SHUT_RDWR)
        c.close()
    wait_until(lambda: pg.execute(count, [app]) == [(0,)], timeout=10,
               message="every upstream backend to be gone")


@pytest.mark.parametrize("encoding", ["LATIN1", "WIN1252", "EUC_JP"])
def test_client_encodings(target, encoding):
    """The proxy must not assume the client speaks UTF-8 (query text, data, error messages)."""
    word = {"LATIN1": "déjà vu", "WIN1252": "naïve €", "EUC_JP": "日本語"}[encoding]
    with target.connect(client_encoding=encoding) as conn:
        assert conn.info.parameter_status("client_encoding") == encoding
        assert conn.execute("SELECT %s::text || '!'", [word]).fetchone() == (word + "!",)
        with pytest.raises(errors.UndefinedTable) as exc:
            conn.execute(f'SELECT * FROM "{word}"')
        assert word in str(exc.value)
        assert conn.execute("SELECT length(%s::text)", [word]).fetchone() == (len(word),)


def test_invalid_utf8_in_query(target):
    """Bytes that are not UTF-8 get PostgreSQL's own 22021 error, and the session goes on."""
    with RawConnection(target.host, target.port) as raw:
        raw.startup(target.pg.superuser, target.pg.dbname)
        raw.send(message(b"Q", b"SELECT '\xff\xfe'\0"))
        msgs = raw.read_until(b"Z")
        errs = [parse_error_fields(p) for t, p in msgs if t == b"E"]
        assert errs and errs[0]["C"] == "22021" and errs[0]["S"] == "ERROR"
        assert raw.simple_query("SELECT 'fine'")[-2:] == [(b"C", b"SELECT 1\0"), (b"Z", b"I")]

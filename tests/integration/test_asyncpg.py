"""asyncpg through pgveil: prepared statements, binary codecs, COPY, notifications, cancel.

asyncpg uses the extended protocol with binary formats for everything and checks protocol
details other drivers ignore (for example that a notification's PID matches BackendKeyData),
so it is a sharp test of a transparent proxy. Every test runs directly and via the proxy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import json
import time
import uuid

import asyncpg
import pytest

from helpers import unique_name

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 50))


async def _connect(target, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(**target.asyncpg_kwargs(**kw))


def test_prepared_statements(target):
    async def main():
        conn = await _connect(target)
        try:
            stmt = await conn.prepare("SELECT $1::int * 2 AS doubled, $2::text AS label")
            assert [a.name for a in stmt.get_attributes()] == ["doubled", "label"]
            assert [t.name for t in stmt.get_parameters()] == ["int4", "text"]
            for i in range(50):
                row = await stmt.fetchrow(i, f"n{i}")
                assert (row["doubled"], row["label"]) == (i * 2, f"n{i}")
            # The implicit statement cache: the same text many times, different values.
            total = 0
            for i in range(100):
                total += await conn.fetchval("SELECT $1::bigint + 1", i)
            assert total == sum(range(1, 101))
            # A statement that fails at execution, then the session carries on.
            bad = await conn.prepare("SELECT 1 / $1::int")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await bad.fetchval(0)
            assert await bad.fetchval(1) == 1
            # Cursors inside a transaction (portal + Execute with a row limit).
            async with conn.transaction():
                got = [r[0] async for r in conn.cursor("SELECT g FROM generate_series(1, 1000) g", prefetch=64)]
            assert got == list(range(1, 1001))
            # Statement-level portals survive many interleaved statements.
            return [await stmt.fetchval(i, "x") for i in (1, 2, 3)]
        finally:
            await conn.close()

    assert run(main()) == [2, 4, 6]


CODEC_VALUES = [
    ("int2", 32767),
    ("int4", -2147483648),
    ("int8", 9223372036854775807),
    ("float8", 3.141592653589793),
    ("numeric", decimal.Decimal("123456789012345678901234567890.000000000123")),
    ("numeric", decimal.Decimal("-0.00001")),
    ("bool", True),
    ("text", "κόσμε 🐘"),
    ("bytea", bytes(range(256)) * 40),
    ("date", dt.date(1999, 12, 31)),
    ("timestamp", dt.datetime(2024, 2, 29, 23, 59, 59, 999999)),
    ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)),
    ("interval", dt.timedelta(days=3, seconds=7, microseconds=11)),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("jsonb", json.dumps({"a": [1, 2, {"b": None}], "c": "d"})),
    ("int4[]", [1, None, 3]),
    ("text[]", ["a", "b c", None, ""]),
    ("int8[]", [[1, 2], [3, 4]]),
    ("inet", ipaddress.ip_interface("10.1.2.3/16")),
    ("int4range", asyncpg.Range(1, 10)),
]


def test_binary_codecs_roundtrip(target, direct):
    types = [t for t, _ in CODEC_VALUES]
    values = [v for _, v in CODEC_VALUES]
    query = "SELECT " + ", ".join(f"${i + 1}::{t}" for i, t in enumerate(types))

    async def fetch(tgt):
        conn = await _connect(tgt)
        try:
            return tuple(await conn.fetchrow(query, *values))
        finally:
            await conn.close()

    got = run(fetch(target))
    expected = list(values)
    expected[types.index("jsonb")] = json.dumps(json.loads(values[types.index("jsonb")]))
    for (t, _), g, e in zip(CODEC_VALUES, got, expected):
        if t == "jsonb":
            assert json.loads(g) == json.loads(e)
        else:
            assert g == e, t
    assert got == run(fetch(direct))


def test_server_generated_values(target, direct):
    query = """SELECT g, g::numeric / 3, now() - make_interval(days => g), gen_random_uuid() IS NOT NULL,
                      jsonb_build_object('g', g), ARRAY[g, g + 1], decode(md5(g::text), 'hex')
               FROM generate_series(1, 2000) g ORDER BY g"""

    async def fetch(tgt):
        conn = await _connect(tgt)
        try:
            rows = await conn.fetch(query)
            return [(r[0], r[1], r[3], r[4], r[5], r[6]) for r in rows]
        finally:
            await conn.close()

    got = run(fetch(target))
    assert len(got) == 2000
    assert got[2][1] == decimal.Decimal(3) / decimal.Decimal(3)
    assert got[0][5] == bytes.fromhex("c4ca4238a0b923820dcc509a6f75849b")  # md5('1')
    assert got == run(fetch(direct))


def test_copy_records_and_out(target, pg):
    t = unique_name("acopy")
    records = [(i, f"row {i}", decimal.Decimal(i) / 4) for i in range(50_000)]

    async def main():
        conn = await _connect(target)
        try:
            await conn.execute(f"CREATE TABLE {t} (id int, name text, n numeric)")
            res = await conn.copy_records_to_table(t, records=records)
            assert res == "COPY 50000"
            chunks: list[bytes] = []

            async def sink(chunk):
                chunks.append(bytes(chunk))

            res = await conn.copy_from_query(f"SELECT id, name FROM {t} ORDER BY id", output=sink)
            assert res == "COPY 50000"
            return b"".join(chunks), await conn.fetchval(f"SELECT sum(n) FROM {t}")
        finally:
            await conn.close()

    try:
        out, total = run(main())
    finally:
        pg.execute(f"DROP TABLE IF EXISTS {t}")
    assert out.decode().splitlines()[12345] == "12345\trow 12345"
    assert total == sum(r[2] for r in records)


def test_add_listener_notifications(target):
    channel = unique_name("achan")

    async def main():
        listener = await _connect(target)
        notifier = await _connect(target)
        try:
            got: asyncio.Queue = asyncio.Queue()
            await listener.add_listener(channel, lambda c, pid, ch, payload: got.put_nowait((pid, ch, payload)))
            notifier_pid = await notifier.fetchval("SELECT pg_backend_pid()")
            assert notifier.get_server_pid() == notifier_pid
            await notifier.execute(f"NOTIFY {channel}, 'from other'")
            first = await asyncio.wait_for(got.get(), 10)
            # A notification to its own channel from the listening session itself.
            await listener.execute(f"NOTIFY {channel}, 'from self'")
            second = await asyncio.wait_for(got.get(), 10)
            return first, second, notifier_pid, listener.get_server_pid(), await listener.fetchval(
                "SELECT pg_backend_pid()"
            )
        finally:
            await listener.close()
            await notifier.close()

    first, second, notifier_pid, listener_pid, listener_pid_sql = run(main())
    assert first == (notifier_pid, channel, "from other")
    assert listener_pid == listener_pid_sql
    assert second == (listener_pid, channel, "from self")


def test_cancel_by_task_cancellation(target, direct):
    """Cancelling the task makes asyncpg send a CancelRequest; the session must be reusable at once."""

    async def main():
        conn = await _connect(target)
        mon = await _connect(direct)
        try:
            pid = conn.get_server_pid()
            task = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30)"))
            deadline = time.monotonic() + 10
            while not await mon.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' "
                "AND query LIKE '%pg_sleep%'", pid
            ):
                assert time.monotonic() < deadline, "query never became active"
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # asyncpg waits for the cancellation to complete before the next query.
            assert await conn.fetchval("SELECT 'after cancel'") == "after cancel"
            return time.monotonic() - t0
        finally:
            await conn.close()
            await mon.close()

    assert run(main()) < 10


def test_query_timeout_cancels(target):
    async def main():
        conn = await _connect(target)
        try:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
            assert await conn.fetchval("SELECT 7") == 7
            return time.monotonic() - t0
        finally:
            await conn.close()

    assert run(main()) < 10


def test_server_error_fields(target):
    async def main():
        conn = await _connect(target)
        try:
            with pytest.raises(asyncpg.UndefinedColumnError) as exc:
                await conn.fetch("SELECT no_such_column FROM pg_class")
            assert await conn.fetchval("SELECT 1") == 1
            return exc.value
        finally:
            await conn.close()

    err = run(main())
    assert err.sqlstate == "42703"
    assert 'column "no_such_column" does not exist' in str(err)
    assert err.position == "8"

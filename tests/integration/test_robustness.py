"""pgveil under abuse: dead upstream backends, garbage input, many sessions, shutdown.

Bad input is sent with a tiny raw-socket client (``helpers.RawConnection``) because no real
driver would send it; the answer must be a FATAL ErrorResponse with SQLSTATE 08P01 followed by
a closed connection, and the proxy must go on serving everyone else.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import ssl
import struct
import threading
import time
import urllib.request

import asyncpg
import psycopg
import pytest
from psycopg import errors

from helpers import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    RawConnection,
    message,
    parse_error_fields,
    startup_packet,
    wait_active,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)


# -- the upstream backend goes away --------------------------------------------------------------


def test_terminate_backend_mid_statement(target, pg):
    with target.connect() as victim, target.connect() as bystander:
        pid = victim.info.backend_pid

        def killer():
            wait_active(pg, pid)
            pg.execute("SELECT pg_terminate_backend(%s)", [pid])

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        t0 = time.monotonic()
        with pytest.raises(errors.AdminShutdown) as exc:
            victim.execute("SELECT pg_sleep(30)")
        th.join(10)
        assert time.monotonic() - t0 < 10
        assert exc.value.sqlstate == "57P01"
        assert "terminating connection due to administrator command" in str(exc.value)
        assert victim.closed
        # Nobody else is affected.
        assert bystander.execute("SELECT 'bystander ok'").fetchone() == ("bystander ok",)
    with target.connect() as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_terminate_idle_backend_closes_client(target, pg):
    """A FATAL for an idle session is relayed and the client's socket is closed."""
    with RawConnection(target.host, target.port) as raw:
        info = raw.startup(target.pg.superuser, target.pg.dbname)
        pid = info["pid"]
        assert pg.execute("SELECT pg_terminate_backend(%s)", [pid]) == [(True,)]
        fields = raw.read_error_then_eof()
    assert fields["S"] == "FATAL"
    assert fields["C"] == "57P01"


def test_query_after_idle_termination_fails(target, pg):
    with target.connect() as conn:
        pid = conn.info.backend_pid
        pg.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_until(lambda: not pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]),
                   message="the backend to exit")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.closed


@pytest.fixture
def private_pg():
    """A PostgreSQL of our own, for tests that crash it (kill -9 restarts every backend)."""
    from helpers import PgServer
    from proxy.embedded import EmbeddedPostgres, bin_dir

    epg = EmbeddedPostgres()
    epg.start()
    try:
        yield PgServer(host=epg.host, port=epg.port, superuser="postgres", kind="embedded", handle=epg)
    finally:
        try:
            epg.stop()
        except RuntimeError:
            # A server still busy with crash recovery may not stop in time: don't leave it.
            epg._run([str(bin_dir() / "pg_ctl"), "-D", str(epg.datadir), "-m", "immediate", "-w", "stop"])
            epg._cleanup_tmp()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_upstream_backend_killed_with_sigkill(private_pg, pgveil_factory):
    proxy = pgveil_factory(upstream=private_pg)
    bystander = psycopg.connect(proxy.dsn(), autocommit=True)
    try:
        bystander_pid = bystander.info.backend_pid
        with psycopg.connect(proxy.dsn(), autocommit=True) as victim:
            pid = victim.info.backend_pid

            def killer():
                wait_active(private_pg, pid)
                os.kill(pid, signal.SIGKILL)

            th = threading.Thread(target=killer, daemon=True)
            th.start()
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as exc:
                victim.execute("SELECT pg_sleep(30)")
            th.join(10)
            assert time.monotonic() - t0 < 10
            # The server said nothing before dying: the proxy reports the lost connection itself.
            assert exc.value.sqlstate == "08006", str(exc.value)
            assert "pgveil:" in str(exc.value)
            assert victim.closed
        # The postmaster's crash restart ends every other backend too: once the idle
        # bystander's backend is gone, its next statement fails and its connection closes.
        wait_until(lambda: not _pid_exists(bystander_pid), timeout=20,
                   message="the crash restart to end the other backends")
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("SELECT 1")
        assert bystander.closed
    finally:
        bystander.close()

    # Once the postmaster is back, the proxy serves again.
    def reconnects():
        with psycopg.connect(proxy.dsn(connect_timeout=2), autocommit=True) as conn:
            return conn.execute("SELECT 'recovered'").fetchone() == ("recovered",)

    assert wait_until(reconnects, timeout=30, interval=0.2, message="recovery through the proxy")
    assert proxy.alive


def test_upstream_down_at_connect(pgveil_factory):
    from proxy.embedded import free_port
    from helpers import PgServer

    nowhere = PgServer(host="127.0.0.1", port=free_port(), superuser="postgres", kind="external")
    proxy = pgveil_factory(upstream=nowhere)
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(proxy.dsn())
    assert "pgveil:" in str(exc.value)
    assert proxy.alive


# -- garbage in ---------------------------------------------------------------------------------


def _assert_protocol_violation(fields: dict[str, str]) -> None:
    assert fields.get("S") == "FATAL", fields
    assert fields.get("C") == "08P01", fields
    assert fields.get("V") in (None, "FATAL")


def _proxy_still_serves(pgveil) -> None:
    with psycopg.connect(pgveil.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 'still serving'").fetchone() == ("still serving",)
    assert pgveil.alive


_rng = random.Random(20240601)
GARBAGE = {
    "random-bytes": bytes([0xDE]) + bytes(_rng.getrandbits(8) for _ in range(200)),
    "http-request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "startup-length-too-small": struct.pack("!II", 4, 196608),
    "startup-length-huge": struct.pack("!II", 0x7FFFFFF0, 196608) + b"user\0x\0\0",
    "startup-unterminated": struct.pack("!II", 18, 196608) + b"user\0postgres",
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_before_startup(pgveil, case):
    with psycopg.connect(pgveil.dsn(), autocommit=True) as other:
        with RawConnection(pgveil.host, pgveil.port) as raw:
            raw.send(GARBAGE[case])
            fields = raw.read_error_then_eof()
        _assert_protocol_violation(fields)
        assert fields["M"].startswith("pgveil:"), fields
        # An established session is untouched, and new ones are served.
        assert other.execute("SELECT 1").fetchone() == (1,)
    _proxy_still_serves(pgveil)


def test_broken_tls_client_hello_is_dropped(pgveil):
    """A first byte of 0x16 starts direct TLS (PostgreSQL 17+): a broken ClientHello can only
    be answered by closing the connection — no plaintext error inside a TLS exchange."""
    # a whole TLS record (5-byte header, 64 bytes) whose handshake message is garbage
    hello = bytes.fromhex("1603010040") + bytes(_rng.getrandbits(8) for _ in range(64))
    with RawConnection(pgveil.host, pgveil.port) as raw:
        raw.send(hello)
        answer = b""
        while True:
            chunk = raw.sock.recv(65536)
            if not chunk:
                break  # closed
            answer += chunk
    # at most a TLS alert record (content type 21), never a plaintext protocol message
    assert answer == b"" or answer[0] == 0x15, answer[:50]
    _proxy_still_serves(pgveil)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(message(b"Q")[:1] + struct.pack("!I", 0x7FFFFFF0) + b"SELECT 1", id="absurd-length"),
        pytest.param(b"Q" + struct.pack("!I", 2), id="length-below-4"),
        pytest.param(b"P" + struct.pack("!I", 0xFFFFFFFF), id="negative-length"),
    ],
)
def test_bad_message_after_startup(pgveil, pg, bad):
    with RawConnection(pgveil.host, pgveil.port) as raw:
        info = raw.startup(pg.superuser, pg.dbname)
        raw.send(bad)
        fields = raw.read_error_then_eof()
    _assert_protocol_violation(fields)
    assert fields["M"].startswith("pgveil:"), fields
    # The upstream session behind it is gone too (no leaked backends).
    wait_until(lambda: not pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [info["pid"]]),
               message="the upstream backend of the bad session to exit")
    _proxy_still_serves(pgveil)


def test_unknown_message_type(target):
    """PostgreSQL itself answers an unknown type with FATAL 08P01; so must the proxy."""
    with RawConnection(target.host, target.port) as raw:
        raw.startup(target.pg.superuser, target.pg.dbname)
        assert raw.simple_query("SELECT 1")[-1][0] == b"Z"
        raw.send(message(b"y", b"\x00\x01\x02"))
        fields = raw.read_error_then_eof()
    _assert_protocol_violation(fields)
    with target.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_vanishes_mid_message(pgveil, pg):
    """Half a message then a hang-up: the proxy must clean up, not hang or crash."""
    with RawConnection(pgveil.host, pgveil.port) as raw:
        info = raw.startup(pg.superuser, pg.dbname)
        raw.send(b"Q" + struct.pack("!I", 1000) + b"SELECT")
    wait_until(lambda: not pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [info["pid"]]),
               message="the upstream backend of the vanished client to exit")
    _proxy_still_serves(pgveil)


def test_client_vanishes_mid_query(pgveil, pg):
    """The client hangs up while its statement runs: once the statement ends, the upstream
    backend must go away too (PostgreSQL itself only notices a lost client when it next
    reads or writes, so the proxy has to close its side)."""
    raw = RawConnection(pgveil.host, pgveil.port)
    info = raw.startup(pg.superuser, pg.dbname)
    raw.send(message(b"Q", b"SELECT pg_sleep(1), repeat('x', 1000000)\0"))
    wait_active(pg, info["pid"])
    raw.close()
    wait_until(lambda: not pg.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [info["pid"]]),
               timeout=15, message="the abandoned session's backend to exit")
    _proxy_still_serves(pgveil)


# -- protocol negotiation -----------------------------------------------------------------------


def test_gssenc_request_declined(target):
    with RawConnection(target.host, target.port) as raw:
        raw.send(struct.pack("!II", 8, GSSENC_REQUEST))
        assert raw.read_byte() == b"N"
        # After the refusal, the same socket carries on with a normal startup.
        info = raw.startup(target.pg.superuser, target.pg.dbname)
        assert info["pid"]
        msgs = raw.simple_query("SELECT 'after gssenc'")
        assert any(t == b"D" and b"after gssenc" in p for t, p in msgs)


def test_gssencmode_prefer_connects(target):
    with target.connect(gssencmode="prefer") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_gssenc_then_ssl_request(pgveil, pg):
    """What libpq does with gssencmode=prefer and sslmode=prefer: GSSENC, 'N', SSLRequest, 'S', TLS."""
    with RawConnection(pgveil.host, pgveil.port) as raw:
        raw.send(struct.pack("!II", 8, GSSENC_REQUEST))
        assert raw.read_byte() == b"N"
        raw.send(struct.pack("!II", 8, SSL_REQUEST))
        assert raw.read_byte() == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw.sock = ctx.wrap_socket(raw.sock)
        info = raw.startup(pg.superuser, pg.dbname)
        assert info["pid"]
        assert raw.simple_query("SELECT 1")[-1] == (b"Z", b"I")


@pytest.mark.parametrize("mode", ["database", "true"])
def test_replication_connection_refused(target, mode):
    if not target.is_proxy:
        # The database itself accepts it: the refusal is pgveil's own decision.
        with psycopg.connect(target.dsn(replication=mode), autocommit=True) as conn:
            assert conn.pgconn.status == psycopg.pq.ConnStatus.OK
        return
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(target.dsn(replication=mode))
    assert "pgveil:" in str(exc.value)
    assert "replication" in str(exc.value)
    with target.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_replication_refused_raw(pgveil, pg):
    with RawConnection(pgveil.host, pgveil.port) as raw:
        raw.send(startup_packet({"user": pg.superuser, "database": pg.dbname, "replication": "database"}))
        type_, payload = raw.read_message()
        assert type_ == b"E"
        fields = parse_error_fields(payload)
        raw.expect_eof()
    assert fields["S"] == "FATAL"
    assert fields["M"].startswith("pgveil:")
    assert fields["C"] not in ("00000", "")


# -- load ---------------------------------------------------------------------------------------

N_SESSIONS = 200


def test_many_concurrent_sessions(target):
    async def session(i: int, all_open: asyncio.Event, opened: list) -> tuple[int, int, int]:
        conn = await asyncpg.connect(**target.asyncpg_kwargs(timeout=30))
        try:
            opened.append(i)
            if len(opened) == N_SESSIONS:
                all_open.set()
            await asyncio.wait_for(all_open.wait(), 60)  # every session is open at once
            doubled = await conn.fetchval("SELECT $1::int * 2", i)
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert pid == conn.get_server_pid()
            total = await conn.fetchval("SELECT sum(g) FROM generate_series(1, $1::int) g", i + 1)
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE scratch (v int) ON COMMIT DROP")
                await conn.execute("INSERT INTO scratch SELECT generate_series(1, $1::int)", i + 1)
                count = await conn.fetchval("SELECT count(*) FROM scratch")
            assert count == i + 1
            assert doubled == i * 2 and total == (i + 1) * (i + 2) // 2
            return i, pid, count
        finally:
            await conn.close()

    async def main():
        all_open = asyncio.Event()
        opened: list[int] = []
        return await asyncio.gather(*(session(i, all_open, opened) for i in range(N_SESSIONS)))

    t0 = time.monotonic()
    results = asyncio.run(asyncio.wait_for(main(), 80))
    assert [r[0] for r in results] == list(range(N_SESSIONS))
    assert len({r[1] for r in results}) == N_SESSIONS  # 200 distinct backends
    assert time.monotonic() - t0 < 60


def test_many_threads_psycopg(target):
    errors_seen: list[BaseException] = []
    results: dict[int, int] = {}

    def worker(i: int) -> None:
        try:
            with target.connect() as conn:
                for j in range(5):
                    (v,) = conn.execute("SELECT %s::int + %s::int", [i, j]).fetchone()
                    assert v == i + j
                results[i] = conn.info.backend_pid
        except BaseException as exc:  # collected and reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors_seen, errors_seen[:3]
    assert len(results) == 40


# -- lifecycle ---------------------------------------------------------------------------------


def test_healthz(pgveil):
    with urllib.request.urlopen(pgveil.admin_url + "/healthz", timeout=10) as resp:
        assert resp.status == 200
        assert resp.read().decode().strip() == "ok"


def _refused(proxy) -> bool:
    try:
        psycopg.connect(proxy.dsn(connect_timeout=2)).close()
    except psycopg.OperationalError:
        return True
    return False


def test_sigterm_lets_running_statement_finish(pgveil_factory, pg):
    proxy = pgveil_factory(shutdown_timeout=10)
    result: dict[str, object] = {}
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        pid = conn.info.backend_pid

        def run_statement():
            try:
                result["row"] = conn.execute("SELECT pg_sleep(2), 'finished'").fetchone()
            except BaseException as exc:
                result["error"] = exc
            result["done_at"] = time.monotonic()

        th = threading.Thread(target=run_statement, daemon=True)
        th.start()
        wait_active(pg, pid)
        proxy.terminate()
        wait_until(lambda: _refused(proxy), timeout=5, message="new connections to be refused")
        refused_at = time.monotonic()
        th.join(15)
    assert "error" not in result, result.get("error")
    assert result["row"] == ("", "finished")
    assert refused_at < result["done_at"], "new connections were still accepted while draining"
    assert proxy.wait(15) == 0
    assert "Traceback" not in proxy.output()


def test_sigterm_with_idle_sessions_exits_promptly(pgveil_factory):
    proxy = pgveil_factory(shutdown_timeout=10)
    with psycopg.connect(proxy.dsn(), autocommit=True) as idle:
        assert idle.execute("SELECT 1").fetchone() == (1,)
        t0 = time.monotonic()
        proxy.terminate()
        assert proxy.wait(15) == 0
        # Idle sessions have nothing to finish: no need to wait out the grace period.
        assert time.monotonic() - t0 < 5
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")


def test_sigterm_grace_period_is_bounded(pgveil_factory, pg):
    proxy = pgveil_factory(shutdown_timeout=1)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        caught: list[BaseException] = []

        def run_statement():
            try:
                conn.execute("SELECT pg_sleep(30)")
            except BaseException as exc:
                caught.append(exc)

        th = threading.Thread(target=run_statement, daemon=True)
        th.start()
        wait_active(pg, pid)
        t0 = time.monotonic()
        proxy.terminate()
        assert proxy.wait(15) == 0
        assert time.monotonic() - t0 < 8
        th.join(10)
    assert caught and isinstance(caught[0], psycopg.OperationalError)


def _raw_session(proxy, pg) -> tuple[RawConnection, int]:
    raw = RawConnection(proxy.host, proxy.port, timeout=20)
    info = raw.startup(pg.superuser, pg.dbname)
    return raw, int(info["pid"])


def test_sigterm_after_extended_protocol_copy_in_is_prompt(pgveil_factory, pg):
    """libpq runs COPY FROM STDIN in the extended protocol as Parse/Bind/Execute/Sync, the data,
    CopyDone, and a second Sync; the server ignores the first Sync and answers ReadyForQuery
    once. The session is idle afterwards and must not hold up a shutdown."""
    proxy = pgveil_factory(shutdown_timeout=10)
    raw, _ = _raw_session(proxy, pg)
    with raw:
        raw.simple_query("CREATE TEMP TABLE copied (v int)")
        raw.send(
            message(b"P", b"\0COPY copied FROM STDIN\0\0\0")
            + message(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0))
            + message(b"E", b"\0" + struct.pack("!I", 0))
            + message(b"S")
        )
        assert [t for t, _ in raw.read_until(b"G")] == [b"1", b"2", b"G"]
        raw.send(message(b"d", b"1\n2\n3\n") + message(b"c") + message(b"S"))
        assert [t for t, _ in raw.read_until(b"Z")] == [b"C", b"Z"]
        rows = raw.simple_query("SELECT count(*) FROM copied")
        assert (b"D", struct.pack("!hI", 1, 1) + b"3") in rows
        t0 = time.monotonic()
        proxy.terminate()
        fields = raw.read_error_then_eof()
        elapsed = time.monotonic() - t0
    assert fields["C"] == "57P01"
    assert proxy.wait(15) == 0
    assert elapsed < 5, f"an idle session held the shutdown up for {elapsed:.1f}s"


def test_sigterm_waits_for_statement_pipelined_after_function_call(pgveil_factory, pg):
    """A FunctionCall is answered with its own ReadyForQuery; it must not make the statement
    sent after it look finished, or a shutdown cuts that statement off."""
    proxy = pgveil_factory(shutdown_timeout=10)
    raw, pid = _raw_session(proxy, pg)
    int4pl = struct.pack("!Ihh", 177, 0, 2) + struct.pack("!I", 1) + b"2" + struct.pack("!I", 1) + b"3" + struct.pack("!h", 0)
    with raw:
        raw.send(message(b"F", int4pl) + message(b"Q", b"SELECT pg_sleep(1.5), 'finished'\0"))
        assert raw.read_until(b"Z") == [(b"V", struct.pack("!I", 1) + b"5"), (b"Z", b"I")]
        wait_active(pg, pid)
        proxy.terminate()
        msgs = []
        while not msgs or msgs[-1][0] != b"Z":
            try:
                msgs.append(raw.read_message())
            except EOFError:
                break
    got = [(t, parse_error_fields(p).get("M") if t == b"E" else p) for t, p in msgs]
    assert any(t == b"D" and p.endswith(b"finished") for t, p in msgs), f"statement cut off: {got}"
    assert proxy.wait(15) == 0

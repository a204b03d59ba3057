"""Protocol 3.2 (PostgreSQL 18): longer cancel keys, negotiated with max_protocol_version.

Under 3.2 the BackendKeyData secret is 32 bytes instead of 4, so a proxy that assumes 4 bytes
breaks cancellation. The tests need a PostgreSQL 18 libpq (psycopg's, or the wheel's psql).
"""

from __future__ import annotations

import struct
import threading
import time

import psycopg
import pytest
from psycopg import errors

from helpers import RawConnection, startup_packet, wait_active

from .test_psql_pgbench import _psql_cancel, client_env, psql

pytestmark = pytest.mark.timeout(60)

PROTOCOL_3_2 = (3 << 16) | 2
CANCEL_REQUEST = 80877102


@pytest.fixture(autouse=True)
def _server_is_18(pg):
    if int(pg.execute("SHOW server_version_num")[0][0]) < 180000:
        pytest.skip("protocol 3.2 needs a PostgreSQL 18 server")


def _need_libpq_18():
    if psycopg.pq.version() < 180000:
        pytest.skip(f"psycopg's libpq is {psycopg.pq.version()}, protocol 3.2 needs 18")


def test_psycopg_negotiates_3_2(target):
    _need_libpq_18()
    with target.connect(max_protocol_version="latest") as conn:
        assert conn.pgconn.full_protocol_version == 30002
        assert conn.info.backend_pid == conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.execute("SELECT %s::int * 3", [14]).fetchone() == (42,)
    with target.connect(max_protocol_version="3.0") as conn:
        assert conn.pgconn.full_protocol_version == 30000


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_psycopg_cancel_with_3_2(target, pg, method):
    _need_libpq_18()
    with target.connect(max_protocol_version="latest") as conn:
        assert conn.pgconn.full_protocol_version == 30002
        pid = conn.info.backend_pid
        th = threading.Thread(target=lambda: (wait_active(pg, pid), getattr(conn, method)()), daemon=True)
        th.start()
        t0 = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        th.join(10)
        assert time.monotonic() - t0 < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_raw_3_2_key_length_and_cancel(target, pg):
    """A 3.2 startup gets a 32-byte secret; a CancelRequest carrying it cancels the query."""
    with RawConnection(target.host, target.port) as raw:
        raw.send(startup_packet({"user": pg.superuser, "database": pg.dbname}, version=PROTOCOL_3_2))
        pid = key = None
        negotiated = None
        while True:
            type_, payload = raw.read_message()
            if type_ == b"v":  # NegotiateProtocolVersion: the proxy would only speak less
                negotiated = struct.unpack("!I", payload[:4])[0]
            elif type_ == b"K":
                pid, key = struct.unpack("!I", payload[:4])[0], payload[4:]
            elif type_ == b"E":
                pytest.fail(f"3.2 startup failed: {payload!r}")
            elif type_ == b"Z":
                break
        assert negotiated is None, f"downgraded to {negotiated:#x}"
        assert len(key) == 32
        raw.send(b"Q" + struct.pack("!I", 4 + len(b"SELECT pg_sleep(30)\0")) + b"SELECT pg_sleep(30)\0")
        wait_active(pg, pid)
        with RawConnection(target.host, target.port) as canceller:
            canceller.send(struct.pack("!III", 12 + 32, CANCEL_REQUEST, pid) + key)
            assert canceller.sock.recv(100) == b""  # the receiver just closes
        t0 = time.monotonic()
        msgs = raw.read_until(b"Z")
        assert time.monotonic() - t0 < 10
    errs = [p for t, p in msgs if t == b"E"]
    assert errs and b"C57014\0" in errs[0]


@pytest.mark.parametrize("key_len", [4, 32])
def test_wrong_cancel_key_is_ignored(target, pg, key_len):
    """A CancelRequest with the right PID but a wrong secret must not cancel the statement."""
    with target.connect() as conn:
        pid = conn.info.backend_pid
        result: list = []
        th = threading.Thread(
            target=lambda: result.append(conn.execute("SELECT pg_sleep(0.5), 'uncancelled'").fetchone()),
            daemon=True,
        )
        th.start()
        wait_active(pg, pid)
        with RawConnection(target.host, target.port) as canceller:
            canceller.send(struct.pack("!III", 12 + key_len, CANCEL_REQUEST, pid) + b"\x5a" * key_len)
            assert canceller.sock.recv(100) == b""
        th.join(15)
        assert result == [("", "uncancelled")]


def test_psql_3_2_conninfo_and_cancel(target, pg):
    env = client_env(PGMAXPROTOCOLVERSION="latest")
    out = psql(target, "-c", r"\conninfo", env=env).stdout
    assert "Protocol Version" in out
    assert "3.2" in out.split("Protocol Version", 1)[1].splitlines()[0]
    res = _psql_cancel(target, pg, env)
    assert "canceling statement due to user request" in res.stderr


@pytest.mark.parametrize("version", [PROTOCOL_3_2, 196608], ids=["3.2", "3.0"])
def test_client_secret_is_not_the_upstream_secret(pgveil, pg, version):
    """pgveil hands out its own cancel secret: sent straight to the database it cancels
    nothing, sent to pgveil it cancels the statement."""
    with RawConnection(pgveil.host, pgveil.port) as raw:
        raw.send(startup_packet({"user": pg.superuser, "database": pg.dbname}, version=version))
        while True:
            type_, payload = raw.read_message()
            if type_ == b"K":
                pid, key = struct.unpack("!I", payload[:4])[0], payload[4:]
            elif type_ == b"Z":
                break
        assert len(key) == (32 if version == PROTOCOL_3_2 else 4)
        def query(sql: bytes) -> None:
            raw.send(b"Q" + struct.pack("!I", 5 + len(sql)) + sql + b"\0")

        request = struct.pack("!III", 12 + len(key), CANCEL_REQUEST, pid) + key
        query(b"SELECT pg_sleep(0.5), 'not cancelled'")
        wait_active(pg, pid)
        with RawConnection(pg.host, pg.port) as canceller:  # the database itself
            canceller.send(request)
            assert canceller.sock.recv(100) == b""
        msgs = raw.read_until(b"Z")
        assert any(t == b"D" and p.endswith(b"not cancelled") for t, p in msgs), msgs
        query(b"SELECT pg_sleep(30)")
        wait_active(pg, pid)
        with RawConnection(pgveil.host, pgveil.port) as canceller:
            canceller.send(request)
            assert canceller.sock.recv(100) == b""
        msgs = raw.read_until(b"Z")
    assert any(t == b"E" and b"C57014\0" in p for t, p in msgs)

"""Direct TLS negotiation (libpq 17+ ``sslnegotiation=direct``): TLS from the first byte."""

from __future__ import annotations

import socket
import ssl

import psycopg
import pytest

from helpers import ProxyProcess

pytestmark = pytest.mark.skipif(psycopg.pq.version() < 170000,
                                reason="needs libpq 17+ for sslnegotiation=direct")


@pytest.fixture(scope="module")
def tls_proxy(pg, tls_files, tmp_path_factory):
    p = ProxyProcess(workdir=tmp_path_factory.mktemp("direct-tls"), upstream_host=pg.host,
                     upstream_port=pg.port, tls_cert=tls_files[0], tls_key=tls_files[1],
                     name="direct-tls").start()
    yield p
    p.kill()


def test_direct_tls_session_carries_large_results_and_copy(tls_proxy, tls_files, pg):
    dsn = tls_proxy.dsn("postgres", pg.superuser, sslmode="verify-full",
                        sslrootcert=str(tls_files[0]), sslnegotiation="direct")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        big = conn.execute("SELECT repeat('x', 3000000)").fetchone()[0]
        assert len(big) == 3_000_000
        with conn.cursor().copy("COPY (SELECT g FROM generate_series(1, 50000) g) TO STDOUT") as cp:
            rows = sum(1 for _ in cp.rows())
        assert rows == 50000
        assert conn.execute("SELECT %s::int + 1", [41]).fetchone() == (42,)


def test_direct_tls_without_alpn_is_refused(tls_proxy):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # this test is about ALPN, not the certificate
    with socket.create_connection((tls_proxy.host, tls_proxy.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # anything: must not be served
                assert tls.recv(1) == b""  # closed without an answer
                raise ConnectionError("closed")


def test_direct_tls_to_a_proxy_without_certificate_is_closed(pg, tmp_path):
    plain = ProxyProcess(workdir=tmp_path, upstream_host=pg.host, upstream_port=pg.port,
                         name="no-cert").start()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(plain.dsn("postgres", pg.superuser, sslmode="require",
                                      sslnegotiation="direct"), connect_timeout=5)
        # the proxy is fine afterwards
        with psycopg.connect(plain.dsn("postgres", pg.superuser, sslmode="disable")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        plain.kill()

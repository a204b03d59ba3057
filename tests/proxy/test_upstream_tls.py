"""Upstream TLS per sslmode, tested against a real TLS server.

The embedded PostgreSQL is built without OpenSSL, so the TLS upstream here is a second
pgveil that terminates TLS in front of the database: client → pgveil A (sslmode=…) →
pgveil B (TLS, certificate made for this test) → PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from helpers import ProxyProcess
from proxy.tls import make_self_signed


class _Proxy(ProxyProcess):
    upstream_extra: str = ""

    def write_config(self) -> Path:
        path = super().write_config()
        text = path.read_text().replace("[upstream]\n", "[upstream]\n" + self.upstream_extra, 1)
        path.write_text(text)
        return path


@pytest.fixture
def tls_upstream(pg, tmp_path):
    cert, key = tmp_path / "b.crt", tmp_path / "b.key"
    make_self_signed(cert, key, hostnames=["127.0.0.1"])
    b = ProxyProcess(workdir=tmp_path / "b", upstream_host=pg.host, upstream_port=pg.port,
                     tls_cert=cert, tls_key=key, name="tls-upstream").start()
    yield b, cert
    b.kill()


def _front(tmp_path, b, sslmode: str, extra: str = "") -> _Proxy:
    a = _Proxy(workdir=tmp_path / f"a-{sslmode}", upstream_host=b.host, upstream_port=b.port,
               upstream_sslmode=sslmode, name=f"front-{sslmode}")
    a.upstream_extra = extra
    return a.start()


def test_upstream_require_uses_tls(pg, tls_upstream, tmp_path):
    # sslmode=require fails against a server that declines TLS (test below), so a working
    # query here went over TLS.
    b, _ = tls_upstream
    a = _front(tmp_path, b, "require")
    try:
        with psycopg.connect(a.dsn("postgres", pg.superuser, sslmode="disable")) as conn:
            assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    finally:
        a.kill()


def test_upstream_verify_full_accepts_the_right_ca(pg, tls_upstream, tmp_path):
    b, cert = tls_upstream
    a = _front(tmp_path, b, "verify-full", f'sslrootcert = "{cert}"\n')
    try:
        with psycopg.connect(a.dsn("postgres", pg.superuser, sslmode="disable")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg.superuser,)
    finally:
        a.kill()


def test_upstream_verify_full_rejects_another_ca(pg, tls_upstream, tmp_path):
    b, _ = tls_upstream
    other, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    make_self_signed(other, other_key, hostnames=["127.0.0.1"])
    a = _front(tmp_path, b, "verify-full", f'sslrootcert = "{other}"\n')
    try:
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(a.dsn("postgres", pg.superuser, sslmode="disable"))
        msg = str(err.value)
        assert "pgveil: could not connect to the upstream server" in msg
        assert "certificate" in msg.lower()
    finally:
        a.kill()


def test_upstream_require_fails_without_tls_and_prefer_falls_back(pg, tmp_path):
    plain = ProxyProcess(workdir=tmp_path / "plain", upstream_host=pg.host, upstream_port=pg.port,
                         name="plain").start()
    a = _front(tmp_path, plain, "require")
    p = _front(tmp_path, plain, "prefer")
    try:
        with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
            psycopg.connect(a.dsn("postgres", pg.superuser, sslmode="disable"))
        with psycopg.connect(p.dsn("postgres", pg.superuser, sslmode="disable")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        a.kill()
        p.kill()
        plain.kill()

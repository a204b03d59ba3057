"""Authentication relayed through pgveil (trust, password, md5, SCRAM) and TLS to the proxy.

Every auth case runs directly and through the proxy. psycopg does not expose the SQLSTATE of
a failed connection attempt, so the wrong-password cases check the 28P01 with asyncpg, which
does, and the message with psycopg.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading

import asyncpg
import psycopg
import pytest

from helpers import wait_active

pytestmark = pytest.mark.timeout(60)

# role -> (hba method, password) as created by conftest
ROLES = {
    "trust_user": "trust",
    "pw_user": "password",
    "md5_user": "md5",
    "scram_user": "scram-sha-256",
}
PASSWORDS = {
    "trust_user": "trust_secret",
    "pw_user": "pw_secret",
    "md5_user": "md5_secret",
    "scram_user": "scram_secret",
}


def _need_method(pg, role: str) -> None:
    method = pg.auth_methods.get(role)
    if method != ROLES[role]:
        pytest.skip(f"the server's pg_hba does not give {role} {ROLES[role]} (got {method})")


@pytest.mark.parametrize("role", list(ROLES))
def test_auth_method_succeeds(target, role):
    _need_method(target.pg, role)
    with target.connect(user=role, password=PASSWORDS[role]) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == (role, role)
        # The client really went through a password exchange (or not, for trust).
        assert conn.pgconn.used_password == (ROLES[role] != "trust")
        assert conn.info.backend_pid == conn.execute("SELECT pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("role", [r for r in ROLES if ROLES[r] != "trust"])
def test_wrong_password_is_rejected(target, role):
    _need_method(target.pg, role)
    with pytest.raises(psycopg.OperationalError) as exc:
        target.connect(user=role, password="wrong-password")
    assert f'password authentication failed for user "{role}"' in str(exc.value)

    async def via_asyncpg():
        with pytest.raises(asyncpg.InvalidPasswordError) as aexc:
            await asyncpg.connect(**target.asyncpg_kwargs(user=role, password="wrong-password"))
        return aexc.value

    err = asyncio.run(via_asyncpg())
    assert err.sqlstate == "28P01"


@pytest.mark.parametrize("role", [r for r in ROLES if ROLES[r] != "trust"])
def test_missing_password_fails_cleanly(target, role):
    _need_method(target.pg, role)
    with pytest.raises(psycopg.OperationalError) as exc:
        target.connect(user=role, password="")
    assert "no password supplied" in str(exc.value)
    # The proxy is not left in a bad state by a client that gave up mid-authentication.
    with target.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("role", list(ROLES))
def test_asyncpg_auth_methods(target, role):
    _need_method(target.pg, role)

    async def run():
        conn = await asyncpg.connect(**target.asyncpg_kwargs(user=role, password=PASSWORDS[role]))
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(run()) == role


# -- TLS to the proxy --------------------------------------------------------------------------


def _server_has_ssl(pg) -> bool:
    return pg.execute("SHOW ssl")[0][0] == "on"


def _tls_dsn(target, tls_files, **kw):
    if not target.is_proxy and not _server_has_ssl(target.pg):
        pytest.skip("the database itself has no TLS (the embedded server is built without OpenSSL)")
    if target.is_proxy:
        kw.setdefault("sslrootcert", str(tls_files[0]))
    return target.dsn(**kw)


def test_tls_verify_full(target, tls_files):
    dsn = _tls_dsn(target, tls_files, sslmode="verify-full")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 'over tls'").fetchone() == ("over tls",)
        # A big result over TLS (many TLS records) arrives intact.
        (n,) = conn.execute("SELECT length(repeat('t', 3000000))").fetchone()
        assert n == 3_000_000
        data = conn.execute("SELECT string_agg(g::text, ',') FROM generate_series(1, 200000) g").fetchone()[0]
        assert data.split(",")[-1] == "200000"


@pytest.mark.parametrize("role", list(ROLES))
def test_tls_with_each_auth_method(target, tls_files, role):
    _need_method(target.pg, role)
    dsn = _tls_dsn(target, tls_files, sslmode="require", user=role, password=PASSWORDS[role])
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (role,)


def test_tls_scram_channel_binding(pgveil, pg, tls_files):
    """pgveil terminates TLS, so it must never offer SCRAM-SHA-256-PLUS to the client."""
    _need_method(pg, "scram_user")
    base = dict(user="scram_user", password=PASSWORDS["scram_user"], sslmode="require")
    with psycopg.connect(pgveil.dsn(channel_binding="prefer", **base), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("scram_user",)
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(pgveil.dsn(channel_binding="require", **base))
    assert "channel binding" in str(exc.value)


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_tls_cancel(pgveil, pg, tls_files, method):
    """libpq 17+ sends cancel_safe()'s CancelRequest inside TLS; cancel() sends it in the clear."""
    dsn = pgveil.dsn(sslmode="require")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        pid = conn.info.backend_pid
        th = threading.Thread(target=lambda: (wait_active(pg, pid), getattr(conn, method)()), daemon=True)
        th.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        th.join(10)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_tls_not_configured_is_declined(pgveil_factory):
    proxy = pgveil_factory(tls=False)
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(proxy.dsn(sslmode="require"))
    assert "does not support SSL" in str(exc.value)
    # sslmode=prefer falls back to plaintext on the same proxy.
    with psycopg.connect(proxy.dsn(sslmode="prefer"), autocommit=True) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_tls_with_system_psql(pgveil, tls_files):
    psql = shutil.which("psql", path="/usr/bin")
    if not psql:
        pytest.skip("/usr/bin/psql (built with OpenSSL) is not installed")
    dsn = pgveil.dsn(sslmode="verify-full", sslrootcert=str(tls_files[0]))
    out = subprocess.run(
        [psql, "-X", "-d", dsn, "-c", r"\conninfo", "-c", "SELECT 'psql over tls' AS v"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "SSL connection" in out.stdout
    assert "psql over tls" in out.stdout


def test_asyncpg_tls(target, tls_files):
    if not target.is_proxy and not _server_has_ssl(target.pg):
        pytest.skip("the database itself has no TLS (the embedded server is built without OpenSSL)")
    ctx = ssl.create_default_context(cafile=str(tls_files[0]) if target.is_proxy else None)

    async def run():
        conn = await asyncpg.connect(**target.asyncpg_kwargs(ssl=ctx))
        try:
            assert conn._transport.get_extra_info("ssl_object") is not None
            rows = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
            return len(rows), await conn.fetchval("SELECT $1::int + 1", 41)
        finally:
            await conn.close()

    assert asyncio.run(run()) == (5000, 42)


def test_tls_direct_negotiation(pgveil, tls_files):
    dsn = pgveil.dsn(sslmode="verify-full", sslrootcert=str(tls_files[0]), sslnegotiation="direct")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)

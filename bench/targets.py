"""What pgbench connects to: a name, how to start it, and a DSN.

A target is started once before the runs and stopped once after them. Three kinds exist:

- :class:`Direct` — the database itself; the baseline every ratio is taken against.
- :class:`Pgbouncer` — the reference proxy, when the ``pgbouncer`` binary is installed;
  session pooling by default (one server connection per client, like pgveil), optionally
  transaction pooling as an extra target.
- :class:`Pgveil` — ``python -m proxy serve -c CONFIG``. Several may run side by side under
  different names, each with its own TOML fragment merged over the bench's base config
  (``--pgveil-variant NAME=FILE``; built-in variants — masked, audit on — are in
  :data:`PGVEIL_VARIANTS`).

Everything listens on 127.0.0.1, on ports chosen free at start.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.procs import Service, port_open
from bench.server import Database
from proxy.embedded import SYSTEM_USER, free_port

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

_MASKED_POLICY = {
    "exempt_users": [],
    "mask": [
        {"table": "public.bench_customers", "column": "ssn", "mask": "redact"},
        {"table": "public.bench_customers", "column": "email", "mask": "email"},
    ],
}

_AUDIT = {"path": "audit.jsonl", "key_file": "audit.key", "fsync": "batch"}

# Built-in pgveil configurations, by target name: TOML fragments as dicts, merged over the
# base config. "pgveil" is the default one.
PGVEIL_VARIANTS: dict[str, dict] = {
    "pgveil": {},
    # two processes sharing the port (SO_REUSEPORT), as on a 2-core machine one would run it
    "pgveil-w2": {"_workers": 2},
    # the bench user is masked: ssn redacted and email masked on bench_customers ("masked");
    # the per-statement NOTICE is off, as an application would run (pgbench prints every
    # notice to stderr, which costs pgbench more than it costs pgveil)
    "pgveil-masked": {"proxy": {"notice_masked": False}, "policy": _MASKED_POLICY},
    # the same with the default NOTICE on every masked statement
    "pgveil-masked-notice": {"policy": _MASKED_POLICY},
    # every statement audited: intent + completion records, group-committed (fsync = batch)
    "pgveil-audit": {"audit": _AUDIT},
    # audit on where pgveil does its job: the masked session above, with every statement
    # audited (compare with pgveil-masked), and two workers (compare with pgveil-w2; each
    # worker keeps its own chain: audit.jsonl.w0, audit.jsonl.w1)
    "pgveil-masked-audit": {"proxy": {"notice_masked": False}, "policy": _MASKED_POLICY,
                            "audit": _AUDIT},
    "pgveil-w2-audit": {"_workers": 2, "audit": _AUDIT},
}
#: variants run only when named with --targets
OPTIONAL_VARIANTS = frozenset({"pgveil-masked", "pgveil-masked-notice", "pgveil-audit",
                               "pgveil-masked-audit", "pgveil-w2-audit"})


class Target:
    """Base class. ``role`` is "direct", "pgbouncer" or "pgveil": it decides the ratios."""

    role = "direct"

    def __init__(self, name: str) -> None:
        self.name = name
        self.port: int | None = None

    def start(self, db: Database, workdir: Path) -> None:  # pragma: no cover - trivial
        pass

    def stop(self) -> None:
        pass

    def dsn(self, db: Database) -> str:
        return db.dsn(host=LOOPBACK if self.port else None, port=self.port)

    def supports(self, mode: str) -> bool:
        return True

    def describe(self) -> dict:
        return {"name": self.name, "role": self.role}


class Direct(Target):
    role = "direct"

    def __init__(self, name: str = "direct") -> None:
        super().__init__(name)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """When we are root: the user helpers that refuse root (pgbouncer) run as."""
    if os.geteuid() != 0:
        return None
    for name in (SYSTEM_USER, "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and found no unprivileged user for pgbouncer")


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def pgbouncer_version() -> str | None:
    binary = pgbouncer_binary()
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"PgBouncer\s+(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else None


class Pgbouncer(Target):
    role = "pgbouncer"

    def __init__(self, name: str = "pgbouncer", pool_mode: str = "session", pool_size: int = 20):
        super().__init__(name)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.service: Service | None = None
        self.version = pgbouncer_version()

    def supports(self, mode: str) -> bool:
        # Protocol-level prepared statements survive transaction pooling only from 1.21 on.
        if mode == "prepared" and self.pool_mode == "transaction":
            return _version_tuple(self.version) >= (1, 21)
        return True

    def start(self, db: Database, workdir: Path) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed")
        here = workdir / self.name
        here.mkdir()
        self.port = free_port(LOOPBACK)
        auth = here / "userlist.txt"
        auth.write_text(f'"{db.user}" "{db.password or ""}"\n')
        prepared = ""
        if self.pool_mode == "transaction" and self.supports("prepared"):
            prepared = "max_prepared_statements = 200\n"
        conf = here / "pgbouncer.ini"
        conf.write_text(
            "[databases]\n"
            f"* = host={db.host} port={db.port}\n"
            "\n[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {auth}\n"
            f"pool_mode = {self.pool_mode}\n"
            "max_client_conn = 500\n"
            f"default_pool_size = {self.pool_size}\n"
            "server_tls_sslmode = disable\n"
            "client_tls_sslmode = disable\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            + prepared
        )
        user = _unprivileged_user()
        if user is not None:
            for path in (here, auth, conf):
                os.chown(path, user.pw_uid, user.pw_gid)
            workdir.chmod(0o755)
        self.service = Service(
            self.name,
            [binary, str(conf)],
            here / "pgbouncer.log",
            cwd=here,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
        )
        self.service.start(lambda: port_open(LOOPBACK, self.port))

    def stop(self) -> None:
        if self.service:
            self.service.stop()

    def describe(self) -> dict:
        return {**super().describe(), "pool_mode": self.pool_mode, "version": self.version}


def _version_tuple(v: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v or "")[:3]) or (0,)


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _is_table_array(v: object) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(doc: dict, prefix: str = "") -> str:
    """Write nested dicts of scalars, lists and lists of tables as TOML (tables last)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not _is_table_array(v)]
    for k, v in doc.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            lines.append(f"\n[{name}]")
            lines.append(to_toml(v, name))
        elif _is_table_array(v):
            for item in v:
                lines.append(f"\n[[{name}]]")
                lines.append(to_toml(item, name))
    return "\n".join(line for line in lines if line)


def pgveil_available() -> str | None:
    """None when ``python -m proxy serve`` can be tried, else why not."""
    if importlib.util.find_spec("proxy.__main__") is None:
        return "proxy/__main__.py does not exist yet (python -m proxy is not runnable)"
    return None


class Pgveil(Target):
    role = "pgveil"
    READY = "pgveil: listening on"

    def __init__(self, name: str = "pgveil", config: dict | None = None, workers: int | None = None):
        super().__init__(name)
        self.extra = config or {}
        self.workers = workers
        self.service: Service | None = None
        self.config_path: Path | None = None

    def config(self, db: Database, admin_port: int) -> dict:
        base = {
            "proxy": {"listen": f"{LOOPBACK}:{self.port}"},
            "upstream": {"host": db.host, "port": db.port, "sslmode": "disable"},
            "admin": {"listen": f"{LOOPBACK}:{admin_port}"},
        }
        merged = deep_merge(base, self.extra)
        # The bench owns the addresses, whatever a variant says.
        return deep_merge(merged, base)

    def start(self, db: Database, workdir: Path) -> None:
        here = workdir / self.name
        here.mkdir()
        self.port = free_port(LOOPBACK)
        self.config_path = here / "pgveil.toml"
        self.config_path.write_text(to_toml(self.config(db, free_port(LOOPBACK))) + "\n")
        argv = [sys.executable, "-m", "proxy", "serve", "-c", str(self.config_path)]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        log = here / "pgveil.log"
        self.service = Service(self.name, argv, log, cwd=REPO, env=env)

        def ready() -> bool:
            try:
                said = self.READY in log.read_text(errors="replace")
            except OSError:
                return False
            return said and port_open(LOOPBACK, self.port)

        self.service.start(ready, timeout=60)

    def stop(self) -> None:
        if self.service:
            self.service.stop()

    def describe(self) -> dict:
        return {**super().describe(), "workers": self.workers, "config": self.extra}

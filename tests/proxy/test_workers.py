"""--workers N: processes sharing one port, each with its own audit chain, one JIT state."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from helpers import REPO_ROOT, wait_until
from proxy.embedded import free_port


def test_two_workers_start_serve_and_stop_cleanly(pg, tmp_path: Path):
    port, admin = free_port(), free_port()
    cfg = tmp_path / "pgveil.toml"
    cfg.write_text(f"""
[proxy]
listen = "127.0.0.1:{port}"
shutdown_timeout = 10
[upstream]
host = "{pg.host}"
port = {pg.port}
sslmode = "disable"
[admin]
listen = "127.0.0.1:{admin}"
[audit]
path = "{tmp_path}/audit.jsonl"
key_file = "{tmp_path}/audit.key"
[jit]
approvers = ["{pg.superuser}"]
[state]
url = "sqlite:///{tmp_path}/state.db"
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "-c", str(cfg),
                             "--workers", "2"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        # both workers listen, and the first one serves the admin API: none failed starting
        # (they open one new SQLite state file at the same moment)
        wait_until(lambda: sum("listening on" in x for x in lines) == 2
                   and any("admin on" in x for x in lines), timeout=30)
        for i in range(10):
            dsn = f"host=127.0.0.1 port={port} dbname=postgres user={pg.superuser}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                assert conn.execute("SELECT %s::int", [i]).fetchone() == (i,)
        # /metrics (served by the first worker) counts both workers' sessions
        body = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read()
        samples = [s for fam in text_string_to_metric_families(body.decode()) for s in fam.samples]
        up = {s.labels["worker"]: s.value for s in samples if s.name == "pgveil_worker_up"}
        assert up == {"0": 1.0, "1": 1.0}, up
        accepted = {s.labels["worker"]: s.value for s in samples
                    if s.name == "pgveil_client_connections_total"}
        assert set(accepted) == {"0", "1"} and sum(accepted.values()) == 10, accepted
        selects = sum(s.value for s in samples if s.name == "pgveil_statements_total"
                      and s.labels.get("kind") == "select")
        assert selects == 10, selects
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        reader.join(timeout=5)
    out = "".join(lines)
    assert code == 0, out
    assert "failed" not in out and "Traceback" not in out, out
    for n in (0, 1):  # one chain per worker, each complete and verified
        log = tmp_path / f"audit.jsonl.w{n}"
        res = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", str(log),
                              "--key", str(tmp_path / "audit.key")], capture_output=True,
                             text=True, cwd=REPO_ROOT)
        assert res.returncode == 0, res.stdout + res.stderr

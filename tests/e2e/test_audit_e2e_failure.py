"""A sink that cannot write, through the real proxy: fail closed, or go on and count drops.

The tests run as root, so permissions cannot make the log unwritable. Two ways that work
from outside the proxy process:

* ``path`` is a symlink to ``/dev/full`` when the proxy starts: the file opens, every write
  fails with ENOSPC (a full disk). Replacing the symlink lets the writer's retry reopen a
  real file: the sink recovers.
* at runtime, ``prlimit(RLIMIT_FSIZE)`` on the proxy's pid at the log's current size: the
  next write fails with EFBIG (Python ignores SIGXFSZ). Raising the limit again recovers.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import psycopg
import pytest

from audit_fixtures import audit_config, read_log, run_verify, sample, scrape
from helpers import unique_name, wait_until


def _healthy(proxy) -> float:
    return sample(scrape(proxy.admin_port), "pgveil_audit_healthy", default=-1)


def _pgveil_pids(pid: int) -> list[int]:
    """The proxy and its processes (the audit writer process writes the log)."""
    out = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = open(f"/proc/{pid}/task/{task}/children").read().split()
        except OSError:
            continue
        for child in children:
            out.extend(_pgveil_pids(int(child)))
    return out


def _limit_file_size(proxy, size: int | None) -> None:
    """Cap (or with None, uncap) the size of files pgveil's processes may write."""
    soft = resource.RLIM_INFINITY if size is None else size
    for pid in _pgveil_pids(proxy.proc.pid):
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))


def _assert_refused(exc: psycopg.Error) -> None:
    assert exc.sqlstate == "58030", exc
    assert exc.diag.message_primary.startswith("pgveil:"), exc.diag.message_primary
    assert "audit" in exc.diag.message_primary


def test_full_disk_at_start_fails_closed_then_recovers(pgveil_factory, tmp_path: Path) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    log = work / "audit.jsonl"
    os.symlink("/dev/full", log)
    proxy = pgveil_factory(extra_config=audit_config(work))
    wait_until(lambda: _healthy(proxy) == 0, message="the audit log to report unhealthy")

    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        for protocol in ("simple", "extended"):
            with pytest.raises(psycopg.Error) as info:
                if protocol == "simple":
                    conn.execute("SELECT 1 AS refused_simple", prepare=False)
                else:
                    conn.execute("SELECT %s::int AS refused_extended", [1])
            _assert_refused(info.value)
        m = scrape(proxy.admin_port)
        assert sample(m, "pgveil_denials_total", reason="audit_unavailable") >= 2

        # the operator frees the disk: the writer's retry reopens a real file
        log.unlink()
        wait_until(lambda: _healthy(proxy) == 1, timeout=10, message="the audit log to recover")
        assert conn.execute("SELECT 1 AS after_recovery", prepare=False).fetchone() == (1,)
    assert proxy.stop() == 0, proxy.output()
    records = read_log(log)
    texts = [r.get("normalized", "") for r in records if r["type"] in ("intent", "statement")]
    assert any("after_recovery" in t for t in texts)
    assert not any("refused" in t for t in texts), "a refused statement has no intent"
    result = run_verify(log, work / "audit.key")
    assert result.returncode == 0, result.stdout + result.stderr


def test_unopenable_log_path_stops_startup_with_a_clear_error(pg, tmp_path: Path) -> None:
    from helpers import ProxyProcess

    work = tmp_path / "audit"
    work.mkdir()
    (work / "blocker").write_text("a file where the log folder should be")
    proxy = ProxyProcess(workdir=tmp_path / "p", upstream_host=pg.host, upstream_port=pg.port,
                         passwords=pg.passwords, superuser=pg.superuser, startup_timeout=15,
                         extra_config=audit_config(work, path=work / "blocker" / "audit.jsonl"))
    try:
        with pytest.raises(RuntimeError, match="did not report readiness"):
            proxy.start()
        assert proxy.proc.returncode not in (None, 0)
        assert "Not a directory" in proxy.output(), proxy.output()
    finally:
        proxy.kill()


def test_continue_mode_goes_on_and_counts_dropped_records(pgveil_factory, tmp_path: Path) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    log = work / "audit.jsonl"
    os.symlink("/dev/full", log)
    proxy = pgveil_factory(extra_config=audit_config(work, on_failure="continue",
                                                     extra_audit="max_pending = 10"))
    wait_until(lambda: _healthy(proxy) == 0, message="the audit log to report unhealthy")
    n = 20
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        for k in range(n):
            assert conn.execute(f"SELECT {k} AS going_on", prepare=False).fetchone() == (k,)
        m = scrape(proxy.admin_port)
        dropped = sample(m, "pgveil_audit_records_dropped_total")
        # the queue holds at most 10 records (the start event, 4 statements' intents and
        # completions, one more intent); every later intent is dropped (and a dropped intent
        # gets no completion record, so each later statement counts once)
        assert dropped >= n - 5, dropped
        assert sample(m, "pgveil_audit_records_written_total") == 0
        log.unlink()
        wait_until(lambda: _healthy(proxy) == 1, timeout=10, message="the audit log to recover")
        conn.execute("SELECT 1 AS after_recovery", prepare=False)
    assert proxy.stop() == 0, proxy.output()
    records = read_log(log)
    drops = [r for r in records if r.get("event") == "records_dropped"]
    assert len(drops) == 1 and drops[0]["count"] == dropped
    texts = [r["normalized"] for r in records if r["type"] in ("intent", "statement")]
    kept = sum("going_on" in t for t in texts)   # the intents that fit in the queue
    assert kept < n and dropped >= n - kept, (kept, dropped)
    result = run_verify(log, work / "audit.key")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "records were dropped" in result.stdout


def test_disk_full_at_runtime_fails_closed_and_recovers(pgveil_factory, tmp_path: Path) -> None:
    """fsync = "batch": the statement whose intent hits the full disk has already been
    forwarded (its intent is queued and written after recovery); the next ones are refused."""
    work = tmp_path / "audit"
    work.mkdir()
    log = work / "audit.jsonl"
    proxy = pgveil_factory(extra_config=audit_config(work))
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        conn.execute("SELECT 1 AS before_break", prepare=False)
        wait_until(lambda: sample(scrape(proxy.admin_port), "pgveil_audit_writer_lag_seconds") == 0)
        _limit_file_size(proxy, log.stat().st_size)
        try:
            conn.execute("SELECT 1 AS hits_the_break", prepare=False)
            wait_until(lambda: _healthy(proxy) == 0, message="the audit log to report unhealthy")
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT 1 AS refused_while_broken", prepare=False)
            _assert_refused(info.value)
        finally:
            _limit_file_size(proxy, None)
        wait_until(lambda: _healthy(proxy) == 1, timeout=10, message="the audit log to recover")
        conn.execute("SELECT 1 AS after_recovery", prepare=False)
    assert proxy.stop() == 0, proxy.output()
    texts = [r["normalized"] for r in read_log(log) if r["type"] in ("intent", "statement")]
    for name in ("before_break", "hits_the_break", "after_recovery"):
        assert sum(name in t for t in texts) == 1, (name, texts)
    assert not any("refused_while_broken" in t for t in texts)
    result = run_verify(log, work / "audit.key")
    assert result.returncode == 0, result.stdout + result.stderr


def test_fsync_always_fail_closed_does_not_run_a_statement_it_could_not_audit(
        pg, pgveil_factory, tmp_path: Path) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    log = work / "audit.jsonl"
    table = unique_name("unaudited")
    pg.execute(f"CREATE TABLE {table} (v int)")
    proxy = pgveil_factory(extra_config=audit_config(work, fsync="always"))
    try:
        with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
            conn.execute("SELECT 1", prepare=False)
            _limit_file_size(proxy, log.stat().st_size)
            try:
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(f"INSERT INTO {table} VALUES (42)", prepare=False)
                _assert_refused(info.value)
            finally:
                rows = pg.execute(f"SELECT v FROM {table}")
                _limit_file_size(proxy, None)
            assert rows == [], "the statement ran although its audit intent never became durable"
    finally:
        pg.execute(f"DROP TABLE {table}")


def test_statements_refused_for_audit_are_not_counted_as_forwarded(pgveil_factory, tmp_path: Path) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    os.symlink("/dev/full", work / "audit.jsonl")
    proxy = pgveil_factory(extra_config=audit_config(work))
    wait_until(lambda: _healthy(proxy) == 0, message="the audit log to report unhealthy")
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        for _ in range(2):
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT 1 AS refused", prepare=False)
            _assert_refused(info.value)
    m = scrape(proxy.admin_port)
    assert sample(m, "pgveil_denials_total", reason="audit_unavailable") == 2
    assert sample(m, "pgveil_statements_total", kind="select", decision="forward") == 0

"""kill -9 under load: what the audit log guarantees about statements that already returned.

Several sessions run statements in a loop; each statement carries a marker identifier
(``c_s<session>_k<n>``, kept by normalization) and the client notes every statement whose
answer it received. Then the proxy gets SIGKILL mid-load.

* ``fsync = "always"``: the session waits until the intent is durable before it forwards the
  statement.
* ``fsync = "batch"``: the intent is handed to the audit writer process within one turn of
  the event loop, and always before the statement's answer is relayed; the writer outlives
  the proxy and writes what it was handed when its input ends.

Either way every statement that returned to its client has its intent in the log, and the
chain verifies and continues after a restart.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg

from audit_fixtures import MARKER, audit_config, read_log, run_verify

SESSIONS = 4
MIN_RETURNED = 400
MAX_LOAD_SECONDS = 4.0


def _loop(dsn: str, i: int, stop: threading.Event, returned: list[tuple[int, int]]) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True, application_name=f"s{i}") as conn:
            k = 0
            while not stop.is_set():
                conn.execute(f"SELECT {k} AS c_s{i}_k{k}", prepare=False).fetchone()
                returned.append((i, k))  # list.append is atomic
                k += 1
    except psycopg.Error:
        pass  # the proxy died under us: expected


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _load_then_kill(proxy) -> list[tuple[int, int]]:
    stop = threading.Event()
    returned: list[tuple[int, int]] = []
    dsn = proxy.dsn("postgres")
    threads = [threading.Thread(target=_loop, args=(dsn, i, stop, returned), daemon=True)
               for i in range(SESSIONS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + MAX_LOAD_SECONDS
    while len(returned) < MIN_RETURNED and time.monotonic() < deadline:
        time.sleep(0.01)
    writers = _children(proxy.proc.pid)  # the audit writer process
    assert writers, "no audit writer process"
    proxy.proc.kill()            # SIGKILL, mid-load
    proxy.proc.wait(10)
    deadline = time.monotonic() + 20
    while not all(_gone(pid) for pid in writers):  # it writes what it holds, then exits
        assert time.monotonic() < deadline, "the orphaned audit writer did not finish"
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(returned) >= 50, "the load did not get going"
    return list(returned)


def _missing(log: Path, returned: list[tuple[int, int]]) -> list[tuple[int, int]]:
    seen = set()
    for r in read_log(log):
        if r["type"] in ("intent", "statement"):  # a statement record holds its intent
            m = MARKER.search(r["normalized"])
            if m:
                seen.add((int(m.group(1)), int(m.group(2))))
    return [x for x in returned if x not in seen]


def _restart_and_verify(proxy, work: Path) -> str:
    """The chain survives: a restarted proxy continues it and the verifier accepts it."""
    proxy.start()
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        conn.execute("SELECT 1 AS after_restart", prepare=False)
    assert proxy.stop() == 0, proxy.output()
    result = run_verify(work / "audit.jsonl", work / "audit.key")
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_log(work / "audit.jsonl")
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert sum(1 for r in records if r.get("event") == "start") == 2
    return result.stdout


def test_kill9_fsync_always_keeps_the_intent_of_every_returned_statement(
        pgveil_factory, tmp_path: Path) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    proxy = pgveil_factory(extra_config=audit_config(work, fsync="always"))
    returned = _load_then_kill(proxy)
    lost = _missing(work / "audit.jsonl", returned)
    assert lost == [], f"{len(lost)} of {len(returned)} returned statements have no intent: {lost[:10]}"
    _restart_and_verify(proxy, work)


def test_kill9_fsync_batch_keeps_the_intent_of_every_returned_statement(
        pgveil_factory, tmp_path: Path, record_property) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    proxy = pgveil_factory(extra_config=audit_config(work, fsync="batch"))
    returned = _load_then_kill(proxy)
    lost = _missing(work / "audit.jsonl", returned)
    record_property("batch_returned", len(returned))
    assert lost == [], f"{len(lost)} of {len(returned)} returned statements have no intent: {lost[:10]}"
    # most queries went as one record with their outcome, which the writer had from the
    # shared ring when the proxy died
    types = [r["type"] for r in read_log(work / "audit.jsonl")]
    assert types.count("statement") > len(returned) // 2, types[:20]
    _restart_and_verify(proxy, work)

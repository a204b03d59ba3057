"""The audit writer process: same lines as sealing in the proxy, survives its own death,
and writes what it received when the proxy dies."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys

from proxy.audit import AuditLog, AuditSettings
from proxy.audit.ring import RingWriter
from proxy.audit.sinks.child import ChildSink
from proxy.audit.verify import verify_files

from audit_helpers import intent_fields, key_of, lines_of, run, write_log


def _process(settings: AuditSettings) -> AuditSettings:
    return dataclasses.replace(settings, writer="process")


def test_writer_process_writes_a_chain_that_verifies(settings: AuditSettings) -> None:
    s = _process(settings)

    async def main() -> AuditLog:
        log = await write_log(s, 300)
        assert isinstance(log._sink, ChildSink)  # type: ignore[attr-defined]
        return log

    log = run(main())
    assert log.written == 602  # start + 300 × (intent, complete) + stop
    report = verify_files(s.path, key_of(s))
    assert report.ok and report.records == 602
    # and a second run continues the same chain, sealed by a new process
    run(write_log(s, 5))
    report = verify_files(s.path, key_of(s))
    assert report.ok and report.records == 614


def test_same_lines_as_sealing_in_the_proxy(settings: AuditSettings, tmp_path) -> None:
    """Byte for byte (but the timestamps): the format does not depend on where it is sealed."""
    thread = dataclasses.replace(settings, path=str(tmp_path / "t.jsonl"), writer="thread")
    proc = dataclasses.replace(settings, path=str(tmp_path / "p.jsonl"), writer="process")
    for s in (thread, proc):
        run(write_log(s, 3))

    def shape(path):
        out = []
        for line in lines_of(path):
            rec = json.loads(line)
            out.append([k for k in rec] + [rec["type"], rec.get("seq")])
        return out

    assert shape(thread.path) == shape(proc.path)


def test_writer_process_killed_is_restarted_and_the_chain_holds(settings: AuditSettings) -> None:
    s = _process(settings)

    async def main() -> AuditLog:
        log = AuditLog(s)
        await log.start()
        for i in range(50):
            log.complete(log.intent(intent_fields(n=i)), {"rows": 1, "sqlstate": "00000"})
        await log.flush(10)
        os.kill(log._sink._proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        await log._sink._proc.wait()  # type: ignore[attr-defined]
        for i in range(50, 100):
            log.complete(log.intent(intent_fields(n=i)), {"rows": 1, "sqlstate": "00000"})
        await log.flush(20)
        await log.close()
        return log

    log = run(main())
    report = verify_files(s.path, key_of(s))
    assert report.ok, report
    assert report.records == log.written == 202


PROXY_STANDIN = r"""
import asyncio, json, os, sys
from proxy.audit import AuditLog, AuditSettings
s = AuditSettings(**json.loads(sys.argv[1]))
async def main():
    log = AuditLog(s)
    await log.start()
    for i in range(200):
        log.intent({"session": "s", "user": "u", "database": "d", "decision": "forward", "n": i})
    # hand the batch to the writer process, then die without closing anything
    await asyncio.sleep(0.2)
    print("handed", log.written, flush=True)
    os.kill(os.getpid(), 9)
asyncio.run(main())
"""


def _killed_standin(script: str, s: AuditSettings) -> list[str]:
    """Run ``script`` as a proxy stand-in that kills itself (-9); the words it printed."""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(dataclasses.asdict(s))],
                          capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.split()


def _wait_for_lines(s: AuditSettings, n: int) -> None:
    """Until the orphaned writer has written ``n`` lines (it then exits on end of input)."""
    async def settled() -> None:
        for _ in range(200):
            if len(lines_of(s.path)) >= n:
                return
            await asyncio.sleep(0.05)

    run(settled())


def test_the_writer_process_outlives_a_killed_proxy_cleanly(settings: AuditSettings) -> None:
    s = _process(settings)
    handed = int(_killed_standin(PROXY_STANDIN, s)[-1])
    assert handed >= 201  # start + 200 intents were acknowledged before the kill
    _wait_for_lines(s, handed)
    # the orphaned writer saw end of input, closed the sink (head file included) and exited
    report = verify_files(s.path, key_of(s))
    assert report.ok, report
    assert report.records >= handed


QUEUED_THEN_KILLED = r"""
import asyncio, json, os, sys
from proxy.audit import AuditLog, AuditSettings
s = AuditSettings(**json.loads(sys.argv[1]))
async def main():
    log = AuditLog(s)
    await log.start()
    await log.flush(10)
    for i in range(200):
        log.intent({"session": "s", "user": "u", "database": "d", "decision": "forward", "n": i})
    # no group commit, no turn of the loop: the records are only queued (and in the ring)
    print("queued", log.written, log.pending, flush=True)
    os.kill(os.getpid(), 9)
asyncio.run(main())
"""


def test_records_queued_but_never_committed_survive_kill_9(settings: AuditSettings) -> None:
    """Queued is enough: the proxy is killed before any group commit takes its records, and
    the orphaned writer still writes all of them from the shared ring."""
    s = _process(settings)
    written, pending = map(int, _killed_standin(QUEUED_THEN_KILLED, s)[1:3])
    assert pending == 200 and written >= 1  # the start record was durable, the rest queued
    _wait_for_lines(s, written + pending)  # the orphaned writer drains the ring and exits
    report = verify_files(s.path, key_of(s))
    assert report.ok, report
    assert report.records == written + pending
    assert [json.loads(line).get("n") for line in lines_of(s.path)][written:] == list(range(200))


def _child(s: AuditSettings, ring: RingWriter | None = None) -> subprocess.Popen:
    """A writer process, started and opened as the proxy does (with ``ring``, sharing it)."""
    start = {"settings": dataclasses.asdict(s)}
    if ring is not None:
        start["ring"] = [ring.fd, ring.size]
    proc = subprocess.Popen([sys.executable, "-m", "proxy.audit.child"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, pass_fds=(ring.fd,) if ring else (),
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(start).encode() + b"\n" + b"O")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["ok"]
    return proc


def _prefix(n: int) -> bytes:
    return (b'{"seq":%d,"ts":"2026-01-01T00:00:00.000000Z","instance":"test-1","type":"event",'
            b'"event":"x"' % n)


def test_writer_ignores_group_signals_and_ends_with_its_input(settings: AuditSettings) -> None:
    """Ctrl-C or a service manager signals the whole group: the writer must outlive the
    proxy's shutdown (which still flushes records to it) and end only with its input."""
    s = _process(settings)
    proc = _child(s)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    prefix = _prefix(1)
    proc.stdin.write(b"W" + struct.pack("!QIQ", 1, len(prefix), 0) + prefix)
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["seq"] == 1  # still there, writing
    proc.stdin.close()
    assert proc.wait(10) == 0
    report = verify_files(s.path, key_of(s))
    assert report.ok and report.records == 1


def _request(op: bytes, first: int, seqs: list[int], ring_end: int = 0) -> bytes:
    payload = b"\n".join(_prefix(n) for n in seqs)
    return op + struct.pack("!QIQ", first, len(payload), ring_end) + payload


def test_records_in_the_ring_are_written_when_the_input_ends(settings: AuditSettings) -> None:
    """What the proxy put in the shared ring (no commit asked, no request at all) is written
    once the proxy is gone: the basis of "every statement that returned has its intent"
    under fsync=batch."""
    s = _process(settings)
    ring = RingWriter(4096)
    proc = _child(s, ring)
    for n in (1, 2, 3, 4):
        assert ring.put(_prefix(n))
    proc.stdin.close()  # the proxy died: no W ever comes
    assert proc.wait(10) == 0
    ring.close()
    report = verify_files(s.path, key_of(s))
    assert report.ok and report.records == 4, report


def test_the_ring_wraps_and_frees_what_the_writer_took(settings: AuditSettings) -> None:
    """Records cross the ring's end many times; each W reports how far the writer read,
    and only that space is reused."""
    s = _process(settings)
    ring = RingWriter(4096)
    proc = _child(s, ring)
    n = 0
    for _ in range(30):
        while ring.put(_prefix(n + 1)):
            n += 1
        assert ring.write_pos - ring.taken > 4096 - 200  # full: the next one did not fit
        proc.stdin.write(_request(b"W", n + 1, [], ring.write_pos))
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        assert reply == {"ok": True, "seq": n, "taken": ring.write_pos}
        ring.taken = reply["taken"]
    proc.stdin.close()
    assert proc.wait(10) == 0
    ring.close()
    report = verify_files(s.path, key_of(s))
    assert report.ok and report.records == n > 30 * 4096 // 120, report
    assert [json.loads(line)["seq"] for line in lines_of(s.path)] == list(range(1, n + 1))


def test_records_are_taken_in_seq_order_only(settings: AuditSettings) -> None:
    s = _process(settings)
    ring = RingWriter(4096)
    proc = _child(s, ring)
    assert ring.put(_prefix(1))
    proc.stdin.write(_request(b"W", 3, [3], ring.write_pos))  # 2 never came: 3 refused
    proc.stdin.flush()
    refused = json.loads(proc.stdout.readline())
    assert refused["ok"] is False and "missing" in refused["error"]
    assert refused["taken"] == ring.write_pos  # record 1 was taken from the ring all the same
    assert ring.put(_prefix(5))  # a gap in the ring: dropped, the proxy resends it
    proc.stdin.write(_request(b"W", 1, [1, 2, 3, 4], ring.write_pos))  # 1 is skipped
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["seq"] == 4
    proc.stdin.close()
    assert proc.wait(10) == 0
    ring.close()
    report = verify_files(s.path, key_of(s))
    assert report.ok and report.records == 4, report
    assert [json.loads(line)["seq"] for line in lines_of(s.path)] == [1, 2, 3, 4]


def test_the_log_puts_records_in_the_ring_as_they_are_queued(
        settings: AuditSettings) -> None:
    s = _process(settings)

    async def main() -> None:
        log = AuditLog(s)
        await log.start()
        sink = log._sink  # type: ignore[attr-defined]
        rid = log.intent(intent_fields(n=1))
        assert sink.sent_seq == rid and not log._unsent  # in the shared ring at once
        assert sink._ring.write_pos > sink._ring.taken
        rid2 = log.complete(rid, {"rows": 1, "sqlstate": "00000"})
        await log.flush(10)        # or the next group commit takes it
        assert sink.sent_seq == rid2 and log.last_seq == rid2
        await log.close()

    run(main())
    assert verify_files(s.path, key_of(s)).ok


def test_a_stopped_writer_fills_its_ring_then_catches_up(settings: AuditSettings) -> None:
    """The writer process is stopped (a stalled disk, a debugger): records fill its ring,
    are counted as stalled and wait in the proxy; once it runs again everything is written."""
    s = _process(settings)
    big = "x" * 4000

    async def main() -> int:
        log = AuditLog(s)
        log._sink.ring_size = 1 << 16  # type: ignore[attr-defined]
        await log.start()
        sink = log._sink  # type: ignore[attr-defined]
        os.kill(sink._proc.pid, signal.SIGSTOP)
        try:
            n = 0
            while log.handoffs_stalled == 0:
                assert n < 2000, "the ring never filled"
                log.intent(intent_fields(n=n, note=big))
                log.handoff()
                n += 1
            assert log._unsent  # type: ignore[attr-defined]
            for i in range(n, n + 20):  # later records queue behind, in order
                log.intent(intent_fields(n=i, note=big))
        finally:
            os.kill(sink._proc.pid, signal.SIGCONT)
        await log.flush(30)
        assert not log._unsent  # type: ignore[attr-defined]
        await log.close()
        return n + 20

    n = run(main())
    report = verify_files(s.path, key_of(s))
    assert report.ok, report
    assert report.records == n + 2  # start, the intents, stop


def test_a_hand_off_overlapping_a_group_commit_sends_the_rest(settings: AuditSettings) -> None:
    """Records queued while a group commit was taking its batch are handed off too (the
    part the commit already sent is skipped, not the whole hand-off)."""
    s = _process(settings)

    async def main() -> None:
        log = AuditLog(s)
        await log.start()
        sink = log._sink  # type: ignore[attr-defined]
        first = log.intent(intent_fields(n=1))
        await log.flush(10)  # a group commit sends it and trims the hand-off list
        assert sink.sent_seq == first and not log._unsent  # type: ignore[attr-defined]
        # a commit that takes its batch while more records are queued: the later ones
        # stay listed for the hand-off
        log._unsent, log._unsent_first = [b"stale"], first  # type: ignore[attr-defined]
        second = log.intent(intent_fields(n=2))
        log.handoff()
        assert sink.sent_seq == second  # the new record went, the old one was skipped
        await log.close()

    run(main())
    report = verify_files(s.path, key_of(s))
    assert report.ok and report.records == 4, report  # start, 2 intents, stop

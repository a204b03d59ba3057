"""A sink that cannot write: healthy turns False, fail_closed refuses, recovery resumes.

Tests run as root, so permissions cannot make a path unwritable. Instead: a log path whose
parent is a regular file (cannot be created at all), and /dev/full (every write fails with
ENOSPC, like a full disk) swapped in under the open file.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from proxy.audit import AUDIT_UNAVAILABLE, AuditLog, AuditSettings, AuditUnavailable
from proxy.audit.verify import verify_files

from audit_helpers import intent_fields, key_of, run


async def wait_for(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def test_unopenable_path_fails_start_with_a_clear_error(settings: AuditSettings, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    settings.path = str(tmp_path / "afile" / "audit.jsonl")

    async def main() -> None:
        log = AuditLog(settings)
        with pytest.raises(AuditUnavailable, match="Not a directory"):
            await log.start()
        assert not log.healthy

    run(main())
    assert AUDIT_UNAVAILABLE.sqlstate == "58030" and AUDIT_UNAVAILABLE.message.startswith("pgveil:")


def test_unopenable_then_fixed_recovers(settings: AuditSettings, tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log folder should be")
    settings.path = str(blocker / "audit.jsonl")

    async def main() -> AuditLog:
        log = AuditLog(settings)
        await log.start(strict=False)
        assert not log.healthy and "Not a directory" in (log.last_error or "")
        with pytest.raises(AuditUnavailable):
            log.intent(intent_fields())
        blocker.unlink()                                  # the operator fixes it
        await wait_for(lambda: log.healthy)
        rid = log.intent(intent_fields())
        assert await log.durable(rid)
        await log.close()
        return log

    log = run(main())
    assert log.written == 3 and verify_files(settings.path, key_of(settings)).ok


def _break_disk(log_path: str, log: AuditLog) -> None:
    """From now on writes fail with ENOSPC: the open fd and the path both lead to /dev/full."""
    os.rename(log_path, log_path + ".aside")
    os.symlink("/dev/full", log_path)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, log._sink._fd)  # type: ignore[attr-defined]
    os.close(full)


def _fix_disk(log_path: str) -> None:
    os.unlink(log_path)
    os.rename(log_path + ".aside", log_path)


def test_disk_full_fail_closed_refuses_then_recovers(settings: AuditSettings) -> None:
    async def main() -> AuditLog:
        log = AuditLog(settings)
        await log.start()
        for i in range(5):
            log.complete(log.intent(intent_fields(n=i)), {"rows": i})
        await log.flush()
        assert log.healthy

        _break_disk(settings.path, log)
        in_flight = log.intent(intent_fields(n=100))       # accepted: the sink looked fine
        with pytest.raises(AuditUnavailable):               # waiting for it fails closed
            await log.durable(in_flight)
        assert not log.healthy and "No space left" in (log.last_error or "")
        with pytest.raises(AuditUnavailable) as err:        # new statements are refused
            log.intent(intent_fields(n=101))
        assert err.value.error is AUDIT_UNAVAILABLE
        log.complete(in_flight, {"rows": 0, "sqlstate": "58030"})  # outcomes still queue
        assert log.pending >= 2 and log.lag_seconds > 0

        _fix_disk(settings.path)
        await wait_for(lambda: log.healthy)
        log.complete(log.intent(intent_fields(n=102)), {"rows": 1})
        await log.close()
        return log

    log = run(main())
    recs = [json.loads(x) for x in Path(settings.path).read_text().splitlines()]
    ns = [r["n"] for r in recs if r["type"] == "intent"]
    assert ns == [0, 1, 2, 3, 4, 100, 102]                  # every accepted record, once
    assert log.dropped == 0
    report = verify_files(settings.path, key_of(settings))
    assert report.ok, report.summary()


def test_disk_full_continue_counts_dropped_records(settings: AuditSettings) -> None:
    settings.on_failure = "continue"
    settings.max_pending = 10

    async def main() -> AuditLog:
        log = AuditLog(settings)
        await log.start()
        await log.flush()
        _break_disk(settings.path, log)
        log.intent(intent_fields(n=0))
        await wait_for(lambda: not log.healthy)
        rids = [log.intent(intent_fields(n=i)) for i in range(1, 30)]  # never raises
        assert rids.count(0) == log.dropped > 0
        assert await log.durable(rids[0]) is False          # do not hold statements
        _fix_disk(settings.path)
        await wait_for(lambda: log.healthy)
        log.intent(intent_fields(n=99))
        await log.close()
        return log

    log = run(main())
    recs = [json.loads(x) for x in Path(settings.path).read_text().splitlines()]
    drops = [r for r in recs if r.get("event") == "records_dropped"]
    assert len(drops) == 1 and drops[0]["count"] == log.dropped
    report = verify_files(settings.path, key_of(settings))
    assert report.ok and any("dropped" in n for n in report.notes)


def test_failed_write_is_rolled_back_not_duplicated(settings: AuditSettings) -> None:
    """A batch that fails halfway is cut back; the retry writes each record once."""
    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        await log.flush()
        sink = log._sink  # type: ignore[attr-defined]
        real_write = os.write
        calls = {"n": 0}

        def flaky_write(fd: int, data) -> int:
            calls["n"] += 1
            if calls["n"] == 1:            # half of the batch lands, then the disk fills up
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(28, "No space left on device")
            return real_write(fd, data)

        os.write = flaky_write  # type: ignore[assignment]
        try:
            for i in range(20):
                log.intent(intent_fields(n=i))
            await wait_for(lambda: log.pending == 0)
        finally:
            os.write = real_write  # type: ignore[assignment]
        assert sink._fd is not None
        await log.close()

    run(main())
    report = verify_files(settings.path, key_of(settings))
    assert report.ok and report.records == 22, report.summary()

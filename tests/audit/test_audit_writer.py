"""AuditLog: every record, in order, exactly once; durability waits; keys; minimization."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from pathlib import Path

import pytest

from proxy.audit import AuditLog, AuditSettings, StatementIntent, StatementResult, normalize_sql
from proxy.audit.keys import AuditKeyError, load_key
from proxy.audit.sinks import StdoutSink
from proxy.audit.verify import verify_files, verify_lines

from audit_helpers import intent_fields, key_of, run, write_log


def records(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_concurrent_sessions_get_every_record_in_order(settings: AuditSettings) -> None:
    sessions, per_session = 8, 250

    async def session(log: AuditLog, name: str) -> None:
        for i in range(per_session):
            rid = log.intent(intent_fields(session=name, n=i))
            await asyncio.sleep(0)  # the statement "runs"; other sessions interleave
            log.complete(rid, {"rows": i, "duration_ms": 0.1, "sqlstate": "00000", "session": name})
            if i % 50 == 0:
                await asyncio.sleep(0.001)

    async def main() -> AuditLog:
        log = AuditLog(settings)
        await log.start()
        await asyncio.gather(*(session(log, f"s{k}") for k in range(sessions)))
        await log.close()
        return log

    log = run(main())
    recs = records(settings.path)
    intents = [r for r in recs if r["type"] == "intent"]
    completes = [r for r in recs if r["type"] == "complete"]
    assert len(intents) == len(completes) == sessions * per_session
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    for k in range(sessions):
        mine = [r["n"] for r in intents if r["session"] == f"s{k}"]
        assert mine == list(range(per_session))
    by_seq = {r["seq"]: r for r in intents}
    assert all(by_seq[c["rid"]]["session"] == c["session"] for c in completes)
    assert log.written == len(recs) and log.dropped == 0 and log.batches < len(recs)
    report = verify_files(settings.path, key_of(settings))
    assert report.ok, report.summary()
    assert report.records == len(recs) and not any("stop" in n for n in report.notes)


def test_statement_dataclasses_and_example_line(settings: AuditSettings) -> None:
    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        normalized, fp = normalize_sql("select name, ssn from customers where id = 42")
        rid = log.intent(StatementIntent(
            session="7f3a", client="10.0.0.5:51234", user="alice", database="shop",
            application_name="psql", protocol="extended", fingerprint=fp, normalized=normalized,
            kind="select", tables=["public.customers"], columns=["name", "ssn"], masked=["ssn"],
            decision="rewrite"))
        log.complete(rid, StatementResult(rows=1, duration_ms=0.8123456, sqlstate="00000"))
        log.event("grant.approved", grant="g-12", requester="alice", approver="bob")
        await log.close()

    run(main())
    recs = records(settings.path)
    assert [r["type"] for r in recs] == ["event", "intent", "complete", "event", "event"]
    start, intent, done, grant, stop = recs
    assert start["event"] == "start" and stop["event"] == "stop"
    assert intent["normalized"] == "select name, ssn from customers where id = ?"
    assert intent["masked"] == ["ssn"] and intent["protocol"] == "extended"
    assert done["rid"] == intent["seq"] and done["duration_ms"] == 0.812
    assert grant["event"] == "grant.approved" and grant["approver"] == "bob"
    assert list(intent)[:4] == ["seq", "ts", "instance", "type"]
    assert list(intent)[-2:] == ["prev", "mac"]


def test_literals_are_never_written_unless_asked(settings: AuditSettings, tmp_path: Path) -> None:
    secret = "4111-1111-1111-1111"
    sql = f"update cards set pan = '{secret}' where holder = 'Mallory'"

    async def main(s: AuditSettings) -> None:
        log = AuditLog(s)
        await log.start()
        normalized, fp = normalize_sql(sql)
        rid = log.intent(intent_fields(normalized=normalized, fingerprint=fp, sql=sql,
                                       params=[secret]))
        log.complete(rid, {"rows": 1, "result": [secret]})
        await log.close()

    run(main(settings))
    text = Path(settings.path).read_text()
    assert secret not in text and "Mallory" not in text
    assert "update cards set pan = ? where holder = ?" in text

    loud = AuditSettings(path=str(tmp_path / "loud.jsonl"), key_file=settings.key_file,
                         include_literals=True, instance="loud")
    run(main(loud))
    assert secret in Path(loud.path).read_text()


def test_reserved_fields_are_refused(settings: AuditSettings) -> None:
    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        try:
            with pytest.raises(ValueError, match="seq"):
                log.intent({"seq": 5, "user": "x"})
        finally:
            await log.close()

    run(main())


def test_key_file_is_created_0600_and_reused(settings: AuditSettings) -> None:
    run(write_log(settings, 1))
    mode = stat.S_IMODE(os.stat(settings.key_file).st_mode)
    assert mode == 0o600
    key = key_of(settings)
    assert len(key) == 32
    run(write_log(settings, 1))
    assert key_of(settings) == key
    os.chmod(settings.key_file, 0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        AuditLog(settings)


def test_key_file_appears_whole(tmp_path, monkeypatch) -> None:
    """Another process starting at the same moment (``--workers``) finds either no key file
    or the whole key, never an empty file it would refuse as "key too short"."""
    from proxy.audit import keys

    path = tmp_path / "sub" / "audit.key"
    seen = []
    real_write = os.write

    def watching_write(fd, data):
        seen.append(path.exists())
        return real_write(fd, data)

    monkeypatch.setattr(keys.os, "write", watching_write)
    key = keys.load_or_create_key(str(path))
    assert seen == [False]  # while the key was written, the key file did not exist yet
    assert keys.load_key(str(path)) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # no temp file left


def test_processes_creating_the_key_at_once_agree(tmp_path) -> None:
    import multiprocessing

    path = str(tmp_path / "audit.key")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        keys_seen = pool.map(_create_key, [path] * 8)
    assert len(set(keys_seen)) == 1
    assert bytes.fromhex(keys_seen[0]) == load_key(path)


def _create_key(path: str) -> str:
    from proxy.audit.keys import load_or_create_key

    return load_or_create_key(path).hex()


def test_restart_continues_the_chain(settings: AuditSettings) -> None:
    run(write_log(settings, 5))
    run(write_log(settings, 5))
    recs = records(settings.path)
    assert [r["seq"] for r in recs] == list(range(1, 25))
    assert [r.get("event") for r in recs if r["type"] == "event"] == ["start", "stop"] * 2
    assert verify_files(settings.path, key_of(settings)).ok


def test_fsync_always_durable_waits_for_the_disk(settings: AuditSettings) -> None:
    settings.fsync = "always"

    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        assert log.wait_before_forward
        rid = log.intent(intent_fields())
        before = Path(settings.path).read_bytes()
        assert f'"seq":{rid},'.encode() not in before  # only enqueued so far
        assert await log.durable(rid) is True
        assert f'"seq":{rid},'.encode() in Path(settings.path).read_bytes()
        assert log.last_seq >= rid and log.lag_seconds == 0.0
        # many sessions waiting at once share fsyncs (group commit)
        rids = [log.intent(intent_fields(n=i)) for i in range(200)]
        batches = log.batches
        await asyncio.gather(*(log.durable(r) for r in rids))
        assert log.batches - batches < 20
        await log.close()

    run(main())


def test_a_second_process_cannot_write_the_same_chain(settings: AuditSettings) -> None:
    async def main() -> None:
        first = AuditLog(settings)
        await first.start()
        second = AuditLog(settings)
        with pytest.raises(Exception, match="another process is writing"):
            await second.start()
        await first.close()

    run(main())


def test_stdout_sink_writes_verifiable_lines(settings: AuditSettings) -> None:
    buf = io.BytesIO()
    settings.sink = "stdout"

    async def main() -> None:
        log = AuditLog(settings, sink=StdoutSink(buf))
        await log.start()
        for i in range(50):
            log.complete(log.intent(intent_fields(n=i)), {"rows": i})
        await log.close()

    run(main())
    lines = buf.getvalue().splitlines()
    assert len(lines) == 102 and not Path(settings.path).exists()
    report = verify_lines((("stdout", n, line) for n, line in enumerate(lines, 1)), key_of(settings))
    assert report.ok and report.records == 102


def test_stdout_sink_is_chosen_by_settings(settings: AuditSettings, capfdbinary) -> None:
    settings.sink = "stdout"

    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        log.event("hello")
        await log.close()

    run(main())
    out = capfdbinary.readouterr().out
    assert out.count(b"\n") == 3 and b'"event":"hello"' in out


def test_closed_log_refuses_and_events_can_be_required(settings: AuditSettings) -> None:
    from proxy.audit import AuditUnavailable

    async def main() -> AuditLog:
        log = AuditLog(settings)
        with pytest.raises(AuditUnavailable):           # not started: fail closed
            log.intent(intent_fields())
        assert log.event("early") == 0 and log.dropped == 1
        await log.start()
        assert log.event("grant.used", {"grant": "g1"}, must=True) > 0
        await log.close()
        assert not log.healthy
        with pytest.raises(AuditUnavailable):
            log.intent(intent_fields())
        with pytest.raises(AuditUnavailable):
            log.event("late", must=True)
        assert log.complete(7, {"rows": 1}) == 0
        return log

    log = run(main())
    assert log.dropped == 2
    assert verify_files(settings.path, key_of(settings)).ok

"""pgveil audit verify | tail | search, through the argparse registration the CLI uses."""

from __future__ import annotations

import argparse
import io
import json
import threading
from pathlib import Path

import pytest

from proxy.audit import AuditLog, AuditSettings
from proxy.audit.cli import register
from proxy.audit.reader import follow, parse_since

from audit_helpers import intent_fields, lines_of, run


def pgveil(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgveil")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def trail(settings: AuditSettings) -> AuditSettings:
    """A small trail: alice and bob, forwarded, rewritten and denied statements, an event."""
    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        for i, (user, decision, table) in enumerate([
            ("alice", "forward", "public.orders"), ("bob", "deny", "public.customers"),
            ("alice", "rewrite", "public.customers"), ("alice", "deny", "public.customers"),
        ]):
            rid = log.intent(intent_fields(session=f"s{i}", user=user, decision=decision,
                                           tables=[table], n=i))
            log.complete(rid, {"rows": i, "duration_ms": 1.5, "sqlstate": "00000"})
        log.event("request.created", request="r-1", requester="bob")
        await log.close()

    run(main())
    return settings


def test_verify_ok_and_fail(trail: AuditSettings, capsys) -> None:
    assert pgveil(["audit", "verify", trail.path, "--key", trail.key_file]) == 0
    out = capsys.readouterr().out
    assert "OK 11 records" in out
    lines = lines_of(trail.path)
    lines[4] = lines[4].replace(b'"rows":1', b'"rows":9')
    Path(trail.path).write_bytes(b"".join(lines))
    assert pgveil(["audit", "verify", trail.path, "--key", trail.key_file]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {trail.path}:5: seq 5: MAC mismatch" in out


def test_verify_finds_key_next_to_the_log_or_from_config(trail: AuditSettings, tmp_path: Path,
                                                         capsys) -> None:
    assert pgveil(["audit", "verify", trail.path]) == 2          # audit.key, not the default name
    assert "cannot read audit key" in capsys.readouterr().err
    Path(trail.key_file).rename(tmp_path / "pgveil-audit.key")
    assert pgveil(["audit", "verify", trail.path]) == 0
    cfg = tmp_path / "pgveil.toml"
    cfg.write_text('[audit]\npath = "audit.jsonl"\nkey_file = "pgveil-audit.key"\n')
    assert pgveil(["audit", "verify", "-c", str(cfg)]) == 0
    cfg.write_text('[audit]\nfsync = "never"\n')
    assert pgveil(["audit", "verify", "-c", str(cfg)]) == 2
    assert "audit.fsync" in capsys.readouterr().err


def test_tail_prints_the_last_records_readably(trail: AuditSettings, capsys) -> None:
    assert pgveil(["audit", "tail", trail.path, "-n", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert "done #8" in out[0] and "rows=3" in out[0]
    assert "event    request.created" in out[1] and "requester=bob" in out[1]
    assert "stop" in out[2]
    assert pgveil(["audit", "tail", trail.path, "-n", "100", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 11 and json.loads(out[0])["event"] == "start"


def test_tail_across_rotated_files(settings: AuditSettings, capsys) -> None:
    settings.max_bytes = 4096

    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        for i in range(40):
            log.complete(log.intent(intent_fields(n=i)), {"rows": i})
        await log.close()

    run(main())
    assert pgveil(["audit", "tail", settings.path, "-n", "30", "--json"]) == 0
    seqs = [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()]
    assert seqs == list(range(53, 83))


def test_search_filters_and_follows_intents_to_their_completions(trail: AuditSettings, capsys) -> None:
    assert pgveil(["audit", "search", trail.path, "--user", "alice", "--decision", "deny",
                   "--table", "customers", "--since", "1h"]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert len(out) == 2
    assert "alice@shop" in out[0] and "deny" in out[0] and "public.customers" in out[0]
    assert out[1].split()[3:5] == ["done", "#8"]
    assert "1 matching record(s)" in captured.err
    assert pgveil(["audit", "search", trail.path, "--user", "alice", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    assert pgveil(["audit", "search", trail.path, "--since", "2000-01-01", "--until", "2000-01-02"]) == 0
    assert capsys.readouterr().out == ""
    assert pgveil(["audit", "search", trail.path, "--since", "yesterday"]) == 2


def test_parse_since() -> None:
    from datetime import datetime, timedelta, timezone

    now = datetime(2025, 1, 2, tzinfo=timezone.utc)
    assert parse_since("1h", now) == now - timedelta(hours=1)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2025-01-01T10:00:00Z", now) == datetime(2025, 1, 1, 10, tzinfo=timezone.utc)


def test_follow_prints_new_records_across_rotation(settings: AuditSettings) -> None:
    settings.max_bytes = 4096
    out = io.StringIO()
    run(_write(settings, 1))  # the file exists before following starts
    ready = threading.Event()
    t = threading.Thread(target=follow, args=(settings.path, out), kwargs={
        "as_json": True, "color": False, "poll": 0.02, "stop_after": 30.0,
        "ready": ready.set, "stop": lambda: '"seq":66,' in out.getvalue()})
    t.start()
    assert ready.wait(10)
    run(_write(settings, 30))
    t.join()
    seqs = [json.loads(x)["seq"] for x in out.getvalue().splitlines()]
    assert seqs == list(range(5, 5 + 62))


async def _write(settings: AuditSettings, pairs: int) -> None:
    log = AuditLog(settings)
    await log.start()
    for i in range(pairs):
        log.complete(log.intent(intent_fields(n=i)), {"rows": i})
        if i % 5 == 0:
            await log.flush()  # several batches, so rotation happens while following
    await log.close()


def test_statement_records_read_like_an_intent_with_its_outcome(settings: AuditSettings,
                                                                capsys) -> None:
    """A statement answered before its group commit is one "statement" record: tail and
    search show it with its outcome, --type statement finds both forms."""
    import time

    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        frag = json.dumps(intent_fields(session="s9", user="carol", decision="forward",
                                        tables=["public.orders"], n=1),
                          separators=(",", ":"))[1:-1].encode()
        log.statement_encoded(frag, time.time(), b'"rows":7,"duration_ms":0.25,"sqlstate":"00000"')
        rid = log.intent(intent_fields(session="s9", user="carol", decision="deny",
                                       tables=["public.customers"], n=2))
        log.complete(rid, {"rows": 0, "sqlstate": "42501"})
        await log.close()

    run(main())
    assert pgveil(["audit", "search", settings.path, "--user", "carol", "--table", "orders"]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    assert " statement " in line and "carol@" in line and "-> rows=7 0.25ms sqlstate=00000" in line
    assert "1 matching record(s)" in captured.err
    assert pgveil(["audit", "search", settings.path, "--type", "statement", "--json"]) == 0
    found = [json.loads(x)["type"] for x in capsys.readouterr().out.splitlines()]
    assert found == ["statement", "intent", "complete"]
    assert pgveil(["audit", "search", settings.path, "--type", "event", "--json"]) == 0
    assert [json.loads(x)["event"] for x in capsys.readouterr().out.splitlines()] == ["start", "stop"]

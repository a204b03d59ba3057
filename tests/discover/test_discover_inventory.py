"""Audit cross-check and report rendering (files only, no database)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from policy.detectors import ColumnFinding
from proxy.discover.inventory import audit_files, build_inventory, load_inventory
from proxy.discover.report import Report, render, render_html, render_markdown
from proxy.discover.proposal import glob_escape, render_policy, toml_str, upstream_from_dsn
from proxy.discover.scan import ColumnInfo, ScanResult, TableInfo, TableScan

SENSITIVE = ["public.customers.ssn", "public.customers.email", "public.customers.phone",
             "billing.cards.pan"]


def _lines(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_rotated_logs_and_tolerant_shapes(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    # newest file: PATH; older: PATH.1, oldest: PATH.2.gz
    log.write_text(_lines(
        {"kind": "statement", "user": "ana", "columns": ["customers.ssn"], "masked": [],
         "grants": [{"id": "g-1"}], "decision": "forward", "ts": "2025-03-03T00:00:00Z"},
        "not json at all",
        {"kind": "statement", "user": "eve", "columns": ["public.customers.ssn"],
         "decision": {"action": "deny"}, "ts": "2025-03-04T00:00:00Z"},
    ))
    (tmp_path / "audit.jsonl.1").write_text(_lines(
        {"kind": "grant.approved", "id": "g-1", "subject": "ana", "ts": "2025-02-01T00:00:00Z"},
        {"kind": "grant.approved", "id": "g-9", "subject": "bo", "ts": "2025-02-01T00:00:00Z"},
        {"type": "statement", "id": 7, "session": "s1", "username": "bo", "tables": ["public.customers"],
         "columns": ["email", "ssn"], "masked_columns": ["ssn"], "ts": "2025-02-02T00:00:00Z"},
        {"type": "statement", "id": 7, "session": "s1", "username": "bo", "tables": ["public.customers"],
         "columns": ["email", "ssn"], "masked_columns": ["ssn"], "ts": "2025-02-02T00:00:01Z"},
    ))
    with gzip.open(tmp_path / "audit.jsonl.2.gz", "wt") as fh:
        fh.write(_lines({"kind": "statement", "user": "cy",
                         "columns": [{"schema": "billing", "table": "cards", "column": "pan"}],
                         "masked": [{"table": "billing.cards", "column": "pan"}],
                         "ts": "2025-01-01T00:00:00Z"}))
    assert [p.name for p in audit_files(log)] == ["audit.jsonl.2.gz", "audit.jsonl.1", "audit.jsonl"]

    inv = load_inventory(log, SENSITIVE)
    assert inv.skipped_lines == 1 and inv.statements == 4  # the duplicate completion counts once
    assert (inv.first_ts, inv.last_ts) == ("2025-01-01T00:00:00Z", "2025-03-04T00:00:00Z")
    ssn = inv.columns["public.customers.ssn"]
    assert ssn.status == "read unmasked" and ssn.unmasked_reads == 1 and ssn.masked_reads == 1
    assert dict(ssn.users) == {"ana": 1} and dict(ssn.grants) == {"g-1": 1}  # eve was denied
    assert inv.columns["public.customers.email"].users == {"bo": 1}
    assert inv.columns["billing.cards.pan"].status == "read masked only"
    assert [c.column for c in inv.by_status("never read")] == ["public.customers.phone"]
    assert [g.id for g in inv.unused_grants] == ["g-9"]


def test_grant_used_events_and_mapping_columns() -> None:
    inv = build_inventory(SENSITIVE, [
        {"kind": "grant.created", "grant_id": "a"}, {"kind": "grant.created", "id": "b"},
        {"kind": "grant.used", "id": "b"},
        {"kind": "statement", "user": "x", "columns": {"public.customers": ["phone"]}},
    ])
    assert [g.id for g in inv.unused_grants] == ["a"]
    assert inv.columns["public.customers.phone"].unmasked_reads == 1


def _result(findings: list[ColumnFinding]) -> ScanResult:
    table = TableInfo("public", "customers", "r", 10.0, (ColumnInfo("ssn", "text"),))
    return ScanResult("shop<db>", 100, [TableScan(table, 10, "limit", 0.01, None, findings)], 0.02)


def test_reports_escape_names_and_embed_a_chart(tmp_path: Path) -> None:
    evil = ColumnFinding("public.customers", "<script>alert(1)</script>", "text", "email", 1.0,
                         0.99, 10, 0.6, 0.99, example="a***@example.com")
    ssn = ColumnFinding("public.customers", "ssn", "text", "ssn", 0.9, 0.9, 10, 0.6, 0.9,
                        example="***-**-1234")
    inv = build_inventory(["public.customers.ssn", "public.customers.<script>alert(1)</script>"],
                          [{"kind": "statement", "user": "ana", "columns": ["public.customers.ssn"]}])
    report = Report(_result([evil, ssn]), render_policy([evil, ssn]), inv)
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<svg") == 1 and "unmasked" in page
    md = render_markdown(report)
    assert "***-**-1234" in md and "| public.customers | ssn |" in md
    assert render(report, "x.HTML").startswith("<!doctype html>")
    assert render(Report(_result([ssn]), "", None), "x.md").startswith("# pgveil discover")


def test_policy_rendering_escapes_and_loads() -> None:
    import tomllib

    from policy.rules import policy_from_dict

    odd = ColumnFinding('public.we"ird*', 'col[1]?', "text", "email", 1.0, 0.99, 10, 0.6, 0.99)
    dotted = ColumnFinding("public.a.b", "c", "text", "email", 1.0, 0.99, 10, 0.6, 0.99)
    text = render_policy([odd, dotted], exempt_users=["postgres", "dba"])
    policy = policy_from_dict(tomllib.loads(text)["policy"])
    (rule,) = policy.rules
    assert rule.matches("public", 'we"ird*', "col[1]?")
    assert not rule.matches("public", 'we"irdX', "col1x")
    assert "cannot express" in text
    assert glob_escape("a*b") == "a[*]b" and toml_str('a"\n') == '"a\\"\\n"'


def test_upstream_from_dsn() -> None:
    assert upstream_from_dsn("postgresql://u:pw@db.example:5433/app?sslmode=verify-full") == {
        "host": "db.example", "port": 5433, "sslmode": "require"}
    assert upstream_from_dsn("host=h1,h2 port=6000,6001 sslmode=allow") == {
        "host": "h1", "port": 6000, "sslmode": "prefer"}


def test_reads_the_log_pgveil_writes(tmp_path: Path) -> None:
    """End to end with the real audit writer: intents, completions, grant events."""
    import asyncio

    from proxy.audit import AuditLog, AuditSettings, StatementIntent, StatementResult

    settings = AuditSettings(path=str(tmp_path / "audit.jsonl"),
                             key_file=str(tmp_path / "audit.key"), instance="i-1")

    def intent(user: str, columns: list[str], masked: list[str], decision: str,
               grants: list[str] | None = None) -> StatementIntent:
        return StatementIntent(session="s", user=user, database="shop", fingerprint="f",
                               normalized="select ?", decision=decision, kind="select",
                               tables=["public.customers", "public.orders"], columns=columns,
                               masked=masked, grants=grants or [])

    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        log.event("grant.approved", grant="g-12", requester="alice", approver="bob")
        log.event("grant.approved", grant="g-13", requester="carol", approver="bob")
        rid = log.intent(intent("alice", ["ssn", "email"], ["email"], "forward", ["g-12"]))
        log.complete(rid, StatementResult(rows=1, duration_ms=1.0, sqlstate="00000"))
        rid = log.intent(intent("mallory", ["phone"], [], "hold"))
        log.complete(rid, StatementResult(sqlstate="42501", decision="deny"))
        rid = log.intent(intent("bob", ["ssn"], [], "forward"))
        log.complete(rid, StatementResult(sqlstate="57014"))  # failed: read nothing
        await log.close()

    asyncio.run(main())
    inv = load_inventory(settings.path, SENSITIVE)
    ssn = inv.columns["public.customers.ssn"]
    assert dict(ssn.users) == {"alice": 1} and dict(ssn.grants) == {"g-12": 1}
    assert inv.columns["public.customers.email"].status == "read masked only"
    assert inv.columns["public.customers.phone"].status == "never read"
    assert [g.id for g in inv.unused_grants] == ["g-13"]
    assert inv.grants["g-13"].subject == "carol"


def test_console_progress_live_and_plain() -> None:
    import io

    from rich.console import Console

    from proxy.discover.console import ConsoleObserver, summary_table

    table = TableInfo("public", "customers", "r", 10.0, (ColumnInfo("ssn", "text"),))
    finding = ColumnFinding("public.customers", "ssn", "text", "ssn", 1.0, 0.96, 10, 0.6, 0.9,
                            example="***-**-1234")
    for terminal in (True, False):
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=terminal, width=120)
        with ConsoleObserver(console) as obs:
            obs.tables_found([table])
            obs.table_started(table, 2)
            obs.table_step(table)
            obs.table_step(table)
            obs.table_done(TableScan(table, 10, "limit", 0.01, None, [finding]))
        console.print(summary_table([finding]))
        text = buf.getvalue()
        assert "public.customers" in text and "***-**-1234" in text and "1 sensitive" in text


def test_reads_statement_records_with_their_own_outcome(tmp_path: Path) -> None:
    """pgveil writes a statement answered before its group commit as one "statement"
    record (intent and outcome together): a failed one read nothing."""
    import asyncio
    import time

    from proxy.audit import AuditLog, AuditSettings

    settings = AuditSettings(path=str(tmp_path / "audit.jsonl"),
                             key_file=str(tmp_path / "audit.key"), instance="i-1")

    def members(user: str) -> bytes:
        return json.dumps({"session": "s", "user": user, "database": "shop",
                           "normalized": "select ssn from customers", "decision": "forward",
                           "kind": "select", "tables": ["public.customers"],
                           "columns": ["public.customers.ssn"], "masked": [], "grants": []},
                          separators=(",", ":"))[1:-1].encode()

    async def main() -> None:
        log = AuditLog(settings)
        await log.start()
        log.statement_encoded(members("dave"), time.time(),
                              b'"rows":1,"duration_ms":0.5,"sqlstate":"00000"')
        log.statement_encoded(members("erin"), time.time(),
                              b'"rows":0,"duration_ms":0.5,"sqlstate":"42501"')
        await log.close()

    asyncio.run(main())
    inv = load_inventory(settings.path, SENSITIVE)
    assert dict(inv.columns["public.customers.ssn"].users) == {"dave": 1}

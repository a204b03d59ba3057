"""Discovery against a real PostgreSQL, on generated data with known ground truth.

One embedded server for the module (started and stopped by the ``server`` fixture), one
database with the labelled tables of :mod:`discover_data`, and a 1,000,000-row table to show
that sampling keeps the scan time independent of table size.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

import discover_data as gen
from proxy.discover import scan
from proxy.discover.cli import main
from proxy.discover.proposal import render_config, render_policy
from proxy.discover.scan import connect

BIG_ROWS = 1_000_000


class Server:
    def __init__(self, pg: object, data: dict) -> None:
        self.pg = pg
        self.data = data

    def dsn(self, **extra: str) -> str:
        return self.pg.dsn("discover", **extra)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    from proxy.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres()
    pg.start()
    try:
        pg.psql("CREATE DATABASE discover")
        data = gen.load(pg.dsn("discover"))
        pg.psql(f"""
            CREATE SCHEMA big;
            CREATE TABLE big.page_views AS
              SELECT g AS id, now() - g * interval '1 second' AS viewed_at,
                     'visitor' || g || '@example.com' AS visitor_email,
                     '/p/' || (g % 1000) AS path,
                     ('10.' || (g >> 16 & 255) || '.' || (g >> 8 & 255) || '.' || (g & 255))::inet
                       AS client_ip,
                     (g::bigint * 7919) % 1000000000 AS order_no
              FROM generate_series(1, {BIG_ROWS}) g;
            ANALYZE big.page_views;
        """, "discover")
        yield Server(pg, data)
    finally:
        pg.stop()


def _scores(found: dict[tuple[str, str], str], truth: dict[tuple[str, str], str | None]) -> tuple[float, float]:
    """Column-level precision and recall; a hit needs the right detector."""
    positives = {k: v for k, v in truth.items() if v is not None}
    tp = sum(1 for k, v in found.items() if positives.get(k) == v)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(positives) if positives else 1.0
    return precision, recall


def test_precision_and_recall_at_column_level(server: Server) -> None:
    labelled = sorted({t.split(".")[0] for t in gen.TABLES})
    result = scan(server.dsn(), schemas=labelled, sample_rows=1000)
    found = {(f.table, f.column): f.detector for f in result.findings}
    truth = gen.truth()
    precision, recall = _scores(found, truth)
    wrong = {k: (v, truth.get(k)) for k, v in found.items() if truth.get(k) != v}
    missed = {k: v for k, v in truth.items() if v and found.get(k) != v}
    print(f"\ncolumns={len(truth)} sensitive={sum(1 for v in truth.values() if v)} "
          f"flagged={len(found)} precision={precision:.3f} recall={recall:.3f} "
          f"scan={result.seconds:.2f}s")
    assert precision >= 0.95, wrong
    assert recall >= 0.95, missed
    assert all(t.error is None for t in result.tables)


def test_million_row_table_is_sampled_quickly(server: Server) -> None:
    t0 = time.perf_counter()
    result = scan(server.dsn(), schemas=["big"], sample_rows=1000)
    elapsed = time.perf_counter() - t0
    print(f"\n1M-row scan: {elapsed:.3f}s via {result.tables[0].method}")
    assert elapsed <= 10
    (table,) = result.tables
    assert table.method.startswith("system") and 0 < table.sampled_rows <= 1000
    assert {(f.column, f.detector) for f in result.findings} == {
        ("visitor_email", "email"), ("client_ip", "ip_address")}


def test_unanalysed_tables_and_small_samples(server: Server) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA fresh; CREATE TABLE fresh.t AS "
                     "SELECT 'u' || g || '@example.com' AS email FROM generate_series(1, 5000) g")
    result = scan(server.dsn(), schemas=["fresh"], sample_rows=50)
    (table,) = result.tables
    assert table.sampled_rows == 50 and table.error is None
    assert [f.detector for f in result.findings] == ["email"]


def test_scan_is_read_only_and_bounded(server: Server) -> None:
    with connect(server.dsn(), statement_timeout=2) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            with conn.transaction():
                conn.execute("CREATE TABLE crm.nope (x int)")
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "2s"


def test_locked_or_forbidden_tables_are_skipped_not_fatal(server: Server) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS scanner; CREATE ROLE scanner LOGIN")
        admin.execute("GRANT USAGE ON SCHEMA hr, crm TO scanner; "
                      "GRANT SELECT ON crm.customers, crm.leads_archive TO scanner")
    with psycopg.connect(server.dsn()) as locker:
        locker.execute("LOCK TABLE crm.leads_archive IN ACCESS EXCLUSIVE MODE")
        result = scan(server.dsn(user="scanner"), schemas=["hr", "crm"], statement_timeout=0.3)
        locker.rollback()
    by = {t.table.qualified: t for t in result.tables}
    assert by["hr.employees"].error == "no SELECT privilege"
    assert by["crm.leads_archive"].error and by["crm.leads_archive"].error[:5] in ("55P03", "57014")
    assert by["crm.customers"].error is None and by["crm.customers"].findings


def test_proposal_loads_through_the_config_loader(server: Server) -> None:
    from policy.rules import policy_from_dict
    from proxy.config import parse_settings

    result = scan(server.dsn(), schemas=["crm", "billing", "app", "hr"])
    fragment = render_policy(result.findings)
    policy = policy_from_dict(tomllib.loads(fragment)["policy"])
    assert policy.exempt_users == frozenset({"postgres"}) and policy.trusted_functions == frozenset()
    assert len(policy.rules) == len(result.findings)
    for f in result.findings:
        schema, table = f.table.split(".")
        rule = policy.rule_for(schema, table, f.column)
        assert rule is not None, f
    assert policy.rule_for("crm", "customers", "ssn").mask == "partial"  # type: ignore[union-attr]
    assert policy.rule_for("crm", "customers", "birth_date").mask == "year"  # type: ignore[union-attr]
    assert policy.rule_for("crm", "customers", "loyalty_tier") is None

    config = render_config(server.dsn(sslmode="disable"), result.findings, database="discover")
    settings = parse_settings(config)
    assert settings.upstream.port == server.pg.port and settings.upstream.sslmode == "disable"
    assert "user" not in config.split("[policy]")[0].replace("exempt_users", "")
    assert len(policy_from_dict(settings.policy).rules) == len(result.findings)


def test_cli_end_to_end_never_prints_a_sampled_value(server: Server, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text(
        '{"kind": "grant.approved", "id": "g-1", "subject": "ana", "ts": "2025-01-01T00:00:00Z"}\n'
        '{"kind": "grant.approved", "id": "g-2", "subject": "bo", "ts": "2025-01-01T00:00:01Z"}\n'
        '{"kind": "statement", "user": "ana", "tables": ["crm.customers"], '
        '"columns": ["crm.customers.ssn", "crm.customers.email"], "masked": ["crm.customers.email"], '
        '"grants": ["g-1"], "decision": "rewrite", "ts": "2025-01-02T00:00:00Z"}\n')
    out_toml, md, html = tmp_path / "pgveil.toml", tmp_path / "r.md", tmp_path / "r.html"
    labelled = [a for s in ("crm", "billing", "app", "hr", "shop") for a in ("--schema", s)]
    assert main(["discover", server.dsn(), *labelled, "--out", str(out_toml),
                 "--report", str(md), "--audit", str(audit)]) == 0
    cli_out = capsys.readouterr()
    assert main(["discover", server.dsn(), "--schema", "crm", "--report", str(html),
                 "--audit", str(audit)]) == 0
    cli_out2 = capsys.readouterr()

    from proxy.config import parse_settings
    parse_settings(out_toml.read_text())
    text_md = md.read_text()
    assert "## Findings" in text_md and "## Data inventory" in text_md
    assert "crm.customers.ssn" in text_md and "g-2" in text_md.split("Grants never used")[1]
    assert "crm.customers.phone" in text_md.split("Never read")[1]
    page = html.read_text()
    assert "<svg" in page and "<script" not in page.lower() and "src=" not in page
    everything = "\n".join([cli_out.out, cli_out.err, cli_out2.out, cli_out2.err,
                            out_toml.read_text(), text_md, page])
    leaked = [v for v in gen.sensitive_values(server.data) if v in everything]
    assert not leaked, leaked[:5]
    assert "Sensitive columns" in cli_out.out and "crm.customers" in cli_out.out


def test_cli_out_dash_keeps_stdout_machine_readable(server: Server,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", server.dsn(), "--schema", "billing", "--out", "-"]) == 0
    captured = capsys.readouterr()
    doc = tomllib.loads(captured.out)
    assert {"proxy", "upstream", "policy"} <= doc.keys()
    assert "Sensitive columns" in captured.err


def test_register_adds_the_subcommand() -> None:
    import argparse

    from proxy.discover.cli import register, run

    parser = argparse.ArgumentParser(prog="pgveil")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["discover", "host=x", "--schema", "a", "--schema", "b",
                              "--sample-rows", "10", "--report", "r.html"])
    assert args.func is run and args.schemas == ["a", "b"] and args.sample_rows == 10


def test_cli_reports_connection_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.embedded import free_port

    rc = main(["discover", f"host=127.0.0.1 port={free_port()} connect_timeout=2 dbname=x"])
    assert rc == 2 and "cannot connect" in capsys.readouterr().err

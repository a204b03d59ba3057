"""The audit log through the real proxy: exactly one intent and one completion per statement.

Several psycopg sessions run concurrently through pgveil, mixing the simple protocol, the
extended protocol with parameters, pipelines, multi-row inserts and statements that fail.
After a graceful stop (SIGTERM closes the log) the file must hold, for every session, exactly
the statements it sent, in the order it sent them, each intent followed by one completion
that links to it, with the right SQLSTATE and row count — and ``pgveil audit verify`` must
accept the chain. Literal values and parameters never reach the file by default.

Statements carry a marker (``c_s<session>_k<step>``) as an *identifier* (a column or table
alias): normalization removes literals but keeps identifiers, so the record can be matched
to what the client ran.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from audit_fixtures import MARKER, audit_config, read_log, run_verify, statements
from helpers import unique_name

SECRET_LITERAL = "secret-literal-8842"
SECRET_PARAM = "param-secret-5531"
SESSIONS = 4
STEPS = 50


@dataclass
class Expected:
    marker: str
    protocol: str          # "simple" | "extended"
    sqlstate: str
    rows: int
    insert: bool = False


def _run_session(dsn: str, i: int, table: str, steps: int, out: dict, errors: list) -> None:
    """Run one session's statements; record what was sent, in order."""
    expected: list[Expected] = []
    try:
        with psycopg.connect(dsn, autocommit=True, application_name=f"s{i}") as conn:
            for k in range(steps):
                mark = f"c_s{i}_k{k}"
                shape = k % 5
                if shape == 0:      # simple protocol, a string literal
                    cur = conn.execute(f"SELECT {k} AS {mark}, '{SECRET_LITERAL}' AS lit", prepare=False)
                    assert cur.fetchone()[1] == SECRET_LITERAL
                    expected.append(Expected(mark, "simple", "00000", 1))
                elif shape == 1:    # extended protocol, a parameter
                    cur = conn.execute(f"SELECT %s::text AS {mark}", [SECRET_PARAM])
                    assert cur.fetchone()[0] == SECRET_PARAM
                    expected.append(Expected(mark, "extended", "00000", 1))
                elif shape == 2:    # a multi-row insert: rows must be counted
                    n = k % 7 + 1
                    cur = conn.execute(
                        f"INSERT INTO {table} (s, k) SELECT {i}, g FROM generate_series(1, {n}) AS {mark}(g)",
                        prepare=False)
                    assert cur.rowcount == n
                    expected.append(Expected(mark, "simple", "00000", n, insert=True))
                elif shape == 3:    # an error, in either protocol
                    extended = k % 10 == 8
                    with pytest.raises(psycopg.errors.DivisionByZero):
                        if extended:
                            conn.execute(f"SELECT %s::int / 0 AS {mark}", [k])
                        else:
                            conn.execute(f"SELECT {k} / 0 AS {mark}", prepare=False)
                    expected.append(Expected(mark, "extended" if extended else "simple", "22012", 0))
                else:               # a pipeline of two extended statements
                    with conn.pipeline():
                        c0 = conn.execute(f"SELECT %s::int AS {mark}_p0", [k])
                        c1 = conn.execute(f"SELECT %s::int AS {mark}_p1", [k + 1])
                    assert c0.fetchone()[0] == k and c1.fetchone()[0] == k + 1
                    expected.append(Expected(f"{mark}_p0", "extended", "00000", 1))
                    expected.append(Expected(f"{mark}_p1", "extended", "00000", 1))
    except BaseException as exc:  # reported by the main thread
        errors.append((i, exc))
    out[i] = expected


def _workload(proxy, pg, sessions: int, steps: int) -> dict[int, list[Expected]]:
    table = unique_name("aud")
    pg.execute(f"CREATE TABLE {table} (s int, k int)")
    out: dict[int, list[Expected]] = {}
    errors: list = []
    dsn = proxy.dsn("postgres")
    threads = [threading.Thread(target=_run_session, args=(dsn, i, table, steps, out, errors))
               for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # what the database saw agrees with what the sessions think they did
    want = sum(e.rows for exp in out.values() for e in exp if e.insert)
    assert pg.execute(f"SELECT count(*) FROM {table}")[0][0] == want
    pg.execute(f"DROP TABLE {table}")
    return out


def _check_log(records: list[dict], out: dict[int, list[Expected]]) -> None:
    # the chain starts with "start" and a graceful stop ends it with "stop"
    assert records[0]["type"] == "event" and records[0]["event"] == "start"
    assert records[-1]["type"] == "event" and records[-1]["event"] == "stop"
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))

    intents = [r for r in records if r["type"] == "intent"]
    completes = [r for r in records if r["type"] == "complete"]
    seq_of = {r["seq"]: r for r in records}

    # every completion links to exactly one intent, after it, in the same session
    for c in completes:
        intent = seq_of.get(c["rid"])
        assert intent is not None and intent["type"] == "intent", c
        assert c["seq"] > intent["seq"]
        assert c["session"] == intent["session"]
    # ... and every intent has exactly one completion; a "statement" record is both
    counts = Counter(c["rid"] for c in completes)
    assert all(counts[i["seq"]] == 1 for i in intents), [i for i in intents if counts[i["seq"]] != 1][:3]
    assert len(completes) == len(intents)
    stmts = statements(records)

    session_ids = set()
    for i, expected in out.items():
        mine = [r for r in stmts if r.get("application_name") == f"s{i}"]
        assert len({r["session"] for r in mine}) == 1, "one session id per connection"
        session_ids.add(mine[0]["session"])
        markers = []
        for r in mine:
            m = MARKER.search(r["normalized"])
            assert m is not None, f"intent without its marker: {r['normalized']!r}"
            markers.append(m.group(0))
        # exactly the statements the client sent, in the order it sent them
        assert markers == [e.marker for e in expected]
        for r, e in zip(mine, expected):
            assert r["protocol"] == e.protocol, (e, r)
            assert r["user"] == "postgres" and r["database"] == "postgres"
            assert r["decision"] == "forward"
            assert r["fingerprint"] and r["client"].startswith("127.0.0.1:")
            assert r["sqlstate"] == e.sqlstate, (e, r)
            if e.sqlstate == "00000":
                assert r["rows"] == e.rows, (e, r)
            assert r["duration_ms"] >= 0
    assert len(session_ids) == len(out)
    # nothing but these sessions' statements
    assert len(stmts) == sum(len(e) for e in out.values())


def test_exactly_one_intent_and_completion_per_statement(pg, pgveil_factory, tmp_path: Path) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    proxy = pgveil_factory(extra_config=audit_config(work))
    out = _workload(proxy, pg, SESSIONS, STEPS)
    assert proxy.stop() == 0, proxy.output()

    log = work / "audit.jsonl"
    records = read_log(log)
    _check_log(records, out)
    assert sum(len(e) for e in out.values()) == SESSIONS * (STEPS + STEPS // 5)

    # literals and parameter values never reach the file
    raw = log.read_bytes()
    assert SECRET_LITERAL.encode() not in raw
    assert SECRET_PARAM.encode() not in raw
    assert not any("sql" in r or "params" in r for r in records)
    # the normalized text keeps identifiers, drops values
    simple = next(r for r in statements(records) if r["normalized"].endswith("as lit"))
    assert "?" in simple["normalized"]

    result = run_verify(log, work / "audit.key")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and f"{len(records)} records" in result.stdout


def test_include_literals_writes_the_values(pg, pgveil_factory, tmp_path: Path) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    proxy = pgveil_factory(extra_config=audit_config(work, include_literals=True))
    out = _workload(proxy, pg, 1, 10)
    assert proxy.stop() == 0, proxy.output()
    log = work / "audit.jsonl"
    _check_log(read_log(log), out)
    assert run_verify(log, work / "audit.key").returncode == 0
    raw = log.read_bytes()
    assert SECRET_LITERAL.encode() in raw      # the raw statement text is logged
    assert SECRET_PARAM.encode() in raw        # and so are parameter values


def _masking_config(work: Path, table: str) -> str:
    return audit_config(work) + (
        f'\n[policy]\nexempt_users = ["postgres"]\n\n[[policy.mask]]\n'
        f'table = "public.{table}"\ncolumn = "email"\nmask = "redact"\n')


@pytest.fixture
def masked_table(pg):
    table = unique_name("audm")
    pg.execute(f"CREATE TABLE {table} (id int, email text)")
    pg.execute(f"INSERT INTO {table} VALUES (1, 'ann@example.com')")
    pg.execute(f"GRANT SELECT ON {table} TO trust_user")
    yield table
    pg.execute(f"DROP TABLE IF EXISTS {table}")


def test_masked_and_exempt_statements_record_tables_and_decisions(
        pg, pgveil_factory, tmp_path: Path, masked_table: str) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    proxy = pgveil_factory(extra_config=_masking_config(work, masked_table))
    with psycopg.connect(proxy.dsn("postgres", "trust_user"), autocommit=True) as conn:
        assert conn.execute(f"SELECT id, email AS c_masked FROM {masked_table}",
                            prepare=False).fetchone()[1] != "ann@example.com"
    with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
        assert conn.execute(f"SELECT email AS c_exempt FROM {masked_table} WHERE id = %s",
                            [1]).fetchone() == ("ann@example.com",)
    assert proxy.stop() == 0
    records = read_log(work / "audit.jsonl")
    intents = {r["normalized"]: r for r in statements(records)}
    masked = next(r for t, r in intents.items() if "c_masked" in t)
    assert masked["user"] == "trust_user" and masked["decision"] == "rewrite"
    assert masked["tables"] == [f"public.{masked_table}"]
    assert masked["masked"] == [f"public.{masked_table}.email"]
    assert masked["columns"] == [f"public.{masked_table}.email", f"public.{masked_table}.id"]
    exempt = next(r for t, r in intents.items() if "c_exempt" in t)
    assert exempt["user"] == "postgres" and exempt["decision"] == "forward"
    assert exempt["masked"] == []
    assert exempt["tables"] == [f"public.{masked_table}"], exempt
    # the columns touched: read, and filtered on
    assert exempt["columns"] == [f"public.{masked_table}.email", f"public.{masked_table}.id"]
    assert b"ann@example.com" not in (work / "audit.jsonl").read_bytes()


def test_denied_statement_completion_has_the_sqlstate_the_client_saw(
        pg, pgveil_factory, tmp_path: Path, masked_table: str) -> None:
    work = tmp_path / "audit"
    work.mkdir()
    proxy = pgveil_factory(extra_config=_masking_config(work, masked_table))
    with psycopg.connect(proxy.dsn("postgres", "trust_user"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("DO $$ begin end $$", prepare=False)
    assert info.value.sqlstate == "42501"
    assert proxy.stop() == 0
    records = read_log(work / "audit.jsonl")
    (intent,) = [r for r in records if r["type"] == "intent"]
    assert intent["decision"] == "deny" and intent["reason"] == "denied_statement"
    (done,) = [r for r in records if r["type"] == "complete" and r["rid"] == intent["seq"]]
    assert done["sqlstate"] == info.value.sqlstate


def test_statements_sent_before_the_catalog_loads_wait_for_it_and_record_their_tables(
        pg, pgveil_factory, tmp_path: Path) -> None:
    """The first sessions after start: the catalog is still loading, and a record without
    its tables would hide the statement from ``audit search --table``. The statements wait
    for the first load instead."""
    table = unique_name("early")
    pg.execute(f"CREATE TABLE {table} (id int)")
    work = tmp_path / "audit"
    work.mkdir()
    proxy = pgveil_factory(extra_config=audit_config(work))
    try:
        with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
            for k in range(5):  # right after connect, as fast as the client can
                conn.execute(f"SELECT id AS c_early_{k} FROM {table}", prepare=False)
        assert proxy.stop() == 0
        mine = [r for r in statements(read_log(work / "audit.jsonl"))
                if "c_early_" in r["normalized"]]
        assert len(mine) == 5
        assert [r["tables"] for r in mine] == [[f"public.{table}"]] * 5, mine
    finally:
        pg.execute(f"DROP TABLE IF EXISTS {table}")


def test_tables_follow_the_search_path_of_repeated_statements(pg, pgveil_factory,
                                                              tmp_path: Path) -> None:
    """The same statement text names another table once the search_path changes: its
    records must say which (classifications are kept per skeleton and search_path)."""
    work = tmp_path / "audit"
    work.mkdir()
    a, b = unique_name("sp_a"), unique_name("sp_b")
    for schema in (a, b):
        pg.execute(f"CREATE SCHEMA {schema}")
        pg.execute(f"CREATE TABLE {schema}.things (id int)")
    proxy = pgveil_factory(extra_config=audit_config(work))
    try:
        with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
            # the catalog loads in the background after the first connection: wait for it
            deadline = time.monotonic() + 10
            for probe in itertools.count():
                conn.execute(f"SELECT id AS c_probe_{probe} FROM {a}.things", prepare=False)
                conn.execute("SELECT 1 AS c_flush", prepare=False)
                if any("c_probe_" in r["normalized"] and r["tables"]
                       for r in statements(read_log(work / "audit.jsonl"))):
                    break
                assert time.monotonic() < deadline, "the catalog never loaded"
                time.sleep(0.1)
            for schema in (a, b, a):
                conn.execute(f"SET search_path = {schema}")
                for i in range(4):
                    conn.execute(f"SELECT id FROM things WHERE id = {i}", prepare=False)
        assert proxy.stop() == 0, proxy.output()
        intents = [r for r in statements(read_log(work / "audit.jsonl"))
                   if "from things" in r["normalized"]]
        assert [r["tables"] for r in intents] == (
            [[f"{a}.things"]] * 4 + [[f"{b}.things"]] * 4 + [[f"{a}.things"]] * 4)
    finally:
        for schema in (a, b):
            pg.execute(f"DROP SCHEMA {schema} CASCADE")

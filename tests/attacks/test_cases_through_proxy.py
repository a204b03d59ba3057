"""Every bypass case of shared/attacks/cases.toml (and our own, extra_cases.toml), through a
real pgveil, with real clients — and the same cases without pgveil, to show the oracle bites.

* ``test_case_through_pgveil[<id>]`` — as ``analyst``: psql (simple protocol, all statements
  of the case in one run, BEGIN … ROLLBACK unless ``transaction = false``), then, for a single
  statement or a ``pipeline`` case, psycopg (extended protocol, prepared, binary results).
  Nothing the client saw (rows, COPY data, notices, notifications, error message, DETAIL,
  HINT, CONTEXT) may hold a form of a protected value; ``leak_if_rows``/``leak_if_sqlstate``/
  ``leak_if_match`` must not trigger; a pgveil denial uses 42501 or 0A000; the session
  survives (a probe on the same connection) and a new connection works.
* ``test_case_leaks_without_pgveil[<id>]`` — the same runs straight against PostgreSQL must
  be flagged by the same oracle (every case leaks directly, except the few marked
  ``direct_leak = false`` where privileges already stop them).
* ``test_works_identically[...]`` — the ``[[works]]`` queries give the same rows (and psql
  output) through pgveil as directly, over both protocols.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import psycopg
import pytest

from attack_oracle import (
    Client, attacks_dir, judge, misbehaviour, psql_alive, run_psql, run_psycopg, secret_forms,
    secret_values,
)
from proxy.embedded import bin_dir

HERE = Path(__file__).resolve().parent
ATTACKS = attacks_dir()
PUBLISHED = tomllib.loads((ATTACKS / "cases.toml").read_text()) if ATTACKS else {}
EXTRA = tomllib.loads((HERE / "extra_cases.toml").read_text())

pytestmark = [
    pytest.mark.skipif(ATTACKS is None, reason="shared/attacks not found: set PGVEIL_ATTACKS_DIR "
                       "to the folder holding cases.toml and schema.sql"),
    pytest.mark.timeout(120),
]

CASES = [dict(c, origin="published") for c in PUBLISHED.get("case", [])] + [
    dict(c, origin="extra") for c in EXTRA.get("case", [])
]
WORKS = [w["sql"] for w in PUBLISHED.get("works", [])] + [
    "SELECT c.id, c.vip, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
    "GROUP BY c.id, c.vip ORDER BY c.id",
    "SELECT count(*), sum(amount) FROM payments WHERE paid_on >= '2026-01-01'",
    "SELECT id, name FROM v_customers ORDER BY id",
]


NO_LIBXML = "requires the server to be built with libxml support"


def _ids(case: dict) -> str:
    return case["id"] if case["origin"] == "published" else "extra-" + case["id"]


def extended_applies(case: dict) -> bool:
    """Single statement (one Parse) or an explicit pipeline case."""
    if case.get("pipeline"):
        return True
    return len(case["sql"]) == 1 and ";" not in case["sql"][0].rstrip().rstrip(";")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def forms(attacks_path: Path) -> dict[str, str]:
    return secret_forms(secret_values((attacks_path / "schema.sql").read_text()))


@pytest.fixture(scope="module")
def psql_bin() -> Path:
    return bin_dir() / "psql"


@pytest.fixture(scope="module")
def proxy_client(veil, attacks_db):
    client = Client(veil.dsn(attacks_db, "analyst", password="analyst-pw"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def direct_client(pg, attacks_db):
    client = Client(pg.dsn(attacks_db, "analyst", password="analyst-pw"))
    yield client
    client.close()


def _report(case: dict, seen, reasons: list[str]) -> str:
    return (f"case {case['id']} over {seen.protocol}:\n  " + "\n  ".join(reasons)
            + f"\n  statements: {case['sql']!r}\n--- what the client received ---\n"
            + seen.transcript())


# ------------------------------------------------------------------------------ the cases
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_case_through_pgveil(case, veil, watch, attacks_db, psql_bin, proxy_client, forms):
    dsn = veil.dsn(attacks_db, "analyst", password="analyst-pw")
    failures = []
    runs = [run_psql(psql_bin, dsn, case)]
    if extended_applies(case):
        runs.append(run_psycopg(proxy_client, case,
                                fresh=bool(case.get("pipeline")) or not case.get("transaction", True)))
    for seen in runs:
        if os.environ.get("PGVEIL_ATTACKS_SHOW"):  # -s to read what the client received
            print(f"\n##### {case['id']} over {seen.protocol} (rows={seen.rows}, "
                  f"errors={seen.sqlstates})\n{seen.transcript()}")
        leaked = judge(case, seen, forms)
        if leaked:
            failures.append(_report(case, seen, ["LEAK: " + r for r in leaked]))
        broken = misbehaviour(seen)
        if broken:
            failures.append(_report(case, seen, ["MISBEHAVED: " + r for r in broken]))
    assert veil.alive, f"pgveil exited (code {veil.proc.returncode}) during {case['id']}"
    problem = psql_alive(psql_bin, dsn)
    if problem:
        failures.append(f"case {case['id']}: after the case, {problem}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_case_leaks_without_pgveil(case, pg, attacks_db, psql_bin, direct_client, forms):
    if case.get("direct_leak", True) is False:
        pytest.skip("privileges stop this one even without pgveil (direct_leak = false)")
    dsn = pg.dsn(attacks_db, "analyst", password="analyst-pw", sslmode="disable")
    seen = run_psql(psql_bin, dsn, case)
    if NO_LIBXML in seen.raw:
        pytest.skip("this PostgreSQL is built without libxml: XML functions fail even directly")
    assert case.get("direct_leak") == "extended" or judge(case, seen, forms), (
        f"the oracle saw no leak in a direct psql run of {case['id']}; the case or the oracle "
        f"is toothless:\n{seen.transcript()}")
    if extended_applies(case):
        ext = run_psycopg(direct_client, case,
                          fresh=bool(case.get("pipeline")) or not case.get("transaction", True))
        assert judge(case, ext, forms), (
            f"the oracle saw no leak in a direct extended run of {case['id']}:\n{ext.transcript()}")


def test_enough_extra_cases_per_category():
    """Our own cases cover every category of the published ones, with 25+ in all."""
    published = {c["id"].split("-")[0] for c in PUBLISHED.get("case", [])}
    extra = {}
    for c in EXTRA["case"]:
        extra.setdefault(c["id"].split("-")[0], []).append(c["id"])
    assert sum(map(len, extra.values())) >= 25
    assert published <= set(extra), f"categories without extra cases: {published - set(extra)}"
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"


# ------------------------------------------------------------------------------ what must keep working
def _psql_rows(psql_bin: Path, dsn: str, sql: str) -> str:
    import subprocess

    from attack_oracle import client_env

    out = subprocess.run([str(psql_bin), "-X", "-A", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                         env=client_env())
    assert out.returncode == 0, f"psql failed on {sql!r}: {out.stderr}"
    return out.stdout


@pytest.mark.parametrize("sql", WORKS)
def test_works_identically(sql, pg, veil, watch, attacks_db, psql_bin, proxy_client, direct_client):
    through = veil.dsn(attacks_db, "analyst", password="analyst-pw")
    direct = pg.dsn(attacks_db, "analyst", password="analyst-pw", sslmode="disable")
    assert _psql_rows(psql_bin, through, sql) == _psql_rows(psql_bin, direct, sql)
    results = []
    for client in (direct_client, proxy_client):
        conn = client.connect()
        cur = conn.cursor(binary=True)
        cur.execute(sql, prepare=True, binary=True)
        results.append(([(d.name, d.type_code) for d in cur.description], cur.fetchall()))
        cur.execute(sql, prepare=True, binary=True)  # again: the prepared statement is reused
        assert cur.fetchall() == results[-1][1]
    assert results[1] == results[0]


# ------------------------------------------------------------------------------ session state
# The same statements, one psql -c each, through pgveil and directly: the rows must agree.
# Only non-sensitive columns are read, so any difference means pgveil resolved a name
# differently from PostgreSQL (the decoy schema holds a `customers` named 'decoy').
STATE_SEQUENCES = {
    "set-then-select": [
        "SET search_path = decoy", "SELECT id, name FROM customers WHERE id <= 2 ORDER BY id"],
    "set-then-select-then-reset": [
        "SET search_path = decoy", "SELECT id, name FROM customers WHERE id <= 2 ORDER BY id",
        "RESET search_path", "SELECT id, name FROM customers WHERE id <= 2 ORDER BY id"],
    "set-then-select-same-query": [
        "SET search_path = decoy", "SET search_path = public; SELECT id, name FROM customers WHERE id <= 2 ORDER BY id"],
    "reset-then-select-same-query": [
        "SET search_path = decoy", "RESET search_path; SELECT id, name FROM customers WHERE id <= 2 ORDER BY id"],
    # a later SET in the same string: the SELECT before it still runs with the first SET
    "set-select-then-other-set-same-query": [
        "SET search_path = decoy; SELECT id, name FROM customers WHERE id <= 2 ORDER BY id; "
        "SET work_mem = '8MB'"],
    "set-select-then-reset-same-query": [
        "SET search_path = decoy; SELECT id, name FROM customers WHERE id <= 2 ORDER BY id; "
        "RESET search_path"],
    "set-undone-by-failed-query": [
        "SET search_path = decoy; SELECT 1 / 0", "SELECT id, name FROM customers WHERE id <= 2 ORDER BY id"],
    "set-undone-by-rollback": [
        "BEGIN", "SET search_path = decoy", "ROLLBACK", "SELECT id, name FROM customers WHERE id <= 2 ORDER BY id"],
    "set-local-ends-at-commit": [
        "BEGIN", "SET LOCAL search_path = decoy", "COMMIT", "SELECT id, name FROM customers WHERE id <= 2 ORDER BY id"],
    "set-undone-by-rollback-to-savepoint": [
        "BEGIN", "SAVEPOINT a", "SET search_path = decoy", "ROLLBACK TO SAVEPOINT a",
        "SELECT id, name FROM customers WHERE id <= 2 ORDER BY id", "COMMIT"],
}


@pytest.mark.parametrize("sqls", list(STATE_SEQUENCES.values()), ids=list(STATE_SEQUENCES))
def test_session_state_agrees(sqls, pg, veil, watch, attacks_db, psql_bin):
    import subprocess

    from attack_oracle import client_env

    def rows(dsn: str) -> str:
        args = [str(psql_bin), "-X", "-A", "-d", dsn]
        for s in sqls:
            args += ["-c", s]
        out = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=30, env=client_env())
        return out.stdout

    through = rows(veil.dsn(attacks_db, "analyst", password="analyst-pw"))
    direct = rows(pg.dsn(attacks_db, "analyst", password="analyst-pw", sslmode="disable"))
    assert through == direct, f"through pgveil:\n{through}\ndirectly:\n{direct}"

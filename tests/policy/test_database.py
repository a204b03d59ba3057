"""The rewrites, run for real: every published bypass case against a live PostgreSQL.

A module-scoped embedded server gets the sample schema; the catalog is loaded with
CATALOG_QUERY exactly as the proxy does. Each case runs as ``analyst`` the way the proxy
would run it: decide(), then the rewritten SQL (or nothing, when denied), inside
BEGIN ... ROLLBACK, over the simple protocol and — for single statements — the extended
protocol with binary results. Everything the client could see (rows, COPY data, notices,
notifications, error fields after scrub_error_fields) is checked for every form of every
protected value.
"""

from __future__ import annotations

import os

import re
import tomllib
from pathlib import Path

import psycopg
import pytest

from policy.catalog import CATALOG_QUERY, Catalog
from policy.decision import decide
from policy.grants import Grant, GrantSet
from policy.masks import INSTALL_SQL
from policy.scrub import scrub_error_fields

from .sample import SAMPLE_POLICY_DICT
from policy.rules import policy_from_dict

# shared/attacks: $PGVEIL_ATTACKS_DIR, else next to the repository checkout (as in CI)
ATTACKS = Path(os.environ.get("PGVEIL_ATTACKS_DIR")
               or Path(__file__).resolve().parents[2].parent / "shared" / "attacks")
if os.environ.get("CI") and not (ATTACKS / "cases.toml").exists():
    raise RuntimeError(f"CI: the attack cases are missing ({ATTACKS}); CI provides shared/")

pytestmark = pytest.mark.skipif(not (ATTACKS / "cases.toml").exists(), reason="no attack cases")

CASES = tomllib.loads((ATTACKS / "cases.toml").read_text()) if (ATTACKS / "cases.toml").exists() else {}
SEARCH_PATH = ("$user", "public")

# Extra bypass attempts beyond the published ones (same oracle).
EXTRA_CASES = [
    ("alias-list-short", ["SELECT d FROM customers AS x(a, b, c, d)"]),
    ("only", ["SELECT ssn FROM ONLY customers"]),
    ("only-parens", ["SELECT ssn FROM ONLY (customers) c"]),
    ("lateral", ["SELECT l.s FROM orders o, LATERAL (SELECT ssn AS s FROM customers c WHERE c.id = o.customer_id) l"]),
    ("recursive-cte", ["WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM customers WHERE id = 1 UNION ALL SELECT n + 1, s FROM r WHERE n < 2) SELECT * FROM r"]),
    ("cte-shadow", ["WITH customers AS (SELECT * FROM customers) SELECT ssn FROM customers"]),
    ("with-update", ["WITH u AS (UPDATE customers SET vip = vip WHERE id = 1 RETURNING ssn) SELECT * FROM u"]),
    ("update-from-self", ["UPDATE customers SET name = c2.ssn FROM customers c2 WHERE c2.id = customers.id AND customers.id = 1 RETURNING customers.name"]),
    ("update-set-raw", ["UPDATE customers SET name = ssn WHERE id = 1", "SELECT name FROM customers WHERE id = 1"]),
    ("update-whole-row", ["UPDATE customers c SET name = c::text WHERE id = 1", "SELECT name FROM customers WHERE id = 1"]),
    ("returning-star", ["UPDATE customers SET vip = vip WHERE id = 1 RETURNING *"]),
    ("returning-old", ["UPDATE customers SET vip = vip WHERE id = 1 RETURNING old.ssn"]),
    ("returning-with-old", ["UPDATE customers SET vip = vip WHERE id = 1 RETURNING WITH (OLD AS o) o.ssn"]),
    ("insert-on-conflict", ["INSERT INTO customers AS c (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = c.ssn RETURNING name"]),
    ("merge", ["MERGE INTO orders o USING customers c ON o.customer_id = c.id AND o.id = 1 WHEN MATCHED THEN UPDATE SET note = c.ssn", "SELECT note FROM orders WHERE id = 1"]),
    ("merge-target", ["MERGE INTO customers t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = t.ssn", "SELECT name FROM customers WHERE id = 1"]),
    ("delete-returning", ["DELETE FROM payments WHERE id = 1 RETURNING card_number"]),
    ("rows-from", ["SELECT * FROM ROWS FROM (customer_ssn(1))"]),
    ("quoted-qualified", ['SELECT ssn FROM "public"."customers"']),
    ("format", ["SELECT format('%s', ssn) FROM customers"]),
    ("array-agg-row", ["SELECT array_agg(c) FROM customers c"]),
    ("jsonb-agg-row", ["SELECT jsonb_agg(c) FROM customers c"]),
    ("to-jsonb-star", ["SELECT to_jsonb(c.*) FROM customers c"]),
    ("copy-query", ["COPY (SELECT ssn FROM customers) TO STDOUT"]),
    ("copy-partitioned", ["COPY payments TO STDOUT"]),
    ("ctas", ["CREATE TEMP TABLE x AS SELECT * FROM customers", "SELECT * FROM x"]),
    ("create-view", ["CREATE VIEW vx AS SELECT ssn FROM customers", "SELECT * FROM vx"]),
    ("explain-analyze", ["EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT id FROM customers WHERE ssn = '995-50-6727'"]),
    ("window", ["SELECT first_value(ssn) OVER (ORDER BY id) FROM customers"]),
    ("group-by", ["SELECT ssn, count(*) FROM customers GROUP BY ssn"]),
    ("distinct-on", ["SELECT DISTINCT ON (ssn) ssn, email FROM customers ORDER BY ssn"]),
    ("ctid", ["SELECT * FROM customers WHERE ctid = '(0,1)'"]),
    ("column-size", ["SELECT pg_column_size(ssn), length(ssn) FROM customers WHERE ssn LIKE '99%'"]),
    ("case-when", ["SELECT id FROM customers WHERE CASE WHEN ssn > '5' THEN true END"]),
    ("exists-probe", ["SELECT 1 WHERE EXISTS (SELECT 1 FROM customers WHERE ssn = '995-50-6727')"]),
    ("view-predicate", ["SELECT id FROM v_customers WHERE ssn = '995-50-6727'"]),
    ("partition-parent", ["SELECT card_number FROM payments"]),
    ("table-only", ["TABLE ONLY payments_2026"]),
    ("unicode-table", ['SELECT ssn FROM U&"customer\\0073"']),
    ("multi-statement-deny", ["SELECT 1; SELECT customer_ssn(1)"]),
    ("set-config-scs", ["SELECT set_config('standard_conforming_strings', 'off', false)", "SELECT 'A\\' -- ', ssn AS leaked -- \n FROM customers"]),
    ("table-to-xml", ["SELECT table_to_xml('customers', true, false, '')"]),
    ("ts-stat", ["SELECT * FROM ts_stat('SELECT to_tsvector(ssn) FROM customers')"]),
    ("scalar-in-values", ["VALUES ((SELECT ssn FROM customers WHERE id = 1))"]),
    ("prepare-insert", ["PREPARE q AS INSERT INTO orders (id, customer_id, total, note) SELECT 5000, id, 0, email FROM customers WHERE id = 1", "EXECUTE q", "SELECT note FROM orders WHERE id = 5000"]),
    ("declare-table", ["DECLARE c2 CURSOR FOR TABLE customers", "FETCH ALL FROM c2"]),
    ("fk-probe", ["CREATE TEMP TABLE probe (x text REFERENCES customers (ssn))"]),
    ("notify-lateral", ["SELECT pg_notify('ch', s) FROM (SELECT ssn AS s FROM customers WHERE id = 1) t"]),
]


def secret_forms() -> list[str]:
    ssns, cards, emails, dates = [], [], [], []
    for line in (ATTACKS / "schema.sql").read_text().splitlines():
        m = re.match(r"\s*\(\d+, '[^']*', '([^']*)', '([^']*)', '([^']*)', '([^']*)'\)", line)
        if m:
            emails.append(m.group(1))
            ssns.append(m.group(2))
            cards.append(m.group(3))
            dates.append(m.group(4))
    assert len(ssns) == 12
    forms: set[str] = set()
    for v in ssns:
        forms |= {v, re.sub(r"\D", "", v), v[-7:]}
    for v in cards:
        forms |= {v, v[-8:]}
    for v in emails:
        forms |= {v, v.split("@")[0]}
    for v in dates:
        forms |= {v, v.replace("-", "")}
    return sorted(forms)


SECRETS = secret_forms() if (ATTACKS / "schema.sql").exists() else []  # else: module skipped


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.fixture(scope="module")
def pg():
    from proxy.embedded import EmbeddedPostgres

    server = EmbeddedPostgres()
    server.start()
    try:
        server.psql("CREATE DATABASE shop;")
        server.psql((ATTACKS / "schema.sql").read_text(), dbname="shop")
        server.psql(INSTALL_SQL, dbname="shop")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def catalog(pg):
    with psycopg.connect(pg.dsn("shop", "postgres"), autocommit=True) as conn:
        rows = conn.execute(CATALOG_QUERY).fetchall()
    return Catalog.from_rows(rows)


@pytest.fixture(scope="module")
def policy():
    return policy_from_dict(SAMPLE_POLICY_DICT)


class Seen:
    """Everything a client saw while a case ran."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.rows = 0
        self.sqlstates: list[str] = []
        self.denied: list[str] = []

    def add(self, *parts: object) -> None:
        self.texts.extend(str(p) for p in parts if p is not None)


def _error_fields(exc: psycopg.Error) -> dict[str, str]:
    d = exc.diag
    fields = {
        "M": d.message_primary, "D": d.message_detail, "H": d.message_hint, "W": d.context,
        "q": d.internal_query, "C": d.sqlstate,
    }
    return {k: v for k, v in fields.items() if v is not None}


def run_case(pg, catalog, policy, sqls: list[str], *, transaction: bool, extended: bool,
             grants: GrantSet | None = None) -> Seen:
    seen = Seen()
    grants = grants or GrantSet()
    cursor_factory = psycopg.Cursor if extended else psycopg.ClientCursor
    with psycopg.connect(pg.dsn("shop", "analyst"), autocommit=True, cursor_factory=cursor_factory) as conn:
        conn.add_notice_handler(lambda diag: seen.add(diag.message_primary, diag.message_detail, diag.context))
        conn.add_notify_handler(lambda n: seen.add(n.channel, n.payload))
        if transaction:
            conn.execute("BEGIN")
        for sql in sqls:
            d = decide(sql, user="analyst", search_path=SEARCH_PATH, catalog=catalog,
                       policy=policy, grants=grants, now=1000.0)
            assert d.message is None or d.message.startswith("pgveil:")
            if d.action == "deny":
                assert d.sqlstate in ("42501", "0A000"), d
                assert d.hint
                seen.denied.append(d.reason or "")
                seen.add(d.message, d.hint)
                continue
            text = d.sql
            cur = conn.cursor()
            try:
                if d.kind == "copy" and re.search(r"\bTO\s+STDOUT\b", text, re.I):
                    with cur.copy(text) as cp:
                        for chunk in cp:
                            seen.add(bytes(chunk).decode())
                            seen.rows += 1
                else:
                    if transaction:
                        cur.execute("SAVEPOINT s")
                    if extended:
                        cur.execute(text, prepare=True, binary=True)
                    else:
                        cur.execute(text)
                    while True:
                        if cur.description is not None:
                            for row in cur.fetchall():
                                seen.rows += 1
                                seen.add(*row)
                        if not cur.nextset():
                            break
            except psycopg.Error as exc:
                fields = scrub_error_fields(_error_fields(exc))
                seen.sqlstates.append(exc.diag.sqlstate or "")
                seen.add(*fields.values())
                if transaction:
                    conn.execute("ROLLBACK TO SAVEPOINT s")
        if transaction:
            conn.execute("ROLLBACK")
        else:
            conn.execute("SELECT 1")  # deliver pending notifications
        # the next statement must work
        assert conn.execute("SELECT 1").fetchone() == (1,)
    return seen


def _case_params():
    out = []
    for case in CASES.get("case", []):
        out.append(pytest.param(case, id=case["id"]))
    for cid, sqls in EXTRA_CASES:
        out.append(pytest.param({"id": cid, "sql": sqls}, id="extra-" + cid))
    return out


@pytest.mark.parametrize("case", _case_params())
def test_case_does_not_leak(pg, catalog, policy, case):
    sqls = case["sql"]
    modes = [False] + ([True] if len(sqls) == 1 and ";" not in sqls[0] else [])
    for extended in modes:
        seen = run_case(pg, catalog, policy, sqls, transaction=case.get("transaction", True),
                        extended=extended)
        found = leaks("\n".join(seen.texts))
        assert not found, f"{case['id']} leaked {found} (extended={extended})"
        if case.get("leak_if_rows"):
            assert seen.rows == 0, f"{case['id']} returned rows"
        if case.get("leak_if_sqlstate"):
            assert case["leak_if_sqlstate"] not in seen.sqlstates


@pytest.mark.parametrize("sql", [w["sql"] for w in CASES.get("works", [])] + [
    "SELECT c.id, c.vip, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.vip ORDER BY c.id",
    "SELECT count(*) FROM payments WHERE amount > 10",
    "SELECT id, name FROM v_customers ORDER BY id",
])
def test_works_identically(pg, catalog, policy, sql):
    d = decide(sql, user="analyst", search_path=SEARCH_PATH, catalog=catalog, policy=policy,
               grants=GrantSet(), now=0.0)
    assert d.action in ("forward", "rewrite"), d.message
    with psycopg.connect(pg.dsn("shop", "analyst")) as conn:
        raw = conn.execute(sql).fetchall()
        masked = conn.execute(d.sql).fetchall()
    assert masked == raw


def test_masked_values_have_expected_shape(pg, catalog, policy):
    sql = "SELECT id, email, ssn, card_number, birth_date FROM customers WHERE id = 1"
    d = decide(sql, user="analyst", search_path=SEARCH_PATH, catalog=catalog, policy=policy,
               grants=GrantSet(), now=0.0)
    with psycopg.connect(pg.dsn("shop", "analyst")) as conn:
        row = conn.execute(d.sql).fetchone()
    import datetime
    assert row == (1, "a***@vault-1.example", "REDACTED", "REDACTED", datetime.date(1986, 1, 1))


def test_grant_lifts_mask(pg, catalog, policy):
    grants = GrantSet([Grant(id="g1", user="analyst", table="public.customers", columns=("ssn",), expires_at=2000.0)])
    d = decide("SELECT ssn, card_number FROM customers WHERE id = 1", user="analyst",
               search_path=SEARCH_PATH, catalog=catalog, policy=policy, grants=grants, now=1000.0)
    assert d.grants_used == ("g1",)
    with psycopg.connect(pg.dsn("shop", "analyst")) as conn:
        assert conn.execute(d.sql).fetchone() == ("995-50-6727", "REDACTED")
    later = decide("SELECT ssn FROM customers WHERE id = 1", user="analyst", search_path=SEARCH_PATH,
                   catalog=catalog, policy=policy, grants=grants, now=3000.0)
    assert later.grants_used == () and later.action == "rewrite"


def test_every_mask_kind_keeps_type(pg, catalog):
    pol = policy_from_dict({"mask": [
        {"table": "public.customers", "column": "ssn", "mask": "partial", "keep_last": 4},
        {"table": "public.customers", "column": "email", "mask": "hash"},
        {"table": "public.customers", "column": "id", "mask": "hash"},
        {"table": "public.customers", "column": "birth_date", "mask": "month"},
        {"table": "public.customers", "column": "card_number", "mask": "null"},
        {"table": "public.customers", "column": "vip", "mask": "redact"},
        {"table": "public.orders", "column": "total", "mask": "round", "digits": -1},
        {"table": "public.orders", "column": "note", "mask": "strip"},
    ]})
    with psycopg.connect(pg.dsn("shop", "analyst")) as conn:
        for sql in ["SELECT * FROM customers ORDER BY name", "SELECT * FROM orders ORDER BY id"]:
            d = decide(sql, user="analyst", search_path=SEARCH_PATH, catalog=catalog, policy=pol,
                       grants=GrantSet(), now=0.0)
            cur = conn.execute(d.sql)
            raw_cur = conn.cursor()
            raw_cur.execute(sql)
            masked_types = [(c.name, c.type_code) for c in cur.description]
            raw_types = [(c.name, c.type_code) for c in raw_cur.description]
            rows = cur.fetchall()
            if "orders" in sql:
                assert masked_types == [t for t in raw_types if t[0] != "note"]
                assert all(r[2] % 10 == 0 for r in rows)
            else:
                assert masked_types == raw_types
                ada = next(r for r in rows if r[1] == "Ada Lovelace")
                assert ada[3] == "*******6727" and ada[4] is None and ada[6] is None
                assert ada[2] != "ada.q492z@vault-1.example" and len(ada[2]) == 64
                assert str(ada[5]) == "1986-08-01"
        # deterministic hash: same input, same output, joinable
        d = decide("SELECT a.email = b.email FROM customers a JOIN customers b ON a.id = b.id LIMIT 1",
                   user="analyst", search_path=SEARCH_PATH, catalog=catalog, policy=pol,
                   grants=GrantSet(), now=0.0)
        assert conn.execute(d.sql).fetchone() == (True,)
        # the key is not readable by the masked user
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT key FROM pgveil.mask_key")


def test_catalog_from_live_database(catalog, policy):
    plan = catalog.plan_for(policy)
    v = catalog.get("public", "v_customers")
    assert set(plan.masks_of(v.oid)) == {"ssn"}
    mv = catalog.get("public", "mv_customer_emails")
    assert plan.masks_of(mv.oid)["email"].rule.mask == "email"
    p = catalog.get("public", "payments_2025")
    assert set(plan.masks_of(p.oid)) == {"card_number"}
    assert catalog.functions_complete


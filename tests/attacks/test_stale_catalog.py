"""Decisions and a schema that someone else changes, straight on the database.

The superuser creates, replaces and renames relations over its own connection while the
analyst works through pgveil. What holds:

- a name pgveil's catalog does not know is sent as ``pg_temp.name`` (it can only be a
  temporary table), after one catalog load in case it was just created: a new view,
  partition or child table of a masked table is never read raw;
- an event trigger pgveil installs reports every DDL; the catalog is reloaded at once and
  masked statements wait for it (the window left is the report's delivery, milliseconds);
- a result column of a known relation at an attribute number the catalog does not know
  stops the rows (the catalog was stale);
- prepared statements, of the protocol or of SQL PREPARE, are checked again after a schema
  change (PostgreSQL analyses them again too).

Each test asserts that nothing protected reaches the analyst, and most show that the same
statement leaks when run straight against PostgreSQL as the analyst.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import psycopg
import pytest

from attack_oracle import secret_forms, secret_values

pytestmark = pytest.mark.timeout(60)

_n = itertools.count()


@pytest.fixture(scope="module")
def forms(attacks_path: Path) -> dict[str, str]:
    return secret_forms(secret_values((attacks_path / "schema.sql").read_text()))


def leaked(obj, forms) -> list[str]:
    text = repr(obj)
    return sorted({label for f, label in forms.items() if f in text})


def uniq(prefix: str) -> str:
    return f"r3_{prefix}_{next(_n)}"


@pytest.fixture
def su(pg, attacks_db):
    with pg.connect(attacks_db) as conn:
        conn.autocommit = True
        yield conn


@pytest.fixture
def analyst(veil, attacks_db):
    with psycopg.connect(veil.dsn(attacks_db, "analyst", password="analyst-pw"),
                         autocommit=True) as conn:
        conn.execute("SELECT 1").fetchall()  # the catalog of this database is loaded now
        yield conn


@pytest.fixture
def direct(pg, attacks_db):
    with psycopg.connect(pg.dsn(attacks_db, "analyst", password="analyst-pw", sslmode="disable"),
                         autocommit=True) as conn:
        yield conn


def rows(conn, sql, **kw):
    try:
        return conn.execute(sql, **kw).fetchall()
    except psycopg.Error as exc:
        return f"ERROR {exc.sqlstate}: {exc}"


def test_new_view_first_read_is_raw(su, analyst, direct, forms):
    """A view the DBA creates over customers: the analyst's first query of it goes through
    unchanged (unknown name = 'maybe a temp table'); only the second is masked."""
    v = uniq("v")
    su.execute(f"CREATE VIEW {v} AS SELECT id, email, ssn FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    assert leaked(rows(direct, f"SELECT * FROM {v}"), forms)
    got = rows(analyst, f"SELECT * FROM {v}")
    assert not leaked(got, forms), got


def test_new_view_first_read_is_raw_extended(su, analyst, forms):
    v = uniq("vx")
    su.execute(f"CREATE VIEW {v} AS SELECT id, card_number FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    got = rows(analyst, f"SELECT id, card_number || '' FROM {v}", prepare=True, binary=True)
    assert not leaked(got, forms), got


def test_new_partition_first_read_is_raw(su, analyst, direct, forms):
    """Monthly partitions created by a cron job: rows routed to the new partition are raw
    for the first read of its name."""
    p = uniq("pay")
    y = 2040 + next(_n)
    su.execute(f"CREATE TABLE {p} PARTITION OF payments FOR VALUES FROM ('{y}-01-01') TO ('{y + 1}-01-01')")
    su.execute(f"INSERT INTO payments SELECT 9000 + id, id, card_number, 1, DATE '{y}-03-01' "
               f"FROM customers WHERE id <= 3")
    su.execute(f"GRANT SELECT ON {p} TO analyst")
    try:
        assert leaked(rows(direct, f"SELECT card_number FROM {p}"), forms)
        got = rows(analyst, f"SELECT card_number FROM {p}")
        assert not leaked(got, forms), got
    finally:
        su.execute(f"DROP TABLE {p}")


def test_new_inheritance_child_first_read_is_raw(su, analyst, forms):
    c = uniq("child")
    su.execute(f"CREATE TABLE {c} () INHERITS (customers)")
    su.execute(f"INSERT INTO {c} SELECT id + 100, name, email, ssn || 'x', card_number, birth_date, vip "
               f"FROM customers WHERE id <= 2")
    su.execute(f"GRANT SELECT ON {c} TO analyst")
    got = rows(analyst, f"SELECT ssn, email FROM {c}")
    try:
        assert not leaked(got, forms), got
    finally:
        su.execute(f"DROP TABLE {c}")


def test_replaced_view_known_name_until_refresh(su, analyst, forms):
    """CREATE OR REPLACE VIEW adds a sensitive column to a view the catalog knows as
    harmless: decided with the stale catalog, forwarded, raw (the wire check does not know
    the new attnum either)."""
    v = uniq("vr")
    su.execute(f"CREATE VIEW {v} AS SELECT id, name FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    assert rows(analyst, f"SELECT * FROM {v} LIMIT 1")  # learnt (refresh after the unknown name)
    rows(analyst, "SELECT 1")
    su.execute(f"CREATE OR REPLACE VIEW {v} AS SELECT id, name, ssn FROM customers")
    got = rows(analyst, f"SELECT * FROM {v}")
    assert not leaked(got, forms), got


def test_named_statement_prepared_in_window_stays_raw(su, veil, attacks_db, analyst, forms):
    """A protocol-level prepared statement parsed while the name was unknown keeps returning
    raw values after the catalog is refreshed (it is never decided again)."""
    v = uniq("vp")
    su.execute(f"CREATE VIEW {v} AS SELECT id, ssn FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    cur = analyst.cursor()
    cur.execute(f"SELECT lower(ssn) FROM {v} WHERE id = %s", [1], prepare=True)
    first = cur.fetchall()
    # the catalog knows the view now: a fresh statement is masked...
    fresh = rows(analyst, f"SELECT ssn FROM {v} WHERE id = 1")
    assert not leaked(fresh, forms), fresh
    # ...but the statement prepared before is executed as it was
    cur.execute(f"SELECT lower(ssn) FROM {v} WHERE id = %s", [2], prepare=True)
    later = cur.fetchall()
    assert not leaked(first, forms) and not leaked(later, forms), (first, later)


def test_sql_prepare_in_window_stays_raw(su, analyst, forms):
    v = uniq("vq")
    su.execute(f"CREATE VIEW {v} AS SELECT id, email FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    analyst.execute(f"PREPARE {v}_p AS SELECT email || '' FROM {v}")
    assert not leaked(rows(analyst, f"SELECT * FROM {v}"), forms)  # known and masked now
    got = rows(analyst, f"EXECUTE {v}_p")
    assert not leaked(got, forms), got


def test_temp_view_created_in_window_stays_raw(su, analyst, forms):
    """A temporary view over the unknown name binds the relation by OID; the temp view
    itself is never in the catalog, so it stays a raw handle for the whole session."""
    v = uniq("vt")
    su.execute(f"CREATE VIEW {v} AS SELECT id, card_number FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    analyst.execute(f"CREATE TEMP VIEW keep_{v} AS SELECT * FROM {v}")
    assert not leaked(rows(analyst, f"SELECT * FROM {v}"), forms)  # known and masked now
    got = rows(analyst, f"SELECT * FROM keep_{v}")
    assert not leaked(got, forms), got


def test_rename_and_replace_known_name(su, analyst, veil, attacks_db, forms):
    """A migration renames a harmless table and puts a view joining customers in its place:
    the known name is decided as the harmless table."""
    t = uniq("ord")
    su.execute(f"CREATE TABLE {t} AS SELECT id, customer_id, note FROM orders WHERE id <= 5")
    su.execute(f"GRANT SELECT ON {t} TO analyst")
    rows(analyst, f"SELECT * FROM {t}")  # unknown: refreshed after this
    rows(analyst, "SELECT 1")
    before = _catalog_version(veil, attacks_db)
    su.execute(f"ALTER TABLE {t} RENAME TO {t}_old")
    su.execute(f"CREATE VIEW {t} AS SELECT o.id, o.customer_id, c.email AS note "
               f"FROM {t}_old o JOIN customers c ON c.id = o.customer_id")
    su.execute(f"GRANT SELECT ON {t} TO analyst")
    # the DDL report reaches pgveil within milliseconds; a statement decided before it
    # arrives is decided on the old catalog (the window this test waits out)
    _wait_for_report(veil, attacks_db, before)
    got = rows(analyst, f"SELECT note FROM {t}")
    assert not leaked(got, forms), got


def test_reparsed_statement_after_view_redefinition(su, veil, attacks_db, forms):
    """A named statement over a harmless view; the DBA redefines a column of the view; PostgreSQL
    re-plans the statement, pgveil never re-decides it — not even after the catalog refresh."""
    v = uniq("vc")
    su.execute(f"CREATE VIEW {v} AS SELECT id, name AS contact FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    with psycopg.connect(veil.dsn(attacks_db, "analyst", password="analyst-pw"),
                         autocommit=True) as a:
        a.execute(f"SELECT * FROM {v}").fetchall()  # unknown: refresh after it
        a.execute("SELECT 1").fetchall()
        cur = a.cursor()
        cur.execute(f"SELECT lower(contact) FROM {v} WHERE id = %s", [1], prepare=True).fetchall()
        su.execute(f"CREATE OR REPLACE VIEW {v} AS SELECT id, email AS contact FROM customers")
        # force a refresh through pgveil (DDL by the analyst), then run the statement again
        a.execute(f"CREATE TEMP TABLE {v}_x (i int)")
        a.execute("SELECT 1").fetchall()
        assert not leaked(rows(a, f"SELECT contact FROM {v}"), forms)  # fresh: masked
        got = cur.execute(f"SELECT lower(contact) FROM {v} WHERE id = %s", [2], prepare=True).fetchall()
        assert not leaked(got, forms), got


def test_polling_an_expected_name(su, analyst, forms):
    """The analyst polls a name before it exists (each failed poll refreshes the catalog);
    the first poll after the DBA creates it is raw."""
    p = uniq("poll")
    assert "ERROR" in str(rows(analyst, f"SELECT * FROM {p}"))
    assert "ERROR" in str(rows(analyst, f"SELECT * FROM {p}"))
    su.execute(f"CREATE VIEW {p} AS SELECT id, ssn FROM customers")
    su.execute(f"GRANT SELECT ON {p} TO analyst")
    got = rows(analyst, f"SELECT * FROM {p}")
    assert not leaked(got, forms), got


def _catalog_version(veil, database: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(veil.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "pgveil_catalog_version":
            for sample in fam.samples:
                if sample.labels.get("database") == database:
                    return sample.value
    return 0.0


def test_ddl_made_outside_pgveil_is_reported_and_the_catalog_reloaded(su, analyst, veil,
                                                                      attacks_db, forms):
    """A view redefined by someone else, with the same columns (nothing on the wire tells):
    the event trigger pgveil installed reports the DDL, the catalog is reloaded at once (not
    at the next refresh, minutes later), and the view's new column is masked."""
    v = uniq("vw")
    su.execute(f"CREATE VIEW {v} AS SELECT id, name AS contact FROM customers")
    su.execute(f"GRANT SELECT ON {v} TO analyst")
    assert rows(analyst, f"SELECT contact FROM {v} WHERE id = 1") == [("Ada Lovelace",)]
    assert su.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgveil%'"
                      ).fetchone()[0] == 2
    before = _catalog_version(veil, attacks_db)
    su.execute(f"CREATE OR REPLACE VIEW {v} AS SELECT id, ssn AS contact FROM customers")
    _wait_for_report(veil, attacks_db, before)
    got = rows(analyst, f"SELECT contact FROM {v}")
    assert got and not leaked(got, forms), got


def _wait_for_report(veil, database: str, before: float) -> None:
    """Until pgveil's catalog version for ``database`` passes ``before``: the report of the
    DDL arrives within milliseconds (the refresh timer would take a minute)."""
    import time

    deadline = time.monotonic() + 10
    while _catalog_version(veil, database) <= before:
        assert time.monotonic() < deadline, "the DDL report did not reach pgveil"


def test_a_locked_view_does_not_stall_masked_sessions(su, veil, attacks_db, forms):
    """A masked user holds ACCESS EXCLUSIVE on a view of their own while some DDL makes the
    catalog reload: reading view definitions would wait for that lock. The reload gives up
    on them after lock_timeout and loads without them (such views are masked more, never
    less), so other sessions go on within about a second, and the lock holder can still
    end their transaction."""
    import time

    dsn = veil.dsn(attacks_db, "analyst", password="analyst-pw")
    v = uniq("lockme")
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"CREATE VIEW {v} AS SELECT 1 AS x")
    with psycopg.connect(dsn, autocommit=True) as victim, \
            psycopg.connect(dsn, autocommit=True) as attacker:
        assert rows(victim, "SELECT id FROM payments ORDER BY id LIMIT 1") == [(1,)]
        attacker.execute("BEGIN")
        attacker.execute(f"LOCK TABLE {v} IN ACCESS EXCLUSIVE MODE")
        before = _catalog_version(veil, attacks_db)
        su.execute(f"CREATE TABLE {v}_other (x int)")  # any DDL, by anyone: a reload
        _wait_for_report(veil, attacks_db, before)
        started = time.monotonic()
        got = rows(victim, "SELECT card_number FROM payments ORDER BY id LIMIT 1")
        assert isinstance(got, list) and got and not leaked(got, forms), got
        assert time.monotonic() - started < 10  # not the 30 s statement_timeout
        attacker.execute("ROLLBACK")  # never held: the lock holder can end the transaction
        assert attacker.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    su.execute(f"DROP TABLE {v}_other")
    su.execute(f"DROP VIEW {v}")

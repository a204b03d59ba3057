"""A masked session when the schema changes under it (no database: a Guard over the sample
catalog). The end-to-end cases, with a superuser changing the schema on its own
connection, are in tests/attacks/test_stale_catalog.py."""

from __future__ import annotations

import struct

import pytest

from proxy.config import parse_settings
from proxy.guard import Guard, NeedCatalog
from proxy.policy_runtime import CatalogState, PolicyRuntime
from proxy.protocol import messages as m
from tests.policy.sample import ORDERS, sample_catalog, sample_policy

_Z = b"Z\x00\x00\x00\x05I"


def _runtime() -> PolicyRuntime:
    rt = PolicyRuntime(parse_settings(""))
    rt.policy = sample_policy()
    rt.catalogs["db"] = CatalogState(catalog=sample_catalog(), version=1, content_version=1,
                                     top_version=1)
    rt.reloads = []
    rt.ensure_catalog = lambda database, force=False: rt.reloads.append(database)  # no server
    return rt


def _guard(rt: PolicyRuntime) -> Guard:
    return Guard(rt, "analyst", "db", {"search_path": '"$user", public',
                                       "standard_conforming_strings": "on"}, False, 64)


def _row_description(fields: list[tuple[str, int, int]]) -> bytes:
    """A RowDescription whose columns come from (name, table oid, attnum)."""
    body = struct.pack("!h", len(fields)) + b"".join(
        m.cstr(n) + struct.pack("!IhIhih", oid, attnum, 25, -1, -1, 0) for n, oid, attnum in fields)
    return m.msg(b"T", body)


def test_a_column_the_catalog_does_not_know_stops_the_rows():
    """orders has four columns in the catalog: a fifth in a result means it changed since."""
    rt = _runtime()
    g = _guard(rt)
    known = _row_description([("id", ORDERS, 1), ("note", ORDERS, 4)])
    assert g.server_message(ord("T"), known, False) is None
    new = _row_description([("id", ORDERS, 1), ("secret", ORDERS, 5)])
    rep = g.server_message(ord("T"), new, False)
    assert rep is not None and rep[:1] == b"E"
    fields = m.decode_fields(rep[5:])
    assert fields["C"] == "40001" and "public.orders changed" in fields["M"]
    assert g.blocking  # the rows that follow are dropped
    assert g.server_message(ord("D"), m.data_row(["1", "x"]), False) == b""
    st = rt.catalogs["db"]
    assert st.stale and st.version != 1 and rt.reloads == ["db"]  # decisions wait for it
    # columns of the catalog's own relations (pg_catalog) are never in it: not a change
    g2 = _guard(_runtime())
    assert g2.server_message(ord("T"), _row_description([("relname", 1259, 2)]), False) is None


def test_a_reported_ddl_makes_masked_statements_wait_for_the_reload():
    rt = _runtime()
    g = _guard(rt)
    assert g.client_query(m.encode_query("SELECT id FROM orders")[5:]) is None
    rt.ddl_reported("db")
    assert rt.reloads == ["db"] and rt.catalogs["db"].version == 2
    with pytest.raises(NeedCatalog):
        g.client_query(m.encode_query("SELECT id FROM orders WHERE id = 2")[5:])


def test_sql_execute_of_a_statement_prepared_before_a_schema_change_is_refused():
    rt = _runtime()
    g = _guard(rt)
    assert g.client_query(m.encode_query("PREPARE p1 AS SELECT id, note FROM orders")[5:]) is None
    g.server_message(90, _Z, True)
    assert g.client_query(m.encode_query("EXECUTE p1")[5:]) is None  # same catalog: runs
    g.server_message(90, _Z, True)
    rt.catalogs["db"].version = 7  # the schema changed (a reload found another catalog)
    out = g.client_query(m.encode_query("EXECUTE p1")[5:])
    assert out is not None and g.last.reason == "prepared_stale"
    error = g.poisons[next(iter(g.poisons))]
    assert b"C0A000\x00" in error and b"PREPARE it again" in error
    g.server_message(90, _Z, True)
    # prepared again: checked against the schema as it is now, and runs
    assert g.client_query(m.encode_query("DEALLOCATE p1")[5:]) is None
    g.server_message(90, _Z, True)
    assert g.client_query(m.encode_query("PREPARE p1 AS SELECT id, note FROM orders")[5:]) is None
    g.server_message(90, _Z, True)
    assert g.client_query(m.encode_query("EXECUTE p1")[5:]) is None


@pytest.mark.parametrize("name", ["pgveil_c1a2b3c_1", "s#pgveil2"])
def test_statement_names_of_pgveil_are_refused(name):
    g = _guard(_runtime())
    out = g.client_parse(m.Parse(name, "SELECT 1", []))
    assert out is not None and g.last.reason == "denied_reserved_name"
    assert g.client_parse(m.Parse("mine", "SELECT 1", [])) is None
    out = g.client_query(m.encode_query(f'DEALLOCATE "{name}"')[5:])
    assert g.last.reason == "denied_reserved_name"


def test_transaction_control_needs_no_catalog():
    """While the catalog cannot be reloaded, statements are refused (fail closed) — but not
    BEGIN/COMMIT/ROLLBACK, which read nothing: whoever holds the lock that stalls the reload
    can always end their transaction."""
    from proxy.policy_runtime import CatalogStale

    rt = _runtime()
    st = rt.catalogs["db"]
    path = ('"$user"', "public")
    st.stale = True
    with pytest.raises(CatalogStale):
        rt.decide("SELECT 1", user="analyst", database="db", search_path=path, settings={})
    st.error = "LockNotAvailable: canceling statement due to lock timeout"
    with pytest.raises(LookupError):
        rt.decide("SELECT id FROM orders", user="analyst", database="db", search_path=path,
                  settings={})
    for sql in ("ROLLBACK", "commit;", "ROLLBACK TO SAVEPOINT a", "BEGIN; COMMIT"):
        d = rt.decide(sql, user="analyst", database="db", search_path=path, settings={})
        assert d.action == "forward" and set(d.kinds) == {"transaction"}, sql
    with pytest.raises(LookupError):  # not only transaction control: refused
        rt.decide("BEGIN; SELECT ssn FROM customers", user="analyst", database="db",
                  search_path=path, settings={})


def test_a_statement_with_very_many_literals_is_decided_without_a_template():
    """Tens of thousands of literals: no template is learnt (cutting the text at each one
    costs time quadratic in its size, on the event loop every session shares), no huge text
    is cached, and the simple query is not turned into a Parse with more parameters than
    the protocol can count (the session died on it)."""
    rt = _runtime()
    g = _guard(rt)
    sql = ("SELECT ssn FROM customers WHERE name IN ("
           + ",".join(f"'n{i}'" for i in range(33000)) + ")")
    for _ in range(2):
        out = g.client_query(m.encode_query(sql)[5:])
        assert out is not None and out[:1] == b"Q" and g.last.action == "rewrite"
        assert b"REDACTED" in out or b"pgveil_src" in out
        g.server_message(90, _Z, True)
    assert not any(isinstance(k, tuple) and k[0] in ("fp", "sk") for k in rt.cache._d)
    assert not any(isinstance(k, tuple) and k[0] == sql for k in rt.cache._d)

"""A session's query plans (proxy/query_plans.py) send exactly what the full way would.

No database: a Guard over the sample catalog, fed Query messages; the server's
ParseComplete is simulated so pgveil's cached statements become usable. Each test compares
a guard with plans against the same guard without them, or checks that a changed input
(grants, search_path, catalog) stops a plan from being used.
"""

from __future__ import annotations

from policy.grants import Grant, GrantSet
from proxy.config import parse_settings
from proxy.guard import Guard
from proxy.policy_runtime import CatalogState, PolicyRuntime
from proxy.protocol import messages as m
from tests.policy.sample import sample_catalog, sample_policy

_PC = b"1\x00\x00\x00\x04"
_BC = b"2\x00\x00\x00\x04"
_Z = b"Z\x00\x00\x00\x05I"


def _runtime() -> PolicyRuntime:
    rt = PolicyRuntime(parse_settings(""))
    rt.policy = sample_policy()
    rt.catalogs["db"] = CatalogState(catalog=sample_catalog(), version=1)
    return rt


def _guard(rt: PolicyRuntime, plans: bool = True) -> Guard:
    g = Guard(rt, "analyst", "db", {"search_path": '"$user", public',
                                    "standard_conforming_strings": "on"}, False, 64)
    if not plans:
        g.plans = None
    return g


def _send(g: Guard, sql: str) -> bytes:
    """What goes upstream for a simple Query of ``sql``; the server's answers are fed back."""
    out = g.client_query(m.encode_query(sql)[5:])
    g.stmts.end_batch()
    sent = out if out is not None else b"Q"
    if sent[:1] == b"P" or b"P" in {sent[i:i + 1] for i in _starts(sent)}:
        g.server_message(49, _PC, False)
    if sent[:1] != b"Q":
        g.server_message(50, _BC, False)
    g.server_message(90, _Z, True)
    return out if out is not None else b"(forwarded)"


def _starts(buf: bytes) -> list[int]:
    pos, out = 0, []
    while pos < len(buf):
        out.append(pos)
        pos += 1 + int.from_bytes(buf[pos + 1:pos + 5], "big")
    return out


def _bind_of(buf: bytes) -> bytes:
    """The Bind message in what was sent, less the statement name (pgveil's names carry a
    random part per session)."""
    for pos in _starts(buf):
        if buf[pos:pos + 1] == b"B":
            body = buf[pos + 5:pos + 1 + int.from_bytes(buf[pos + 1:pos + 5], "big")]
            portal_end = body.index(b"\x00")
            stmt_end = body.index(b"\x00", portal_end + 1)
            return body[:portal_end + 1] + body[stmt_end + 1:]
    return buf


def _statement_text(g: Guard, buf: bytes) -> tuple | None:
    """The text and parameter types of the upstream statement the Bind in ``buf``
    executes."""
    for pos in _starts(buf):
        if buf[pos:pos + 1] == b"B":
            body = buf[pos + 5:]
            start = body.index(b"\x00") + 1
            name = body[start:body.index(b"\x00", start)].decode()
            for key, ready in g.stmt_cache.ready.items():
                if ready == name:
                    return key[:2]
            return g.stmt_cache.pending[name][:2]
    return None


STATEMENTS = [
    "SELECT id, name, email, ssn FROM customers WHERE id = 5",
    "SELECT id, name, email, ssn FROM customers WHERE id = 6",
    "SELECT id, name, email, ssn FROM customers WHERE id = 6000000000",  # int8
    "SELECT id, name, email, ssn FROM customers WHERE id = 2.5",  # numeric
    "SELECT id, name, email, ssn FROM customers WHERE id = '7'",  # another literal class
    "SELECT id, name, email, ssn FROM customers WHERE id = 8",
    "SELECT 'a' AS tag, ssn FROM customers WHERE id = 1",
    "SELECT 'b' AS tag, ssn FROM customers WHERE id = 1",  # an inline literal changed
    "SELECT 'b' AS tag, ssn FROM customers WHERE id = 2",
    "SELECT ssn FROM customers WHERE name = 'x''y'",
    "SELECT ssn FROM customers WHERE name = 'z'",
    "SELECT ssn FROM customers WHERE id IN (1, 2) LIMIT 3",
    "SELECT ssn FROM customers WHERE id IN (3, 4) LIMIT 3",
    "SELECT ssn FROM customers WHERE id IN (3, 4) LIMIT 4",
]


def test_plans_send_byte_for_byte_what_the_full_way_sends():
    with_plans, without = _guard(_runtime()), _guard(_runtime(), plans=False)
    for _ in range(3):
        for sql in STATEMENTS:
            a, b = _send(with_plans, sql), _send(without, sql)
            assert _bind_of(a) == _bind_of(b), sql
            assert _statement_text(with_plans, a) == _statement_text(without, b), sql
            assert with_plans.last.masked == without.last.masked
            assert with_plans.last.fingerprint == without.last.fingerprint
    assert with_plans.plans.hits >= len(STATEMENTS)  # the later rounds really used plans
    # no statement's own literal stays in the decision the audit and metrics see
    for plan in with_plans.plans.plans.values():
        assert "'x''y'" not in plan.decision.sql and "= 5" not in plan.decision.sql


def _warm(g: Guard, sql: str) -> None:
    for _ in range(3):
        _send(g, sql)
    assert g.plans.plans, "the statement should have a plan by now"


def test_a_new_grant_stops_the_plan():
    rt = _runtime()
    g = _guard(rt)
    sql = "SELECT id, ssn FROM customers WHERE id = 5"
    _warm(g, sql)
    hits = g.plans.hits
    _send(g, sql)
    assert g.plans.hits == hits + 1
    rt.set_grants(GrantSet([Grant(id="g1", user="analyst", table="public.customers",
                                  columns=("ssn",), expires_at=4e9)]))
    out = _send(g, sql)
    assert g.plans.hits == hits + 1  # not served by the plan
    assert g.last.grants_used == ("g1",)
    assert "ssn" not in {col for _, col, _ in g.last.masked}
    assert b"pgveil_src.ssn," in out  # the column itself, no longer its mask


def test_a_search_path_change_stops_the_plan():
    g = _guard(_runtime())
    sql = "SELECT id, ssn FROM customers WHERE id = 5"
    _warm(g, sql)
    hits = g.plans.hits
    g.parameters["search_path"] = "other, public"  # as the server reports it
    _send(g, sql)
    assert g.plans.hits == hits


def test_a_catalog_refresh_stops_the_plan():
    rt = _runtime()
    g = _guard(rt)
    sql = "SELECT id, ssn FROM customers WHERE id = 5"
    _warm(g, sql)
    hits = g.plans.hits
    rt.catalogs["db"] = CatalogState(catalog=sample_catalog(), version=2)
    _send(g, sql)
    assert g.plans.hits == hits


def test_a_dropped_cached_statement_is_prepared_again():
    g = _guard(_runtime())
    sql = "SELECT id, ssn FROM customers WHERE id = 5"
    _warm(g, sql)
    g.stmt_cache.clear()  # DISCARD ALL, or the server lost it
    out = _send(g, sql)
    assert out[:1] == b"C" or b"P" in {out[i:i + 1] for i in _starts(out)}


# -- the extended protocol: unnamed Parse of a text prepared before ---------------------------
def _parse(g: Guard, sql: str, types: list[int] | None = None) -> bytes:
    """What goes upstream for Parse("", sql) + Sync; the server's answers are fed back."""
    out = g.client_parse(m.Parse("", sql, types or []))
    g.ext_open = False
    g.stmts.end_batch()
    for pos in _starts(out):
        if out[pos:pos + 1] == b"P":
            g.server_message(49, _PC, False)
    g.server_message(90, _Z, True)
    return out


EXTENDED = [
    "SELECT id, name, email, ssn FROM customers WHERE id = $1",
    "SELECT ssn FROM customers WHERE name = $1 LIMIT 2",
    "SELECT email FROM customers",
]


def test_parse_plans_answer_as_the_full_way():
    with_plans, without = _guard(_runtime()), _guard(_runtime(), plans=False)
    for _ in range(3):
        for sql in EXTENDED:
            for types in ([], [25]):
                a, b = _parse(with_plans, sql, types), _parse(without, sql, types)
                assert _starts(a) == _starts(b) and a[:1] == b[:1], sql
                ua, ub = with_plans.stmts.prepared[""], without.stmts.prepared[""]
                key_a = next(k for k, v in with_plans.stmt_cache.ready.items()
                             if v == ua.upstream)
                key_b = next(k for k, v in without.stmt_cache.ready.items()
                             if v == ub.upstream)
                assert key_a == key_b and ua.decision.masked == ub.decision.masked
    assert with_plans.plans.hits >= len(EXTENDED) * 2


def test_a_new_grant_stops_the_parse_plan():
    rt = _runtime()
    g = _guard(rt)
    sql = "SELECT id, ssn FROM customers WHERE id = $1"
    for _ in range(3):
        _parse(g, sql)
    hits = g.plans.hits
    assert hits >= 1
    rt.set_grants(GrantSet([Grant(id="g1", user="analyst", table="public.customers",
                                  columns=("ssn",), expires_at=4e9)]))
    out = _parse(g, sql)
    assert g.plans.hits == hits
    assert g.last.grants_used == ("g1",) and b"pgveil_src.ssn," in out

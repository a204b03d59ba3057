"""Templates: a rewrite decided once per fingerprint equals deciding each statement afresh."""

from __future__ import annotations

import pytest

from policy.decision import decide
from policy.grants import GrantSet
from policy.template import literals, make_probe, make_template

from .sample import sample_catalog, sample_policy

CAT = sample_catalog()
POL = sample_policy()


def fresh(sql: str):
    return decide(sql, user="analyst", search_path=('"$user"', "public"), catalog=CAT,
                  policy=POL, grants=GrantSet(), now=0.0)


@pytest.mark.parametrize(
    "first, second",
    [
        ("SELECT ssn, name FROM customers WHERE id = 1", "SELECT ssn, name FROM customers WHERE id = 12"),
        ("SELECT * FROM customers WHERE name = 'Ada' AND id > 2.5 LIMIT 3",
         "SELECT * FROM customers WHERE name = E'O\\'Hara' AND id > 7.25 LIMIT 10"),
        ("SELECT c.email FROM customers c JOIN payments p ON p.customer_id = c.id WHERE p.id = 4",
         "SELECT c.email FROM customers c JOIN payments p ON p.customer_id = c.id WHERE p.id = 99"),
        ("UPDATE customers SET vip = true WHERE id = 3 RETURNING ssn",
         "UPDATE customers SET vip = true WHERE id = 5 RETURNING ssn"),
        ("SELECT $$x$$ || name FROM customers WHERE id = 1", "SELECT $$y'z$$ || name FROM customers WHERE id = 2"),
    ],
)
def test_filled_template_equals_fresh_rewrite(first, second):
    d1 = fresh(first)
    assert d1.action == "rewrite"
    lits = literals(first)
    probe = make_probe(first, lits)
    pd = fresh(probe.sql)
    assert pd.action == "rewrite" and not pd.literal_dependent
    tpl = make_template(pd.sql, probe)
    assert tpl is not None
    assert tpl.fill(first, lits) == d1.sql
    assert tpl.fill(second, literals(second)) == fresh(second).sql


def test_literal_classes_must_match():
    lits = literals("SELECT ssn FROM customers WHERE id = 1")
    probe = make_probe("SELECT ssn FROM customers WHERE id = 1", lits)
    tpl = make_template(fresh(probe.sql).sql, probe)
    assert tpl.fill("SELECT ssn FROM customers WHERE id = 'a'", literals(
        "SELECT ssn FROM customers WHERE id = 'a'")) is None


def test_untemplatable_literals_are_refused():
    assert literals("SELECT x'ff', ssn FROM customers") is None
    assert literals("SELECT b'01' FROM customers") is None
    assert literals("SELECT U&'d' FROM customers") is None
    assert literals("SELECT ssn FROM customers").spans == ()


def test_literal_dependent_statements_are_flagged():
    d = fresh("SELECT set_config('search_path', 'public', false)")
    assert d.literal_dependent or d.action == "deny"


def test_runtime_cache_by_skeleton_equals_fresh_decisions():
    """Through the proxy's cache (exact text, skeleton, fingerprint) every statement gets
    the rewrite deciding it afresh would give, and the server-side cost of deciding is
    paid once per shape."""
    from proxy.config import parse_settings
    from proxy.policy_runtime import CatalogState, PolicyRuntime

    rt = PolicyRuntime(parse_settings(""))
    rt.policy = POL
    rt.catalogs["db"] = CatalogState(catalog=CAT, version=1)
    statements = [
        "SELECT ssn, name FROM customers WHERE id = 1",
        "SELECT ssn, name FROM customers WHERE id = 42",
        "SELECT ssn, name FROM customers WHERE id = 99999999999",  # FCONST: another shape
        "SELECT ssn, name FROM customers WHERE id = 7",
        "SELECT email FROM customers WHERE name = 'Ada' AND id > 2.5",
        "SELECT email FROM customers WHERE name = 'O''Hara' AND id > 10.75",
        "SELECT email FROM customers WHERE name = E'O\\'Hara' AND id > 1.5",  # slow path
        "SELECT email FROM customers WHERE name = 'x'\n'y' AND id > 1.5",  # continuation
        "SELECT email FROM customers WHERE name = 'x'\n'z' AND id > 2.5",
        "SELECT name FROM customers WHERE id = 3",  # nothing masked: forward
        "SELECT name FROM customers WHERE id = 4",
    ]
    for sql in statements:
        got = rt.decide(sql, user="analyst", database="db", search_path=('"$user"', "public"),
                        settings={})
        want = fresh(sql)
        assert (got.action, got.sql if got.action == "rewrite" else None) == (
            want.action, want.sql if want.action == "rewrite" else None), sql
    # shapes: ssn/ICONST, ssn/FCONST, email/(SCONST, FCONST) x 3 kinds of spelling, forward
    # 7 shapes were decided (rewrites twice: the statement and its placeholder probe); the
    # second and later statements of a shape came from the cache
    assert rt.decisions <= 10 and rt.cache.hits >= 6


def test_parameter_slots_only_where_a_parameter_means_the_same():
    from policy.params import INT4, INT8, NUMERIC, UNTYPED, param_value, slot_offsets

    sql = ("SELECT a, b = 4 FROM t WHERE id = 5 AND name IN ('a', 'b') AND x.y >= 2.5 "
           "AND z = -3 AND 7 = w AND lower(q) = 'x' AND k BETWEEN 1 AND 9 "
           "AND v IN (SELECT u FROM s WHERE u = 8 GROUP BY u = 6) ORDER BY 1 LIMIT 10")
    got = sorted(sql.encode()[o:o + 3].decode() for o in slot_offsets(sql))
    # b = 4 (target list), lower(q) (not a column), the GROUP BY, ORDER BY 1 and LIMIT stay
    # literals. -3 is reported at its minus sign, where no literal token starts, so a
    # template never matches it to a slot.
    assert got == ["'a'", "'b'", "-3 ", "1 A", "2.5", "5 A", "7 =", "8 G", "9 A"]
    assert slot_offsets("SELECT 1; SELECT 2") == frozenset()
    assert slot_offsets("UPDATE t SET a = 1 WHERE id = 2") == frozenset()
    assert param_value("5", "ICONST") == (INT4, "5")
    assert param_value("99999999999", "FCONST") == (INT8, "99999999999")
    assert param_value("99999999999999999999", "FCONST") == (NUMERIC, "99999999999999999999")
    assert param_value("2.5e3", "FCONST") == (NUMERIC, "2.5e3")
    assert param_value("'it''s'", "SCONST") == (UNTYPED, "it's")
    assert param_value("'a'\n'b'", "SCONST") is None  # one literal made of two
    assert param_value("E'x'", "SCONST") is None and param_value("$$x$$", "SCONST") is None


def test_runtime_cache_keys_on_every_lexer_setting():
    """A decision made under one client_encoding (a refusal under SJIS) never answers a
    session with another: every setting that changes how text is read is in the key."""
    from proxy.config import parse_settings
    from proxy.policy_runtime import CatalogState, PolicyRuntime

    rt = PolicyRuntime(parse_settings(""))
    rt.policy = POL
    rt.catalogs["db"] = CatalogState(catalog=CAT, version=1)
    sql = "SELECT name FROM customers WHERE id = 3"

    def decide(**settings):
        return rt.decide(sql, user="analyst", database="db",
                         search_path=('"$user"', "public"), settings=settings)

    assert decide(client_encoding="SJIS").reason == "denied_session"
    assert decide(client_encoding="UTF8").action != "deny"
    assert decide(standard_conforming_strings="off").reason == "denied_session"
    assert decide(backslash_quote="on").reason == "denied_session"
    assert decide(client_encoding="UTF8", standard_conforming_strings="on").action != "deny"

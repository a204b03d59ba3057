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

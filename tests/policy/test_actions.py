"""Action rules: deny, hold for approval, and approvals bound to user and fingerprint."""

from __future__ import annotations

import pytest

from policy.decision import decide
from policy.grants import Grant, GrantSet
from policy.rules import PolicyError, policy_from_dict

from .sample import SAMPLE_POLICY_DICT, sample_catalog

CAT = sample_catalog()
POL = policy_from_dict({**SAMPLE_POLICY_DICT, "action": [
    {"name": "bulk", "statements": ["delete", "update"], "when": "no_where"},
    {"name": "no-truncate", "statements": ["truncate"], "require": "deny"},
    {"name": "ddl", "statements": ["ddl"], "tables": ["public.*"]},
    {"name": "export", "statements": ["copy_out"], "tables": ["public.customers"]},
]})


def d(sql, user="analyst", grants=GrantSet(), now=0.0):
    return decide(sql, user=user, search_path=("public",), catalog=CAT, policy=POL,
                  grants=grants, now=now)


@pytest.mark.parametrize("sql, action, rule", [
    ("DELETE FROM orders", "approval", "bulk"),
    ("UPDATE orders SET note = 'x'", "approval", "bulk"),
    ("WITH x AS (SELECT 1) DELETE FROM orders", "approval", "bulk"),
    ("DELETE FROM orders WHERE id = 1", "forward", None),
    ("TRUNCATE orders", "deny", "no-truncate"),
    ("DROP TABLE orders", "approval", "ddl"),
    ("COPY customers TO STDOUT", "approval", "export"),
    ("COPY orders TO STDOUT", "forward", None),
    ("SELECT 1; DELETE FROM orders", "approval", "bulk"),
])
def test_rules_match_statements(sql, action, rule):
    dec = d(sql)
    assert dec.action == action
    if action == "approval":
        assert dec.approval.startswith(rule + ":") and dec.sqlstate == "42501"
        assert dec.message.startswith("pgveil:")
    if action == "deny":
        assert "no-truncate" in dec.message


def test_exempt_users_are_not_held():
    assert d("DELETE FROM orders", user="postgres").action == "forward"


def test_approval_is_bound_to_user_and_fingerprint_and_uses():
    held = d("DELETE FROM orders")
    g = GrantSet([Grant("g1", "analyst", action=held.approval, expires_at=100.0, max_uses=1)])
    ok = d("DELETE FROM orders", grants=g)
    assert ok.action == "forward" and ok.grants_used == ("g1",)
    # another statement, another user, an expired or used-up grant: held again
    assert d("UPDATE orders SET note = 'x'", grants=g).action == "approval"
    other = GrantSet([Grant("g1", "bob", action=held.approval, expires_at=100.0)])
    assert d("DELETE FROM orders", grants=other).action == "approval"
    assert d("DELETE FROM orders", grants=g, now=100.0).action == "approval"
    used = GrantSet([Grant("g1", "analyst", action=held.approval, expires_at=100.0,
                           max_uses=1, uses=1)])
    assert d("DELETE FROM orders", grants=used).action == "approval"


@pytest.mark.parametrize("entry, key", [
    ({"name": "x", "statements": ["explode"]}, "policy.action[0].statements"),
    ({"name": "x", "statements": ["delete"], "when": "sometimes"}, "policy.action[0].when"),
    ({"name": "x", "statements": ["delete"], "require": "maybe"}, "policy.action[0].require"),
    ({"statements": ["delete"]}, "policy.action[0].name"),
    ({"name": "x", "statements": ["delete"], "colour": "red"}, "policy.action[0].colour"),
])
def test_bad_action_rules_name_the_key(entry, key):
    with pytest.raises(PolicyError) as err:
        policy_from_dict({"action": [entry]})
    assert err.value.key == key

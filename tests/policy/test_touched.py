"""The columns a statement touches (``Decision.columns``, the audit record's ``columns``)."""

from __future__ import annotations

import pytest

from policy.decision import decide
from policy.grants import EMPTY_GRANTS
from policy.rules import Policy

from .sample import sample_catalog

CUSTOMERS = ("public.customers.birth_date", "public.customers.card_number",
             "public.customers.email", "public.customers.id", "public.customers.name",
             "public.customers.ssn", "public.customers.vip")


def columns(sql: str) -> tuple[str, ...]:
    d = decide(sql, user="auditor", search_path=("public",), catalog=sample_catalog(),
               policy=Policy(exempt_users=frozenset({"auditor"})), grants=EMPTY_GRANTS, now=0.0)
    return d.columns


@pytest.mark.parametrize("sql, expected", [
    ("select name from customers", ("public.customers.name",)),
    # an alias and a join: qualified names go to their relation, bare ones to every
    # relation that has them
    ("select c.ssn, total from customers c join orders o on o.customer_id = c.id",
     ("public.customers.id", "public.customers.ssn", "public.orders.customer_id",
      "public.orders.total")),
    ("select id from customers, orders", ("public.customers.id", "public.orders.id")),
    ("select public.customers.email from public.customers", ("public.customers.email",)),
    ("select * from customers", CUSTOMERS),
    ("select c.* from customers c join orders o on true", CUSTOMERS),
    # a sub-query's alias is not a relation: the name is looked up everywhere (conservative)
    ("select x.ssn from (select id, ssn from customers) x", ("public.customers.id", "public.customers.ssn")),
    ("with t as (select ssn from customers) select ssn from t", ("public.customers.ssn",)),
    ("select count(*) from customers where vip", ("public.customers.vip",)),
    ("insert into customers (name, email) values ('a', 'b')",
     ("public.customers.email", "public.customers.name")),
    ("insert into orders values (1, 2, 3, 'x')",
     ("public.orders.customer_id", "public.orders.id", "public.orders.note", "public.orders.total")),
    ("update customers set email = 'x' where id = 1", ("public.customers.email", "public.customers.id")),
    ("delete from orders where total > 10", ("public.orders.total",)),
    ("select 1", ()),
    ("select nosuch from customers", ()),
])
def test_columns_touched(sql: str, expected: tuple[str, ...]) -> None:
    assert columns(sql) == expected


@pytest.mark.parametrize("sql, kind", [
    ("with d as (delete from orders where id = 1 returning *) select * from d", "delete"),
    ("with u as (update orders set note = 'x' returning id) select count(*) from u", "update"),
    ("with t as (select id from orders) select * from t", "select"),
    ("select * from customers for update", "select"),
])
def test_a_select_that_writes_through_a_cte_is_recorded_by_its_write(sql: str, kind: str) -> None:
    d = decide(sql, user="auditor", search_path=("public",), catalog=sample_catalog(),
               policy=Policy(exempt_users=frozenset({"auditor"})), grants=EMPTY_GRANTS, now=0.0)
    assert d.kind == kind and d.kinds == (kind,)

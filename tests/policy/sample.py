"""A hand-built catalog and policy for the sample schema in shared/attacks/schema.sql."""

from __future__ import annotations

from policy.catalog import Catalog
from policy.rules import policy_from_dict

CUSTOMERS, ORDERS, PAYMENTS, P2025, P2026, V_CUSTOMERS, MV_EMAILS = (
    16400, 16410, 16420, 16430, 16440, 16450, 16460,
)
PG_STATS, PG_STATISTIC, PG_CLASS, PG_SETTINGS = 12000, 2619, 1259, 12100

TEXT = 'pg_catalog."text"'
DATE = 'pg_catalog."date"'


def _cols(relid: int, cols: list[tuple[str, str, str]]) -> list[list]:
    return [[relid, i + 1, name, typ, cat] for i, (name, typ, cat) in enumerate(cols)]


CUSTOMER_COLS = [
    ("id", "integer", "N"), ("name", TEXT, "S"), ("email", TEXT, "S"), ("ssn", TEXT, "S"),
    ("card_number", TEXT, "S"), ("birth_date", DATE, "D"), ("vip", "boolean", "B"),
]
PAYMENT_COLS = [
    ("id", "integer", "N"), ("customer_id", "integer", "N"), ("card_number", TEXT, "S"),
    ("amount", "numeric(10,2)", "N"), ("paid_on", DATE, "D"),
]

SAMPLE_DATA = {
    "relations": [
        [CUSTOMERS, "public", "customers", "r", None],
        [ORDERS, "public", "orders", "r", None],
        [PAYMENTS, "public", "payments", "p", None],
        [P2025, "public", "payments_2025", "r", None],
        [P2026, "public", "payments_2026", "r", None],
        [V_CUSTOMERS, "public", "v_customers", "v",
         " SELECT id,\n    name,\n    ssn\n   FROM customers;"],
        [MV_EMAILS, "public", "mv_customer_emails", "m",
         " SELECT id,\n    email\n   FROM customers;"],
        [PG_STATS, "pg_catalog", "pg_stats", "v", None],
        [PG_STATISTIC, "pg_catalog", "pg_statistic", "r", None],
        [PG_CLASS, "pg_catalog", "pg_class", "r", None],
        [PG_SETTINGS, "pg_catalog", "pg_settings", "v", None],
    ],
    "columns": (
        _cols(CUSTOMERS, CUSTOMER_COLS)
        + _cols(ORDERS, [("id", "integer", "N"), ("customer_id", "integer", "N"),
                         ("total", "numeric(10,2)", "N"), ("note", TEXT, "S")])
        + _cols(PAYMENTS, PAYMENT_COLS) + _cols(P2025, PAYMENT_COLS) + _cols(P2026, PAYMENT_COLS)
        + _cols(V_CUSTOMERS, [("id", "integer", "N"), ("name", TEXT, "S"), ("ssn", TEXT, "S")])
        + _cols(MV_EMAILS, [("id", "integer", "N"), ("email", TEXT, "S")])
    ),
    "inherits": [[P2025, PAYMENTS], [P2026, PAYMENTS]],
    "view_deps": [
        [V_CUSTOMERS, CUSTOMERS, 1, False], [V_CUSTOMERS, CUSTOMERS, 2, False],
        [V_CUSTOMERS, CUSTOMERS, 4, False], [MV_EMAILS, CUSTOMERS, 1, False],
        [MV_EMAILS, CUSTOMERS, 3, False],
    ],
    "functions": [
        [17000, "public", "customer_ssn", "sql"],
        [17001, "public", "hstore", "c"],
        [870, "pg_catalog", "lower", "internal"],
    ],
    "operators": [],
    "functions_complete": False,
}

SAMPLE_POLICY_DICT = {
    "exempt_users": ["postgres"],
    "trusted_functions": [],
    "mask": [
        {"table": "public.customers", "column": "ssn", "mask": "redact"},
        {"table": "public.customers", "column": "card_number", "mask": "redact"},
        {"table": "public.payments", "column": "card_number", "mask": "redact"},
        {"table": "public.customers", "column": "email", "mask": "email"},
        {"table": "public.customers", "column": "birth_date", "mask": "year"},
    ],
}


def sample_catalog() -> Catalog:
    return Catalog.from_dict(SAMPLE_DATA)


def sample_policy():
    return policy_from_dict(SAMPLE_POLICY_DICT)

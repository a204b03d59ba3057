"""Fixtures for the bypass cases: a database loaded with shared/attacks/schema.sql, and a
pgveil in front of it with the policy from the header of shared/attacks/cases.toml.

Both are module-scoped: every case of a module runs against the same database and the same
proxy process. The cases run inside BEGIN … ROLLBACK, so they leave the data alone; the
database is dropped at the end. The role ``analyst`` is cluster-wide: if it already exists
(another suite, an external server), schema.sql's CREATE ROLE becomes an ALTER ROLE.

The module also gets a ``decoy`` schema (created by the superuser, not by a case) holding
harmless tables named like the sensitive ones, for search_path tricks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from attack_oracle import attacks_dir
from helpers import missing
from helpers import ProxyProcess, unique_name

ANALYST = "analyst"
ANALYST_PASSWORD = "analyst-pw"

DECOY_SQL = """
CREATE SCHEMA decoy;
CREATE TABLE decoy.customers (id int, name text, email text, ssn text, card_number text,
                              birth_date date, vip boolean);
INSERT INTO decoy.customers VALUES (1, 'decoy', 'nobody@decoy.example', 'decoy-ssn',
                                    'decoy-card', '2000-01-01', false);
GRANT USAGE ON SCHEMA decoy TO analyst;
GRANT SELECT ON decoy.customers TO analyst;
"""


def policy_toml(exempt: list[str]) -> str:
    rules = [
        ("public.customers", "ssn", "redact"),
        ("public.customers", "card_number", "redact"),
        ("public.payments", "card_number", "redact"),
        ("public.customers", "email", "email"),
        ("public.customers", "birth_date", "year"),
    ]
    out = ["[policy]", "exempt_users = [" + ", ".join(f'"{u}"' for u in exempt) + "]", ""]
    for table, column, mask in rules:
        out += ["[[policy.mask]]", f'table = "{table}"', f'column = "{column}"', f'mask = "{mask}"', ""]
    return "\n".join(out)


class AttackProxy(ProxyProcess):
    """A ProxyProcess whose catalog connection logs in as the test server's superuser."""

    catalog_user: str = "postgres"

    def write_config(self) -> Path:
        path = super().write_config()
        text = path.read_text()
        text = text.replace("[upstream]\n", f'[upstream]\ncatalog_user = "{self.catalog_user}"\n', 1)
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def attacks_path() -> Path:
    found = attacks_dir()
    if found is None:
        missing("shared/attacks not found: set PGVEIL_ATTACKS_DIR to the folder holding "
                "cases.toml and schema.sql (default: ../shared/attacks next to the repo)")
    return found


@pytest.fixture(scope="module")
def attacks_db(pg, attacks_path: Path) -> Iterator[str]:
    name = unique_name("attacks")
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string(None))
    schema = (attacks_path / "schema.sql").read_text()
    created_role = False
    with pg.connect(name) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ANALYST]).fetchone()
        if exists:
            schema = re.sub(r"\bCREATE ROLE analyst\b", "ALTER ROLE analyst", schema)
        else:
            created_role = True
        conn.execute(schema)
        conn.execute(DECOY_SQL)
    try:
        yield name
    finally:
        pg.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)).as_string(None))
        if created_role:
            try:
                pg.execute("DROP ROLE IF EXISTS analyst")
            except psycopg.Error:
                pass  # still owns something elsewhere: harmless, it is recreated-or-altered


@pytest.fixture(scope="module")
def veil(pg, attacks_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackProxy]:
    exempt = sorted({"postgres", pg.superuser})
    proxy = AttackProxy(
        workdir=tmp_path_factory.mktemp("pgveil-attacks"),
        upstream_host=pg.host,
        upstream_port=pg.port,
        upstream_sslmode=pg.extra.get("sslmode", "disable") if pg.extra.get("sslmode") in (
            "disable", "prefer", "require") else "disable",
        passwords={**pg.passwords, ANALYST: ANALYST_PASSWORD},
        superuser=pg.superuser,
        name="pgveil-attacks",
        extra_config=policy_toml(exempt),
    )
    proxy.catalog_user = pg.superuser
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.kill()


@pytest.fixture
def watch(request: pytest.FixtureRequest, veil: AttackProxy) -> AttackProxy:
    """Attach the proxy's output to this test's failure report."""
    root = Path(__file__).resolve().parents[1] / "conftest.py"
    for plugin in request.config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) and Path(plugin.__file__).resolve() == root:
            plugin._attach(request.node, veil)
            break
    return veil

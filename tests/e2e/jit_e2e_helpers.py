"""Small pieces the end-to-end JIT tests share: tokens, the admin API, psql, the config.

Everything here talks to real processes: the admin API over HTTP (urllib), the console and
the data path through psql or psycopg. Nothing sleeps to synchronise; waiting is
``helpers.wait_until`` (poll with a deadline).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from helpers import REPO_ROOT, ProxyProcess, unique_name

ANALYST = "analyst"
APPROVERS = ("boss", "carol")
MASKED_SSN = "REDACTED"
# Real rows of shared/attacks/schema.sql.
SSN_1 = "995-50-6727"
EMAIL_1 = "ada.q492z@vault-1.example"


def attacks_schema() -> Path | None:
    """schema.sql of shared/attacks: ``$PGVEIL_ATTACKS_DIR``, else ``../shared/attacks``."""
    env = os.environ.get("PGVEIL_ATTACKS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "attacks")
    for c in candidates:
        if (c / "schema.sql").is_file():
            return c / "schema.sql"
    return None


@dataclass
class Token:
    name: str
    role: str
    value: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.value.encode()).hexdigest()

    def toml(self) -> str:
        return (f'[[admin.tokens]]\nname = "{self.name}"\n'
                f'token_sha256 = "{self.sha256}"\nrole = "{self.role}"\n')


@dataclass
class Tokens:
    approver: Token = field(default_factory=lambda: Token("boss", "approver"))
    admin: Token = field(default_factory=lambda: Token("secadmin", "admin"))

    def toml(self) -> str:
        return self.approver.toml() + "\n" + self.admin.toml()


def policy_toml(exempt: list[str], actions: bool = False) -> str:
    out = ["[policy]", "exempt_users = [" + ", ".join(f'"{u}"' for u in exempt) + "]", ""]
    for column, mask in (("ssn", "redact"), ("email", "email")):
        out += ["[[policy.mask]]", 'table = "public.customers"', f'column = "{column}"',
                f'mask = "{mask}"', ""]
    if actions:
        out += ["[[policy.action]]", 'name = "bulk-delete"', 'statements = ["delete"]',
                'when = "no_where"', ""]
    return "\n".join(out)


def jit_toml(*, hold_seconds: float = 3, state_url: str, auto_approve: bool = False) -> str:
    out = ["[jit]", 'approvers = ["boss", "carol"]', f"hold_seconds = {hold_seconds}",
           'max_duration = "8 hours"', ""]
    if auto_approve:
        out += ["[[jit.auto_approve]]", 'users = ["analyst"]',
                'columns = ["public.customers.email"]', 'max_duration = "1 hour"', ""]
    out += ["[state]", f'url = "{state_url}"', ""]
    return "\n".join(out)


# -- the database ------------------------------------------------------------------------

def create_jit_database(pg, schema_path: Path) -> tuple[str, bool]:
    """A fresh database with schema.sql and the approver roles; (name, created analyst)."""
    name = unique_name("jit")
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string(None))
    schema = schema_path.read_text()
    created = False
    with pg.connect(name) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'analyst'").fetchone():
            schema = re.sub(r"\bCREATE ROLE analyst\b", "ALTER ROLE analyst", schema)
        else:
            created = True
        conn.execute(schema)
        for role in APPROVERS:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(role)))
    return name, created


def drop_database(pg, name: str) -> None:
    pg.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)).as_string(None))


class JitProxy(ProxyProcess):
    """A ProxyProcess whose catalog connection logs in as the test server's superuser."""

    catalog_user: str = "postgres"

    def write_config(self) -> Path:
        path = super().write_config()
        text = path.read_text()
        text = text.replace("[upstream]\n", f'[upstream]\ncatalog_user = "{self.catalog_user}"\n', 1)
        path.write_text(text)
        return path


def make_proxy(pg, workdir: Path, name: str, extra_config: str) -> JitProxy:
    proxy = JitProxy(workdir=workdir, upstream_host=pg.host, upstream_port=pg.port,
                     upstream_sslmode="disable", passwords=dict(pg.passwords),
                     superuser=pg.superuser, name=name, extra_config=extra_config)
    proxy.catalog_user = pg.superuser
    return proxy


# -- the admin API -----------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class Api:
    def __init__(self, base: str, token: Token) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token.value}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            raise ApiError(exc.code, parsed) from None
        return json.loads(raw) if raw.strip() else None

    def requests(self, state: str | None = None) -> list[dict]:
        return self.call("GET", "/api/requests" + (f"?state={state}" if state else ""))

    def grants(self, all: bool = False) -> list[dict]:
        return self.call("GET", "/api/grants" + ("?all=1" if all else ""))

    def approve(self, rid: str) -> dict:
        return self.call("POST", f"/api/requests/{rid}/approve", {})

    def revoke(self, gid: str) -> dict:
        return self.call("DELETE", f"/api/grants/{gid}")


def cleanup_jit(proxy: ProxyProcess, tokens: Tokens) -> None:
    """Revoke every live grant and cancel every pending request (between tests)."""
    admin = Api(proxy.admin_url, tokens.admin)
    for g in admin.grants():
        try:
            admin.revoke(g["id"])
        except ApiError as exc:
            if exc.status != 409 and exc.status != 404:
                raise
    for r in admin.requests(state="pending"):
        try:
            admin.call("POST", f"/api/requests/{r['id']}/cancel", {})
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise


# -- clients -----------------------------------------------------------------------------

def psql(proxy: ProxyProcess, dbname: str, user: str, *commands: str,
         check: bool = True) -> subprocess.CompletedProcess:
    """The wheel's psql through the proxy: -A -t (unaligned, tuples only), one -c each."""
    from proxy.embedded import bin_dir

    args = [str(bin_dir() / "psql"), "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
            "-v", "VERBOSITY=verbose", "-d", proxy.dsn(dbname, user)]
    for c in commands:
        args += ["-c", c]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"psql exited {out.returncode}:\nstdout: {out.stdout}\n"
                             f"stderr: {out.stderr}")
    return out


def console_request(proxy: ProxyProcess, user: str, table: str, cols: str, duration: str,
                    reason: str) -> tuple[str, str]:
    """REQUEST ACCESS … from psql in the console database; (request id, state)."""
    out = psql(proxy, "pgveil", user,
               f"REQUEST ACCESS TO {table} ({cols}) FOR '{duration}' BECAUSE '{reason}'")
    line = out.stdout.strip().splitlines()[0]
    rid, state = line.split("|")[:2]
    assert rid.startswith("r_"), out.stdout
    return rid, state


def ssn_of(conn: psycopg.Connection, cid: int = 1) -> str:
    return conn.execute("SELECT ssn FROM customers WHERE id = %s", [cid]).fetchone()[0]


def email_of(conn: psycopg.Connection, cid: int = 1) -> str:
    return conn.execute("SELECT email FROM customers WHERE id = %s", [cid]).fetchone()[0]

"""``pgveil demo``: an embedded PostgreSQL with sample data, and pgveil in front of it."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import tempfile
from importlib import resources
from pathlib import Path

from ..config import parse_settings
from ..embedded import EmbeddedPostgres
from ..serve import install_uvloop, run, say
from ..tls import make_self_signed

HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def demo(port: int = 6432, admin_port: int = 8433) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pgveil-demo-"))
    say("starting an embedded PostgreSQL ...")
    pg = EmbeddedPostgres(datadir=workdir / "pgdata", hba=HBA)
    pg.start()
    try:
        say("loading the sample schema (database 'demo') ...")
        pg.psql("CREATE DATABASE demo")
        pg.psql(resources.files(__package__).joinpath("schema.sql").read_text(), dbname="demo")
        token = secrets.token_urlsafe(24)
        token_sha = hashlib.sha256(token.encode()).hexdigest()
        cert, key = workdir / "server.crt", workdir / "server.key"
        make_self_signed(cert, key)
        config = workdir / "pgveil.toml"
        config.write_text(
            f"""# written by pgveil demo
[proxy]
listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
shutdown_timeout = 5

[upstream]
host = "127.0.0.1"
port = {pg.port}
sslmode = "disable"

[admin]
listen = "127.0.0.1:{admin_port}"

[[admin.tokens]]
name = "boss"
token_sha256 = "{token_sha}"
role = "admin"

[policy]
exempt_users = ["postgres"]
trusted_functions = []

[[policy.action]]
name = "bulk-write"
statements = ["delete", "update"]
when = "no_where"

[[policy.mask]]
table = "public.customers"
column = "ssn"
mask = "redact"

[[policy.mask]]
table = "public.customers"
column = "email"
mask = "email"

[[policy.mask]]
table = "public.customers"
column = "card_number"
mask = "partial"
keep_last = 4

[[policy.mask]]
table = "public.customers"
column = "birth_date"
mask = "year"

[[policy.mask]]
table = "public.*"
column = "*password*"
mask = "strip"

[jit]
approvers = ["boss"]
hold_seconds = 30

[state]
url = "sqlite:///{workdir}/state.db"

[audit]
path = "{workdir}/audit.jsonl"
key_file = "{workdir}/audit.key"
"""
        )
        settings = parse_settings(config.read_text(), str(config))
        say(f"config written to {config}")

        def ready(_server) -> None:
            say("ready. Connect with:")
            print(f"\n    psql \"host=127.0.0.1 port={port} dbname=demo user=analyst "
                  f"password=analyst sslmode=require\"\n", flush=True)
            print("    then try:  SELECT * FROM customers LIMIT 3;   (masked for analyst)\n"
                  f"    ask for access: psql \"host=127.0.0.1 port={port} dbname=pgveil "
                  "user=analyst password=analyst sslmode=require\"\n"
                  "      REQUEST ACCESS TO public.customers (ssn) FOR '30 minutes' "
                  "BECAUSE 'INC-1';\n"
                  f"    approve on http://127.0.0.1:{admin_port}/ with the token {token}\n"
                  f"      or: PGVEIL_TOKEN={token} pgveil approve <request id> "
                  f"--url http://127.0.0.1:{admin_port}\n"
                  f"    audit log: {workdir}/audit.jsonl (pgveil audit verify {workdir}/"
                  f"audit.jsonl --key {workdir}/audit.key)\n", flush=True)
            print("    (the TLS certificate is self-signed; use sslmode=disable with a psql "
                  "built without SSL)\n\nPress Ctrl-C to stop.", flush=True)

        install_uvloop()
        asyncio.run(run(settings, ready=ready))
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping the embedded PostgreSQL ...")
        pg.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0

"""The PostgreSQL sink: several instances share one table, each with its own chain."""

from __future__ import annotations

import asyncio
import os
from typing import Iterator

import psycopg
import pytest

from proxy.audit import AuditLog, AuditSettings
from proxy.audit.sinks.postgres import TABLE
from proxy.audit.verify import verify_postgres

from audit_helpers import intent_fields, key_of, run


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    external = os.environ.get("PGVEIL_TEST_DSN")
    if external:
        dsn = external
    else:
        from proxy.embedded import EmbeddedPostgres

        server = EmbeddedPostgres().start()
        dsn = server.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgveil_audit_test")
        conn.execute("CREATE DATABASE pgveil_audit_test")
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    url = f"postgresql://{info.get('user', 'postgres')}@{info['host']}:{info['port']}/pgveil_audit_test"
    try:
        yield url
    finally:
        if not external:
            server.stop()


def pg_settings(tmp_path, url: str, instance: str) -> AuditSettings:
    return AuditSettings(sink="postgresql", url=url, instance=instance,
                         key_file=str(tmp_path / "audit.key"), path=str(tmp_path / "unused.jsonl"))


def test_instances_keep_their_own_chains_and_verify(tmp_path, pg_url: str) -> None:
    async def instance(name: str, n: int) -> None:
        log = AuditLog(pg_settings(tmp_path, pg_url, name))
        await log.start()
        for i in range(n):
            rid = log.intent(intent_fields(session=f"{name}-s", n=i))
            await asyncio.sleep(0)
            log.complete(rid, {"rows": i, "sqlstate": "00000"})
        await log.close()

    async def main() -> None:
        await asyncio.gather(instance("edge-a", 150), instance("edge-b", 90))
        await instance("edge-a", 5)  # a restart continues edge-a's chain

    run(main())
    key = key_of(pg_settings(tmp_path, pg_url, "x"))
    reports = verify_postgres(pg_url, key)
    assert set(reports) == {"edge-a", "edge-b"}
    assert reports["edge-a"].ok and reports["edge-a"].records == 2 + 300 + 2 + 10
    assert reports["edge-b"].ok and reports["edge-b"].records == 2 + 180
    assert not any((tmp_path / "unused.jsonl").parent.glob("unused*"))

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"UPDATE {TABLE} SET line = replace(line, '\"rows\":7', '\"rows\":0') "
                     "WHERE instance = 'edge-b' AND line LIKE '%\"rows\":7,%'")
        conn.execute(f"DELETE FROM {TABLE} WHERE instance = 'edge-a' AND seq = 40")
    reports = verify_postgres(pg_url, key)
    b = reports["edge-b"].problem
    assert b is not None and "MAC mismatch" in b.reason and b.seq == 17
    a = reports["edge-a"].problem
    assert a is not None and a.seq == 41 and "40..40 are missing" in a.reason

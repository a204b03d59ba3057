"""``/metrics`` on the admin listener, checked against a known workload through the proxy.

One proxy for the module, configured with everything that exports metrics: ``[audit]``, a
``[policy]`` masking one column of a table made for the run, ``[jit]`` with a SQLite state
file and an approver token. Each test scrapes before and after its workload and checks the
*difference*, parsing the exposition with prometheus_client's own parser.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from audit_fixtures import audit_config, read_log, sample, scrape
from helpers import ProxyProcess, _free_port, unique_name, wait_until

MASKED_USER = "trust_user"
APPROVER_TOKEN = secrets.token_urlsafe(24)


class Lab:
    def __init__(self, proxy: ProxyProcess, table: str, work: Path) -> None:
        self.proxy, self.table, self.work = proxy, table, work

    def scrape(self) -> dict:
        return scrape(self.proxy.admin_port)

    def masked_conn(self, **kw) -> psycopg.Connection:
        return psycopg.connect(self.proxy.dsn("postgres", MASKED_USER), autocommit=True, **kw)

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.proxy.admin_url + path, method=method,
            data=json.dumps(body or {}).encode() if method != "GET" else None,
            headers={"Authorization": f"Bearer {APPROVER_TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def lab_config(work: Path, table: str) -> str:
    digest = hashlib.sha256(APPROVER_TOKEN.encode()).hexdigest()
    return f"""
[[admin.tokens]]
name = "alice"
token_sha256 = "{digest}"
role = "approver"

{audit_config(work)}

[policy]
exempt_users = ["postgres"]

[[policy.mask]]
table = "public.{table}"
column = "email"
mask = "redact"

[jit]
approvers = ["alice"]

[state]
url = "sqlite:///{work / 'state.db'}"
"""


@pytest.fixture(scope="module")
def lab(pg, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("metrics")
    table = unique_name("met")
    pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, email text)")
    pg.execute(f"INSERT INTO {table} VALUES (1, 'ann@example.com'), (2, 'bob@example.com')")
    pg.execute(f"GRANT SELECT ON {table} TO {MASKED_USER}")
    proxy = ProxyProcess(workdir=work, upstream_host=pg.host, upstream_port=pg.port,
                         passwords=pg.passwords, superuser=pg.superuser, name="pgveil-metrics",
                         extra_config=lab_config(work, table))
    proxy.start()
    try:
        yield Lab(proxy, table, work)
    finally:
        proxy.stop()
        pg.execute(f"DROP TABLE IF EXISTS {table}")


def test_connections_total_and_current(lab: Lab) -> None:
    before = lab.scrape()
    assert sample(before, "pgveil_client_connections_current") == 0
    conns = [lab.masked_conn() for _ in range(3)]
    try:
        for c in conns:
            c.execute("SELECT 1", prepare=False)
        now = lab.scrape()
        assert sample(now, "pgveil_client_connections_total") == \
            sample(before, "pgveil_client_connections_total") + 3
        assert sample(now, "pgveil_client_connections_current") == 3
    finally:
        for c in conns:
            c.close()
    wait_until(lambda: sample(lab.scrape(), "pgveil_client_connections_current") == 0,
               message="connections_current back to 0")


def test_statements_by_decision_masks_denials_and_latency(lab: Lab) -> None:
    before = lab.scrape()
    rewritten, forwarded = 5, 4
    with lab.masked_conn() as conn:
        for _ in range(rewritten):
            rows = conn.execute(f"SELECT id, email FROM {lab.table} ORDER BY id", prepare=False).fetchall()
            assert all(email != "ann@example.com" for _, email in rows), rows
        for k in range(forwarded):
            conn.execute(f"SELECT {k} AS plain", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DO $$ begin end $$", prepare=False)
    after = lab.scrape()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("pgveil_statements_total", kind="select", decision="rewrite") == rewritten
    assert delta("pgveil_statements_total", kind="select", decision="forward") == forwarded
    assert delta("pgveil_statements_total", kind="do", decision="deny") == 1
    assert delta("pgveil_denials_total", reason="denied_statement") == 1
    assert delta("pgveil_masked_columns_total") == rewritten       # one masked column each
    total = rewritten + forwarded + 1
    assert delta("pgveil_statement_duration_seconds_count") == total
    assert delta("pgveil_statement_duration_seconds_sum") > 0
    assert delta("pgveil_proxy_added_seconds_count") == total        # all simple protocol
    assert delta("pgveil_proxy_added_seconds_sum") > 0
    # buckets are cumulative and end with +Inf == count
    assert sample(after, "pgveil_proxy_added_seconds_bucket", le="+Inf") == \
        sample(after, "pgveil_proxy_added_seconds_count")


def test_proxy_added_seconds_counts_extended_protocol_statements(lab: Lab) -> None:
    before = lab.scrape()
    with lab.masked_conn() as conn:
        for k in range(5):
            conn.execute("SELECT %s::int AS ext", [k])
    after = lab.scrape()
    assert sample(after, "pgveil_statement_duration_seconds_count") - \
        sample(before, "pgveil_statement_duration_seconds_count") == 5
    assert sample(after, "pgveil_proxy_added_seconds_count") - \
        sample(before, "pgveil_proxy_added_seconds_count") == 5


def test_audit_records_written_match_the_file(lab: Lab) -> None:
    with lab.masked_conn() as conn:
        for k in range(10):
            conn.execute(f"SELECT {k} AS audited", prepare=False)
    wait_until(lambda: sample(lab.scrape(), "pgveil_audit_writer_lag_seconds") == 0,
               message="the audit writer to catch up")
    m = lab.scrape()
    written = sample(m, "pgveil_audit_records_written_total")
    on_disk = read_log(lab.work / "audit.jsonl")
    assert written == len(on_disk) and written >= 20
    assert sample(m, "pgveil_audit_records_dropped_total") == 0
    # exported (its counting is tested by stopping the writer: test_audit_process.py)
    assert sample(m, "pgveil_audit_handoffs_stalled_total", default=-1.0) >= 0
    assert sample(m, "pgveil_audit_healthy") == 1


def test_requests_grants_and_grant_uses(lab: Lab) -> None:
    before = lab.scrape()
    with psycopg.connect(lab.proxy.dsn("pgveil", MASKED_USER), autocommit=True) as console:
        row = console.execute(
            f"REQUEST ACCESS TO public.{lab.table} (email) FOR '5 minutes' BECAUSE 'metrics test'",
            prepare=False).fetchone()
    request_id, state = row[0], row[1]
    assert state == "pending", row
    pending = lab.scrape()
    assert sample(pending, "pgveil_requests", state="pending") == \
        sample(before, "pgveil_requests", state="pending") + 1
    assert sample(pending, "pgveil_active_grants") == sample(before, "pgveil_active_grants")

    status, body = lab.api("POST", f"/api/requests/{request_id}/approve")
    assert status == 200, body
    approved = lab.scrape()
    assert sample(approved, "pgveil_requests", state="pending") == sample(before, "pgveil_requests", state="pending")
    assert sample(approved, "pgveil_requests", state="approved") == \
        sample(before, "pgveil_requests", state="approved") + 1
    assert sample(approved, "pgveil_active_grants") == sample(before, "pgveil_active_grants") + 1

    # the grant is live on the query path within a second; a statement uses it
    def unmasked() -> bool:
        with lab.masked_conn() as conn:
            rows = conn.execute(f"SELECT email FROM {lab.table} ORDER BY id", prepare=False).fetchall()
        return rows[0][0] == "ann@example.com"

    wait_until(unmasked, timeout=5, message="the grant to unmask the column")
    used = lab.scrape()
    assert sample(used, "pgveil_grant_uses_total") > sample(before, "pgveil_grant_uses_total")


def test_upstream_errors_when_the_database_is_unreachable(pg, tmp_path: Path) -> None:
    closed = _free_port()  # nothing listens there
    proxy = ProxyProcess(workdir=tmp_path, upstream_host="127.0.0.1", upstream_port=closed,
                         name="pgveil-noupstream")
    proxy.start()
    try:
        assert sample(scrape(proxy.admin_port), "pgveil_upstream_errors_total") == 0
        with pytest.raises(psycopg.OperationalError, match="could not connect to the upstream"):
            psycopg.connect(proxy.dsn("postgres"), connect_timeout=5)
        wait_until(lambda: sample(scrape(proxy.admin_port), "pgveil_upstream_errors_total") == 1,
                   message="upstream_errors_total to count the failed connect")
    finally:
        proxy.stop()


def test_statement_metrics_without_audit(pg, tmp_path: Path) -> None:
    table = unique_name("noaud")
    pg.execute(f"CREATE TABLE {table} (id int, email text)")
    pg.execute(f"GRANT SELECT ON {table} TO {MASKED_USER}")
    proxy = ProxyProcess(workdir=tmp_path, upstream_host=pg.host, upstream_port=pg.port,
                         passwords=pg.passwords, superuser=pg.superuser, name="pgveil-noaudit",
                         extra_config=f'[policy]\nexempt_users = ["postgres"]\n\n[[policy.mask]]\n'
                                      f'table = "public.{table}"\ncolumn = "email"\nmask = "redact"\n')
    proxy.start()
    try:
        with psycopg.connect(proxy.dsn("postgres", MASKED_USER), autocommit=True) as conn:
            for _ in range(3):
                conn.execute(f"SELECT * FROM {table}", prepare=False)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DO $$ begin end $$", prepare=False)
        m = scrape(proxy.admin_port)
        assert sample(m, "pgveil_statements_total", kind="select", decision="rewrite") == 3
        assert sample(m, "pgveil_denials_total", reason="denied_statement") == 1
        assert sample(m, "pgveil_masked_columns_total") == 3
        assert sample(m, "pgveil_statement_duration_seconds_count") == 4
    finally:
        proxy.stop()
        pg.execute(f"DROP TABLE IF EXISTS {table}")

"""``python -m bench.decide``: how long a cold decision takes (issue 3: ≤ 2 ms at p50 for a
three-table join).

A cold decision is the full way, with no cache: sqlglot parse, pglast check, name
resolution against the live catalog, substitution of the masked tables, the rewritten SQL.
The bench starts an embedded PostgreSQL (or uses ``--dsn``), creates three tables with
sensitive columns, loads pgveil's catalog from it as the proxy does, and times
``policy.decision.decide`` on joins of the three tables that differ in their literals and
shape (so nothing could be cached even if a cache were in the way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from policy.decision import decide
from policy.grants import GrantSet
from proxy.config import parse_settings
from proxy.policy_runtime import PolicyRuntime

SCHEMA = """
DROP TABLE IF EXISTS bench_payments, bench_orders, bench_people;
CREATE TABLE bench_people (id int PRIMARY KEY, name text, email text, ssn text);
CREATE TABLE bench_orders (id int PRIMARY KEY, person_id int, total numeric, note text);
CREATE TABLE bench_payments (id int PRIMARY KEY, order_id int, amount numeric, card text);
"""

POLICY = """
[policy]
exempt_users = []
[[policy.mask]]
table = "public.bench_people"
column = "ssn"
mask = "redact"
[[policy.mask]]
table = "public.bench_people"
column = "email"
mask = "email"
[[policy.mask]]
table = "public.bench_payments"
column = "card"
mask = "partial"
keep_last = 4
"""

SHAPES = (
    "SELECT o.id, o.total, p.name, p.email, y.amount FROM bench_orders o "
    "JOIN bench_people p ON p.id = o.person_id JOIN bench_payments y ON y.order_id = o.id "
    "WHERE o.id <= {n} ORDER BY o.id",
    "SELECT p.name, count(*), sum(y.amount) FROM bench_people p "
    "JOIN bench_orders o ON o.person_id = p.id JOIN bench_payments y ON y.order_id = o.id "
    "WHERE y.amount > {n} GROUP BY p.name",
    "SELECT * FROM bench_people p, bench_orders o, bench_payments y "
    "WHERE p.id = o.person_id AND y.order_id = o.id AND p.id = {n}",
)


def measure(runtime: PolicyRuntime, database: str, user: str, count: int) -> list[float]:
    st = runtime.catalogs[database]
    assert st.catalog is not None and runtime.policy is not None
    times = []
    for n in range(count):
        sql = SHAPES[n % len(SHAPES)].format(n=n)
        t = time.perf_counter()
        d = decide(sql, user=user, search_path=("public",), catalog=st.catalog,
                   policy=runtime.policy, grants=GrantSet(), now=0.0)
        times.append(time.perf_counter() - t)
        if d.action != "rewrite":
            raise SystemExit(f"bench.decide: expected a rewrite, got {d.action}: {sql}")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.decide", description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", help="an existing PostgreSQL (host=… port=… user=… dbname=…); "
                    "default: an embedded one")
    ap.add_argument("-n", "--count", type=int, default=600, help="decisions to time (600)")
    ap.add_argument("--warmup", type=int, default=60, help="decisions run first, not counted")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    pg = None
    if args.dsn:
        parts = dict(p.split("=", 1) for p in args.dsn.split())
        host, port = parts.get("host", "127.0.0.1"), int(parts.get("port", 5432))
        user, dbname = parts.get("user", "postgres"), parts.get("dbname", "postgres")
    else:
        from proxy.embedded import EmbeddedPostgres

        print("bench.decide: starting an embedded PostgreSQL", file=sys.stderr)
        pg = EmbeddedPostgres().start()
        host, port, user, dbname = "127.0.0.1", pg.port, "postgres", "postgres"
    try:
        import psycopg

        with psycopg.connect(host=host, port=port, user=user, dbname=dbname,
                             autocommit=True) as conn:
            conn.execute(SCHEMA)
        settings = parse_settings(
            f'[upstream]\nhost = "{host}"\nport = {port}\ncatalog_user = "{user}"\n'
            f'sslmode = "disable"\n' + POLICY)
        runtime = PolicyRuntime(settings)

        async def load() -> None:
            task = runtime.ensure_catalog(dbname)
            if task is not None:
                await task

        asyncio.run(load())
        if runtime.catalogs[dbname].catalog is None:
            raise SystemExit("bench.decide: the catalog did not load")
        measure(runtime, dbname, "analyst", args.warmup)
        times = sorted(measure(runtime, dbname, "analyst", args.count))
        q = statistics.quantiles(times, n=100, method="inclusive")
        figures = {"decisions": len(times), "p50_ms": round(statistics.median(times) * 1e3, 3),
                   "p95_ms": round(q[94] * 1e3, 3), "p99_ms": round(q[98] * 1e3, 3),
                   "max_ms": round(times[-1] * 1e3, 3), "target_p50_ms": 2.0}
        if args.json:
            print(json.dumps(figures))
        else:
            print("cold decision, three-table join (sqlglot + pglast + rewrite, no cache)")
            print(f"  decisions {figures['decisions']}   p50 {figures['p50_ms']:.3f} ms   "
                  f"p95 {figures['p95_ms']:.3f} ms   p99 {figures['p99_ms']:.3f} ms   "
                  f"max {figures['max_ms']:.3f} ms   (target: p50 ≤ 2 ms)")
        return 0
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())

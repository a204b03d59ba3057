"""``pgveil explain``: the decision for one statement against the live catalog."""

from __future__ import annotations

import asyncio
import json
import sys

from policy.names import parse_search_path

from .config import Settings
from .policy_runtime import PolicyRuntime


async def _explain(settings: Settings, user: str, dbname: str, sql: str,
                   search_path: str) -> dict:
    runtime = PolicyRuntime(settings)
    if runtime.policy is None:
        return {"action": "forward", "why": "no [policy] in the config: everything is forwarded"}
    if not runtime.masks(user):
        return {"action": "forward", "why": f"{user} is in policy.exempt_users"}
    task = runtime.ensure_catalog(dbname)
    if task is not None:
        await task
    st = runtime.catalogs[dbname]
    if st.catalog is None:
        raise SystemExit(f"pgveil explain: cannot load the catalog of {dbname!r}: {st.error}")
    d = runtime.decide(sql, user=user, database=dbname,
                       search_path=parse_search_path(search_path), settings={})
    out = {"action": d.action, "kind": d.kind, "tables": list(d.tables),
           "masked": [f"{t}.{c} ({k})" for t, c, k in d.masked],
           "fingerprint": d.fingerprint, "normalized": d.normalized}
    if d.action == "rewrite":
        out["sql"] = d.sql
    if d.action == "deny":
        out.update(sqlstate=d.sqlstate, message=d.message, hint=d.hint, reason=d.reason)
    return out


def explain(settings: Settings, user: str, dbname: str, sql: str, *, search_path: str,
            as_json: bool) -> int:
    out = asyncio.run(_explain(settings, user, dbname, sql, search_path))
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"decision: {out['action']}" + (f" ({out.get('why')})" if out.get("why") else ""))
    for key in ("kind", "tables", "masked", "sqlstate", "message", "hint", "reason"):
        if out.get(key):
            value = ", ".join(out[key]) if isinstance(out[key], list) else out[key]
            print(f"{key}: {value}")
    if "sql" in out:
        print("rewritten SQL:")
        print(out["sql"])
    sys.stdout.flush()
    return 0

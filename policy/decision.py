"""``decide()``: one statement string in, one :class:`Decision` out.

The pipeline, for a user who is not exempt:

1. refuse outright if the session runs with a setting that changes lexing (reported by
   the proxy in ``settings``), since pgveil's parse would then differ from the server's;
2. parse with PostgreSQL's grammar (pglast / libpg_query); unparsable → deny, fail closed;
3. walk every statement (:class:`policy.analyze.Analyzer`): statement types, functions,
   operators and settings are checked against :mod:`policy.gate`; sensitive reads become
   splice edits; write targets are checked; findings become a deny (any finding in any
   statement denies the whole string);
4. apply the edits (:mod:`policy.rewrite`), **re-parse the rewritten text** and walk it
   again in verify mode: every read of a relation with uncovered masks must sit inside
   exactly the derived table pgveil generates, and nothing new may be found; otherwise
   deny. A splicing bug thus fails closed instead of leaking;
5. ``forward`` the original text untouched when nothing was substituted.

Exempt users get ``forward`` always (their statements are still classified for audit).
Everything here is pure: no clock (``now`` is passed in), no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pglast import parser as pg_parser

from . import actions, gate
from .analyze import Analyzer
from .touched import columns_touched
from .catalog import Catalog
from .errors import render
from .fingerprint import fingerprint, normalize
from .grants import GrantSet
from .rewrite import apply_edits
from .rules import Policy

ACTIONS = ("forward", "rewrite", "deny", "approval")


@dataclass(frozen=True)
class Decision:
    action: str
    sql: str
    kind: str = "other"
    kinds: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # schema.table.column the statement may read or write
    masked: tuple[tuple[str, str, str], ...] = ()
    grants_used: tuple[str, ...] = ()
    fingerprint: str = ""
    normalized: str = ""
    sqlstate: str | None = None
    message: str | None = None
    hint: str | None = None
    reason: str | None = None  # short code from policy.errors, for audit and tests
    session_effects: dict[str, Any] = field(default_factory=dict)
    refresh_catalog: bool = False
    unknown_relations: tuple[str, ...] = ()
    temp_pinned: tuple[str, ...] = ()  # unknown names sent as pg_temp.name (temporary tables)
    prepared: str | None = None  # name in PREPARE / EXECUTE
    cache_by_fingerprint: bool = True
    literal_dependent: bool = False  # a literal's value decided something (never template)
    approval: str | None = None  # with action "approval": the grant scope that would allow it

    @property
    def denied(self) -> bool:
        return self.action == "deny"


def _deny(base: dict[str, Any], code: str, **names: str) -> Decision:
    sqlstate, message, hint = render(code, **names)
    base = {**base, "cache_by_fingerprint": False}
    return Decision(action="deny", sqlstate=sqlstate, message=message, hint=hint, reason=code, **base)


def _action_rules(stmts, base, user, search_path, catalog, policy, grants, now) -> Decision | None:
    """Apply [[policy.action]]: deny, hold for approval, or note the approval that allows it."""
    def resolve(schema: str | None, name: str) -> str:
        rel, _ = catalog.resolve(schema, name, search_path, user)
        if rel is not None:
            return rel.qualified
        return f"{schema}.{name}" if schema else f"?.{name}"

    rule = actions.match(policy.actions, (actions.describe(s["stmt"], resolve) for s in stmts))
    if rule is None:
        return None
    if rule.require == "deny":
        return _deny(base, "denied_action", name=rule.name)
    key = actions.action_key(rule, base["fingerprint"])
    g = grants.allows_action(user, key, now)
    if g is not None:
        base["grants_used"] = tuple(base.get("grants_used", ())) + (g.id,)
        return None
    sqlstate, message, hint = render("approval_required", name=rule.name)
    return Decision(action="approval", approval=key, reason=rule.name, sqlstate=sqlstate,
                    message=message, hint=hint, **{**base, "cache_by_fingerprint": False})


def _parse(sql: str) -> list[dict]:
    return json.loads(pg_parser.parse_sql_json(sql)).get("stmts", [])


def decide(
    sql: str,
    *,
    user: str,
    search_path: tuple[str, ...],
    catalog: Catalog,
    policy: Policy,
    grants: GrantSet,
    now: float,
    settings: dict[str, str] | None = None,
) -> Decision:
    """Decide what to do with ``sql`` (one or more statements) sent by ``user``."""
    masked_user = not policy.is_exempt(user)
    base: dict[str, Any] = {"sql": sql, "fingerprint": fingerprint(sql), "normalized": normalize(sql)}
    if masked_user:
        bad = gate.session_denial(settings)
        if bad is not None:
            return _deny(base, "denied_session", name=bad[0], value=bad[1])
    try:
        raw = sql.encode("utf-8")
        stmts = _parse(sql)
    except (pg_parser.ParseError, UnicodeError, ValueError) as exc:
        if not masked_user:
            return Decision(action="forward", kind="unknown", **base)
        detail = str(exc).split(", at index")[0][:120]
        return _deny(base, "unparsable", detail=detail)
    plan = catalog.plan_for(policy)
    an = Analyzer(
        sql, raw, user=user, search_path=search_path, catalog=catalog, plan=plan,
        policy=policy, grants=grants, now=now, masked_user=masked_user,
    )
    an.run(stmts)
    kinds = tuple(an.kinds)
    base.update(
        kind=(kinds[0] if len(set(kinds)) == 1 else "multi") if kinds else "empty",
        kinds=kinds,
        tables=tuple(an.tables),
        columns=columns_touched(stmts, an.by_ref, an.relations, an.written),
        masked=tuple(an.masked),
        grants_used=tuple(an.grants_used),
        session_effects=an.session_effects,
        refresh_catalog=an.refresh_catalog or any(k == "ddl" for k in kinds),
        unknown_relations=tuple(an.unknown),
        temp_pinned=tuple(an.temp_pinned),
        prepared=an.prepared,
        cache_by_fingerprint=not an.literal_dependent and not an.edits,
        literal_dependent=bool(an.literal_dependent),
    )
    if not masked_user:
        return Decision(action="forward", **base)
    if an.findings:
        f = an.findings[0]
        return _deny(base, f.code, **f.names)
    if policy.actions:
        held = _action_rules(stmts, base, user, search_path, catalog, policy, grants, now)
        if held is not None:
            return held
    if not an.edits:
        return Decision(action="forward", **base)
    try:
        rewritten = apply_edits(raw, an.edits).decode("utf-8")
        check = Analyzer(
            rewritten, rewritten.encode("utf-8"), user=user, search_path=search_path,
            catalog=catalog, plan=plan, policy=policy, grants=grants, now=now,
            masked_user=True, verify=True,
        )
        check.run(_parse(rewritten))
    except (pg_parser.ParseError, ValueError, LookupError) as exc:
        return _deny(base, "verification_failed", detail=type(exc).__name__)
    problems = check.verify_failures + [f.code for f in check.findings]
    if check.edits:
        problems.append("unexpected edits")
    if len(check.kinds) != len(kinds):
        problems.append("statement count changed")
    if problems:
        return _deny(base, "verification_failed", detail=problems[0])
    base["sql"] = rewritten
    return Decision(action="rewrite", **base)

"""Action rules: risky statements that need an approval, or are refused outright.

A rule (``[[policy.action]]`` in the config) names statement verbs, optionally the tables they
touch, and when it applies::

    [[policy.action]]
    name = "bulk-delete"
    statements = ["delete", "update"]     # also: insert, merge, truncate, ddl, copy_out,
    tables = ["public.*"]                 #       copy_in, select, write (= insert/update/
    when = "no_where"                     #       delete/merge/truncate), any
    require = "approval"                  # or "deny"

Each statement of a query string is described by :func:`describe` (its verb, the tables it
writes or reads, whether a WHERE clause limits it), straight from PostgreSQL's parse tree.
The first matching rule wins. An approval is bound to the user and the statement's
fingerprint, so it can be granted for exactly the statement that was held.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Mapping

from .rules import PolicyError

VERBS = frozenset({"select", "insert", "update", "delete", "merge", "truncate", "ddl",
                   "copy_out", "copy_in", "write", "any"})
WRITE_VERBS = frozenset({"insert", "update", "delete", "merge", "truncate"})


@dataclass(frozen=True, slots=True)
class ActionRule:
    name: str
    statements: frozenset[str]
    tables: tuple[str, ...] = ()  # globs on schema.table; empty = any (or none)
    when: str = "always"  # always | no_where
    require: str = "approval"  # approval | deny

    def applies(self, info: "StatementInfo") -> bool:
        verb_ok = (
            "any" in self.statements
            or info.verb in self.statements
            or ("write" in self.statements and info.verb in WRITE_VERBS)
        )
        if not verb_ok:
            return False
        if self.when == "no_where" and info.verb in ("update", "delete") and info.has_where:
            return False
        if self.when == "no_where" and info.verb not in ("update", "delete"):
            return False
        if self.tables:
            if not info.tables:
                return False
            if not any(fnmatchcase(t, g) for t in info.tables for g in self.tables):
                return False
        return True


def actions_from_config(raw: Any) -> tuple[ActionRule, ...]:
    """Validate ``[[policy.action]]`` entries; raises PolicyError naming the key."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise PolicyError("policy.action", "must be an array of tables ([[policy.action]])")
    rules = []
    names = set()
    for i, entry in enumerate(raw):
        key = f"policy.action[{i}]"
        if not isinstance(entry, Mapping):
            raise PolicyError(key, "must be a table")
        unknown = set(entry) - {"name", "statements", "tables", "when", "require"}
        if unknown:
            raise PolicyError(f"{key}.{sorted(unknown)[0]}", "unknown key (expected name, "
                              "statements, tables, when, require)")
        name = entry.get("name")
        if not isinstance(name, str) or not name or ":" in name:
            raise PolicyError(f"{key}.name", "must be a non-empty name without ':'")
        if name in names:
            raise PolicyError(f"{key}.name", f"duplicate action name {name!r}")
        names.add(name)
        stmts = entry.get("statements")
        if (not isinstance(stmts, list) or not stmts
                or not all(isinstance(s, str) and s in VERBS for s in stmts)):
            raise PolicyError(f"{key}.statements", f"must be a list of {sorted(VERBS)}")
        tables = entry.get("tables", [])
        if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
            raise PolicyError(f"{key}.tables", "must be a list of 'schema.table' patterns")
        when = entry.get("when", "always")
        if when not in ("always", "no_where"):
            raise PolicyError(f"{key}.when", "must be 'always' or 'no_where'")
        require = entry.get("require", "approval")
        if require not in ("approval", "deny"):
            raise PolicyError(f"{key}.require", "must be 'approval' or 'deny'")
        rules.append(ActionRule(name, frozenset(stmts),
                                tuple(t if "." in t else f"*.{t}" for t in tables), when, require))
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class StatementInfo:
    verb: str
    tables: tuple[str, ...]
    has_where: bool = True


def _rangevar_name(rv: Mapping[str, Any], resolve: Callable[[str | None, str], str]) -> str:
    return resolve(rv.get("schemaname"), rv.get("relname", ""))


def _walk_rangevars(node: Any) -> Iterable[Mapping[str, Any]]:
    """Every RangeVar in a parse tree, wrapped (``{"RangeVar": …}``) or as a typed field."""
    if isinstance(node, Mapping):
        if "relname" in node and "relpersistence" in node:
            yield node
            return
        for v in node.values():
            yield from _walk_rangevars(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_rangevars(v)


def describe(stmt: Mapping[str, Any], resolve: Callable[[str | None, str], str]) -> StatementInfo:
    """Verb, tables and WHERE presence of one parsed statement (pglast JSON form)."""
    (kind, body), = stmt.items()
    tables = tuple(dict.fromkeys(_rangevar_name(rv, resolve) for rv in _walk_rangevars(body)))
    if kind == "ExplainStmt":
        inner = body.get("query") or {}
        options = [o.get("DefElem", {}).get("defname") for o in body.get("options") or []]
        if "analyze" in options and inner:
            return describe(inner, resolve)  # EXPLAIN ANALYZE runs the statement
        return StatementInfo("select", tables)
    if kind in ("UpdateStmt", "DeleteStmt"):
        verb = "update" if kind == "UpdateStmt" else "delete"
        target = _rangevar_name(body["relation"], resolve)
        return StatementInfo(verb, (target,) + tuple(t for t in tables if t != target),
                             body.get("whereClause") is not None)
    if kind == "InsertStmt":
        return StatementInfo("insert", tables)
    if kind == "MergeStmt":
        return StatementInfo("merge", tables)
    if kind == "TruncateStmt":
        return StatementInfo("truncate", tables)
    if kind == "CopyStmt":
        return StatementInfo("copy_in" if body.get("is_from") else "copy_out", tables)
    if kind == "SelectStmt":
        return StatementInfo("select", tables)
    if kind == "DropStmt" and body.get("removeType") in (
        "OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"
    ):
        names = []
        for obj in body.get("objects") or []:
            parts = [i.get("String", {}).get("sval") for i in obj.get("List", {}).get("items", [])]
            if parts:
                names.append(resolve(parts[-2] if len(parts) > 1 else None, parts[-1]))
        return StatementInfo("ddl", tuple(names))
    if kind.startswith(("Create", "Alter", "Drop")) or kind in (
        "ViewStmt", "IndexStmt", "RenameStmt", "CommentStmt", "GrantStmt", "GrantRoleStmt",
        "CompositeTypeStmt", "RuleStmt", "DefineStmt", "RefreshMatViewStmt",
    ):
        return StatementInfo("ddl", tables)
    return StatementInfo("other", tables)


def match(rules: tuple[ActionRule, ...], infos: Iterable[StatementInfo]) -> ActionRule | None:
    for info in infos:
        for rule in rules:
            if rule.applies(info):
                return rule
    return None


def action_key(rule: ActionRule, fingerprint: str) -> str:
    """The grant scope of an approval: the rule, bound to one statement fingerprint."""
    return f"{rule.name}:{fingerprint}"

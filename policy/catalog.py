"""The schema catalog pgveil decides against, and the one query that loads it.

The proxy runs :data:`CATALOG_QUERY` (one statement, one row, one ``json`` column) on the
upstream as a superuser and hands the rows to :meth:`Catalog.from_rows`, which is pure. The
catalog holds, independently of any policy:

* every relation (tables, partitioned tables, views, materialized views, foreign tables) with
  its schema and kind, and for relations outside ``pg_catalog``/``information_schema`` its
  columns in attribute order with a SQL type name safe to use in any session;
* inheritance and partition parents, so a child of a sensitive table is sensitive and a
  parent of one is too (a parent's scan returns its children's rows);
* for views and materialized views, the columns and functions their rewrite rule depends on
  (``pg_depend`` on ``pg_rewrite``), and the definition text (``pg_get_viewdef``) from which
  :func:`_provenance` proves, conservatively, which base column feeds each view column;
* every function name (to tell built-ins from user functions) and user-defined operators.

:meth:`Catalog.plan_for` then combines the catalog with a :class:`~policy.rules.Policy` into
a :class:`MaskPlan` (which column of which relation gets which mask, and why), computed once
per (catalog, policy) pair and memoised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from pglast import parser as pg_parser

from .names import SYSTEM_SCHEMAS, effective_path, is_temp_schema
from .rules import MaskRule, Policy

CATALOG_QUERY = r"""
SELECT pg_catalog.json_build_object(
  'relations', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
             c.oid::int8, n.nspname, c.relname, c.relkind::text,
             CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,
             c.reltuples::int8)
           ORDER BY c.oid)
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'),
  'columns', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
             a.attrelid::int8, a.attnum, a.attname,
             CASE WHEN tn.nspname = 'pg_catalog'
                  THEN pg_catalog.format_type(a.atttypid, a.atttypmod)
                  ELSE pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.typname)
             END,
             t.typcategory::text)
           ORDER BY a.attrelid, a.attnum)
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
    WHERE a.attnum > 0 AND NOT a.attisdropped
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'),
  'inherits', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(i.inhrelid::int8, i.inhparent::int8))
    FROM pg_catalog.pg_inherits i),
  'view_deps', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(s.view, s.ref, s.sub, s.is_func))
    FROM (SELECT DISTINCT r.ev_class::int8 AS view, d.refobjid::int8 AS ref,
                 d.refobjsubid AS sub,
                 d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AS is_func
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_rewrite r
            ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
          WHERE d.refclassid IN ('pg_catalog.pg_class'::pg_catalog.regclass,
                                 'pg_catalog.pg_proc'::pg_catalog.regclass)
            AND d.refobjid <> r.ev_class) s),
  'functions', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(p.oid::int8, n.nspname, p.proname, l.lanname))
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    WHERE n.nspname !~ '^pg_(toast|temp_|toast_temp_)'),
  'operators', (
    SELECT pg_catalog.json_agg(pg_catalog.json_build_array(n.nspname, o.oprname, o.oprcode::oid::int8))
    FROM pg_catalog.pg_operator o
    JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
    WHERE n.nspname <> 'pg_catalog')
)
""".strip()

#: the same without view definitions: ``pg_get_viewdef`` locks each view, and a session
#: holding a lock on one (any user may lock a view they own) would stall the load. Views
#: without a definition have no proven provenance: masked wherever they depend on a mask.
CATALOG_QUERY_NO_VIEWDEFS = CATALOG_QUERY.replace("pg_catalog.pg_get_viewdef(c.oid)", "NULL")
assert CATALOG_QUERY_NO_VIEWDEFS != CATALOG_QUERY

# format_type() spells SQL-keyword types (integer, boolean, character varying(n), ...) in
# forms the grammar maps to pg_catalog whatever the search_path; plain names like ``text`` or
# ``date`` are looked up on the search_path, so we pin them to pg_catalog.
_KEYWORD_TYPES = frozenset(
    {"integer", "smallint", "bigint", "real", "boolean", "numeric", "decimal", "int", "dec"}
)
_PLAIN_TYPE = re.compile(r'("?)([a-z_][a-z0-9_]*)\1((?:\[\])*)\Z')


def pin_type(type_sql: str) -> str:
    m = _PLAIN_TYPE.match(type_sql)
    if m and m.group(2) not in _KEYWORD_TYPES:
        return f'pg_catalog."{m.group(2)}"{m.group(3)}'
    return type_sql


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    attnum: int
    type_sql: str = "pg_catalog.text"
    category: str = "S"  # pg_type.typcategory: S string, N numeric, D date/time, ...


@dataclass(frozen=True, slots=True)
class Function:
    oid: int
    schema: str
    name: str
    language: str = "internal"

    @property
    def is_user(self) -> bool:
        return self.schema not in SYSTEM_SCHEMAS


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str = "r"  # r table, p partitioned, v view, m matview, f foreign
    columns: tuple[Column, ...] = ()
    parents: tuple[int, ...] = ()
    depends_on: frozenset[tuple[int, int]] = frozenset()  # views: (rel oid, attnum; 0 = all)
    depends_on_functions: frozenset[int] = frozenset()
    view_sql: str | None = None
    reltuples: int | None = None  # the planner's row estimate (-1: never analysed)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True, slots=True)
class ColumnMask:
    """``column`` of a relation is masked by ``rule``; ``via`` lists (relation oid, column)
    whose grants also lift this mask (a partition's parent, a view column's base column)."""

    column: Column
    rule: MaskRule
    via: tuple[tuple[int, str], ...] = ()


@dataclass
class MaskPlan:
    """Policy applied to a catalog: masks per relation oid, and relations that are denied."""

    masks: dict[int, dict[str, ColumnMask]] = field(default_factory=dict)
    denied: dict[int, str] = field(default_factory=dict)
    derived_cache: dict[Any, Any] = field(default_factory=dict)

    def masks_of(self, oid: int) -> dict[str, ColumnMask]:
        return self.masks.get(oid, {})


class Catalog:
    """Relations, columns, functions and operators of one database, as loaded."""

    def __init__(
        self,
        relations: Iterable[Relation] = (),
        functions: Iterable[Function] = (),
        operators: Iterable[tuple[str, str, int]] = (),
        *,
        functions_complete: bool = False,
    ) -> None:
        self.relations: dict[int, Relation] = {}
        self.by_name: dict[tuple[str, str], Relation] = {}
        self.by_relname: dict[str, list[Relation]] = {}
        self.children: dict[int, list[int]] = {}
        for rel in relations:
            self.relations[rel.oid] = rel
            self.by_name[(rel.schema, rel.name)] = rel
            self.by_relname.setdefault(rel.name, []).append(rel)
        for rel in self.relations.values():
            for p in rel.parents:
                self.children.setdefault(p, []).append(rel.oid)
        self.functions_by_oid: dict[int, Function] = {}
        self.functions: dict[str, list[Function]] = {}
        for f in functions:
            self.functions_by_oid[f.oid] = f
            self.functions.setdefault(f.name, []).append(f)
        self.operators: dict[str, list[tuple[str, int]]] = {}
        for schema, name, func in operators:
            self.operators.setdefault(name, []).append((schema, func))
        self.functions_complete = functions_complete
        self.schemas = frozenset(r.schema for r in self.relations.values())
        self._plans: dict[int, tuple[Policy, MaskPlan]] = {}
        self.provenance: dict[tuple[int, int], tuple[int, int] | None] = {}
        for rel in self.relations.values():
            if rel.kind in ("v", "m") and rel.view_sql is not None and rel.columns:
                prov = _provenance(self, rel)
                for col, src in zip(rel.columns, prov):
                    self.provenance[(rel.oid, col.attnum)] = src

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> "Catalog":
        """Build the catalog from the rows :data:`CATALOG_QUERY` returned."""
        if len(rows) != 1 or len(rows[0]) != 1:
            raise ValueError("CATALOG_QUERY returns exactly one row with one column")
        data = rows[0][0]
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Catalog":
        cols: dict[int, list[Column]] = {}
        for relid, attnum, name, type_sql, category in data.get("columns") or ():
            cols.setdefault(relid, []).append(Column(name, attnum, pin_type(type_sql), category))
        parents: dict[int, list[int]] = {}
        for child, parent in data.get("inherits") or ():
            parents.setdefault(child, []).append(parent)
        deps: dict[int, set[tuple[int, int]]] = {}
        fdeps: dict[int, set[int]] = {}
        for view, ref, sub, is_func in data.get("view_deps") or ():
            if is_func:
                fdeps.setdefault(view, set()).add(ref)
            else:
                deps.setdefault(view, set()).add((ref, sub))
        relations = [
            Relation(
                oid=oid, schema=schema, name=name, kind=kind,
                columns=tuple(sorted(cols.get(oid, ()), key=lambda c: c.attnum)),
                parents=tuple(parents.get(oid, ())),
                depends_on=frozenset(deps.get(oid, ())),
                depends_on_functions=frozenset(fdeps.get(oid, ())),
                view_sql=row[4],
                reltuples=row[5] if len(row) > 5 else None,
            )
            for row in data.get("relations") or ()
            for oid, schema, name, kind in [row[:4]]
        ]
        functions = [Function(*f) for f in data.get("functions") or ()]
        operators = [tuple(o) for o in data.get("operators") or ()]
        complete = data.get("functions_complete", bool(functions))
        return cls(relations, functions, operators, functions_complete=bool(complete))

    # -- lookups -----------------------------------------------------------------------------
    def get(self, schema: str, name: str) -> Relation | None:
        return self.by_name.get((schema, name))

    def resolve(
        self, schema: str | None, name: str, search_path: tuple[str, ...], user: str
    ) -> tuple[Relation | None, tuple[Relation, ...]]:
        """Resolve a relation name as PostgreSQL would.

        Returns the relation found (or None) and every other catalog relation with the same
        name, which the caller checks when the search_path it knows might be stale.
        """
        if schema is not None:
            if is_temp_schema(schema):
                return None, ()
            return self.by_name.get((schema, name)), ()
        candidates = self.by_relname.get(name, ())
        if not candidates:
            return None, ()
        for s in effective_path(search_path, user):
            rel = self.by_name.get((s, name))
            if rel is not None:
                return rel, tuple(c for c in candidates if c is not rel)
        return None, tuple(candidates)

    def ancestors(self, oid: int) -> list[int]:
        out: list[int] = []
        todo = list(self.relations[oid].parents) if oid in self.relations else []
        while todo:
            p = todo.pop()
            if p not in out:
                out.append(p)
                if p in self.relations:
                    todo.extend(self.relations[p].parents)
        return out

    def descendants(self, oid: int) -> list[int]:
        out: list[int] = []
        todo = list(self.children.get(oid, ()))
        while todo:
            c = todo.pop()
            if c not in out:
                out.append(c)
                todo.extend(self.children.get(c, ()))
        return out

    # -- policy --------------------------------------------------------------------------------
    def plan_for(self, policy: Policy) -> MaskPlan:
        hit = self._plans.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1]
        plan = _build_plan(self, policy)
        if len(self._plans) > 8:
            self._plans.clear()
        self._plans[id(policy)] = (policy, plan)
        return plan


def _redact_rule(rel: Relation, col: Column) -> MaskRule:
    return MaskRule(rel.qualified, col.name, "redact")


def _build_plan(cat: Catalog, policy: Policy) -> MaskPlan:
    plan = MaskPlan()
    # 1. rules matching tables (and views, when a rule names them) directly
    direct: dict[int, dict[str, ColumnMask]] = {}
    for rel in cat.relations.values():
        if rel.schema in SYSTEM_SCHEMAS:
            continue
        for col in rel.columns:
            rule = policy.rule_for(rel.schema, rel.name, col.name)
            if rule is not None:
                direct.setdefault(rel.oid, {})[col.name] = ColumnMask(col, rule)
    # 2. inheritance and partitions: a rule on any ancestor or descendant column of the same
    #    name applies; grants on an ancestor's column also lift it.
    for rel in cat.relations.values():
        if rel.kind in ("v", "m") or not rel.columns:
            continue
        masks = dict(direct.get(rel.oid, {}))
        ancestors = cat.ancestors(rel.oid)
        for other in ancestors + cat.descendants(rel.oid):
            for name, cm in direct.get(other, {}).items():
                col = rel.column(name)
                if col is None:
                    continue
                if name not in masks:
                    masks[name] = ColumnMask(col, cm.rule)
        for name, cm in list(masks.items()):
            via = tuple(
                (a, name) for a in ancestors if a in cat.relations and cat.relations[a].column(name)
            )
            masks[name] = ColumnMask(cm.column, cm.rule, via)
        if masks:
            plan.masks[rel.oid] = masks
    # 3. denied relations (statistics catalogs)
    for qname in policy.denied_relations:
        schema, _, name = qname.partition(".")
        rel = cat.get(schema, name)
        if rel is not None:
            plan.denied[rel.oid] = rel.qualified
    # 4. views and materialized views, dependencies first
    views = [r for r in cat.relations.values() if r.kind in ("v", "m")]
    done: set[int] = set()

    def visit(view: Relation, stack: tuple[int, ...] = ()) -> None:
        if view.oid in done or view.oid in stack:
            return
        for ref, _ in view.depends_on:
            dep = cat.relations.get(ref)
            if dep is not None and dep.kind in ("v", "m"):
                visit(dep, stack + (view.oid,))
        done.add(view.oid)
        if any(ref in plan.denied for ref, _ in view.depends_on):
            plan.denied[view.oid] = plan.denied[next(r for r, _ in view.depends_on if r in plan.denied)]
            return
        tainted = False
        for ref, attnum in view.depends_on:
            ref_masks = plan.masks.get(ref, {})
            if not ref_masks:
                continue
            if attnum == 0:
                tainted = True
            else:
                dep = cat.relations.get(ref)
                col = next((c for c in dep.columns if c.attnum == attnum), None) if dep else None
                if col is None or col.name in ref_masks:
                    tainted = True
        for foid in view.depends_on_functions:
            f = cat.functions_by_oid.get(foid)
            if f is not None and f.is_user and not policy.trusts_function(f.schema, f.name):
                tainted = True
        masks = dict(direct.get(view.oid, {}))
        for col in view.columns:
            if col.name in masks:
                continue
            src = cat.provenance.get((view.oid, col.attnum), None)
            if src is not None:
                base = cat.relations.get(src[0])
                base_col = next((c for c in base.columns if c.attnum == src[1]), None) if base else None
                if base is not None and base_col is not None:
                    bm = plan.masks.get(base.oid, {}).get(base_col.name)
                    if bm is not None:
                        masks[col.name] = ColumnMask(col, bm.rule, ((base.oid, base_col.name),))
                    continue
            if tainted:
                masks[col.name] = ColumnMask(col, _redact_rule(view, col))
        if masks:
            plan.masks[view.oid] = masks

    for v in views:
        visit(v)
    return plan


# -- view provenance ---------------------------------------------------------------------------


def _node(value: Any) -> tuple[str, Any]:
    if isinstance(value, dict) and len(value) == 1:
        ((k, v),) = value.items()
        if k[:1].isupper():
            return k, v
    return "", value


def _provenance(cat: Catalog, view: Relation) -> list[tuple[int, int] | None]:
    """For each view column, the (relation oid, attnum) it is a plain copy of, or None.

    Only the simplest shape is proven: the view's top-level SELECT (no set operation) whose
    target entry is a column reference that resolves to exactly one table of its FROM list
    (plain relations and joins of plain relations, no column alias lists). Everything else
    is "unproven" and is masked when the view depends on anything masked.
    """
    unknown: list[tuple[int, int] | None] = [None] * len(view.columns)
    try:
        tree = json.loads(pg_parser.parse_sql_json(view.view_sql or ""))
    except Exception:
        return unknown
    stmts = tree.get("stmts") or []
    if len(stmts) != 1:
        return unknown
    kind, sel = _node(stmts[0]["stmt"])
    if kind != "SelectStmt" or sel.get("op", "SETOP_NONE") != "SETOP_NONE" or "valuesLists" in sel:
        return unknown
    dep_rels = [cat.relations[r] for r, _ in view.depends_on if r in cat.relations]
    items: dict[str, Relation | None] = {}  # FROM alias -> relation (None: not a plain relation)
    plain_only = True

    def add(item: Any) -> None:
        nonlocal plain_only
        k, body = _node(item)
        if k == "RangeVar":
            alias = body.get("alias") or {}
            name = alias.get("aliasname") or body["relname"]
            if alias.get("colnames"):
                items[name] = None
                plain_only = False
                return
            schema = body.get("schemaname")
            found = [r for r in dep_rels if r.name == body["relname"] and (schema is None or r.schema == schema)]
            found = list({r.oid: r for r in found}.values())
            items[name] = found[0] if len(found) == 1 else None
            if items[name] is None:
                plain_only = False
        elif k == "JoinExpr":
            if body.get("usingClause") or body.get("isNatural") or body.get("join_using_alias"):
                plain_only = False
            add(body["larg"])
            add(body["rarg"])
            if body.get("alias"):
                plain_only = False
        else:
            plain_only = False
            alias = (body.get("alias") or {}).get("aliasname") if isinstance(body, dict) else None
            if alias:
                items[alias] = None

    for item in sel.get("fromClause") or ():
        add(item)
    targets = sel.get("targetList") or []
    if len(targets) != len(view.columns):
        return unknown
    out: list[tuple[int, int] | None] = []
    for t in targets:
        _, rt = _node(t)
        k, val = _node(rt.get("val"))
        src: tuple[int, int] | None = None
        if k == "ColumnRef":
            fields = [_node(f) for f in val["fields"]]
            if all(fk == "String" for fk, _ in fields):
                names = [fv["sval"] for _, fv in fields]
                rel: Relation | None = None
                if len(names) == 1 and plain_only:
                    owners = [r for r in items.values() if r is not None and r.column(names[0])]
                    rel = owners[0] if len(owners) == 1 else None
                elif len(names) == 2 and names[0] in items:
                    rel = items[names[0]]
                if rel is not None:
                    col = rel.column(names[-1])
                    if col is not None:
                        src = (rel.oid, col.attnum)
        out.append(src)
    return out


__all__ = [
    "CATALOG_QUERY", "Catalog", "Column", "ColumnMask", "Function", "MaskPlan", "Relation",
    "pin_type",
]

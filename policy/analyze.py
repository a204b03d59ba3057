"""One pass over PostgreSQL's parse tree: find what a statement reads, writes and calls.

The tree is libpg_query's JSON (pglast ``parse_sql_json``): the server's own grammar, so
there is no second parser whose reading could differ from the server's. The walk keeps
the only scope PostgreSQL name lookup needs here — which CTE names are visible, with
``WITH`` / ``WITH RECURSIVE`` visibility — and classifies every relation reference:

* **read** (a FROM item of SELECT, ``UPDATE ... FROM``, ``DELETE ... USING``,
  ``MERGE ... USING``, ``TABLE x``, ``COPY x TO``): a sensitive one is substituted by its
  masked derived table (:mod:`policy.rewrite`);
* **write target** (INSERT/UPDATE/DELETE/MERGE/COPY FROM): cannot be a subquery, so every
  expression that sees the target row is checked instead: a reference to a masked column
  or to the whole row in WHERE, SET, ON CONFLICT, MERGE conditions is refused (the row
  count would be an oracle); in RETURNING it is masked by wrapping the statement as
  ``WITH pgveil_ret AS (... RETURNING t.*) SELECT <list> FROM (<masked pgveil_ret>) t``;
* **no data** (DDL targets, LOCK, TRUNCATE, FOR UPDATE OF, ...): allowed as is; a foreign
  key to a masked column is refused (inserts would probe which values exist);
* anything else: refused if sensitive — fail closed for positions we do not know.

Function calls, operators, settings and statement types go through :mod:`policy.gate`.
The same walker, in ``verify`` mode, re-reads the rewritten text and checks that every
sensitive read sits inside exactly the derived table pgveil generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from . import gate
from .catalog import Catalog, ColumnMask, MaskPlan, Relation
from .grants import GrantSet
from .names import is_temp_schema, qualified, quote_ident
from .rewrite import RET_CTE, SRC_ALIAS, Derived, Edit, derived_sql
from .rules import Policy
from .tokens import Tokens

# RangeVars in these nodes name relations without reading their rows.
NO_DATA_PARENTS: frozenset[str] = frozenset(
    """
    CreateStmt IndexStmt AlterTableStmt AlterTableCmd RenameStmt AlterObjectSchemaStmt
    AlterOwnerStmt LockStmt TruncateStmt VacuumRelation ClusterStmt ReindexStmt GrantStmt
    CreatePolicyStmt AlterPolicyStmt CreateStatsStmt RefreshMatViewStmt CreateSeqStmt
    AlterSeqStmt TableLikeClause PartitionCmd CommentStmt AlterTableMoveAllStmt DropStmt
    LockingClause ViewStmt CreateTableAsStmt SecLabelStmt AlterStatsStmt
    """.split()
)
# SelectStmt's bare IntoClause: the new table of SELECT ... INTO.
NO_DATA_FIELDS: frozenset[tuple[str, str]] = frozenset({("SelectStmt", "rel")})

PERSISTENT = {"PrepareStmt": "PREPARE", "ViewStmt": "CREATE VIEW", "DeclareCursorStmt": "DECLARE"}


def node(value: Any) -> tuple[str, Any]:
    """Split a wrapped node ``{"Type": {...}}`` into ``("Type", {...})``; bare: ``("", v)``."""
    if isinstance(value, dict) and len(value) == 1:
        ((k, v),) = value.items()
        if k[:1].isupper() and isinstance(v, dict):
            return k, v
    return "", value


def strings(fields: list[Any]) -> list[str | None]:
    """ColumnRef / name list fields as strings; ``None`` for ``*``."""
    out: list[str | None] = []
    for f in fields:
        k, v = node(f)
        out.append(v.get("sval", "") if k == "String" else None)
    return out


def const_string(value: Any) -> str | None:
    k, v = node(value)
    if k == "A_Const":
        if "sval" in v:
            return v["sval"].get("sval", "")
        if "boolval" in v:
            return "on" if v["boolval"].get("boolval") else "off"
        if "ival" in v:
            return str(v["ival"].get("ival", 0))
    if k == "TypeCast":
        return const_string(v.get("arg"))
    return None


def column_refs(value: Any) -> Iterator[dict]:
    """Every ColumnRef body under ``value`` (sub-selects included)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            if len(v) == 1 and "ColumnRef" in v:
                yield v["ColumnRef"]
            else:
                stack.extend(v.values())


_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


@dataclass
class Finding:
    code: str
    names: dict[str, str] = field(default_factory=dict)


def is_reserved_statement_name(name: str) -> bool:
    """Names pgveil gives the statements it prepares itself (``pgveil_c…``, ``name#pgveilN``)."""
    return name.startswith("pgveil_") or "#pgveil" in name


def written_columns(what: str, stmt: dict | None, rel: Relation) -> list[str] | None:
    """The target columns a write gives values to; None for every column (COPY FROM
    without a column list, or an INSERT whose number of values is not known here)."""
    if stmt is None:
        return None
    if what == "COPY FROM":
        names = strings(stmt.get("attlist") or [])
        return [n for n in names if n] if names else None
    out: list[str] = []
    if what == "INSERT":
        cols = stmt.get("cols") or []
        if not cols and stmt.get("selectStmt") is not None:
            # INSERT INTO t VALUES (…) / SELECT …: the first n columns, in order
            n = _values_count(stmt["selectStmt"])
            if n is None:
                return None
            out += [c.name for c in rel.columns[:n]]
        out += [node(rt)[1].get("name") for rt in cols]
        conflict = stmt.get("onConflictClause") or {}
        out += [node(rt)[1].get("name") for rt in conflict.get("targetList") or ()]
    elif what == "UPDATE":
        out += [node(rt)[1].get("name") for rt in stmt.get("targetList") or ()]
    elif what == "MERGE":
        for clause in stmt.get("mergeWhenClauses") or ():
            _, c = node(clause)
            targets = c.get("targetList") or []
            if c.get("commandType") == "CMD_INSERT" and not targets and c.get("values"):
                return None
            out += [node(rt)[1].get("name") for rt in targets]
    return [n for n in out if n]


def _values_count(select: Any) -> int | None:
    """How many values each row of an INSERT's query has; None when not known from the
    text (a ``*``, a set operation)."""
    _, b = node(select)
    rows = b.get("valuesLists")
    if rows:
        items = [node(r)[1].get("items") or [] for r in rows]
        if any(_expands(v) for row in items for v in row):
            return None
        return max(map(len, items))
    if b.get("op", "SETOP_NONE") != "SETOP_NONE":
        return None
    targets = b.get("targetList") or []
    if any(_expands(node(rt)[1].get("val")) for rt in targets):
        return None
    return len(targets) or None


def _expands(value: Any) -> bool:
    """``t.*`` or ``(x).*``: an item that stands for as many values as ``t`` has columns."""
    k, v = node(value)
    if k == "ColumnRef":
        return strings(v["fields"])[-1] is None
    if k == "A_Indirection":
        return any(node(i)[0] == "A_Star" for i in v.get("indirection") or ())
    return False


class Analyzer:
    """Walks one parsed string (all its statements) and collects the decision's facts."""

    def __init__(
        self,
        text: str,
        raw: bytes,
        *,
        user: str,
        search_path: tuple[str, ...],
        catalog: Catalog,
        plan: MaskPlan,
        policy: Policy,
        grants: GrantSet,
        now: float,
        masked_user: bool,
        verify: bool = False,
    ) -> None:
        self.text = text
        self.raw = raw
        self.user = user
        self.search_path = search_path
        self.catalog = catalog
        self.plan = plan
        self.policy = policy
        self.grants = grants
        self.now = now
        self.masked_user = masked_user
        self.verify = verify
        self._tokens: Tokens | None = None
        # results
        self.kinds: list[str] = []
        self.tables: list[str] = []
        self.masked: list[tuple[str, str, str]] = []
        self.grants_used: list[str] = []
        self.findings: list[Finding] = []
        self.edits: list[Edit] = []
        self.session_effects: dict[str, Any] = {}
        self.literal_dependent = False
        self.refresh_catalog = False
        self.unknown: list[str] = []
        self.temp_pinned: list[str] = []  # unknown names written pg_temp.name (see pin_temp)
        # for the columns a statement touches (policy.touched): relations by the names that
        # refer to them (alias or name), and the target columns of writes
        self.by_ref: dict[str, Relation] = {}
        self.relations: list[Relation] = []
        self.written: list[tuple[Relation, list[str] | None]] = []
        self.verify_failures: list[str] = []
        self.prepared: str | None = None
        # per statement
        self._stmt_top: Any = None
        self._stmt_span: tuple[int, int] = (0, 0)
        self._unaliased: dict[tuple[str, str], str] = {}
        self._colrefs3: list[dict] = []
        self._ret_ctes: list[Any] = []
        self._selects: list[dict] = []
        self._ret_masks: dict[str, ColumnMask] = {}

    # -- helpers ---------------------------------------------------------------------------
    @property
    def tokens(self) -> Tokens:
        if self._tokens is None:
            self._tokens = Tokens(self.text)
        return self._tokens

    def deny(self, code: str, **names: str) -> None:
        self.findings.append(Finding(code, {k: str(v) for k, v in names.items()}))

    def add_table(self, rel: Relation) -> None:
        if rel.qualified not in self.tables:
            self.tables.append(rel.qualified)

    def uncovered(self, rel: Relation) -> dict[str, ColumnMask]:
        """Masks of ``rel`` not lifted by a live grant for this user."""
        masks = self.plan.masks_of(rel.oid)
        if not masks or not self.masked_user:
            return {}
        if not self.grants:
            return masks
        out: dict[str, ColumnMask] = {}
        for name, cm in masks.items():
            gid = self._covered(rel, name, cm, depth=0)
            if gid is None:
                out[name] = cm
            elif gid not in self.grants_used:
                self.grants_used.append(gid)
        return out

    def _covered(self, rel: Relation, name: str, cm: ColumnMask, depth: int) -> str | None:
        g = self.grants.covers(self.user, rel.qualified, name, self.now)
        if g is not None:
            return g.id
        if depth > 8:
            return None
        for oid, col in cm.via:
            base = self.catalog.relations.get(oid)
            if base is None:
                continue
            bm = self.plan.masks_of(oid).get(col)
            if bm is None:
                continue
            gid = self._covered(base, col, bm, depth + 1)
            if gid is not None:
                return gid
        return None

    def record_masked(self, rel: Relation, masks: dict[str, ColumnMask]) -> None:
        for name, cm in masks.items():
            item = (rel.qualified, name, cm.rule.mask)
            if item not in self.masked:
                self.masked.append(item)

    # -- entry -----------------------------------------------------------------------------
    def run(self, stmts: list[dict]) -> None:
        for raw_stmt in stmts:
            kind, body = node(raw_stmt["stmt"])
            start = raw_stmt.get("stmt_location", 0)
            length = raw_stmt.get("stmt_len", 0)
            end = start + length if length else len(self.raw)
            self._stmt_top = body
            self._stmt_span = (start, end)
            self._unaliased = {}
            self._colrefs3 = []
            self._ret_ctes = []
            self.kinds.append(self.kind_of(kind, body))
            if self.masked_user and kind not in gate.ALLOWED_STATEMENTS:
                what = gate.STATEMENT_NAMES.get(kind, kind.removesuffix("Stmt"))
                code = "denied_statement" if kind in gate.STATEMENT_NAMES else "unsupported_statement"
                self.deny(code, what=what)
                continue
            self.visit(kind, body, frozenset(), "")
            self.finish_statement()

    def kind_of(self, kind: str, body: dict) -> str:
        if kind == "SelectStmt" and body.get("intoClause"):
            return "select_into"
        if kind == "SelectStmt":
            # WITH d AS (DELETE … RETURNING …) SELECT …: it writes (PostgreSQL allows such
            # CTEs only at the top level), so it is recorded by what it changes
            for cte in (body.get("withClause") or {}).get("ctes") or ():
                inner, _ = node(node(cte)[1].get("ctequery"))
                if inner in _WRITES:
                    return gate.KINDS[inner]
        if kind == "ExplainStmt":
            return "explain"
        if kind == "VariableSetStmt":
            return "reset" if body.get("kind", "").startswith("VAR_RESET") else "set"
        return gate.KINDS.get(kind, "ddl" if kind.startswith(("Create", "Alter", "Drop")) or kind in (
            "ViewStmt", "IndexStmt", "RenameStmt", "CommentStmt", "GrantStmt", "GrantRoleStmt",
            "CompositeTypeStmt", "RefreshMatViewStmt", "RuleStmt", "DefineStmt",
        ) else "other")

    def finish_statement(self) -> None:
        # three-part column references to relations that now have a bare alias
        if self._unaliased and not self.verify:
            for cr in self._colrefs3:
                names = strings(cr["fields"])
                if len(names) < 3:
                    continue
                schema, table = names[-3], names[-2]
                if schema is None or table is None:
                    continue
                alias = self._unaliased.get((schema, table))
                if alias is None:
                    continue
                try:
                    i = self.tokens.index_at(cr["location"])
                    j = self.tokens.name_end(i, len(names) - 1)
                except (LookupError, IndexError):
                    self.deny("verification_failed", detail="column reference span")
                    continue
                self.edits.append(Edit(self.tokens.toks[i].start, self.tokens.toks[j].end, alias))

    # -- generic walk ----------------------------------------------------------------------
    def walk(self, value: Any, scope: frozenset[str], parent: str, fieldname: str = "") -> None:
        if isinstance(value, list):
            for v in value:
                self.walk(v, scope, parent, fieldname)
            return
        if not isinstance(value, dict):
            return
        kind, body = node(value)
        if kind:
            self.visit(kind, body, scope, parent, fieldname)
            return
        if "relname" in value and "relpersistence" in value:
            self.other_rangevar(value, scope, parent, fieldname)
            return
        for f, v in value.items():
            if isinstance(v, (dict, list)):
                self.walk(v, scope, parent, f)

    def visit(self, kind: str, body: dict, scope: frozenset[str], parent: str, fieldname: str = "") -> None:
        handler = getattr(self, "v_" + kind, None)
        if handler is not None:
            handler(body, scope, parent, fieldname)
            return
        if kind == "RangeVar":
            self.other_rangevar(body, scope, parent, fieldname)
            return
        if self.masked_user and kind in gate.STATEMENT_NAMES and kind not in gate.ALLOWED_STATEMENTS:
            self.deny("denied_statement", what=gate.STATEMENT_NAMES[kind])
            return
        self.generic(kind, body, scope)

    def generic(self, kind: str, body: dict, scope: frozenset[str], skip: tuple[str, ...] = ()) -> None:
        for f, v in body.items():
            if f in skip or not isinstance(v, (dict, list)):
                continue
            self.walk(v, scope, kind, f)

    # -- scopes ------------------------------------------------------------------------------
    def with_scope(self, with_clause: dict | None, scope: frozenset[str]) -> frozenset[str]:
        if not with_clause:
            return scope
        ctes = [node(c)[1] for c in with_clause.get("ctes", [])]
        names = frozenset(c["ctename"] for c in ctes)
        if with_clause.get("recursive"):
            inner = scope | names
            for c in ctes:
                self.walk(c.get("ctequery"), inner, "CommonTableExpr", "ctequery")
        else:
            cur = scope
            for c in ctes:
                self.walk(c.get("ctequery"), cur, "CommonTableExpr", "ctequery")
                cur = cur | {c["ctename"]}
        return scope | names

    # -- relation references -------------------------------------------------------------------
    def resolve(
        self, rv: dict, scope: frozenset[str], *, data: bool = True
    ) -> tuple[Relation | None, bool]:
        """(relation, is_cte). Records tables; for data positions, denials for unknown and
        ambiguous names."""
        schema = rv.get("schemaname")
        name = rv["relname"]
        if schema is None and name in scope:
            return None, True
        rel, others = self.catalog.resolve(schema, name, self.search_path, self.user)
        if rel is not None:
            self.add_table(rel)
            self.relations.append(rel)
            alias = (rv.get("alias") or {}).get("aliasname")
            self.by_ref[alias or name] = rel
            if rel.oid in self.plan.denied and self.masked_user:
                self.deny("denied_relation", name=rel.qualified)
            if others and schema is None and self.masked_user and not self.verify:
                # another relation of that name is masked or denied: name the one decided
                # on, so the server reads it whatever search_path it runs with (a SET in the
                # same string, a ROLLBACK undoing one, an UPDATE of pg_settings…)
                if not self.plan.masks_of(rel.oid) and any(
                        self.plan.masks_of(o.oid) or o.oid in self.plan.denied for o in others):
                    self.pin(rv, rel.schema, rel.name)
            return rel, False
        label = f"{schema}.{name}" if schema else name
        self.refresh_catalog = True
        if label not in self.unknown:
            self.unknown.append(label)
        if not self.masked_user or not data:
            return None, False
        if others and any(self.plan.masks_of(o.oid) or o.oid in self.plan.denied for o in others):
            self.deny("denied_ambiguous", name=name, qualified=others[0].qualified)
            return None, False
        mode = self.policy.unknown_relations
        if mode == "deny" or (mode == "forward_temp" and schema is not None and not is_temp_schema(schema)):
            self.deny("denied_unknown_relation", name=label)
        elif mode == "forward_temp" and schema is None and not self.verify:
            # taken for a temporary table: written pg_temp.name, so that the server reads
            # nothing else under that name — not a view or a partition of a masked table
            # created in the meantime by someone else, which pgveil's catalog cannot know yet
            self.pin_temp(rv)
        return None, False

    def pin_temp(self, rv: dict) -> None:
        if self.pin(rv, "pg_temp", rv["relname"]) and rv["relname"] not in self.temp_pinned:
            self.temp_pinned.append(rv["relname"])

    def pin(self, rv: dict, schema: str, name: str) -> bool:
        """Write an unqualified relation name as ``schema.name`` (see ``resolve``)."""
        try:
            i = self.tokens.index_at(rv["location"])
        except LookupError:
            self.deny("verification_failed", detail="relation name span")
            return False
        self.edits.append(Edit(self.tokens.toks[i].start, self.tokens.toks[i].end,
                               qualified(schema, name)))
        return True

    def read_rangevar(self, rv: dict, scope: frozenset[str], table_form: bool = False) -> None:
        rel, is_cte = self.resolve(rv, scope)
        if is_cte:
            if self.verify and rv["relname"] == RET_CTE:
                self.verify_ret_read(rv)
            return
        if rel is None:
            return
        masks = self.uncovered(rel)
        if not masks:
            return
        only = not rv.get("inh", False)
        if self.verify:
            self.verify_read(rv, rel, masks, only)
            return
        self.record_masked(rel, masks)
        derived = derived_sql(self.plan, rel, masks, only=only)
        self.substitute(rv, rel, derived, table_form)

    def name_span(self, rv: dict) -> tuple[int, int, int, int]:
        """(start, end, first token index, last token index) of a RangeVar's relation_expr,
        including a leading ONLY / ONLY ( ... ) and a trailing ``*``."""
        t = self.tokens
        parts = 1 + bool(rv.get("schemaname")) + bool(rv.get("catalogname"))
        i = t.index_at(rv["location"])
        j = t.name_end(i, parts)
        first, last = i, j
        prev = t.prev(i)
        if prev is not None and prev.name == "ASCII_40":
            before = t.prev(i - 1)
            after = t.next(j)
            if before is not None and before.name == "ONLY" and after is not None and after.name == "ASCII_41":
                first, last = i - 2, j + 1
        elif prev is not None and prev.name == "ONLY":
            first = i - 1
        nxt = t.next(last)
        if nxt is not None and nxt.name == "ASCII_42":
            last += 1
        return t.toks[first].start, t.toks[last].end, first, last

    def substitute(self, rv: dict, rel: Relation, derived: Derived, table_form: bool) -> None:
        try:
            start, end, first, _ = self.name_span(rv)
        except (LookupError, IndexError):
            self.deny("verification_failed", detail="relation name span")
            return
        alias = rv.get("alias")
        if table_form:
            kw = self.tokens.prev(first)
            if kw is None or kw.name != "TABLE":
                self.deny("verification_failed", detail="TABLE form")
                return
            text = f"SELECT * FROM {derived.text} AS {quote_ident(rel.name)}"
            self.edits.append(Edit(kw.start, end, text))
            return
        if alias:
            self.edits.append(Edit(start, end, derived.text))
        else:
            self.edits.append(Edit(start, end, f"{derived.text} AS {quote_ident(rel.name)}"))
            if rv.get("schemaname"):
                self._unaliased[(rv["schemaname"], rel.name)] = quote_ident(rel.name)
            self._unaliased.setdefault((rel.schema, rel.name), quote_ident(rel.name))

    def other_rangevar(self, rv: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        """A RangeVar outside FROM lists and write targets."""
        if parent in NO_DATA_PARENTS or (parent, fieldname) in NO_DATA_FIELDS:
            if parent != "LockingClause":
                self.resolve(rv, scope, data=False)
            return
        rel, is_cte = self.resolve(rv, scope)
        if rel is not None and self.uncovered(rel):
            self.deny("unsupported_reference", table=rel.qualified, where=parent or fieldname)

    def from_item(self, item: Any, scope: frozenset[str], parent: str, table_form: bool = False) -> None:
        kind, body = node(item)
        if kind == "RangeVar":
            self.read_rangevar(body, scope, table_form)
        elif kind == "JoinExpr":
            self.from_item(body.get("larg"), scope, "JoinExpr")
            self.from_item(body.get("rarg"), scope, "JoinExpr")
            self.walk(body.get("quals"), scope, "JoinExpr", "quals")
        elif kind == "RangeTableSample":
            _, rv = node(body.get("relation"))
            if isinstance(rv, dict) and "relname" in rv:
                rel, is_cte = self.resolve(rv, scope)
                if rel is not None and self.uncovered(rel):
                    self.deny("unsupported_reference", table=rel.qualified, where="TABLESAMPLE")
            self.walk(body.get("args"), scope, "RangeTableSample")
            self.walk(body.get("repeatable"), scope, "RangeTableSample")
        elif kind:
            self.visit(kind, body, scope, parent)
        else:
            self.walk(item, scope, parent)

    # -- statements ----------------------------------------------------------------------------
    def v_SelectStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        scope = self.with_scope(b.get("withClause"), scope)
        if b.get("op", "SETOP_NONE") != "SETOP_NONE":
            # set-operation arms are typed fields: bare SelectStmt bodies, not wrapped nodes
            for arm in ("larg", "rarg"):
                sub = b.get(arm)
                if isinstance(sub, dict):
                    kind, body = node(sub)
                    self.v_SelectStmt(body if kind == "SelectStmt" else sub, scope, "SelectStmt", arm)
        targets = b.get("targetList") or []
        table_form = False
        if len(targets) == 1 and len(b.get("fromClause") or []) == 1:
            _, rt = node(targets[0])
            _, cr = node(rt.get("val"))
            table_form = rt.get("location", 0) == -1 and isinstance(cr, dict) and cr.get("location", 0) == -1
        self._selects.append(b)
        try:
            for item in b.get("fromClause") or ():
                self.from_item(item, scope, "SelectStmt", table_form)
        finally:
            self._selects.pop()
        self.generic("SelectStmt", b, scope, skip=("withClause", "larg", "rarg", "fromClause"))

    def v_ColumnRef(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        fields = b.get("fields", ())
        if len(fields) >= 3:
            self._colrefs3.append(b)
        if len(fields) >= 2 and self.masked_user and not self.verify:
            # x.f where x has no column f is f(x): PostgreSQL's functional notation
            names = strings(fields)
            col = names[-1]
            if col is not None and self.calls_refused_function(col):
                rel = self.by_ref.get(names[-2] or "")
                if rel is None or rel.column(col) is None:
                    self.deny("denied_function", name=col)

    def v_A_Indirection(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        if self.masked_user and not self.verify:
            # (x).f is a field of x, or else the call f(x)
            for item in b.get("indirection") or ():
                k, v = node(item)
                if k == "String" and self.calls_refused_function(v.get("sval") or ""):
                    self.deny("denied_function", name=v["sval"])
        self.generic("A_Indirection", b, scope)

    def calls_refused_function(self, name: str) -> bool:
        """Whether a field selection ``.name`` can be a call of a function the gate refuses
        (a denied built-in, or a user function not trusted) — PostgreSQL calls ``name(x)``
        when ``x`` has no field ``name``."""
        if gate.is_denied_builtin(name):
            return True
        return any(f.is_user and not self.policy.trusts_function(f.schema, f.name)
                   for f in self.catalog.functions.get(name, ()))

    def v_FuncCall(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        names = [n for n in strings(b.get("funcname", [])) if n is not None]
        if names and self.masked_user and not self.verify:
            schema = names[-2] if len(names) >= 2 else None
            name = names[-1]
            reason = gate.function_denial(schema, name, self.catalog, self.policy)
            if reason:
                self.deny(reason, name=".".join(names))
            elif name == "set_config" and schema in (None, "pg_catalog"):
                self.check_set_config(b)
        self.generic("FuncCall", b, scope, skip=("funcname",))

    def check_set_config(self, b: dict) -> None:
        self.literal_dependent = True
        args = b.get("args") or []
        name = const_string(args[0]) if args else None
        value = const_string(args[1]) if len(args) > 1 else None
        if name is None:
            self.deny("denied_setting", name="a setting chosen at run time (set_config)")
            return
        lname = name.lower()
        if lname == "search_path":
            self.deny("denied_setting", name="search_path through set_config() (use SET)")
        elif not gate.setting_is_safe(lname, value if value is not None else "<expr>"):
            self.deny("denied_setting", name=lname)

    def check_operator(self, names: list[str | None]) -> None:
        ops = [n for n in names if n is not None]
        if not ops or not self.masked_user or self.verify:
            return
        schema = ops[-2] if len(ops) >= 2 else None
        if gate.operator_denial(schema, ops[-1], self.catalog, self.policy):
            self.deny("denied_operator", name=ops[-1])

    def v_A_Expr(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        self.check_operator(strings(b.get("name", [])))
        self.generic("A_Expr", b, scope, skip=("name",))

    def v_SubLink(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        if b.get("operName"):
            self.check_operator(strings(b["operName"]))
        self.generic("SubLink", b, scope, skip=("operName",))

    def v_SortBy(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        if b.get("useOp"):
            self.check_operator(strings(b["useOp"]))
        self.generic("SortBy", b, scope, skip=("useOp",))

    def v_VariableSetStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        self.literal_dependent = True
        name = (b.get("name") or "").lower()
        kind = b.get("kind", "")
        top = b is self._stmt_top
        if kind in ("VAR_SET_VALUE", "VAR_SET_CURRENT", "VAR_SET_DEFAULT", "VAR_RESET"):
            values = [const_string(a) for a in b.get("args") or []]
            value: str | None
            if kind == "VAR_SET_VALUE":
                value = ",".join(v if v is not None else "<expr>" for v in values)
            elif kind == "VAR_SET_CURRENT":
                value = "<current>"
            else:
                value = None
            if self.masked_user and not gate.setting_is_safe(name, value):
                self.deny("denied_setting", name=name)
            if name == "search_path" and top:
                if kind == "VAR_SET_VALUE" and all(v is not None for v in values):
                    self.session_effects["search_path"] = tuple(v for v in values if v is not None)
                else:
                    self.session_effects["search_path"] = None  # reset: ask the server
                if b.get("is_local"):
                    self.session_effects["search_path_local"] = True
        elif kind == "VAR_RESET_ALL" and top:
            self.session_effects["search_path"] = None
        self.generic("VariableSetStmt", b, scope)

    def v_AlterRoleSetStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        # ``setstmt`` is a typed field: a bare VariableSetStmt body
        if isinstance(b.get("setstmt"), dict):
            self.v_VariableSetStmt(b["setstmt"], scope, "AlterRoleSetStmt", "setstmt")

    v_AlterDatabaseSetStmt = v_AlterRoleSetStmt

    def v_CopyStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        if self.masked_user and (b.get("filename") is not None or b.get("is_program")):
            self.deny("denied_copy_file")
        rv = b.get("relation")
        if rv:
            if b.get("is_from"):
                self.write_target(rv, scope, "COPY FROM", [], b)
            else:
                self.copy_to(b, rv, scope)
        if b.get("query"):
            self.walk(b["query"], scope, "CopyStmt", "query")
        self.generic("CopyStmt", b, scope, skip=("relation", "query"))

    def copy_to(self, b: dict, rv: dict, scope: frozenset[str]) -> None:
        rel, _ = self.resolve(rv, scope)
        if rel is None:
            return
        masks = self.uncovered(rel)
        if not masks:
            return
        if self.verify:
            self.verify_failures.append("COPY of a masked table")
            return
        self.record_masked(rel, masks)
        derived = derived_sql(self.plan, rel, masks, only=not rv.get("inh", True))
        t = self.tokens
        try:
            start, end, first, last = self.name_span(rv)
        except (LookupError, IndexError):
            self.deny("verification_failed", detail="COPY relation span")
            return
        cols = "*"
        attlist = [s for s in strings(b.get("attlist") or []) if s is not None]
        if attlist:
            nxt = t.next(last)
            if nxt is None or nxt.name != "ASCII_40":
                self.deny("verification_failed", detail="COPY column list")
                return
            k = last + 1
            while k < len(t.toks) and t.toks[k].name != "ASCII_41":
                k += 1
            if k >= len(t.toks):
                self.deny("verification_failed", detail="COPY column list")
                return
            end = t.toks[k].end
            cols = ", ".join(quote_ident(c) for c in attlist)
        text = f"(SELECT {cols} FROM {derived.text} AS {quote_ident(rel.name)})"
        self.edits.append(Edit(start, end, text))

    # -- writes --------------------------------------------------------------------------------
    def v_InsertStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        scope = self.with_scope(b.get("withClause"), scope)
        self.write_target(b["relation"], scope, "INSERT", [b.get("onConflictClause")], b)
        self.generic("InsertStmt", b, scope, skip=("withClause", "relation"))

    def v_UpdateStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        scope = self.with_scope(b.get("withClause"), scope)
        self.write_target(
            b["relation"], scope, "UPDATE",
            [b.get("targetList"), b.get("whereClause"), b.get("fromClause")], b,
        )
        for item in b.get("fromClause") or ():
            self.from_item(item, scope, "UpdateStmt")
        self.generic("UpdateStmt", b, scope, skip=("withClause", "relation", "fromClause"))

    def v_DeleteStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        scope = self.with_scope(b.get("withClause"), scope)
        self.write_target(
            b["relation"], scope, "DELETE", [b.get("whereClause"), b.get("usingClause")], b
        )
        for item in b.get("usingClause") or ():
            self.from_item(item, scope, "DeleteStmt")
        self.generic("DeleteStmt", b, scope, skip=("withClause", "relation", "usingClause"))

    def v_MergeStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        scope = self.with_scope(b.get("withClause"), scope)
        self.write_target(
            b["relation"], scope, "MERGE", [b.get("joinCondition"), b.get("mergeWhenClauses")], b
        )
        self.from_item(b.get("sourceRelation"), scope, "MergeStmt")
        self.generic("MergeStmt", b, scope, skip=("withClause", "relation", "sourceRelation"))

    def write_target(
        self, rv: dict, scope: frozenset[str], what: str, exprs: list[Any], stmt: dict | None
    ) -> None:
        # the target of INSERT, UPDATE, DELETE, MERGE (and COPY FROM) is always a table:
        # PostgreSQL never looks it up among the CTE names, even where one shadows it
        rel, _ = self.resolve(rv, frozenset())
        if rel is None:
            return
        if rel.qualified == "pg_catalog.pg_settings" and self.masked_user:
            # an UPDATE of pg_settings is set_config(): it changes settings (search_path,
            # client_encoding…) where pgveil cannot follow them
            self.deny("denied_setting", name="settings through pg_settings (use SET)")
            return
        if what == "INSERT":
            cols = [rt.get("ResTarget", {}).get("name") for rt in (stmt or {}).get("cols") or ()]
            self.written.append((rel, [c for c in cols if c] or None))
        elif what == "UPDATE":
            cols = [rt.get("ResTarget", {}).get("name") for rt in (stmt or {}).get("targetList") or ()]
            self.written.append((rel, [c for c in cols if c]))
        masks = self.uncovered(rel)
        if not masks:
            return
        written = written_columns(what, stmt, rel)
        hit = sorted(masks if written is None else {c for c in written if c in masks})
        if hit:
            # the answer to a write tells whether its values exist already (a unique or
            # exclusion violation, ON CONFLICT, a foreign key, a trigger): writing a masked
            # column is reading it
            self.deny("denied_write_masked", what=what, table=rel.qualified,
                      columns=", ".join(hit))
            return
        alias = (rv.get("alias") or {}).get("aliasname")
        ref = alias or rel.name
        returning = (stmt or {}).get("returningClause") or {}
        refs = {ref, "old", "new"}
        for opt in returning.get("options") or ():
            _, o = node(opt)
            if o.get("value"):
                refs.add(o["value"])
        if not alias:
            refs.add(rel.name)
        hits = sorted({c for e in exprs for c in self.flagged(e, refs, masks, top_star=False)})
        if hits:
            self.deny("denied_write_predicate", what=what, table=rel.qualified, columns=", ".join(hits))
            return
        ret_exprs = returning.get("exprs") or []
        ret_hits = sorted(set(self.flagged(ret_exprs, refs, masks, top_star=True)))
        if not ret_hits:
            return
        if self.verify:
            self.verify_ret_write(stmt, ref, ret_exprs)
            return
        wrappable = stmt is self._stmt_top and not returning.get("options")
        if not wrappable:
            self.deny("denied_returning", table=rel.qualified, columns=", ".join(ret_hits))
            return
        self.record_masked(rel, masks)
        self.wrap_returning(rel, masks, ref)

    def flagged(self, value: Any, refs: set[str], masks: dict[str, ColumnMask], top_star: bool) -> Iterator[str]:
        """Masked columns of a write target that expressions under ``value`` can see."""
        if top_star:
            for rt in value or ():
                _, r = node(rt)
                k, cr = node(r.get("val"))
                if k == "ColumnRef" and strings(cr["fields"]) == [None]:
                    yield "*"
        for cr in column_refs(value):
            names = strings(cr["fields"])
            if names[-1] is None:
                qual = names[:-1]
                if qual and qual[-1] in refs:
                    yield "*"
                continue
            col = names[-1]
            qual = names[:-1]
            if not qual:
                if col in masks:
                    yield col
                elif col in refs:
                    yield f"{col} (whole row)"
            elif qual[-1] in refs and col in masks:
                yield col

    def wrap_returning(self, rel: Relation, masks: dict[str, ColumnMask], ref: str) -> None:
        t = self.tokens
        start, end = self._stmt_span
        kw = t.find_last_top_level(start, end, "RETURNING")
        last = t.last_in(start, end)
        try:
            first = t.toks[t.index_at(start)]
        except LookupError:
            first = None
        if kw is None or last is None or first is None:
            self.deny("verification_failed", detail="RETURNING span")
            return
        derived = derived_sql(self.plan, rel, masks, source=RET_CTE)
        qref = quote_ident(ref)
        self.edits.append(Edit(first.start, first.start, f"WITH {RET_CTE} AS ("))
        self.edits.append(Edit(kw.start, kw.end, f"RETURNING {qref}.*) SELECT"))
        self.edits.append(Edit(last.end, last.end, f" FROM {derived.text} AS {qref}"))

    # -- statements with a query inside -------------------------------------------------------
    def _persistent(self, what: str, b: dict, scope: frozenset[str], kind: str) -> None:
        before = len(self.grants_used)
        self.generic(kind, b, scope)
        if len(self.grants_used) > before and self.masked_user:
            self.deny("denied_persistent_grant", what=what, table="the object")

    def v_PrepareStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        self.prepared = b.get("name")
        self.check_statement_name(self.prepared)
        self._persistent("PREPARE", b, scope, "PrepareStmt")

    def v_DeallocateStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        self.check_statement_name(b.get("name"))
        self.generic("DeallocateStmt", b, scope)

    def check_statement_name(self, name: str | None) -> None:
        """pgveil prepares masked statements under names of its own: a masked user may not
        replace them (DEALLOCATE, then PREPARE a statement of theirs under that name)."""
        if name and self.masked_user and is_reserved_statement_name(name):
            self.deny("denied_reserved_name", name=name)

    def v_ViewStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        self._persistent("CREATE VIEW", b, scope, "ViewStmt")

    def v_DeclareCursorStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        self._persistent("DECLARE", b, scope, "DeclareCursorStmt")

    def v_CreateTableAsStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        if b.get("objtype") == "OBJECT_MATVIEW":
            self._persistent("CREATE MATERIALIZED VIEW", b, scope, "CreateTableAsStmt")
        else:
            self.generic("CreateTableAsStmt", b, scope)

    def v_ExecuteStmt(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        self.prepared = b.get("name")
        self.generic("ExecuteStmt", b, scope)

    def v_Constraint(self, b: dict, scope: frozenset[str], parent: str, fieldname: str) -> None:
        pk = b.get("pktable")
        if pk and b.get("contype") == "CONSTR_FOREIGN":
            rel, _ = self.resolve(pk, scope)
            if rel is not None:
                masks = self.uncovered(rel)
                attrs = [s for s in strings(b.get("pk_attrs") or []) if s is not None]
                if masks and (not attrs or any(a in masks for a in attrs)):
                    self.deny("denied_foreign_key", table=rel.qualified)
        self.generic("Constraint", b, scope, skip=("pktable",))

    # -- verification of rewritten text ---------------------------------------------------------
    def _around(self, loc: int, derived: Derived) -> bool:
        pre = derived.prefix.encode("utf-8")
        post = (derived.source + derived.suffix).encode("utf-8")
        return self.raw[loc - len(pre) : loc] == pre and self.raw[loc : loc + len(post)] == post

    def verify_read(self, rv: dict, rel: Relation, masks: dict[str, ColumnMask], only: bool) -> None:
        derived = derived_sql(self.plan, rel, masks, only=only)
        alias = (rv.get("alias") or {}).get("aliasname")
        loc = rv["location"]
        if (
            rel.schema
            and rv.get("schemaname") == rel.schema
            and alias == SRC_ALIAS
            and self._around(loc, derived)
            and self._projection_masks(masks)
        ):
            return
        self.verify_failures.append(f"unmasked read of {rel.qualified}")

    def _projection_masks(self, masks: dict[str, ColumnMask]) -> bool:
        """Independently of the text: the SELECT around a masked read must be a bare
        projection over that one relation that never outputs a masked column, its whole
        row or ``*`` as a plain reference."""
        if not self._selects:
            return False
        sel = self._selects[-1]
        if len(sel.get("fromClause") or ()) != 1:
            return False
        for key in ("whereClause", "groupClause", "havingClause", "distinctClause", "withClause"):
            if sel.get(key):
                return False
        for t in sel.get("targetList") or ():
            _, rt = node(t)
            k, val = node(rt.get("val"))
            if k != "ColumnRef":
                continue
            names = strings(val["fields"])
            if names[-1] is None or len(names) == 1 or names[-1] in masks:
                return False
            if rt.get("name") is not None and rt["name"] in masks:
                return False
        return True

    def verify_ret_read(self, rv: dict) -> None:
        """A read of the RETURNING wrapper's CTE must be exactly the masked derived table."""
        alias = (rv.get("alias") or {}).get("aliasname")
        expected = self._ret_expected()
        if (
            alias == SRC_ALIAS
            and expected is not None
            and self._around(rv["location"], expected)
            and self._projection_masks(self._ret_masks)
        ):
            return
        self.verify_failures.append("unmasked read of RETURNING rows")

    def _ret_expected(self) -> Derived | None:
        top = self._stmt_top or {}
        ctes = [node(c)[1] for c in (top.get("withClause") or {}).get("ctes", [])]
        if not ctes or ctes[0]["ctename"] != RET_CTE:
            return None
        kind, dml = node(ctes[0]["ctequery"])
        if kind not in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return None
        rv = dml["relation"]
        rel, _ = self.catalog.resolve(rv.get("schemaname"), rv["relname"], self.search_path, self.user)
        if rel is None:
            return None
        self._ret_masks = self.uncovered(rel)
        return derived_sql(self.plan, rel, self._ret_masks, source=RET_CTE)

    def verify_ret_write(self, stmt: dict | None, ref: str, ret_exprs: list[Any]) -> None:
        ok = len(ret_exprs) == 1
        if ok:
            _, r = node(ret_exprs[0])
            k, cr = node(r.get("val"))
            ok = k == "ColumnRef" and strings(cr["fields"]) == [ref, None]
        top = self._stmt_top
        wc = (top or {}).get("withClause") or {}
        ctes = [node(c)[1] for c in wc.get("ctes", [])]
        ok = ok and len(ctes) >= 1 and ctes[0]["ctename"] == RET_CTE and node(ctes[0]["ctequery"])[1] is stmt
        if not ok:
            self.verify_failures.append("RETURNING of masked columns outside pgveil's wrapper")

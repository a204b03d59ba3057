"""Which literals of a rewritten statement can travel as parameters, and their types.

A masked simple-protocol statement is rewritten into a larger one that the server parses and
plans on every execution. pgveil can instead prepare it once upstream with some literals as
parameters (``$1``) and send only their values (see ``proxy/stmt_cache.py``) — but only
where a parameter means exactly what the literal meant. That is decided once per template,
from PostgreSQL's parse tree of the rewritten placeholder probe, and kept deliberately
narrow:

* only literals that are a whole operand of a comparison (``=  <>  <  >  <=  >=``, ``IN
  (…)``, ``BETWEEN``) whose other operand is a plain column reference;
* only inside a ``WHERE`` clause — never in a target list, ORDER BY, GROUP BY, HAVING,
  DISTINCT or LIMIT, where PostgreSQL matches expressions to each other or reads an
  integer as a column position (``ORDER BY 1``);
* with the type PostgreSQL gives the literal: an integer that fits int4 is ``int4``, a larger
  one ``int8`` (or ``numeric``), a decimal ``numeric``; a string is sent untyped, so it is
  coerced to the column's type exactly as an untyped literal is;
* only for plain ``'…'`` strings (no ``E''``, dollar quotes or continuation lines).

Anything else stays a literal in the statement text.
"""

from __future__ import annotations

import json

from pglast import parser as pg_parser

COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
INT4, INT8, NUMERIC, UNTYPED = 23, 20, 1700, 0
_INT8_MAX = 9223372036854775807


def slot_offsets(sql: str) -> frozenset[int]:
    """Byte offsets of the literals of ``sql`` that may become parameters (see above)."""
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql))
    except Exception:  # noqa: BLE001 - nothing is parameterised in what cannot be parsed
        return frozenset()
    stmts = tree.get("stmts", [])
    if len(stmts) != 1 or "SelectStmt" not in stmts[0].get("stmt", {}):
        return frozenset()
    found: set[int] = set()
    _walk(stmts[0]["stmt"], False, found)
    return frozenset(found)


def _walk(node, in_where: bool, found: set[int]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, in_where, found)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "SelectStmt":
            for field, sub in value.items():
                _walk(sub, field == "whereClause", found)
        elif key == "A_Expr" and in_where:
            _comparison(value, found)
            _walk(value, in_where, found)
        else:
            _walk(value, in_where, found)


def _const_location(node) -> int | None:
    if isinstance(node, dict) and "A_Const" in node:
        c = node["A_Const"]
        if "isnull" in c:
            return None
        return c.get("location")
    return None


def _is_column(node) -> bool:
    return isinstance(node, dict) and "ColumnRef" in node and all(
        "String" in f for f in node["ColumnRef"].get("fields", ()))


def _comparison(expr: dict, found: set[int]) -> None:
    kind = expr.get("kind")
    names = [n.get("String", {}).get("sval") for n in expr.get("name", ())]
    lexpr, rexpr = expr.get("lexpr"), expr.get("rexpr")
    if kind == "AEXPR_OP" and len(names) == 1 and names[0] in COMPARISONS:
        for const, other in ((rexpr, lexpr), (lexpr, rexpr)):
            loc = _const_location(const)
            if loc is not None and _is_column(other):
                found.add(loc)
    elif kind in ("AEXPR_IN", "AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN") and _is_column(lexpr):
        if kind == "AEXPR_IN" and names != ["="] and names != ["<>"]:
            return
        items = rexpr.get("List", {}).get("items", []) if isinstance(rexpr, dict) else rexpr
        for item in items or ():
            loc = _const_location(item)
            if loc is not None:
                found.add(loc)


def param_value(text: str, cls: str) -> tuple[int, str] | None:
    """``(type oid, value text)`` for a literal token, or None if it must stay inline."""
    if cls == "ICONST":
        return INT4, text
    if cls == "FCONST":
        if text.isdigit():
            return (INT8 if int(text) <= _INT8_MAX else NUMERIC), text
        return NUMERIC, text
    if cls == "SCONST" and len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        inner = text[1:-1]
        if "'" in inner.replace("''", ""):
            return None  # 'a' <newline> 'b': one literal made of two
        return UNTYPED, inner.replace("''", "'")
    return None

"""Which columns a statement touches, for the audit record (``columns``).

Conservative by construction: a column is reported whenever the statement *may* read or
write it, never left out because a name was ambiguous.

* ``t.col`` / ``schema.t.col`` where ``t`` names (or aliases) a relation of the statement:
  that relation's column;
* a bare ``col``, or a qualifier that is not a relation of the statement (a sub-query or CTE
  alias): every relation of the statement that has a column of that name;
* ``*`` / ``t.*``: every column of the relations it can stand for;
* the target columns of ``INSERT`` (all of them when none are listed) and ``UPDATE … SET``.

Names are ``schema.table.column``, sorted.
"""

from __future__ import annotations

from typing import Any, Iterable

from .analyze import column_refs, strings
from .catalog import Relation


def columns_touched(stmts: Any, by_ref: dict[str, Relation], relations: Iterable[Relation],
                    written: Iterable[tuple[Relation, list[str] | None]]) -> tuple[str, ...]:
    rels = list(dict.fromkeys(relations))
    out: dict[str, None] = {}

    def add(rel: Relation, name: str | None) -> None:
        if name is None:  # a star
            for c in rel.columns:
                out[f"{rel.qualified}.{c.name}"] = None
        elif rel.column(name) is not None:
            out[f"{rel.qualified}.{name}"] = None

    for ref in column_refs(stmts):
        fields = strings(ref.get("fields") or [])
        if not fields:
            continue
        name = fields[-1]
        qualifier = fields[-2] if len(fields) >= 2 else None
        target = by_ref.get(qualifier) if qualifier is not None else None
        for rel in ([target] if target is not None else rels):
            add(rel, name)
    for rel, names in written:
        for name in (names if names is not None else [None]):
            add(rel, name)
    return tuple(sorted(out))

"""Substitution by splicing: masked derived tables replace table names in the original text.

The rewrite never regenerates SQL from a tree. It copies the statement byte for byte and
replaces only the spans that name a sensitive relation (located with PostgreSQL's own
parser and scanner) with a derived table:

    FROM customers c      ->  FROM (SELECT pgveil_src.id, ..., <mask> AS ssn, ...
                                    FROM public.customers AS pgveil_src) c

All columns appear, in catalog order (stripped ones are left out), so ``*``, whole-row
references, ``row_to_json(c)``, ``(c).ssn`` and column alias lists see the masked row.
An unaliased reference keeps the relation's name as alias, and three-part column
references (``public.customers.ssn``) are shortened to match it. Everything else —
literals, comments, operators, formatting — stays exactly as the client sent it, so there
is no second SQL generator whose output could differ from what the client meant.

:func:`derived_sql` builds the text; :func:`apply_edits` splices non-overlapping edits.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import ColumnMask, MaskPlan, Relation
from .masks import mask_sql
from .names import qualified, quote_ident

SRC_ALIAS = "pgveil_src"
RET_CTE = "pgveil_ret"


@dataclass(frozen=True, slots=True)
class Edit:
    start: int  # byte offsets into the UTF-8 text
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Derived:
    """A masked derived table as ``prefix + source + suffix``.

    ``source`` is the relation name (or the RETURNING CTE); keeping the parts apart lets
    the verifier check the exact text around a parsed relation reference.
    """

    prefix: str
    source: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.source + self.suffix


def derived_sql(
    plan: MaskPlan,
    rel: Relation,
    masks: dict[str, ColumnMask],
    *,
    only: bool = False,
    source: str | None = None,
) -> Derived:
    """The masked derived table for ``rel`` with ``masks`` (the uncovered ones) applied."""
    key = (rel.oid, frozenset(masks), only, source)
    hit = plan.derived_cache.get(key)
    if hit is not None:
        return hit
    cols: list[str] = []
    for col in rel.columns:
        ref = f"{SRC_ALIAS}.{quote_ident(col.name)}"
        cm = masks.get(col.name)
        if cm is None:
            cols.append(ref)
            continue
        expr = mask_sql(cm.rule, col, ref)
        if expr is not None:
            cols.append(f"{expr} AS {quote_ident(col.name)}")
    src = source if source is not None else qualified(rel.schema, rel.name)
    derived = Derived(
        prefix="(SELECT " + ", ".join(cols) + " FROM " + ("ONLY " if only else ""),
        source=src,
        suffix=f" AS {SRC_ALIAS})",
    )
    if len(plan.derived_cache) > 4096:
        plan.derived_cache.clear()
    plan.derived_cache[key] = derived
    return derived


def apply_edits(raw: bytes, edits: list[Edit]) -> bytes:
    """Apply edits (sorted, non-overlapping; equal starts keep insertion order)."""
    ordered = sorted(enumerate(edits), key=lambda p: (p[1].start, p[1].end, p[0]))
    out: list[bytes] = []
    pos = 0
    for _, e in ordered:
        if e.start < pos:
            raise ValueError("overlapping edits")
        out.append(raw[pos : e.start])
        out.append(e.text.encode("utf-8"))
        pos = e.end
    out.append(raw[pos:])
    return b"".join(out)

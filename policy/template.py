"""Reuse one rewrite for every statement that differs only in its literals.

``WHERE id = 1`` and ``WHERE id = 2`` share a fingerprint and, unless a literal decides the
outcome, the same rewrite. To decide once per fingerprint, the statement is *probed*: each
literal is replaced by a unique placeholder literal of the same token class (a string by a
string, an integer by an integer), the probe is decided, and its rewritten text becomes a
template in which each placeholder appears exactly once. A later statement with the same
fingerprint is then filled in: its own literal tokens, in order, replace the placeholders.

Swapping one literal token for another of the same class cannot change how PostgreSQL
parses the statement (the lexer settings that could are part of every cache key and are
denied for masked users), so the filled text is what deciding it afresh would produce.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pglast import parser as pg_parser

from .params import param_value, slot_offsets

#: literal token classes that can be swapped safely, and how to spell a placeholder
_PLACEHOLDER_CLASSES = ("SCONST", "ICONST", "FCONST")
_ALL_LITERALS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})


class Literals:
    """The literal tokens of a statement: (start, stop, token class), character offsets."""

    __slots__ = ("spans", "classes")

    def __init__(self, spans: tuple[tuple[int, int, str], ...],
                 classes: tuple[str, ...] | None = None) -> None:
        self.spans = spans
        self.classes: tuple[str, ...] = (
            classes if classes is not None else tuple(c for _, _, c in spans))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Literals) and other.spans == self.spans

    def __hash__(self) -> int:
        return hash(self.spans)

    def __repr__(self) -> str:
        return f"Literals(spans={self.spans!r})"


def literals_from_spans(spans) -> Literals | None:
    return Literals(spans) if spans is not None else None


def literals(sql: str) -> Literals | None:
    """The literal tokens of ``sql``, or None if it has a literal that cannot be templated."""
    try:
        toks = pg_parser.scan(sql)
    except Exception:  # noqa: BLE001 - unscannable text is simply not templated
        return None
    spans = []
    for t in toks:
        if t.name in _ALL_LITERALS:
            if t.name not in _PLACEHOLDER_CLASSES:
                return None
            spans.append((t.start, t.end + 1, t.name))
    return Literals(tuple(spans))


@dataclass(frozen=True)
class Probe:
    sql: str
    placeholders: tuple[str, ...]
    classes: tuple[str, ...]


def make_probe(sql: str, lits: Literals) -> Probe | None:
    """``sql`` with each literal replaced by a unique placeholder of the same class."""
    if not lits.spans:
        return None
    tag = secrets.token_hex(4)
    out: list[str] = []
    placeholders: list[str] = []
    last = 0
    for i, (start, stop, cls) in enumerate(lits.spans):
        if cls == "SCONST":
            ph = f"'pgveil_lit_{tag}_{i}'"
        elif cls == "ICONST":
            ph = f"{int(tag, 16) % 900000 + 100000}{i:04d}7"
        else:
            ph = f"{int(tag, 16) % 900000 + 100000}{i:04d}7.5"
        if ph in sql:
            return None
        out.append(sql[last:start])
        out.append(ph)
        placeholders.append(ph)
        last = stop
    out.append(sql[last:])
    return Probe("".join(out), tuple(placeholders), lits.classes)


@dataclass(frozen=True)
class Template:
    """A rewritten probe, cut at its placeholders: parts[0] lit0 parts[1] lit1 ... parts[n]."""

    parts: tuple[str, ...]
    order: tuple[int, ...]  # which literal goes into each gap
    classes: tuple[str, ...]
    #: per gap: may its literal be sent as a parameter (see :mod:`policy.params`)
    slots: tuple[bool, ...] = ()

    def fill(self, sql: str, lits: Literals) -> str | None:
        if lits.classes != self.classes:
            return None
        texts = [sql[a:b] for a, b, _ in lits.spans]
        out = [self.parts[0]]
        for gap, idx in enumerate(self.order):
            out.append(texts[idx])
            out.append(self.parts[gap + 1])
        return "".join(out)


    def fill_both(self, sql: str, lits: Literals):
        """``fill(sql, lits)`` and, in the same pass, the parameter form: the rewrite with
        each parameter slot as ``$n`` — ``(text, type oids, values)`` — or None when no
        literal of this statement can be a parameter."""
        if lits.classes != self.classes:
            return None, None
        if not any(self.slots) or "$" in sql:
            # "$": the client's own text may hold a parameter reference ($1 in a simple
            # Query is an error) or a dollar quote; never let ours change what it means
            return self.fill(sql, lits), None
        spans = lits.spans
        parts = self.parts
        out = [parts[0]]
        pout = [parts[0]]
        types: list[int] = []
        values: list[str] = []
        for gap, idx in enumerate(self.order):
            start, stop, cls = spans[idx]
            text = sql[start:stop]
            out.append(text)
            pv = param_value(text, cls) if self.slots[gap] else None
            if pv is None:
                pout.append(text)
            else:
                types.append(pv[0])
                values.append(pv[1])
                pout.append(f" ${len(values)} ")
            out.append(parts[gap + 1])
            pout.append(parts[gap + 1])
        form = ("".join(pout), tuple(types), tuple(values)) if values else None
        return "".join(out), form


def make_template(rewritten: str, probe: Probe) -> Template | None:
    """Cut ``rewritten`` at the probe's placeholders; None unless each occurs exactly once."""
    found: list[tuple[int, int]] = []
    for idx, ph in enumerate(probe.placeholders):
        pos = rewritten.find(ph)
        if pos < 0 or rewritten.find(ph, pos + 1) >= 0:
            return None
        found.append((pos, idx))
    found.sort()
    parts: list[str] = []
    last = 0
    for pos, idx in found:
        parts.append(rewritten[last:pos])
        last = pos + len(probe.placeholders[idx])
    parts.append(rewritten[last:])
    offsets = slot_offsets(rewritten)
    slots = ()
    if offsets:
        slots = tuple(len(rewritten[:pos].encode()) in offsets for pos, _ in found)
    return Template(tuple(parts), tuple(idx for _, idx in found), probe.classes, slots)

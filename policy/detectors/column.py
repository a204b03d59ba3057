"""Classify one column from its name, its type and a sample of its values.

For every detector that applies to the column's type, the sample gives a *value share*:
the fraction of non-empty values that match STRONG, plus the WEAK ones when the column's
name agrees. Evidence is then combined as two independent witnesses (noisy-OR)::

    value_score = reliability · ramp(share)        ramp: 5 % → 0, 50 % → 1
    name_score  = hint strength (0.6 strong, 0.35 weak; halved when a real sample
                  shows not a single matching value — the name is contradicted)
    confidence  = 1 − (1 − value_score) · (1 − name_score)

The best detector above ``threshold`` wins. If none does, a *free-text* pass looks for
emails, phones, cards, SSNs, IBANs, IPs and secrets *inside* the values (a ``comment`` with
customers' addresses in it), and reports ``free_text`` with the kinds it saw.

Only aggregates leave this module, plus at most one masked example per finding (built by
the detector's ``example`` function from a matching value): raw values are never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .base import Detector, Strength, TypeClass, name_tokens, type_class
from .personal import PERSON_NAME, is_person_table
from .registry import DETECTORS, EMBEDDED, FREE_TEXT

DEFAULT_THRESHOLD = 0.5
MIN_SAMPLE_TO_CONTRADICT = 5


@dataclass(frozen=True)
class ColumnFinding:
    """What was found in one column. Holds no sampled value, only a masked example."""

    table: str  # schema-qualified
    column: str
    type_name: str
    detector: str
    share: float  # fraction of sampled non-empty values that matched
    confidence: float
    sampled: int  # non-empty values looked at
    name_score: float
    value_score: float
    example: str | None = None
    contains: tuple[str, ...] = ()  # for free_text: the kinds seen inside the text
    evidence: str = ""  # short human explanation

    @property
    def label(self) -> str:
        if self.detector == FREE_TEXT:
            return "free text containing " + ", ".join(self.contains)
        from .registry import BY_NAME
        return BY_NAME[self.detector].label


def ramp(share: float) -> float:
    return min(1.0, max(0.0, (share - 0.05) / 0.45))


def _name_score(det: Detector, col_tokens: tuple[str, ...], table_tokens: tuple[str, ...]) -> float:
    score = det.name_hints.score(col_tokens)
    if det is PERSON_NAME and score and col_tokens in (("name",), ("fname",), ("lname",)):
        # a bare ``name`` is a person's name only in a table of people
        score = det.name_hints.strong_score if is_person_table(table_tokens) else 0.0
    return score


@dataclass
class _Tally:
    strong: int = 0
    weak: int = 0
    example: str | None = None


def classify_column(
    table: str,
    column: str,
    type_name: str,
    values: Iterable[str | None],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    detectors: Sequence[Detector] = DETECTORS,
) -> ColumnFinding | None:
    """The most likely kind of sensitive data in this column, or None.

    ``values`` are the sampled values as text (``NULL`` as None); they are consumed once
    and not retained.
    """
    tclass = type_class(type_name)
    col_tokens = name_tokens(column)
    table_tokens = name_tokens(table.rsplit(".", 1)[-1])
    active = [d for d in detectors if d.applies(tclass)]
    free_text_ok = tclass in (TypeClass.TEXT, TypeClass.JSON)
    if not active and not free_text_ok:
        return None
    hints = {d.name: _name_score(d, col_tokens, table_tokens) for d in active}
    tallies = {d.name: _Tally() for d in active}
    embedded: dict[str, int] = {}
    embedded_rows = 0
    embedded_example: str | None = None
    n = 0
    for raw in values:
        if raw is None:
            continue
        value = raw.strip()
        if not value:
            continue
        n += 1
        whole = False
        for d in active:
            if d.type_evidence and tclass in d.type_evidence:
                s = Strength.STRONG
            else:
                s = d.match(value)
            if s is Strength.NONE:
                continue
            t = tallies[d.name]
            if s is Strength.STRONG:
                t.strong += 1
                whole = True
            else:
                t.weak += 1
            if t.example is None and (s is Strength.STRONG or hints[d.name]):
                t.example = d.example(value)
        if free_text_ok and not whole:
            seen = False
            for d in EMBEDDED:
                for hit in d.find(value):
                    embedded[d.name] = embedded.get(d.name, 0) + 1
                    if embedded_example is None:
                        embedded_example = "…" + d.example(hit) + "…"
                    seen = True
                    break
            embedded_rows += seen

    best: ColumnFinding | None = None
    for d in active:
        t, name_score = tallies[d.name], hints[d.name]
        strong_share = t.strong / n if n else 0.0
        weak_share = t.weak / n if n else 0.0
        value_score = d.reliability * ramp(strong_share)
        share = strong_share
        if name_score:
            weak_score = d.weak_reliability * ramp(strong_share + weak_share)
            if weak_score > value_score:
                value_score, share = weak_score, strong_share + weak_share
        if n >= MIN_SAMPLE_TO_CONTRADICT and t.strong + t.weak == 0:
            name_score /= 2
        if d.type_evidence and tclass in d.type_evidence:
            value_score = max(value_score, d.reliability)
            share = 1.0 if n else 0.0
        confidence = 1 - (1 - value_score) * (1 - name_score)
        if confidence < threshold:
            continue
        if best is not None and confidence <= best.confidence:
            continue
        why = []
        if value_score:
            why.append(f"{share:.0%} of {n} sampled values match")
        if name_score:
            why.append(f"column name suggests {d.label}")
        if d.type_evidence and tclass in d.type_evidence:
            why.append(f"type {type_name}")
        best = ColumnFinding(
            table=table, column=column, type_name=type_name, detector=d.name,
            share=round(share, 4), confidence=round(confidence, 3), sampled=n,
            name_score=round(name_score, 3), value_score=round(value_score, 3),
            example=t.example if value_score else None, evidence="; ".join(why),
        )
    if best is not None or not free_text_ok or n == 0:
        return best
    return _free_text(table, column, type_name, col_tokens, n, embedded_rows, embedded,
                      embedded_example, threshold)


FREE_TEXT_NAMES = frozenset({
    "comment", "comments", "note", "notes", "description", "message", "body", "text",
    "remarks", "remark", "memo", "details", "content", "feedback", "bio", "about", "summary",
    "log", "payload", "data", "metadata", "extra", "attributes", "properties", "info",
})


def _free_text(table: str, column: str, type_name: str, col_tokens: tuple[str, ...], n: int,
               rows: int, kinds: dict[str, int], example: str | None,
               threshold: float) -> ColumnFinding | None:
    if rows < 2:
        return None
    share = rows / n
    value_score = 0.95 * min(1.0, 0.4 + 0.6 * min(1.0, share / 0.2))
    name_score = 0.35 if any(t in FREE_TEXT_NAMES for t in col_tokens) else 0.0
    confidence = 1 - (1 - value_score) * (1 - name_score)
    if confidence < threshold:
        return None
    contains = tuple(sorted(kinds, key=lambda k: (-kinds[k], k)))
    return ColumnFinding(
        table=table, column=column, type_name=type_name, detector=FREE_TEXT,
        share=round(share, 4), confidence=round(confidence, 3), sampled=n,
        name_score=name_score, value_score=round(value_score, 3), example=example,
        contains=contains,
        evidence=f"{share:.0%} of {n} sampled values contain " + ", ".join(contains),
    )

"""The shape every detector shares, and the few helpers they all use.

A detector answers two independent questions about a column:

* **value evidence** — does this one sampled value look like the thing? ``match(value)``
  returns a :class:`Strength`: ``STRONG`` when the value alone is convincing (a Luhn-valid
  card number with a known issuer prefix), ``WEAK`` when the value only has the right shape
  and needs the column name to back it up (nine bare digits in a column called ``ssn``),
  ``NONE`` otherwise;
* **name evidence** — does the column's name suggest it? :class:`NameHints` lists the tokens
  and phrases that do, strongly or weakly.

Detectors that can also spot their thing *inside* longer text (an email in a ``comment``)
provide ``find(text)``, which yields the matched substrings; the free-text pass uses it.

Everything here is pure: no I/O, no clock, no randomness. Sampled values pass through these
functions and are never kept; the only derived string a detector may hand back is a masked
example built by its ``example`` function.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Iterable, Iterator


class Strength(IntEnum):
    """How convincing one value is on its own."""

    NONE = 0
    WEAK = 1
    STRONG = 2


class TypeClass:
    """Coarse classes of PostgreSQL column types that detectors declare they apply to."""

    TEXT = "text"
    INTEGER = "integer"
    NUMERIC = "numeric"
    DATE = "date"
    TIMESTAMP = "timestamp"
    INET = "inet"
    JSON = "json"
    OTHER = "other"


_TEXT_TYPES = ("text", "character varying", "character", "varchar", "char", "bpchar",
               "citext", "name")
_INT_TYPES = ("smallint", "integer", "bigint", "int2", "int4", "int8")


def type_class(type_name: str) -> str:
    """Map a ``format_type()`` name (``character varying(80)``, ``integer[]``) to a class."""
    t = type_name.lower().strip()
    if t.startswith("pg_catalog."):
        t = t[len("pg_catalog."):].replace('"', "")
    if t.endswith("[]"):
        # arrays print as {a,b,...}; only their text content is worth a free-text look
        inner = type_class(t[:-2])
        return TypeClass.JSON if inner in (TypeClass.TEXT, TypeClass.JSON) else TypeClass.OTHER
    base = re.sub(r"\(.*\)", "", t).strip()
    if base in _TEXT_TYPES or base.endswith(".citext"):
        return TypeClass.TEXT
    if base in _INT_TYPES:
        return TypeClass.INTEGER
    if base in ("numeric", "decimal"):
        return TypeClass.NUMERIC
    if base == "date":
        return TypeClass.DATE
    if base.startswith("timestamp"):
        return TypeClass.TIMESTAMP
    if base in ("inet", "cidr"):
        return TypeClass.INET
    if base in ("json", "jsonb", "xml"):
        return TypeClass.JSON
    return TypeClass.OTHER


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def name_tokens(column: str) -> tuple[str, ...]:
    """Split a column name into lower-case words: ``customerEmail_2`` → (customer, email)."""
    spaced = _CAMEL.sub("_", column)
    return tuple(t for t in re.split(r"[^a-zA-Z]+", spaced.lower()) if t)


@dataclass(frozen=True)
class NameHints:
    """Column-name evidence for one detector.

    ``strong``/``weak`` hold single tokens (``ssn``) or token phrases joined by ``_``
    (``date_of_birth``); a phrase matches when its tokens appear consecutively, and also
    when the column name glues them together (``dateofbirth``, ``firstname``).
    ``veto`` tokens cancel the hint (``email_verified`` is a flag, not an address).
    """

    strong: frozenset[str] = frozenset()
    weak: frozenset[str] = frozenset()
    veto: frozenset[str] = frozenset()
    strong_score: float = 0.6
    weak_score: float = 0.35

    def score(self, tokens: tuple[str, ...]) -> float:
        if not tokens or any(t in self.veto for t in tokens):
            return 0.0
        if any(_has_phrase(tokens, p) for p in self.strong):
            return self.strong_score
        if any(_has_phrase(tokens, p) for p in self.weak):
            return self.weak_score
        return 0.0


def _has_phrase(tokens: tuple[str, ...], phrase: str) -> bool:
    words = tuple(phrase.split("_"))
    n = len(words)
    for i in range(len(tokens) - n + 1):
        if tokens[i:i + n] == words:
            return True
    glued = "".join(words)
    return n > 1 and glued in tokens


def hints(strong: Iterable[str] = (), weak: Iterable[str] = (), veto: Iterable[str] = (),
          **scores: float) -> NameHints:
    return NameHints(frozenset(strong), frozenset(weak), frozenset(veto), **scores)


def shannon_entropy(s: str) -> float:
    """Bits per character of ``s`` under its own character frequencies."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


Matcher = Callable[[str], Strength]
Finder = Callable[[str], Iterator[str]]


def _no_find(_text: str) -> Iterator[str]:
    return iter(())


def star(s: str) -> str:
    """Replace every letter and digit with ``*``, keeping separators (shape only)."""
    return re.sub(r"[A-Za-z0-9]", "*", s)


@dataclass(frozen=True)
class Detector:
    """One kind of sensitive data.

    ``reliability`` is how much a column full of STRONG values is worth on its own (0–1);
    ``weak_reliability`` the same for WEAK values, which only count when the name agrees.
    ``applies_to`` restricts the detector to some type classes; ``type_evidence`` lists
    classes whose type alone proves it (``inet`` for IP addresses).
    """

    name: str
    label: str
    match: Matcher
    example: Callable[[str], str]
    name_hints: NameHints = field(default_factory=NameHints)
    applies_to: frozenset[str] = frozenset({TypeClass.TEXT})
    type_evidence: frozenset[str] = frozenset()
    reliability: float = 0.95
    weak_reliability: float = 0.5
    find: Finder = _no_find

    def applies(self, tclass: str) -> bool:
        return tclass in self.applies_to

"""A fast, conservative split of plain statements into skeleton and literals.

Running PostgreSQL's scanner (through pglast) costs about 5 µs for a short statement, most
of it building one Python object per token; the decision cache only needs to know which
spans are literals. For the common, plain case this module finds them with one regular
expression, and *refuses* (returns None) whenever the text holds anything that makes
lexing subtle: non-ASCII, ``$`` (parameters, dollar quotes), backslashes, double quotes,
comments, prefixed strings (``E'…'``, ``B'…'``, ``U&'…'``), numbers glued to letters, dots
or underscores (``0x1F``, ``1_000``, ``1e``), or a quote the pattern could not pair.

What is left is a language of identifiers, keywords, operators, whitespace, plain
``'…'`` strings (with ``''``) and decimal numbers, in which a literal's content can never
change where any token starts or ends. So two statements with the same skeleton (the
text with each literal cut out) are lexed alike by PostgreSQL except for the literal
values — provided one of them was checked against the real scanner. The caller does that
before it trusts a skeleton: a skeleton is cached only after :func:`matches` confirmed
that these spans equal the scanner's for the statement that taught it.
"""

from __future__ import annotations

import re

from .template import Literals

#: characters that, right before an opening quote, make it a prefixed string (E'', U&'')
_PREFIX = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_&'")

#: plain string literals and unsigned decimal numbers, captured so ``split`` keeps them. A
#: number may not touch a letter, digit, '_' or '.' on either side; the check on the left is
#: made after its first character so the engine can skip ahead to candidates quickly.
_LITERAL = re.compile(
    r"('(?:[^']|'')*'"
    r"|(?:\d(?<![A-Za-z0-9_.]\d)\d*(?:\.\d*)?|\.(?<![A-Za-z0-9_.]\.)\d+)"
    r"(?:[eE][+-]?\d+)?(?![A-Za-z0-9_.]))"
)

#: a number the pattern above refused to take whole (glued to letters, '.', '_')
_DIGIT_LEFT = re.compile(r"[0-9]")

_INT4_MAX = 2147483647

#: joins the pieces of a skeleton; it cannot occur in a statement (the wire is C strings)
SEP = "\x00"


def split(sql: str) -> tuple[str, Literals] | None:
    """``(skeleton, literals)`` of a plain statement, or None when unsure."""
    if (not sql.isascii() or "$" in sql or "\\" in sql or '"' in sql or "--" in sql
            or "/*" in sql or SEP in sql):
        return None
    parts = _LITERAL.split(sql)  # text, literal, text, literal, ..., text
    texts = parts[0::2]
    skeleton = SEP.join(texts)
    if "'" in skeleton or _DIGIT_LEFT.search(skeleton) is not None and _digits_unsafe(texts):
        return None
    spans: list[tuple[int, int, str]] = []
    classes: list[str] = []
    pos = len(parts[0])
    for i in range(1, len(parts), 2):
        text = parts[i]
        stop = pos + len(text)
        if text[0] == "'":
            if pos and sql[pos - 1] in _PREFIX:
                return None
            cls = "SCONST"
        elif text.isdigit() and int(text) <= _INT4_MAX:
            cls = "ICONST"  # PostgreSQL's scanner: an integer that fits in int4
        else:
            cls = "FCONST"
        spans.append((pos, stop, cls))
        classes.append(cls)
        pos = stop + len(parts[i + 1])
    return skeleton, Literals(tuple(spans), tuple(classes))


def split_texts(sql: str) -> tuple[str, list[str], tuple[str, ...]] | None:
    """``(skeleton, literal texts, their classes)``: what :func:`split` finds, without the
    character offsets (for callers that only need the texts). Accepts and refuses exactly
    the statements :func:`split` does."""
    if (not sql.isascii() or "$" in sql or "\\" in sql or '"' in sql or "--" in sql
            or "/*" in sql or SEP in sql):
        return None
    parts = _LITERAL.split(sql)
    texts = parts[0::2]
    skeleton = SEP.join(texts)
    if "'" in skeleton or _DIGIT_LEFT.search(skeleton) is not None and _digits_unsafe(texts):
        return None
    lits = parts[1::2]
    classes: list[str] = []
    for i, text in enumerate(lits):
        if text[0] == "'":
            # the character before it: the end of the text before, else of the literal
            # before (nothing at the very start)
            before = texts[i][-1:] or (lits[i - 1][-1:] if i else "")
            if before and before in _PREFIX:
                return None
            classes.append("SCONST")
        elif text.isdigit() and int(text) <= _INT4_MAX:
            classes.append("ICONST")
        else:
            classes.append("FCONST")
    return skeleton, lits, tuple(classes)


def _digits_unsafe(pieces: list[str]) -> bool:
    """Digits left outside literals must sit inside identifiers (``t1``, ``col_2``)."""
    for piece in pieces:
        for m in _DIGIT_LEFT.finditer(piece):
            i = m.start()
            if i == 0 or not (piece[i - 1].isalnum() or piece[i - 1] == "_"):
                return True
    return False


def matches(fast: Literals, scanned: Literals | None) -> bool:
    """True when the fast spans are exactly the scanner's (same places, same classes)."""
    return scanned is not None and fast.spans == scanned.spans

"""Statement text without its values: what the audit log stores instead of SQL.

``normalize_sql`` runs PostgreSQL's own scanner (libpg_query, via pglast) over the text and
rebuilds it from tokens: every constant (strings in all their spellings — ``'…'``,
``E'…'``, ``U&'…'``, ``$tag$…$tag$``, bit and hex strings — and numbers) and every
parameter becomes ``?``, and comments are dropped (``/* ssn 123-45-6789 */`` is a literal
too, for our purpose). Whitespace is collapsed. libpg_query's own ``normalize`` keeps
comments, so it is not used.

The fingerprint is libpg_query's statement fingerprint (literal values, parameter numbers
and whitespace do not change it) when the text parses, and a hash of the normalized text
otherwise. Text the scanner rejects (an unterminated quote) keeps only its first keyword:
nothing after an unbalanced quote can be told apart from a value.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pglast import parser as _pg

PLACEHOLDER = "?"
_CONSTANTS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST", "PARAM"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_FIRST_WORD = re.compile(r"\s*([A-Za-z_]+)")
# No space before these, none after the opening ones: "f(?, ?)" rather than "f ( ? , ? )".
_NO_SPACE_BEFORE = frozenset({",", ")", ";", "[", "]", ".", "::", "("})
_NO_SPACE_AFTER = frozenset({"(", "[", ".", "::"})


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rebuild(sql: str, tokens: list[Any]) -> str:
    parts: list[str] = []
    prev, prev_name = "", ""
    for tok in tokens:
        if tok.name in _COMMENTS:
            continue
        text = PLACEHOLDER if tok.name in _CONSTANTS else sql[tok.start : tok.end + 1]
        glue = text in _NO_SPACE_BEFORE or prev in _NO_SPACE_AFTER
        if text == "(" and prev_name != "IDENT":
            glue = prev in _NO_SPACE_AFTER  # "in (", "values (": keep the space
        if parts and not glue:
            parts.append(" ")
        parts.append(text)
        prev, prev_name = text, tok.name
    return "".join(parts)


def normalize_sql(sql: str) -> tuple[str, str]:
    """``(normalized text, fingerprint)`` of ``sql``; never contains a literal value."""
    try:
        tokens = _pg.scan(sql)
    except _pg.ParseError:
        m = _FIRST_WORD.match(sql)
        normalized = f"{m.group(1).upper() if m else ''} … (unscannable)".strip()
        return normalized, _text_hash(normalized)
    normalized = _rebuild(sql, tokens)
    try:
        fingerprint = _pg.fingerprint(sql)
    except _pg.ParseError:
        fingerprint = _text_hash(normalized)
    return normalized, fingerprint

"""Literal-free statement text and fingerprints, for the audit log and cache keys.

Both come from PostgreSQL's scanner, token by token: comments and whitespace disappear,
keywords and unquoted identifiers are folded to lower case, and every literal (strings,
dollar-quoted bodies, numbers, bit strings) becomes ``?``. So the audit log never holds a
value a client typed, and statements that differ only in literals share a fingerprint.

Two statements with one fingerprint can still need different decisions when a literal is
what matters (``set_config('standard_conforming_strings', 'off', false)``); such decisions
say so (``Decision.cache_by_fingerprint`` is False) and must be cached by exact text only.
"""

from __future__ import annotations

import hashlib

from pglast import parser as pg_parser

LITERAL_TOKENS: frozenset[str] = frozenset(
    {"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"}
)

COMMENT_TOKENS: frozenset[str] = frozenset({"SQL_COMMENT", "C_COMMENT"})


def normalize(sql: str) -> str:
    """The statement as tokens, literals replaced by ``?``, comments removed."""
    try:
        toks = pg_parser.scan(sql)
    except Exception:
        return "<unscannable statement>"
    out: list[str] = []
    for t in toks:
        if t.name in COMMENT_TOKENS:
            continue
        if t.name in LITERAL_TOKENS:
            out.append("?")
            continue
        text = sql[t.start : t.end + 1]
        if t.name == "IDENT" and text.startswith('"') or t.name == "UIDENT":
            out.append(text)
        else:
            out.append(text.lower())
    return " ".join(out)


TEMPLATE_LITERALS: frozenset[str] = frozenset({"SCONST", "ICONST", "FCONST"})


def scan(sql: str) -> tuple[str, tuple[tuple[int, int, str], ...] | None]:
    """One pass of the scanner: ``(fingerprint, literal spans)``.

    The spans (start, stop, token class) are None when a literal is of a class that cannot
    be templated (bit strings, U& strings): see :mod:`policy.template`.
    """
    try:
        toks = pg_parser.scan(sql)
    except Exception:
        return hashlib.blake2b(b"<unscannable statement>", digest_size=16).hexdigest(), None
    out: list[str] = []
    spans: list[tuple[int, int, str]] | None = []
    for t in toks:
        name = t.name
        if name in COMMENT_TOKENS:
            continue
        if name in LITERAL_TOKENS:
            out.append("?")
            if spans is not None:
                if name in TEMPLATE_LITERALS:
                    spans.append((t.start, t.end + 1, name))
                else:
                    spans = None
            continue
        text = sql[t.start : t.end + 1]
        if name == "IDENT" and text.startswith('"') or name == "UIDENT":
            out.append(text)
        else:
            out.append(text.lower())
    fp = hashlib.blake2b(" ".join(out).encode("utf-8"), digest_size=16).hexdigest()
    return fp, (tuple(spans) if spans is not None else None)


def fingerprint(sql: str) -> str:
    """A stable, literal-free fingerprint (32 hex digits) of ``sql``."""
    return hashlib.blake2b(normalize(sql).encode("utf-8"), digest_size=16).hexdigest()

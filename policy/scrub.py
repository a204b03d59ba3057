"""Remove row values from the error and notice fields PostgreSQL sends back.

Substitution keeps masked values out of what a statement computes, but a few server
messages quote *stored rows* on their own: a constraint violation's DETAIL
("Failing row contains (...)", "Key (ssn)=(...) already exists", "... conflicts with
existing key ..."), a COPY FROM's CONTEXT line echoing its input, the internal query of a
PL/pgSQL error. For masked users the proxy passes every ErrorResponse/NoticeResponse field
map through :func:`scrub_error_fields`, which drops those fields and says so in the hint.

Fields are keyed by their protocol code (``'M'`` message, ``'D'`` detail, ``'H'`` hint,
``'W'`` context, ``'q'`` internal query, ...) as in the ErrorResponse message; long names
(``'detail'``, ``'context'``) are accepted too.
"""

from __future__ import annotations

import re

_ALIASES = {
    "detail": "D", "context": "W", "internal_query": "q", "hint": "H", "message": "M",
    "where": "W",
}

_ROW_DETAIL = re.compile(
    r"Failing row contains|Key \(|conflicts with existing key|Partition key of the failing row"
    r"|Array value|Token \"|contains \(|=\(",
    re.IGNORECASE,
)
_ROW_CONTEXT = re.compile(r'(COPY .*line \d+.*: ")|(, column \S+: ")|(PL/pgSQL)|(SQL statement ")|(SQL function ")')

SCRUBBED_HINT = "pgveil removed details that could contain row values."


def scrub_error_fields(fields: dict[str, str]) -> dict[str, str]:
    """A copy of ``fields`` without DETAIL/CONTEXT/internal query that may carry values."""
    out: dict[str, str] = {}
    removed = False
    for key, value in fields.items():
        code = _ALIASES.get(key.lower(), key) if len(key) > 1 else key
        if code == "D" and _ROW_DETAIL.search(value or ""):
            removed = True
            continue
        if code == "W" and _ROW_CONTEXT.search(value or ""):
            removed = True
            continue
        if code == "q":  # internal query text of a function: may embed values
            removed = True
            continue
        if code == "p":  # position inside the internal query
            continue
        out[key] = value
    if removed:
        hint_key = next((k for k in out if k == "H" or k.lower() == "hint"), "H")
        prior = out.get(hint_key)
        out[hint_key] = f"{prior} {SCRUBBED_HINT}" if prior else SCRUBBED_HINT
    return out

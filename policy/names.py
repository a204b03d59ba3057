"""PostgreSQL name rules: quoting, search_path, and relation lookup.

Identifiers in statements are never interpreted here from raw text: pglast (PostgreSQL's
own scanner) has already folded unquoted names to lower case, decoded ``U&"..."`` escapes
and truncated names to 63 bytes, exactly as the server does. This module only applies the
lookup rules on those names:

* ``search_path`` resolution, with PostgreSQL's implicit schemas: the session's temporary
  schema is searched first for relations unless ``pg_temp`` is listed explicitly, and
  ``pg_catalog`` is searched before the path unless it is listed explicitly; ``$user``
  stands for the session user; schemas that do not exist are skipped.
* quoting names back into SQL text (:func:`quote_ident`), the way ``quote_ident()`` does.
"""

from __future__ import annotations

import re

from pglast.keywords import (
    COL_NAME_KEYWORDS,
    RESERVED_KEYWORDS,
    TYPE_FUNC_NAME_KEYWORDS,
    UNRESERVED_KEYWORDS,
)

_SAFE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_NEEDS_QUOTES = frozenset(RESERVED_KEYWORDS) | frozenset(COL_NAME_KEYWORDS) | frozenset(
    TYPE_FUNC_NAME_KEYWORDS
)
_ALL_KEYWORDS = _NEEDS_QUOTES | frozenset(UNRESERVED_KEYWORDS)

NAMEDATALEN = 64
SYSTEM_SCHEMAS: frozenset[str] = frozenset({"pg_catalog", "information_schema"})


def quote_ident(name: str) -> str:
    """Quote ``name`` only when PostgreSQL needs it (like ``quote_ident()``)."""
    if _SAFE_IDENT.match(name) and name not in _NEEDS_QUOTES:
        return name
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def truncate_identifier(name: str) -> str:
    """Cut ``name`` to NAMEDATALEN-1 bytes on a character boundary, as the scanner does."""
    raw = name.encode("utf-8")
    if len(raw) < NAMEDATALEN:
        return name
    return raw[: NAMEDATALEN - 1].decode("utf-8", errors="ignore")


def is_temp_schema(schema: str) -> bool:
    return schema == "pg_temp" or schema.startswith("pg_temp_")


def parse_search_path(value: str) -> tuple[str, ...]:
    """Split a ``search_path`` setting (as SHOW/ParameterStatus report it) into names.

    Quoted elements keep their case and commas; unquoted ones are folded to lower case.
    ``$user`` is kept as is (see :func:`effective_path`).
    """
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t\r\n,":
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            j = i + 1
            buf: list[str] = []
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(value[j])
                j += 1
            out.append(truncate_identifier("".join(buf)))
            i = j + 1
        else:
            j = i
            while j < n and value[j] != ",":
                j += 1
            word = value[i:j].strip()
            if word:
                out.append(truncate_identifier(word if word == "$user" else word.lower()))
            i = j
    return tuple(out)


def effective_path(
    search_path: tuple[str, ...], user: str, *, for_relations: bool = True
) -> tuple[str, ...]:
    """The schemas PostgreSQL searches, in order, including the implicit ones."""
    path = [user if s == "$user" else s for s in search_path]
    lead: list[str] = []
    if for_relations and "pg_temp" not in path:
        lead.append("pg_temp")
    if "pg_catalog" not in path:
        lead.append("pg_catalog")
    out = lead + path
    if not for_relations:
        out = [s for s in out if s != "pg_temp"]
    return tuple(out)

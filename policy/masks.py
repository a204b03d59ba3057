"""SQL expressions that mask one column while keeping its name and type.

Each mask kind turns a column reference into an expression of the *same type* (``CAST(...
AS <column type>)``), so result shapes, prepared statements and binary formats do not
change when a mask is applied or lifted:

========= ==================================================================================
redact    a constant of the type: ``'REDACTED'`` for strings, ``0`` for numbers, else NULL
null      ``NULL`` of the type
partial   strings: the first ``keep_first`` and last ``keep_last`` characters, ``*`` between
          (all ``*`` when the value is too short to hide anything)
email     strings: first character, ``***``, then ``@domain`` (after the last ``@``)
hash      keyed, deterministic: equal inputs give equal outputs, so joins still work
year      dates/timestamps truncated to the year; ``month`` to the month
round     numbers rounded to ``digits`` decimal places (negative: tens, hundreds, ...)
strip     the column is left out of the masked relation altogether (:func:`mask_sql` → None)
========= ==================================================================================

A kind that does not fit the column's type falls back to ``redact``. Every function and
operator is schema-qualified (``pg_catalog.``, ``OPERATOR(pg_catalog.-)``) so a user's
``search_path`` cannot substitute their own.

The ``hash`` key never appears in SQL text: :data:`INSTALL_SQL` creates ``pgveil.mask_key``
(readable only by its owner) and ``SECURITY DEFINER`` functions ``pgveil.mask_hash(text)`` and
``pgveil.mask_hash_int(text)`` computing ``sha256(key || sha256(key || value))``. The proxy
runs it once as a superuser; masked users are never allowed to call these functions
directly (they are user functions, denied unless trusted), so they cannot hash guesses.
"""

from __future__ import annotations

from .catalog import Column
from .rules import MaskRule

INSTALL_SQL = r"""
CREATE SCHEMA IF NOT EXISTS pgveil;
REVOKE ALL ON SCHEMA pgveil FROM PUBLIC;
GRANT USAGE ON SCHEMA pgveil TO PUBLIC;
CREATE TABLE IF NOT EXISTS pgveil.mask_key (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  key bytea NOT NULL
);
REVOKE ALL ON pgveil.mask_key FROM PUBLIC;
INSERT INTO pgveil.mask_key (key)
  SELECT pg_catalog.sha256(pg_catalog.convert_to(
    pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text
    || pg_catalog.gen_random_uuid()::text || pg_catalog.clock_timestamp()::text, 'UTF8'))
  ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION pgveil.mask_hash(value text) RETURNS text
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $fn$
  SELECT pg_catalog.encode(pg_catalog.sha256(k.key || pg_catalog.sha256(
           k.key || pg_catalog.convert_to(value, 'UTF8'))), 'hex')
  FROM pgveil.mask_key k
$fn$;
CREATE OR REPLACE FUNCTION pgveil.mask_hash_int(value text) RETURNS bigint
  LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $fn$
  SELECT ('x' || pg_catalog."left"(pgveil.mask_hash(value), 15))::bit(60)::bigint
$fn$;
REVOKE ALL ON FUNCTION pgveil.mask_hash(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgveil.mask_hash_int(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgveil.mask_hash(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgveil.mask_hash_int(text) TO PUBLIC;
""".strip()

HASH_FUNCTIONS: frozenset[tuple[str, str]] = frozenset(
    {("pgveil", "mask_hash"), ("pgveil", "mask_hash_int")}
)

REDACTED_TEXT = "REDACTED"

_INT_MODULUS = {"smallint": 32767, "integer": 2147483647, "bigint": None}
_ROUNDABLE = ("smallint", "integer", "bigint", "real", "double precision", "money")


def _op(op: str) -> str:
    return f" OPERATOR(pg_catalog.{op}) "


def _is_builtin(col: Column) -> bool:
    # user-defined types are rendered schema-qualified and quoted by the catalog query;
    # built-ins are keywords (integer, character varying(n)) or pinned to pg_catalog.
    t = col.type_sql
    return t.startswith("pg_catalog.") or not ("." in t or '"' in t)


def _is_string(col: Column) -> bool:
    return col.category == "S" and _is_builtin(col)


def _cast(expr: str, col: Column) -> str:
    return f"CAST({expr} AS {col.type_sql})"


def redact_sql(col: Column) -> str:
    if _is_builtin(col) and col.category == "S":
        return _cast(f"'{REDACTED_TEXT}'", col)
    if _is_builtin(col) and col.category == "N" and _base(col) in _ROUNDABLE + ("numeric",):
        return _cast("0", col)
    return _cast("NULL", col)


def _base(col: Column) -> str:
    t = col.type_sql
    if t.startswith('pg_catalog."'):
        t = t[len('pg_catalog."'):].split('"', 1)[0]
    if t.startswith("numeric") or t.startswith("decimal"):
        return "numeric"
    return t


def mask_sql(rule: MaskRule, col: Column, ref: str) -> str | None:
    """The masked expression for column ``col`` referenced as ``ref``; None to strip it."""
    kind = rule.mask
    if kind == "strip":
        return None
    if kind == "null":
        return _cast("NULL", col)
    if kind == "partial" and _is_string(col):
        keep = rule.keep_first + rule.keep_last
        star_all = f"pg_catalog.repeat('*', pg_catalog.length({ref}))"
        body = (
            f"pg_catalog.concat(pg_catalog.\"left\"({ref}, {rule.keep_first}), "
            f"pg_catalog.repeat('*', pg_catalog.length({ref}){_op('-')}{keep}), "
            f"pg_catalog.\"right\"({ref}, {rule.keep_last}))"
        )
        return _cast(
            f"CASE WHEN {ref} IS NULL THEN NULL "
            f"WHEN pg_catalog.length({ref}){_op('<=')}{keep} THEN {star_all} "
            f"ELSE {body} END",
            col,
        )
    if kind == "email" and _is_string(col):
        # No '@', or '@' first: REDACTED; else the first character, ***, and the '@domain'
        # after the last '@'; NULL stays NULL. Written with few, cheap calls: the server
        # plans it once per cached statement but runs it for every row (two regular
        # expressions cost it ~15 µs a row; this costs about what the bare column does).
        # split_part with a negative field needs PostgreSQL 14.
        v = f"CAST({ref} AS pg_catalog.text)"
        return _cast(
            f"CASE WHEN pg_catalog.strpos({v}, '@'){_op('>')}1 "
            f"THEN pg_catalog.\"left\"({v}, 1){_op('||')}'***@'{_op('||')}"
            f"pg_catalog.split_part({v}, '@', -1) "
            f"WHEN {ref} IS NOT NULL THEN '{REDACTED_TEXT}' END",
            col,
        )
    if kind == "hash":
        as_text = f"CAST({ref} AS pg_catalog.text)"
        if _is_string(col):
            return _cast(f"pgveil.mask_hash({as_text})", col)
        if col.type_sql in _INT_MODULUS:
            modulus = _INT_MODULUS[col.type_sql]
            expr = f"pgveil.mask_hash_int({as_text})"
            if modulus is not None:
                expr = f"({expr}{_op('%')}{modulus})"
            return _cast(expr, col)
    if kind in ("year", "month") and col.category == "D" and _is_builtin(col):
        t = col.type_sql
        if t == 'pg_catalog."date"':
            return _cast(
                f"pg_catalog.date_trunc('{kind}', CAST({ref} AS timestamp without time zone))", col
            )
        if t.startswith("timestamp") or t == 'pg_catalog."interval"' or t.startswith("interval"):
            return _cast(f"pg_catalog.date_trunc('{kind}', {ref})", col)
    if kind == "round" and col.category == "N" and _is_builtin(col):
        if _base(col) in _ROUNDABLE + ("numeric",):
            return _cast(
                f"pg_catalog.round(CAST({ref} AS pg_catalog.\"numeric\"), {int(rule.digits)})", col
            )
    return redact_sql(col)

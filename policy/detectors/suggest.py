"""The mask that fits each kind of finding, within pgveil's mask vocabulary.

The aim is the least revealing mask that keeps the column useful: emails keep their
domain (``email``), cards and SSNs their last four digits (``partial``), dates of birth
their year (``year``), IPs become a keyed ``hash`` (still joinable and countable), secrets,
password hashes and free text are ``redact``-ed. A mask that would not fit the column's type
(``partial`` on a ``bigint``) is replaced by one that does, because the proxy would fall back
to ``redact`` anyway and the proposal should say what will really happen.
"""

from __future__ import annotations

from typing import Any

from .base import TypeClass, type_class
from .column import ColumnFinding

_TEXT_MASKS: dict[str, dict[str, Any]] = {
    "email": {"mask": "email"},
    "phone": {"mask": "partial", "keep_last": 2},
    "card": {"mask": "partial", "keep_last": 4},
    "ssn": {"mask": "partial", "keep_last": 4},
    "iban": {"mask": "partial", "keep_last": 4},
    "ip_address": {"mask": "hash"},
    "date_of_birth": {"mask": "redact"},
    "person_name": {"mask": "partial", "keep_first": 1},
    "secret": {"mask": "redact"},
    "password_hash": {"mask": "redact"},
    "free_text": {"mask": "redact"},
}


def suggest_mask(finding: ColumnFinding) -> dict[str, Any]:
    """``{"mask": …, [keep_first/keep_last]}`` for a finding, fitted to the column type."""
    tclass = type_class(finding.type_name)
    if finding.detector == "date_of_birth" and tclass in (TypeClass.DATE, TypeClass.TIMESTAMP):
        return {"mask": "year"}
    if tclass == TypeClass.INET:
        return {"mask": "null"}
    if tclass == TypeClass.INTEGER and finding.detector in ("phone", "ssn", "card"):
        return {"mask": "hash"}
    if tclass not in (TypeClass.TEXT,):
        return {"mask": "redact"}
    return dict(_TEXT_MASKS.get(finding.detector, {"mask": "redact"}))

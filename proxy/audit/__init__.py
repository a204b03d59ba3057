"""pgveil's audit trail: one signed, hash-chained JSON line per statement and event.

* :mod:`.settings` — the ``[audit]`` config table.
* :mod:`.normalize` — SQL text and fingerprint without literal values.
* :mod:`.records` — the line format: chaining (``seq``, ``prev``) and sealing (HMAC).
* :mod:`.keys` — the HMAC key file (0600, generated on first start).
* :mod:`.writer` — :class:`AuditLog`, the group-committing writer the session calls.
* :mod:`.sinks` — file (rotated, with a signed head), stdout, PostgreSQL table.
* :mod:`.verify` — ``pgveil audit verify``: the first bad record, with file and line.
* :mod:`.reader` — ``tail`` and ``search`` over the rotated files.
* :mod:`.cli` — ``register(subparsers)`` adds ``pgveil audit …``.
"""

from __future__ import annotations

from .errors import AUDIT_UNAVAILABLE, AuditUnavailable, ErrorText
from .normalize import normalize_sql
from .records import StatementIntent, StatementResult
from .settings import AuditConfigError, AuditSettings, audit_settings_from_dict
from .writer import AuditLog

__all__ = [
    "AUDIT_UNAVAILABLE",
    "AuditConfigError",
    "AuditLog",
    "AuditSettings",
    "AuditUnavailable",
    "ErrorText",
    "StatementIntent",
    "StatementResult",
    "audit_settings_from_dict",
    "normalize_sql",
]

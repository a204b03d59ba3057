"""What the proxy tells a client when the audit log cannot be written.

With ``on_failure = "fail_closed"`` a statement that cannot be audited is not run. The
session turns :class:`AuditUnavailable` into an ``ErrorResponse`` built from
:data:`AUDIT_UNAVAILABLE` (SQLSTATE 58030 ``io_error``: the failure is outside the database).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorText:
    """An ``ErrorResponse``'s SQLSTATE, message and hint, in one place."""

    sqlstate: str
    message: str
    hint: str


AUDIT_UNAVAILABLE = ErrorText(
    sqlstate="58030",
    message="pgveil: the audit log cannot be written, so statements are refused",
    hint="Ask the operator to check the audit sink (disk space, permissions, database). "
    "Statements run again as soon as it recovers.",
)


class AuditUnavailable(RuntimeError):
    """The audit sink is failing (or not open) and the policy is to fail closed."""

    error = AUDIT_UNAVAILABLE

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(f"audit log unavailable: {reason}" if reason else "audit log unavailable")

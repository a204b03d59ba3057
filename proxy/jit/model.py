"""Requests and grants as records: what the store holds and the APIs return.

A :class:`Request` is how a grant is born; a :class:`GrantRecord` is the grant itself, with
its history (who asked, who approved, uses, revocation). ``GrantRecord.policy_grant()`` is
the small immutable :class:`policy.grants.Grant` the query path checks.

Action grants are bound to one statement: their policy ``action`` is ``"<action>:<fingerprint>"``
(see :func:`action_key`), so the proxy asks ``allows_action(user, action_key(rule, fp), now)``.

Times are epoch seconds (float) internally; ``to_dict()`` gives each as ISO-8601 UTC
(``created_at``) plus epoch seconds (``created_at_epoch``). Ids are ``r_``/``g_`` plus ten
random base32 characters (50 bits): short, unguessable, URL-safe.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from policy.grants import Grant

PENDING, APPROVED, DENIED, CANCELLED, EXPIRED = "pending", "approved", "denied", "cancelled", "expired"
REQUEST_STATES = (PENDING, APPROVED, DENIED, CANCELLED, EXPIRED)


def new_id(prefix: str) -> str:
    return prefix + base64.b32encode(secrets.token_bytes(10)).decode("ascii")[:10].lower()


def action_key(action: str, fingerprint: str | None) -> str:
    """The ``Grant.action`` the query path looks up for an action bound to a fingerprint."""
    return f"{action}:{fingerprint}" if fingerprint else action


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_TIME_FIELDS = ("created_at", "decided_at", "expires_at", "revoked_at", "first_used_at", "last_used_at")


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name.startswith("_") or f.name == "version":
            continue
        v = getattr(obj, f.name)
        if f.name in _TIME_FIELDS:
            out[f.name] = iso(v)
            out[f.name + "_epoch"] = v
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


@dataclass
class Request:
    id: str
    user: str
    state: str = PENDING
    table: str | None = None
    columns: tuple[str, ...] = ()
    action: str | None = None
    fingerprint: str | None = None
    statement: str | None = None          # normalized text, literals removed
    duration_s: int = 0
    reason: str = ""
    requested_by: str = ""
    created_at: float = 0.0
    decided_at: float | None = None
    decided_by: str | None = None
    deny_reason: str | None = None
    approvals: tuple[str, ...] = ()
    grant_id: str | None = None
    max_uses: int | None = None           # what the grant will get (actions: 1 by default)
    version: int = 0                      # bumped by every write: compare-and-set in the store

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    @property
    def scope(self) -> str:
        if self.action:
            return f"action {self.action}"
        return f"{self.table} ({', '.join(self.columns)})"

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def copy(self, **changes: Any) -> "Request":
        return dataclasses.replace(self, **changes)


@dataclass
class GrantRecord:
    id: str
    subject: str
    table: str | None = None
    columns: tuple[str, ...] = ()
    action: str | None = None
    fingerprint: str | None = None
    reason: str = ""
    requested_by: str = ""
    approved_by: str = ""                 # comma-separated when several approvers; "auto:N" for rules
    created_at: float = 0.0
    expires_at: float = 0.0
    max_uses: int | None = None
    uses: int = 0
    revoked_at: float | None = None
    revoked_by: str | None = None
    request_id: str | None = None
    first_used_at: float | None = None
    last_used_at: float | None = None
    ended: str | None = None              # set once grant.expired was emitted: "expired" | "used_up"
    version: int = 0

    @property
    def user(self) -> str:
        return self.subject

    def live(self, now: float) -> bool:
        return (
            self.revoked_at is None
            and now < self.expires_at
            and (self.max_uses is None or self.uses < self.max_uses)
        )

    @property
    def scope(self) -> str:
        if self.action:
            return f"action {self.action}"
        return f"{self.table} ({', '.join(self.columns)})"

    def policy_grant(self) -> Grant:
        return Grant(
            id=self.id,
            user=self.subject,
            table=self.table or "",
            columns=tuple(self.columns),
            action=action_key(self.action, self.fingerprint) if self.action else None,
            expires_at=self.expires_at,
            max_uses=self.max_uses,
            uses=self.uses,
        )

    def to_dict(self) -> dict[str, Any]:
        d = _to_dict(self)
        d["user"] = self.subject
        return d

    def copy(self, **changes: Any) -> "GrantRecord":
        return dataclasses.replace(self, **changes)


REQUEST_COLUMNS = tuple(f.name for f in dataclasses.fields(Request))
GRANT_COLUMNS = tuple(f.name for f in dataclasses.fields(GrantRecord))

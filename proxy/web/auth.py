"""Who is calling the admin listener: bearer tokens from config, and browser sessions.

Tokens are configured by their SHA-256, never in clear::

    [[admin.tokens]]
    name = "alice"                 # becomes requested_by / approved_by
    token_sha256 = "<64 hex digits>"
    role = "approver"              # requester | approver | admin

A presented token is hashed and compared against *every* configured hash with
``hmac.compare_digest`` (no early exit), so neither timing nor the order of the list tells
an attacker anything. The page trades a token for a random session id kept in an HttpOnly,
SameSite=Strict cookie; the session lives only in this process's memory (a restart logs
everyone out) and carries its own CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

#: Roles in increasing power. ``requester`` may only open (and cancel its own) requests;
#: ``approver`` may also list, approve and deny; ``admin`` may also grant and revoke directly.
ROLES = ("requester", "approver", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class TokenConfigError(ValueError):
    """A bad ``[[admin.tokens]]`` entry; ``key`` is the dotted config key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class TokenSpec:
    name: str
    token_sha256: str  # lower-case hex
    role: str = "approver"

    def allows(self, role: str) -> bool:
        """True when this token's role is ``role`` or more powerful."""
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True)
class Identity:
    """The authenticated caller: a token's name and role."""

    name: str
    role: str

    def allows(self, role: str) -> bool:
        return _RANK.get(self.role, -1) >= _RANK[role]


def hash_token(token: str) -> str:
    """The value to put in ``token_sha256`` for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_from_config(raw: Any, *, prefix: str = "admin.tokens") -> list[TokenSpec]:
    """Validate the ``[[admin.tokens]]`` array of tables. Errors name the dotted key."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TokenConfigError(prefix, "expected an array of tables ([[admin.tokens]])")
    specs: list[TokenSpec] = []
    names: set[str] = set()
    hashes: set[str] = set()
    for i, entry in enumerate(raw):
        at = f"{prefix}[{i}]"
        if not isinstance(entry, dict):
            raise TokenConfigError(at, "expected a table with name, token_sha256 and role")
        unknown = sorted(set(entry) - {"name", "token_sha256", "role"})
        if unknown:
            raise TokenConfigError(f"{at}.{unknown[0]}", "unknown key")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise TokenConfigError(f"{at}.name", "expected a non-empty string")
        if name in names:
            raise TokenConfigError(f"{at}.name", f"duplicate token name {name!r}")
        digest = entry.get("token_sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.strip().lower()):
            raise TokenConfigError(
                f"{at}.token_sha256",
                "expected the 64 hex digits of the token's SHA-256 "
                "(e.g. `printf %s TOKEN | sha256sum`)")
        digest = digest.strip().lower()
        if digest in hashes:
            raise TokenConfigError(f"{at}.token_sha256", "the same token is configured twice")
        role = entry.get("role", "approver")
        if role not in ROLES:
            raise TokenConfigError(f"{at}.role",
                                   f"expected one of {', '.join(ROLES)}, got {role!r}")
        names.add(name)
        hashes.add(digest)
        specs.append(TokenSpec(name=name, token_sha256=digest, role=role))
    return specs


class TokenAuthority:
    """Maps a presented token to its :class:`Identity` in constant time per configured token."""

    def __init__(self, tokens: Iterable[TokenSpec]) -> None:
        self._tokens = [(bytes.fromhex(t.token_sha256), t) for t in tokens]

    def identify(self, token: str | None) -> Identity | None:
        if not token:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: TokenSpec | None = None
        for digest, spec in self._tokens:
            if hmac.compare_digest(presented, digest) and found is None:
                found = spec
        return Identity(found.name, found.role) if found else None


@dataclass
class Session:
    id: str
    identity: Identity
    csrf: str
    created: float
    last_seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)


class SessionStore:
    """Browser sessions, in memory: random ids, idle and absolute expiry."""

    def __init__(self, *, idle_seconds: float = 3600.0, max_seconds: float = 12 * 3600.0,
                 clock: Callable[[], float] = time.monotonic, limit: int = 10_000) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self._clock = clock
        self._limit = limit
        self._sessions: dict[str, Session] = {}

    def create(self, identity: Identity) -> Session:
        self._sweep()
        if len(self._sessions) >= self._limit:  # drop the oldest rather than grow unbounded
            oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
            self._sessions.pop(oldest.id, None)
        now = self._clock()
        s = Session(id=secrets.token_urlsafe(32), identity=identity,
                    csrf=secrets.token_urlsafe(32), created=now, last_seen=now)
        self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        s = self._sessions.get(session_id)
        if s is None:
            return None
        now = self._clock()
        if now - s.last_seen > self.idle_seconds or now - s.created > self.max_seconds:
            self._sessions.pop(session_id, None)
            return None
        s.last_seen = now
        return s

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _sweep(self) -> None:
        now = self._clock()
        for sid, s in list(self._sessions.items()):
            if now - s.last_seen > self.idle_seconds or now - s.created > self.max_seconds:
                del self._sessions[sid]

"""Live grants: time-boxed exceptions to masking, checked per statement.

A :class:`Grant` lifts masks for one subject (a database user) on named columns of one
table (``columns=("*",)`` for all of them), or allows one named action. It is live while
``now < expires_at`` and, when ``max_uses`` is set, while ``uses < max_uses``. The clock is
never read here: the proxy passes ``now`` (seconds since the epoch) and counts uses of the
grant ids a decision reports in ``Decision.grants_used``.

Table names in grants are qualified (``schema.table``) exactly as in the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    user: str
    table: str = ""
    columns: tuple[str, ...] = ()
    action: str | None = None
    expires_at: float = 0.0
    max_uses: int | None = None
    uses: int = 0

    def live(self, now: float) -> bool:
        if now >= self.expires_at:
            return False
        return self.max_uses is None or self.uses < self.max_uses

    def covers(self, user: str, table: str, column: str, now: float) -> bool:
        return (
            self.action is None
            and self.user == user
            and self.table == table
            and ("*" in self.columns or column in self.columns)
            and self.live(now)
        )


class GrantSet:
    """The grants the proxy currently holds in memory, indexed by (user, table)."""

    __slots__ = ("_by_key", "_actions", "_by_id")

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._by_key: dict[tuple[str, str], list[Grant]] = {}
        self._actions: dict[tuple[str, str], list[Grant]] = {}
        self._by_id: dict[str, Grant] = {}
        for g in grants:
            self._by_id[g.id] = g
            if g.action is not None:
                self._actions.setdefault((g.user, g.action), []).append(g)
            else:
                self._by_key.setdefault((g.user, g.table), []).append(g)

    def __bool__(self) -> bool:
        return bool(self._by_key or self._actions)

    def covers(self, user: str, table: str, column: str, now: float) -> Grant | None:
        """The live grant lifting the mask of ``table.column`` for ``user``, if any."""
        for g in self._by_key.get((user, table), ()):
            if g.covers(user, table, column, now):
                return g
        return None

    def allows_action(self, user: str, action: str, now: float) -> Grant | None:
        for g in self._actions.get((user, action), ()):
            if g.live(now):
                return g
        return None

    def get(self, gid: str) -> Grant | None:
        return self._by_id.get(gid)

    def all_live(self, ids: Iterable[str], now: float) -> bool:
        """Whether every grant in ``ids`` is still held and live."""
        for gid in ids:
            g = self._by_id.get(gid)
            if g is None or not g.live(now):
                return False
        return True

    def for_user(self, user: str) -> bool:
        """Whether ``user`` holds any grant (columns or actions): decisions then depend on it."""
        return any(k[0] == user for k in self._by_key) or any(
            k[0] == user for k in self._actions)


EMPTY_GRANTS = GrantSet()

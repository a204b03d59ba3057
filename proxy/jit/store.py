"""Where requests and grants live: the store interface and the embedded SQLite store.

The service keeps everything it needs in memory and writes through a :class:`Store`. Writes
are small and transactional; a state transition (approve, deny, cancel, expire) is a
compare-and-set on the row's ``version``, so two instances can never both decide one request
(the loser gets :class:`Conflict` and re-reads). Uses are counted with an atomic increment
that returns the old count, so exactly one instance sees the *first* use. Ending a grant
(``ended``) is claimed once, so ``grant.expired`` is emitted once across instances.

Stores tell the service about changes made elsewhere through two callbacks:
``on_remote(kind, id)`` (a request or grant changed: re-read it) and ``on_reload()`` (reload
everything: after a reconnect, or when another process wrote to the SQLite file).

SQLite runs on one dedicated thread (stdlib ``sqlite3`` is blocking); the event loop only
awaits futures. Several processes on one file (``--workers``) notice each other's commits by
polling ``PRAGMA data_version`` twice a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterable

from .model import GrantRecord, Request

log = logging.getLogger("pgveil.jit.store")

HISTORY_SECONDS = 7 * 86400   # decided requests and ended grants kept in memory this long

RemoteCallback = Callable[[str, str], Awaitable[None]]
ReloadCallback = Callable[[], Awaitable[None]]
HealthCallback = Callable[[bool], None]


class StoreUnavailable(Exception):
    """The state store cannot be reached or written."""


class Conflict(Exception):
    """A compare-and-set lost: someone else changed the row first."""


# -- rows ------------------------------------------------------------------------------------

# (attribute, column) — "user" and "table" are reserved words in SQL.
REQUEST_MAP: tuple[tuple[str, str], ...] = (
    ("id", "id"), ("state", "state"), ("user", "user_name"), ("table", "table_name"),
    ("columns", "columns_json"), ("action", "action"), ("fingerprint", "fingerprint"),
    ("statement", "statement"), ("duration_s", "duration_s"), ("reason", "reason"),
    ("requested_by", "requested_by"), ("created_at", "created_at"), ("decided_at", "decided_at"),
    ("decided_by", "decided_by"), ("deny_reason", "deny_reason"), ("approvals", "approvals_json"),
    ("grant_id", "grant_id"), ("max_uses", "max_uses"), ("version", "version"),
)
GRANT_MAP: tuple[tuple[str, str], ...] = (
    ("id", "id"), ("subject", "subject"), ("table", "table_name"), ("columns", "columns_json"),
    ("action", "action"), ("fingerprint", "fingerprint"), ("reason", "reason"),
    ("requested_by", "requested_by"), ("approved_by", "approved_by"), ("created_at", "created_at"),
    ("expires_at", "expires_at"), ("max_uses", "max_uses"), ("uses", "uses"),
    ("revoked_at", "revoked_at"), ("revoked_by", "revoked_by"), ("request_id", "request_id"),
    ("first_used_at", "first_used_at"), ("last_used_at", "last_used_at"), ("ended", "ended"),
    ("version", "version"),
)
REQUEST_COLS = ", ".join(c for _, c in REQUEST_MAP)
GRANT_COLS = ", ".join(c for _, c in GRANT_MAP)
_JSON_ATTRS = {"columns", "approvals"}


def to_row(obj: Request | GrantRecord, mapping: tuple[tuple[str, str], ...]) -> list[Any]:
    out = []
    for attr, _ in mapping:
        v = getattr(obj, attr)
        out.append(json.dumps(list(v)) if attr in _JSON_ATTRS else v)
    return out


def request_from_row(row: Iterable[Any]) -> Request:
    kw = {}
    for (attr, _), v in zip(REQUEST_MAP, row):
        kw[attr] = tuple(json.loads(v or "[]")) if attr in _JSON_ATTRS else v
    return Request(**kw)


def grant_from_row(row: Iterable[Any]) -> GrantRecord:
    kw = {}
    for (attr, _), v in zip(GRANT_MAP, row):
        kw[attr] = tuple(json.loads(v or "[]")) if attr in _JSON_ATTRS else v
    return GrantRecord(**kw)


def table_ddl(prefix: str, real: str, text: str) -> list[str]:
    """CREATE TABLE statements, shared by both stores (``real``/``text``: type names)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {prefix}requests (
            id text PRIMARY KEY,
            state text NOT NULL,
            user_name text NOT NULL,
            table_name text,
            columns_json text NOT NULL DEFAULT '[]',
            action text,
            fingerprint text,
            statement text,
            duration_s integer NOT NULL,
            reason text NOT NULL DEFAULT '',
            requested_by text NOT NULL DEFAULT '',
            created_at {real} NOT NULL,
            decided_at {real},
            decided_by text,
            deny_reason text,
            approvals_json text NOT NULL DEFAULT '[]',
            grant_id text,
            max_uses integer,
            version integer NOT NULL DEFAULT 1
        )""",
        f"CREATE INDEX IF NOT EXISTS requests_state_idx ON {prefix}requests (state, created_at)",
        f"""CREATE TABLE IF NOT EXISTS {prefix}grants (
            id text PRIMARY KEY,
            subject text NOT NULL,
            table_name text,
            columns_json text NOT NULL DEFAULT '[]',
            action text,
            fingerprint text,
            reason text NOT NULL DEFAULT '',
            requested_by text NOT NULL DEFAULT '',
            approved_by text NOT NULL DEFAULT '',
            created_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            max_uses integer,
            uses integer NOT NULL DEFAULT 0,
            revoked_at {real},
            revoked_by text,
            request_id text,
            first_used_at {real},
            last_used_at {real},
            ended text,
            version integer NOT NULL DEFAULT 1
        )""",
        f"CREATE INDEX IF NOT EXISTS grants_expires_idx ON {prefix}grants (expires_at)",
    ]


class Store:
    """What the service needs from a state store (all methods may raise StoreUnavailable)."""

    kind = "abstract"
    on_remote: RemoteCallback | None = None
    on_reload: ReloadCallback | None = None
    on_health: HealthCallback | None = None

    @property
    def healthy(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def load_all(self, since: float) -> tuple[list[Request], list[GrantRecord]]: ...
    async def get_request(self, request_id: str) -> Request | None: ...
    async def get_grant(self, grant_id: str) -> GrantRecord | None: ...
    async def create_request(self, req: Request, grant: GrantRecord | None = None) -> None:
        """Insert ``req`` (and ``grant``, for an auto-approval) in one transaction."""

    async def update_request(
        self, req: Request, expect_version: int, grant: GrantRecord | None = None
    ) -> None:
        """Write ``req`` if the stored version is ``expect_version`` (else Conflict); insert
        ``grant`` in the same transaction."""

    async def create_grant(self, grant: GrantRecord) -> None: ...
    async def revoke_grant(self, grant_id: str, at: float, by: str) -> bool: ...
    async def add_uses(self, grant_id: str, n: int, at: float) -> int:
        """Add ``n`` uses; returns the count before (``0`` → this was the first use)."""
        raise NotImplementedError

    async def claim_end(self, grant_id: str, ended: str) -> bool:
        """Mark the grant ended; True for the one caller that did it first."""
        raise NotImplementedError


def open_store(settings: Any, origin: str) -> Store:
    if settings.kind == "postgresql":
        from .store_pg import PostgresStore

        return PostgresStore(settings, origin)
    return SqliteStore(settings.path)


# -- SQLite ------------------------------------------------------------------------------------


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str, poll_interval: float = 0.5) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgveil-jit-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._healthy = False
        self._data_version: int | None = None
        self._poller: asyncio.Task | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _set_health(self, ok: bool) -> None:
        if ok != self._healthy:
            self._healthy = ok
            if self.on_health:
                self.on_health(ok)

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def call() -> Any:
            if self._conn is None:
                raise StoreUnavailable("the state store is closed")
            return fn(self._conn)

        try:
            result = await asyncio.get_running_loop().run_in_executor(self._ex, call)
        except sqlite3.Error as exc:
            self._set_health(False)
            raise StoreUnavailable(f"state store {self.path}: {exc}") from exc
        self._set_health(True)
        return result

    async def open(self) -> None:
        def do_open() -> int:
            if self.path != ":memory:":
                parent = os.path.dirname(self.path)
                if parent:
                    os.makedirs(parent, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
            try:
                if self.path != ":memory:":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in table_ddl("", "real", "text"):
                        conn.execute(stmt)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return conn.execute("PRAGMA data_version").fetchone()[0]

        def open_retrying() -> int:
            # Several --workers open one new file at once: switching it to WAL takes an
            # exclusive lock that SQLite's busy timeout does not wait for. Retry briefly.
            for attempt in range(50):
                try:
                    return do_open()
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 49:
                        raise
                    time.sleep(0.05 + 0.01 * attempt)
            raise AssertionError("unreachable")

        try:
            self._data_version = await asyncio.get_running_loop().run_in_executor(
                self._ex, open_retrying)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open state store {self.path}: {exc}") from exc
        self._set_health(True)
        if self.path != ":memory:":
            self._poller = asyncio.create_task(self._poll(), name="pgveil-jit-sqlite-poll")

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None

        def do_close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._ex, do_close)
        self._ex.shutdown(wait=False)

    async def _poll(self) -> None:
        """Another process committed to the file → reload (``--workers`` on one SQLite file)."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                v = await self._run(lambda c: c.execute("PRAGMA data_version").fetchone()[0])
            except StoreUnavailable:
                continue
            if self._data_version is not None and v != self._data_version and self.on_reload:
                self._data_version = v
                try:
                    await self.on_reload()
                except Exception:  # pragma: no cover - logged, the poller keeps going
                    log.exception("reloading JIT state failed")
            self._data_version = v

    def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Callable[[sqlite3.Connection], Any]:
        def run(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            # Our own commit does not change data_version for this connection.
            return result

        return run

    async def load_all(self, since: float) -> tuple[list[Request], list[GrantRecord]]:
        def do(conn: sqlite3.Connection) -> tuple[list[Request], list[GrantRecord]]:
            reqs = conn.execute(
                f"SELECT {REQUEST_COLS} FROM requests WHERE state = 'pending' OR created_at >= ? "
                f"OR decided_at >= ? ORDER BY created_at", (since, since)
            ).fetchall()
            grants = conn.execute(
                f"SELECT {GRANT_COLS} FROM grants WHERE ended IS NULL OR expires_at >= ? "
                f"OR created_at >= ? ORDER BY created_at", (since, since)
            ).fetchall()
            return [request_from_row(r) for r in reqs], [grant_from_row(g) for g in grants]

        return await self._run(do)

    async def get_request(self, request_id: str) -> Request | None:
        row = await self._run(lambda c: c.execute(
            f"SELECT {REQUEST_COLS} FROM requests WHERE id = ?", (request_id,)).fetchone())
        return request_from_row(row) if row else None

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        row = await self._run(lambda c: c.execute(
            f"SELECT {GRANT_COLS} FROM grants WHERE id = ?", (grant_id,)).fetchone())
        return grant_from_row(row) if row else None

    @staticmethod
    def _insert(conn: sqlite3.Connection, table: str, cols: str, row: list[Any]) -> None:
        marks = ", ".join("?" for _ in row)
        try:
            conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", row)
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc

    async def create_request(self, req: Request, grant: GrantRecord | None = None) -> None:
        def do(conn: sqlite3.Connection) -> None:
            self._insert(conn, "requests", REQUEST_COLS, to_row(req, REQUEST_MAP))
            if grant is not None:
                self._insert(conn, "grants", GRANT_COLS, to_row(grant, GRANT_MAP))

        await self._run(self._tx(do))

    async def update_request(self, req: Request, expect_version: int, grant: GrantRecord | None = None) -> None:
        sets = ", ".join(f"{col} = ?" for attr, col in REQUEST_MAP if attr != "id")
        vals = [v for (attr, _), v in zip(REQUEST_MAP, to_row(req, REQUEST_MAP)) if attr != "id"]

        def do(conn: sqlite3.Connection) -> None:
            cur = conn.execute(f"UPDATE requests SET {sets} WHERE id = ? AND version = ?",
                               [*vals, req.id, expect_version])
            if cur.rowcount != 1:
                raise Conflict(f"request {req.id} changed")
            if grant is not None:
                self._insert(conn, "grants", GRANT_COLS, to_row(grant, GRANT_MAP))

        await self._run(self._tx(do))

    async def create_grant(self, grant: GrantRecord) -> None:
        await self._run(self._tx(lambda c: self._insert(c, "grants", GRANT_COLS, to_row(grant, GRANT_MAP))))

    async def revoke_grant(self, grant_id: str, at: float, by: str) -> bool:
        return await self._run(self._tx(lambda c: c.execute(
            "UPDATE grants SET revoked_at = ?, revoked_by = ?, ended = COALESCE(ended, 'revoked'), "
            "version = version + 1 "
            "WHERE id = ? AND revoked_at IS NULL", (at, by, grant_id)).rowcount == 1))

    async def add_uses(self, grant_id: str, n: int, at: float) -> int:
        def do(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT uses FROM grants WHERE id = ?", (grant_id,)).fetchone()
            if row is None:
                return -1
            conn.execute(
                "UPDATE grants SET uses = uses + ?, first_used_at = COALESCE(first_used_at, ?), "
                "last_used_at = ? WHERE id = ?", (n, at, at, grant_id))
            return int(row[0])

        return await self._run(self._tx(do))

    async def claim_end(self, grant_id: str, ended: str) -> bool:
        return await self._run(self._tx(lambda c: c.execute(
            "UPDATE grants SET ended = ? WHERE id = ? AND ended IS NULL", (ended, grant_id)).rowcount == 1))



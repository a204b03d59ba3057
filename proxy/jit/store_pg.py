"""The shared PostgreSQL store: several pgveil instances, one set of grants.

Tables live in their own schema (``pgveil`` by default) and are created if missing, under an
advisory lock so instances starting together do not race. Every write transaction also runs
``pg_notify(channel, '<origin> <kind> <id>')``; the notification is delivered at commit, so
a listener never sees a change before it is readable.

Each instance holds two connections:

- a *writer*, used under a lock for reads and writes (re-opened when broken);
- a *listener*: ``LISTEN <channel>``, then waits for notifications with a 5 s timeout and a
  ``SELECT 1`` heartbeat between waits (a dead server is noticed within seconds even without
  traffic). On a notification from another origin it calls ``on_remote(kind, id)``; the
  service re-reads that row. When the listener loses its connection the store turns
  unhealthy (writes are refused at once: fail closed) and reconnects with exponential
  backoff (0.1 s … 5 s). After every (re)connect it calls ``on_reload()`` — changes missed
  while disconnected are picked up by reloading everything — and only then turns healthy.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Any, Awaitable, Callable

import psycopg
from psycopg import sql

from .model import GrantRecord, Request
from .store import (
    GRANT_COLS, GRANT_MAP, REQUEST_COLS, REQUEST_MAP, Conflict, Store, StoreUnavailable,
    grant_from_row, request_from_row, table_ddl, to_row,
)

log = logging.getLogger("pgveil.jit.store")

HEARTBEAT_SECONDS = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}


class PostgresStore(Store):
    kind = "postgresql"

    def __init__(self, settings: Any, origin: str) -> None:
        self.settings = settings
        self.origin = origin
        self.schema = settings.schema
        self.channel = settings.channel
        self.op_timeout = max(settings.connect_timeout, 1.0) + 2.0
        self._writer: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._listener_task: asyncio.Task | None = None
        self._healthy = False
        self._closed = False
        self._first_attempt: asyncio.Future[None] | None = None
        self._schema_ready = False

    # -- health ------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    def _set_health(self, ok: bool) -> None:
        if ok != self._healthy:
            self._healthy = ok
            (log.info if ok else log.warning)(
                "JIT state store %s", "reachable" if ok else "unreachable: failing closed"
            )
            if self.on_health:
                self.on_health(ok)

    # -- connections -------------------------------------------------------------------------
    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self.settings.dsn,
            autocommit=True,
            connect_timeout=max(1, int(round(self.settings.connect_timeout))),
            application_name=f"pgveil-jit {self.origin}"[:63],
            **KEEPALIVES,
        )

    async def _drop_writer(self) -> None:
        async with self._lock:
            w, self._writer = self._writer, None
        if w is not None:
            try:
                await w.close()
            except Exception:
                pass

    async def _read(self, fn: Callable[[psycopg.AsyncConnection], Awaitable[Any]]) -> Any:
        """A read: retried once on a fresh connection (the old one may predate an outage)."""
        try:
            return await self._with_writer(fn, require_healthy=False)
        except StoreUnavailable:
            return await self._with_writer(fn, require_healthy=False)

    async def _with_writer(self, fn: Callable[[psycopg.AsyncConnection], Awaitable[Any]],
                           *, require_healthy: bool = True) -> Any:
        if self._closed:
            raise StoreUnavailable("the state store is closed")
        if require_healthy and not self._healthy:
            raise StoreUnavailable("the shared state store (PostgreSQL) is unreachable")
        async with self._lock:
            try:
                if self._writer is None or self._writer.closed or self._writer.broken:
                    if self._writer is not None:
                        await self._writer.close()
                    self._writer = await asyncio.wait_for(self._connect(), self.op_timeout)
                return await asyncio.wait_for(fn(self._writer), self.op_timeout)
            except (psycopg.OperationalError, OSError, asyncio.TimeoutError) as exc:
                w, self._writer = self._writer, None
                if w is not None:
                    try:
                        await w.close()
                    except Exception:
                        pass
                raise StoreUnavailable(f"the shared state store (PostgreSQL) failed: {exc}") from exc

    def _t(self, name: str) -> sql.Composable:
        return sql.Identifier(self.schema, name)

    def _notify_sql(self) -> sql.Composable:
        return sql.SQL("SELECT pg_notify({}, %s)").format(sql.Literal(self.channel))

    # -- lifecycle ---------------------------------------------------------------------------
    async def _ensure_schema(self) -> None:
        async def create(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgveil.jit.schema'))")
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                # the schema name is a plain identifier (checked in settings)
                for stmt in table_ddl(f"{self.schema}.", "double precision", "text"):
                    await conn.execute(stmt)

        await self._with_writer(create, require_healthy=False)

    async def open(self) -> None:
        """Start the listener and wait for its first attempt: a full sync, or a failure.

        An unreachable server does not raise: the store stays unhealthy (fail closed) and
        the listener keeps trying in the background."""
        self._first_attempt = asyncio.get_running_loop().create_future()
        self._listener_task = asyncio.create_task(self._listen(), name="pgveil-jit-listen")
        await asyncio.wait((self._first_attempt,), timeout=self.op_timeout * 3)
        if not self._healthy:
            log.warning("JIT state store unreachable at start; failing closed until it is back")

    def _attempted(self) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    async def close(self) -> None:
        self._closed = True
        if self._listener_task:
            self._listener_task.cancel()
            await asyncio.gather(self._listener_task, return_exceptions=True)
        async with self._lock:
            if self._writer is not None:
                await self._writer.close()
                self._writer = None

    async def _listen(self) -> None:
        backoff = BACKOFF_MIN
        while not self._closed:
            conn: psycopg.AsyncConnection | None = None
            try:
                conn = await asyncio.wait_for(self._connect(), self.op_timeout)
                if not self._schema_ready:
                    await self._ensure_schema()
                    self._schema_ready = True
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                # Everything written before LISTEN took effect is read by the reload; anything
                # after arrives as a notification (possibly both: re-reading is idempotent).
                if self.on_reload:
                    await self.on_reload()
                self._set_health(True)
                self._attempted()
                backoff = BACKOFF_MIN
                while not self._closed:
                    # aclosing: if a dispatch raises, the generator must still release the
                    # connection (psycopg drops notifications while it is suspended).
                    async with aclosing(conn.notifies(timeout=HEARTBEAT_SECONDS)) as gen:
                        async for n in gen:
                            await self._dispatch(n.payload)
                    await asyncio.wait_for(conn.execute("SELECT 1"), self.op_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closed:
                    log.warning("JIT state store listener: %s; reconnecting in %.1fs", exc, backoff)
            finally:
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:
                        pass
            if self._closed:
                break
            self._set_health(False)
            self._attempted()
            await self._drop_writer()   # likely stale too: the next use reconnects
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _dispatch(self, payload: str) -> None:
        try:
            origin, kind, ident = payload.split(" ", 2)
        except ValueError:
            return
        if origin == self.origin or self.on_remote is None:
            return
        log.debug("JIT change from %s: %s %s", origin, kind, ident)
        try:
            await self.on_remote(kind, ident)
        except StoreUnavailable:
            raise
        except Exception:  # pragma: no cover - a bad row must not kill the listener
            log.exception("applying a JIT change from another instance failed")

    # -- reads -------------------------------------------------------------------------------
    async def load_all(self, since: float) -> tuple[list[Request], list[GrantRecord]]:
        async def do(conn: psycopg.AsyncConnection) -> tuple[list[Request], list[GrantRecord]]:
            cur = await conn.execute(sql.SQL(
                "SELECT " + REQUEST_COLS + " FROM {} WHERE state = 'pending' OR created_at >= %s "
                "OR decided_at >= %s ORDER BY created_at").format(self._t("requests")), [since, since])
            reqs = [request_from_row(r) for r in await cur.fetchall()]
            cur = await conn.execute(sql.SQL(
                "SELECT " + GRANT_COLS + " FROM {} WHERE ended IS NULL OR expires_at >= %s "
                "OR created_at >= %s ORDER BY created_at").format(self._t("grants")), [since, since])
            return reqs, [grant_from_row(g) for g in await cur.fetchall()]

        return await self._read(do)

    async def get_request(self, request_id: str) -> Request | None:
        async def do(conn: psycopg.AsyncConnection) -> Request | None:
            cur = await conn.execute(sql.SQL("SELECT " + REQUEST_COLS + " FROM {} WHERE id = %s")
                                     .format(self._t("requests")), [request_id])
            row = await cur.fetchone()
            return request_from_row(row) if row else None

        return await self._read(do)

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        async def do(conn: psycopg.AsyncConnection) -> GrantRecord | None:
            cur = await conn.execute(sql.SQL("SELECT " + GRANT_COLS + " FROM {} WHERE id = %s")
                                     .format(self._t("grants")), [grant_id])
            row = await cur.fetchone()
            return grant_from_row(row) if row else None

        return await self._read(do)

    # -- writes ------------------------------------------------------------------------------
    async def _insert(self, conn: psycopg.AsyncConnection, table: str, cols: str, row: list[Any]) -> None:
        marks = ", ".join("%s" for _ in row)
        try:
            await conn.execute(sql.SQL("INSERT INTO {} (" + cols + ") VALUES (" + marks + ")")
                               .format(self._t(table)), row)
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(str(exc)) from exc

    async def _notify(self, conn: psycopg.AsyncConnection, kind: str, ident: str) -> None:
        await conn.execute(self._notify_sql(), [f"{self.origin} {kind} {ident}"])

    async def create_request(self, req: Request, grant: GrantRecord | None = None) -> None:
        async def do(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                await self._insert(conn, "requests", REQUEST_COLS, to_row(req, REQUEST_MAP))
                if grant is not None:
                    await self._insert(conn, "grants", GRANT_COLS, to_row(grant, GRANT_MAP))
                    await self._notify(conn, "grant", grant.id)
                await self._notify(conn, "request", req.id)

        await self._with_writer(do)

    async def update_request(self, req: Request, expect_version: int, grant: GrantRecord | None = None) -> None:
        sets = ", ".join(f"{col} = %s" for attr, col in REQUEST_MAP if attr != "id")
        vals = [v for (attr, _), v in zip(REQUEST_MAP, to_row(req, REQUEST_MAP)) if attr != "id"]

        async def do(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                cur = await conn.execute(
                    sql.SQL("UPDATE {} SET " + sets + " WHERE id = %s AND version = %s").format(self._t("requests")),
                    [*vals, req.id, expect_version])
                if cur.rowcount != 1:
                    raise Conflict(f"request {req.id} changed")
                if grant is not None:
                    await self._insert(conn, "grants", GRANT_COLS, to_row(grant, GRANT_MAP))
                    await self._notify(conn, "grant", grant.id)
                await self._notify(conn, "request", req.id)

        await self._with_writer(do)

    async def create_grant(self, grant: GrantRecord) -> None:
        async def do(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                await self._insert(conn, "grants", GRANT_COLS, to_row(grant, GRANT_MAP))
                await self._notify(conn, "grant", grant.id)

        await self._with_writer(do)

    async def revoke_grant(self, grant_id: str, at: float, by: str) -> bool:
        async def do(conn: psycopg.AsyncConnection) -> bool:
            async with conn.transaction():
                cur = await conn.execute(sql.SQL(
                    "UPDATE {} SET revoked_at = %s, revoked_by = %s, ended = COALESCE(ended, 'revoked'), "
                    "version = version + 1 "
                    "WHERE id = %s AND revoked_at IS NULL").format(self._t("grants")), [at, by, grant_id])
                if cur.rowcount != 1:
                    return False
                await self._notify(conn, "grant", grant_id)
                return True

        return await self._with_writer(do)

    async def add_uses(self, grant_id: str, n: int, at: float) -> int:
        async def do(conn: psycopg.AsyncConnection) -> int:
            async with conn.transaction():
                cur = await conn.execute(sql.SQL(
                    "UPDATE {} SET uses = uses + %s, first_used_at = COALESCE(first_used_at, %s), "
                    "last_used_at = %s WHERE id = %s RETURNING uses - %s").format(self._t("grants")),
                    [n, at, at, grant_id, n])
                row = await cur.fetchone()
                if row is None:
                    return -1
                await self._notify(conn, "grant", grant_id)
                return int(row[0])

        return await self._with_writer(do)

    async def claim_end(self, grant_id: str, ended: str) -> bool:
        async def do(conn: psycopg.AsyncConnection) -> bool:
            async with conn.transaction():
                cur = await conn.execute(sql.SQL(
                    "UPDATE {} SET ended = %s WHERE id = %s AND ended IS NULL").format(self._t("grants")),
                    [ended, grant_id])
                if cur.rowcount == 1:
                    await self._notify(conn, "grant", grant_id)
                return cur.rowcount == 1

        return await self._with_writer(do)

"""The PostgreSQL sink: one table shared by several pgveil instances.

Each instance keeps its own chain: the primary key is ``(instance, seq)``, and ``line`` holds
the exact signed line, so ``verify`` checks the same bytes the writer sealed. A batch is one
``COPY`` in one transaction; it is durable when the commit returns. On open the sink reads
its instance's last line to continue the chain, and after any error it reconnects and reads
it again, so a retried batch never inserts a record twice.

The table is created when missing. Deleting an instance's *last* rows cannot be seen from
the table alone (there is no head here); gaps and edits anywhere else can.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors

from .. import records
from ..records import line_hash
from .base import ChainTip, Sink

TABLE = "pgveil_audit"
CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    instance   text        NOT NULL,
    seq        bigint      NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    line       text        NOT NULL,
    PRIMARY KEY (instance, seq)
)
"""


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    host, db = info.get("host", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', '')}/{db}"


class PostgresSink(Sink):
    name = "postgresql"

    def __init__(self, url: str, instance: str) -> None:
        self._url = url
        self._instance = instance
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._last_seq = 0

    def describe(self) -> str:
        return f"{redact_url(self._url)} table {TABLE}"

    async def _connect(self) -> ChainTip:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                     application_name="pgveil-audit")
        try:
            async with conn.cursor() as cur:
                try:
                    await cur.execute(CREATE)
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                    pass  # another instance created it at the same moment
                await cur.execute(
                    f"SELECT seq, line FROM {TABLE} WHERE instance = %s ORDER BY seq DESC LIMIT 1",
                    (self._instance,),
                )
                row = await cur.fetchone()
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        tip = ChainTip()
        if row is not None:
            seq, line = row
            tip = ChainTip(seq=int(seq), hash=line_hash(line.encode()))
            if records.parse(line) is None:
                tip.notes.append({"event": "tail_unreadable", "file": TABLE})
        self._last_seq = tip.seq
        return tip

    async def open(self) -> ChainTip:
        return await self._connect()

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        if self._conn is None or self._conn.closed:
            await self._connect()
        assert self._conn is not None
        skip = max(0, self._last_seq - first_seq + 1)
        todo = lines[skip:]
        if not todo:
            return
        try:
            async with self._conn.transaction():
                async with self._conn.cursor() as cur:
                    async with cur.copy(f"COPY {TABLE} (instance, seq, line) FROM STDIN") as copy:
                        seq = first_seq + skip
                        for line in todo:
                            await copy.write_row((self._instance, seq, line.decode()))
                            seq += 1
        except BaseException:
            # Drop the connection: the next try reconnects and re-reads the tip.
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception:
                pass
            raise
        self._last_seq = first_seq + len(lines) - 1

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

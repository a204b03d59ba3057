"""The proxy's end of the audit writer process (:mod:`proxy.audit.child`).

To the writer task it is a sink like the others, except that it takes record *prefixes*
and seals them itself (``seals = True``): the proxy's event loop then spends well under a
microsecond per record instead of several. If the process dies, the next write starts it
again; it reopens the sink, which recovers the chain from what is on disk, and the batch
is retried (the sink skips what was already durable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import sys

from ..settings import AuditSettings
from .base import ChainTip, Sink

_HEAD = struct.Struct("!QI")


class AuditProcessError(OSError):
    """The writer process reported a failure (its message) or is gone."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ChildSink(Sink):
    seals = True

    def __init__(self, settings: AuditSettings, describe: str) -> None:
        self.settings = settings
        self.name = settings.sink
        self._describe = describe
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return self._describe

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.audit.child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._proc.stdin is not None
        # the settings go first, on the pipe: a sink URL may hold a password
        self._proc.stdin.write(json.dumps(dataclasses.asdict(self.settings)).encode() + b"\n")

    async def _ask(self, request: bytes) -> dict:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            raise AuditProcessError("the audit writer process is not running")
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(request)
            await proc.stdin.drain()
            line = await proc.stdout.readline()
        except (ConnectionError, BrokenPipeError) as exc:
            raise AuditProcessError(f"the audit writer process is gone ({exc})") from exc
        if not line:
            raise AuditProcessError("the audit writer process exited")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise AuditProcessError(reply.get("error") or "the audit writer failed")
        return reply

    async def open(self) -> ChainTip:
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                await self._spawn()
            reply = await self._ask(b"O")
            return ChainTip(seq=reply["seq"], hash=reply["hash"], notes=reply.get("notes") or [])

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        payload = b"\n".join(lines)
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                await self._spawn()  # it died: a new one reopens the sink and recovers
                await self._ask(b"O")
            await self._ask(b"W" + _HEAD.pack(first_seq, len(payload)) + payload)

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.returncode is None and proc.stdin is not None:
                proc.stdin.write(b"C")
                await proc.stdin.drain()
                proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 10)
        except (ConnectionError, asyncio.TimeoutError):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

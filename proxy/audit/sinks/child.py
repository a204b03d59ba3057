"""The proxy's end of the audit writer process (:mod:`proxy.audit.child`).

To the writer task it is a sink like the others, except that it takes record *prefixes*
and seals them itself (``seals = True``): the proxy's event loop then spends well under a
microsecond per record instead of several.

Records reach the process two ways. :meth:`ChildSink.put` copies a record into the ring
of shared memory (:mod:`..ring`) the moment it is queued: from then on it is written even
if the proxy dies (the process takes what the ring holds when its input ends), and it costs
no system call. :meth:`write` — the writer task's group commit — tells the process how far
the ring goes, sends whatever is not in the ring, and waits until everything up to there is
durable.

If the process dies, the next write starts it again; it reopens the sink, which recovers
the chain from what is on disk, and the batch is sent again from there (the process skips
what it already has).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import sys

from ..ring import RingWriter
from ..settings import AuditSettings
from .base import ChainTip, Sink

_HEAD = struct.Struct("!QIQ")  # first seq, payload length, ring position
RING_SIZE = 8 << 20  # about 0.7 s of records at 40,000 records/s: the writer may lag that long


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
        self._ready = False  # the process is up and its sink open: records may go in the ring
        self.sent_seq = 0  # the last seq the running process has (in the ring, held, written)
        self.stalled = 0  # records the ring could not take (the process lags): they wait here
        self.ring_size = RING_SIZE
        self._ring: RingWriter | None = None

    def describe(self) -> str:
        return self._describe

    async def _spawn(self) -> None:
        if self._ring is None:
            self._ring = RingWriter(self.ring_size)
        self._ring.reset()
        fd = self._ring.fd
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.audit.child", pass_fds=(fd,),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._proc.stdin is not None
        # the settings go first, on the pipe: a sink URL may hold a password
        start = {"settings": dataclasses.asdict(self.settings), "ring": [fd, self._ring.size]}
        self._proc.stdin.write(json.dumps(start).encode() + b"\n")

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
        taken = reply.get("taken")
        if taken is not None and self._ring is not None:
            self._ring.taken = taken  # ring space the process has read: free again
        if not reply.get("ok"):
            raise AuditProcessError(reply.get("error") or "the audit writer failed")
        return reply

    async def open(self) -> ChainTip:
        async with self._lock:
            self._ready = False  # no records into the ring until it is emptied on both sides
            if self._proc is None or self._proc.returncode is not None:
                await self._spawn()
            assert self._ring is not None
            self._ring.reset()
            reply = await self._ask(b"O")
            self.sent_seq, self._ready = reply["seq"], True
            return ChainTip(seq=reply["seq"], hash=reply["hash"], notes=reply.get("notes") or [])

    def put(self, seq: int, prefix: bytes) -> bool:
        """Copy record ``seq`` into the ring. False when it must wait in the proxy: it does
        not directly follow what the process has, the process is not ready, or the ring is
        full (the process lags) — the next :meth:`write` or :meth:`put_many` takes it."""
        if seq != self.sent_seq + 1 or not self._ready:
            return False
        if not self._ring.put(prefix):  # type: ignore[union-attr]
            self.stalled += 1
            return False
        self.sent_seq = seq
        return True

    def put_many(self, first_seq: int, lines: list[bytes]) -> int:
        """Put records ``first_seq``… in order (those the process has are skipped); how
        many of ``lines`` are now with the process."""
        skip = self.sent_seq + 1 - first_seq
        if skip < 0:
            return 0
        done = min(skip, len(lines))
        for prefix in lines[done:]:
            if not self.put(first_seq + done, prefix):
                break
            done += 1
        return done

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                self._ready = False
                await self._spawn()  # it died: a new one reopens the sink and recovers
                self._ring.reset()  # type: ignore[union-attr]
                self.sent_seq, self._ready = (await self._ask(b"O"))["seq"], True
            last = first_seq + len(lines) - 1
            skip = min(len(lines), max(0, self.sent_seq - first_seq + 1))
            payload = b"\n".join(lines[skip:])
            end = self._ring.write_pos  # type: ignore[union-attr]
            try:
                reply = await self._ask(
                    b"W" + _HEAD.pack(first_seq + skip, len(payload), end) + payload)
                if reply["seq"] < last:
                    raise AuditProcessError(f"the audit writer process has records up to "
                                            f"{reply['seq']}, not {last}")
            except AuditProcessError:
                # send all of it again next time (the process skips what it has); nothing
                # into the ring until then
                self.sent_seq = first_seq - 1
                raise
            self.sent_seq = max(self.sent_seq, last)

    async def close(self) -> None:
        self._ready = False
        proc, self._proc = self._proc, None
        if proc is None:
            self._close_ring()
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
        self._close_ring()

    def _close_ring(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()

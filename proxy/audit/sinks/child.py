"""The proxy's end of the audit writer process (:mod:`proxy.audit.child`).

To the writer task it is a sink like the others, except that it takes record *prefixes*
and seals them itself (``seals = True``): the proxy's event loop then spends well under a
microsecond per record instead of several.

Records reach the process two ways. :meth:`ChildSink.handoff` writes new records to its
pipe as soon as the event loop has a turn, with no answer to wait for: from then on they
are written even if the proxy dies (the process writes what it holds when its input
ends). :meth:`write` — the writer task's group commit — sends whatever was not handed off
yet and waits until everything up to there is durable.

If the process dies, the next write starts it again; it reopens the sink, which recovers
the chain from what is on disk, and the batch is sent again from there (the process skips
what it already has).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
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
        self._ready = False  # the process is up and its sink open: hand-offs may go
        self.sent_seq = 0  # the last seq the running process has (handed off or written)
        self.stalled = 0  # hand-offs the pipe could not take at once (the process lags)
        self._fd = -1  # the pipe, when it is non-blocking (written directly by handoff)

    def describe(self) -> str:
        return self._describe

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.audit.child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self._proc.stdin is not None
        _grow_pipe(self._proc.stdin)
        self._fd = _nonblocking_fd(self._proc.stdin)
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
                self._ready = False
                await self._spawn()
            reply = await self._ask(b"O")
            self.sent_seq, self._ready = reply["seq"], True
            return ChainTip(seq=reply["seq"], hash=reply["hash"], notes=reply.get("notes") or [])

    def handoff(self, first_seq: int, lines: list[bytes]) -> bool:
        """Hand records ``first_seq``… to the process now, unanswered (those a group commit
        already sent are skipped). False when they would leave a gap after what it has, or
        it is not up: the next :meth:`write` sends them."""
        proc = self._proc
        skip = self.sent_seq + 1 - first_seq  # the start may have gone with a group commit
        if (not self._ready or skip < 0 or proc is None or proc.returncode is not None
                or proc.stdin is None):
            return False
        if skip >= len(lines):
            return True
        if skip:
            lines, first_seq = lines[skip:], first_seq + skip
        payload = b"\n".join(lines)
        data = b"H" + _HEAD.pack(first_seq, len(payload)) + payload
        transport = proc.stdin.transport
        try:
            if self._fd >= 0 and not transport.get_write_buffer_size():
                try:  # straight into the pipe: no stream layers on the per-turn path
                    done = os.write(self._fd, data)
                except BlockingIOError:
                    done = 0
                if done < len(data):
                    transport.write(data[done:])
            else:
                transport.write(data)
        except (OSError, RuntimeError):
            return False
        if transport.get_write_buffer_size():
            self.stalled += 1  # partly in this process's memory: the writer lags
        self.sent_seq = first_seq + len(lines) - 1
        return True

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                self._ready = False
                await self._spawn()  # it died: a new one reopens the sink and recovers
                self.sent_seq, self._ready = (await self._ask(b"O"))["seq"], True
            last = first_seq + len(lines) - 1
            skip = min(len(lines), max(0, self.sent_seq - first_seq + 1))
            payload = b"\n".join(lines[skip:])
            try:
                await self._ask(b"W" + _HEAD.pack(first_seq + skip, len(payload)) + payload)
            except AuditProcessError:
                # send all of it again next time (the process skips what it has); no
                # hand-offs until then
                self.sent_seq = first_seq - 1
                raise
            self.sent_seq = max(self.sent_seq, last)

    async def close(self) -> None:
        self._ready = False
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


def _grow_pipe(stdin: asyncio.StreamWriter) -> None:
    """Let the pipe hold a few group commits of records (Linux; best effort)."""
    try:
        import fcntl

        pipe = stdin.transport.get_extra_info("pipe")
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError, AttributeError, ValueError):
        pass


def _nonblocking_fd(stdin: asyncio.StreamWriter) -> int:
    """The pipe's descriptor if writing it directly can never block, else -1."""
    try:
        fd = stdin.transport.get_extra_info("pipe").fileno()
        return fd if not os.get_blocking(fd) else -1
    except (OSError, AttributeError, ValueError):
        return -1

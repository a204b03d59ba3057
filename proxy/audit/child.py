"""The audit writer process: seals the records the proxy hands it and writes them.

The proxy starts one per audit log (``python -m proxy.audit.child``; its settings arrive
as the first line of its input, not in the environment, since a PostgreSQL sink's URL may
hold a password) so that HMAC, hashing, writes and fsyncs use another core instead of the
event loop's. The proxy keeps the queue, the sequence numbers and every decision about
failing closed; this process is a sink that also seals (see :mod:`.sinks.child`).

Records arrive two ways:

* through the shared-memory ring (:mod:`.ring`) the proxy copies each record into when it
  queues it. The first input line names the ring's descriptor and size
  (``{"settings": {...}, "ring": [fd, size]}``); without ``ring``, only the pipe is used;
* in the payload of a ``W`` request: what did not fit in the ring, or was queued while no
  writer was ready.

Requests, over its stdin (answers: one JSON line each, on stdout):

* ``O`` — open the sink, and read the ring from its start:
  ``{"ok": true, "seq": N, "hash": H, "notes": [...]}``;
* ``W`` + first seq (8 bytes) + length (4 bytes) + ring position (8 bytes) + record
  prefixes joined by newlines (possibly none) — take the ring's records up to that
  position, then the payload's; seal them; write and make durable everything held:
  ``{"ok": true, "seq": N, "taken": P}`` with the last durable seq and how far the ring
  was read (errors carry ``taken`` too);
* ``C`` — close the sink and exit.

Records are taken strictly in seq order: a payload that does not continue the held chain is
refused (``{"ok": false}``), ring records that do not are dropped, and the proxy, seeing a
durable seq short of its batch, sends everything again in the payload. Any failure is answered
``{"ok": false, "error": "…"}``; what is held stays held and the process keeps going: the
proxy retries. End of input (the proxy exited, even by kill -9) takes what the ring holds,
writes everything, then closes the sink: a record the proxy had queued is on disk even
though the proxy died before its group commit.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import sys

from .keys import load_or_create_key
from .records import Sealer
from .ring import RingReader
from .sealing import seal_prefixes
from .settings import AuditSettings
from .sinks.base import ThreadedSink

_HEAD = struct.Struct("!QIQ")  # first seq, payload length, ring position


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _reply(out, obj) -> None:
    try:
        out.write(json.dumps(obj).encode() + b"\n")
        out.flush()
    except (BrokenPipeError, ConnectionError, ValueError):
        pass  # the proxy is gone: no one to answer, but its records are still to be written


class _Inbox(asyncio.Protocol):
    """The request pipe's bytes, read only when asked to (see :meth:`wait`)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0  # where the next request starts in buf
        self.eof = False
        self.transport: asyncio.ReadTransport | None = None
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:  # noqa: D102
        self.transport = transport

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self.buf += data
        self._wake()

    def eof_received(self) -> None:  # noqa: D102
        self.eof = True
        self._wake()

    def connection_lost(self, exc) -> None:  # noqa: D102
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until more bytes (or the end) arrive."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def request(self) -> tuple[bytes, int, int, bytes] | None:
        """The next whole request as ``(op, first, ring_end, payload)``, or None if not
        all here.
        (Taken from a read position; the buffer is trimmed once it is used up, so many
        small hand-offs in one read cost no quadratic copying.)"""
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            if pos:
                buf.clear()
                self.pos = 0
            return None
        op = bytes(buf[pos : pos + 1])
        if op != b"W":
            self.pos = pos + 1
            return op, 0, 0, b""
        if len(buf) - pos < 1 + _HEAD.size:
            self._trim()
            return None
        first, size, ring_end = _HEAD.unpack_from(buf, pos + 1)
        end = pos + 1 + _HEAD.size + size
        if len(buf) < end:
            self._trim()
            return None
        payload = bytes(buf[pos + 1 + _HEAD.size : end])
        self.pos = end
        return op, first, ring_end, payload

    def _trim(self) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0


def _ring_first_seq(chunk: bytes) -> int:
    """The seq of the first record in a ring chunk (each record starts ``{"seq":N,``)."""
    if not chunk.startswith(b'{"seq":'):
        return -1
    comma = chunk.find(b",", 7, 40)
    digits = chunk[7:comma] if comma > 0 else b""
    return int(digits) if digits.isdigit() else -1


class _InPlace:
    """A sink whose blocking work runs on the caller's thread.

    A blocking sink (file, stdout) keeps its work off the event loop, on a thread of its
    own. This process has nothing else to do while a write runs: the proxy waits for the
    answer before it asks again. So the work runs right here, without handing each batch
    to the thread and back."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.blocking = isinstance(sink, ThreadedSink)

    async def open(self):
        return self.sink.open_sync() if self.blocking else await self.sink.open()

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        if self.blocking:
            self.sink.write_sync(first_seq, lines)
        else:
            await self.sink.write(first_seq, lines)

    async def close(self) -> None:
        await self.sink.close()  # on its thread: the very last step, once


async def serve(stdin, out) -> None:
    from .sinks import make_local_sink

    loop = asyncio.get_running_loop()
    inbox = _Inbox()
    await loop.connect_read_pipe(lambda: inbox, stdin)
    while b"\n" not in inbox.buf:
        if inbox.eof:
            return
        await inbox.wait()
    first_line, _, rest = bytes(inbox.buf).partition(b"\n")
    inbox.buf, inbox.pos = bytearray(rest), 0
    start = json.loads(first_line)
    settings = AuditSettings(**start["settings"])
    ring = RingReader(*start["ring"]) if start.get("ring") else None
    sealer = Sealer(load_or_create_key(settings.key_file))
    sink = _InPlace(make_local_sink(settings, sealer))
    written_seq = 0          # the last durable seq
    held: list[bytes] = []   # sealed lines after it, not yet written
    tip_seq, tip_hash = 0, ""  # the last sealed record (held or written)
    opened = False

    def take(first: int, payload: bytes) -> bool:
        """Seal what continues the chain; False when ``first`` would leave a gap."""
        nonlocal tip_seq, tip_hash
        if first > tip_seq + 1 or first < 1:
            return False
        if not payload:
            return True
        prefixes = payload.split(b"\n")
        todo = prefixes[tip_seq - first + 1 :]  # already sealed (resent after a failure)
        if todo:
            lines, tip_hash = seal_prefixes(sealer, tip_hash, todo)
            held.extend(lines)
            tip_seq = first + len(prefixes) - 1
        return True

    def take_ring(end: int) -> bool:
        if ring is None:
            return True
        chunk = ring.take(end)
        if not chunk:
            return True
        return take(_ring_first_seq(chunk), chunk[:-1])

    async def write_held() -> None:
        nonlocal written_seq
        if held:
            await sink.write(written_seq + 1, held)
            written_seq = tip_seq
            held.clear()

    def taken() -> int:
        return ring.read_pos if ring is not None else 0

    try:
        while True:
            req = inbox.request()
            if req is None:
                if inbox.eof:
                    if opened:
                        # the proxy is gone: keep what it queued, then what it handed over
                        if ring is not None:
                            take_ring(ring.published())
                        await write_held()
                    return
                await inbox.wait()
                continue
            op, first, ring_end, payload = req
            if op == b"W":
                if not opened:
                    _reply(out, {"ok": False, "error": "the audit sink is not open",
                                 "taken": taken()})
                    continue
                take_ring(ring_end)  # (a gap there is dropped: the proxy sends it again)
                if not take(first, payload):
                    _reply(out, {"ok": False, "error": f"records before seq {first} are "
                                 f"missing (the writer has up to {tip_seq})", "taken": taken()})
                    continue
                try:
                    await write_held()
                except Exception as exc:  # noqa: BLE001 - reported to the proxy
                    _reply(out, {"ok": False, "error": _reason(exc), "taken": taken()})
                    continue
                _reply(out, {"ok": True, "seq": written_seq, "taken": taken()})
            elif op == b"O":
                if ring is not None:
                    ring.reset()  # the proxy empties the ring before it asks
                try:
                    tip = await sink.open()
                except Exception as exc:  # noqa: BLE001 - reported to the proxy
                    _reply(out, {"ok": False, "error": _reason(exc)})
                    continue
                written_seq, tip_seq, tip_hash, opened = tip.seq, tip.seq, tip.hash, True
                held.clear()
                _reply(out, {"ok": True, "seq": tip.seq, "hash": tip.hash, "notes": tip.notes})
            elif op == b"C":
                if opened:
                    await write_held()
                return
            else:
                _reply(out, {"ok": False, "error": f"unknown request {op!r}"})
                return
    finally:
        await sink.close()


def main() -> None:
    # Ctrl-C in a terminal, or a service manager stopping the whole group, signals this
    # process too; it must still write what the proxy flushes while shutting down. It
    # ends when its input does: the proxy closed it, or the proxy is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the reply channel
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    asyncio.run(serve(sys.stdin.buffer, out))


if __name__ == "__main__":
    main()

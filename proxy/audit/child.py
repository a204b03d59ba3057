"""The audit writer process: seals the records the proxy hands it and writes them.

The proxy starts one per audit log (``python -m proxy.audit.child``; its settings arrive
as the first line of its input, not in the environment, since a PostgreSQL sink's URL may
hold a password) so that HMAC, hashing, writes and fsyncs use another core instead of the
event loop's. The proxy keeps the queue, the sequence numbers and every decision about
failing closed; this process is a sink that also seals (see :mod:`.sinks.child`).

Protocol, over its stdin (requests) and stdout (one JSON line per ``O`` and ``W``):

* ``O`` — open the sink: ``{"ok": true, "seq": N, "hash": H, "notes": [...]}``;
* ``H`` + first seq (8 bytes) + length (4 bytes) + record prefixes joined by newlines —
  *hand-off*: seal them and hold them, no answer. The proxy hands records over within one
  turn of its event loop, before the answer of their statement goes to the client; from
  then on they no longer depend on the proxy staying alive;
* ``W`` + first seq + length + prefixes (possibly none) — seal these too, then write
  everything held and make it durable: ``{"ok": true, "seq": N}`` with the last durable seq;
* ``C`` — close the sink and exit.

Records are taken strictly in seq order: a hand-off that does not continue the held chain is
ignored (the proxy sends it again with its next ``W``), and a ``W`` that would leave a gap is
refused. Any failure is answered ``{"ok": false, "error": "…"}``; what is held stays held
and the process keeps going: the proxy retries. End of input (the proxy exited, even by
kill -9) writes everything received so far, then closes the sink.

With ``fsync = "batch"`` this process reads its input at most once per group-commit delay
(the pipe holds what arrives meanwhile), so a busy proxy costs it one wake-up per batch,
not one per hand-off.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import sys

from .keys import load_or_create_key
from .records import Sealer
from .sealing import seal_prefixes
from .settings import AuditSettings

BATCH_DELAY = 0.010  # fsync = "batch": the writer's group-commit delay (as the proxy's)

_HEAD = struct.Struct("!QI")


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

    async def rest(self, seconds: float) -> None:
        """Stop reading for ``seconds``: what the proxy sends meanwhile waits in the pipe."""
        assert self.transport is not None
        self.transport.pause_reading()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._read_all()
            self.transport.resume_reading()

    def _read_all(self) -> None:
        """Take everything waiting in the pipe now (the transport reads a chunk per turn of
        the loop: after a rest that would leave most of a group commit in the pipe)."""
        try:
            fd = self.transport.get_extra_info("pipe").fileno()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            return
        while True:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                return
            except OSError:
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            self.buf += data

    def request(self) -> tuple[bytes, int, bytes] | None:
        """The next whole request as ``(op, first, payload)``, or None if not all here.
        (Taken from a read position; the buffer is trimmed once it is used up, so many
        small hand-offs in one read cost no quadratic copying.)"""
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            if pos:
                buf.clear()
                self.pos = 0
            return None
        op = bytes(buf[pos : pos + 1])
        if op not in (b"H", b"W"):
            self.pos = pos + 1
            return op, 0, b""
        if len(buf) - pos < 1 + _HEAD.size:
            self._trim()
            return None
        first, size = _HEAD.unpack_from(buf, pos + 1)
        end = pos + 1 + _HEAD.size + size
        if len(buf) < end:
            self._trim()
            return None
        payload = bytes(buf[pos + 1 + _HEAD.size : end])
        self.pos = end
        return op, first, payload

    def _trim(self) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0


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
    settings = AuditSettings(**json.loads(first_line))
    sealer = Sealer(load_or_create_key(settings.key_file))
    sink = make_local_sink(settings, sealer)
    delay = BATCH_DELAY if settings.fsync == "batch" else 0.0
    written_seq = 0          # the last durable seq
    held: list[bytes] = []   # sealed lines after it, not yet written
    tip_seq, tip_hash = 0, ""  # the last sealed record (held or written)
    opened = False
    next_turn = 0.0

    def take(first: int, payload: bytes) -> bool:
        """Seal what continues the chain; False when ``first`` would leave a gap."""
        nonlocal tip_seq, tip_hash
        if first > tip_seq + 1:
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

    async def write_held() -> None:
        nonlocal written_seq
        if held:
            await sink.write(written_seq + 1, held)
            written_seq = tip_seq
            held.clear()

    try:
        while True:
            req = inbox.request()
            if req is None:
                if inbox.eof:
                    if opened:
                        await write_held()  # the proxy is gone: keep what it handed over
                    return
                await inbox.wait()
                if delay and opened:
                    # group commit: one turn per delay, however often the proxy hands off
                    pause = next_turn - loop.time()
                    if pause > 0:
                        await inbox.rest(pause)
                    next_turn = loop.time() + delay
                continue
            op, first, payload = req
            if op == b"H":
                if opened:
                    take(first, payload)  # a gap: ignored, the proxy's next W resends it
            elif op == b"W":
                if not opened:
                    _reply(out, {"ok": False, "error": "the audit sink is not open"})
                    continue
                if not take(first, payload):
                    _reply(out, {"ok": False, "error": f"records before seq {first} are "
                                 f"missing (the writer has up to {tip_seq})"})
                    continue
                try:
                    await write_held()
                except Exception as exc:  # noqa: BLE001 - reported to the proxy
                    _reply(out, {"ok": False, "error": _reason(exc)})
                    continue
                _reply(out, {"ok": True, "seq": written_seq})
            elif op == b"O":
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

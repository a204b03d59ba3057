"""The audit writer process: seals queued records and writes them to the sink.

The proxy starts one per audit log (``python -m proxy.audit.child``; its settings arrive
as the first line of its input, not in the environment, since a PostgreSQL sink's URL may
hold a password) so that HMAC, hashing, writes and fsyncs use another core instead of the
event loop's. The proxy keeps the queue, the sequence numbers and every decision about
failing closed; this process is a sink that also seals (see :mod:`.sinks.child`).

Protocol, over its stdin (requests) and stdout (one JSON line per request):

* ``O`` — open the sink: ``{"ok": true, "seq": N, "hash": H, "notes": [...]}``;
* ``W`` + first seq (8 bytes) + length (4 bytes) + the record prefixes joined by newlines —
  seal and write them: ``{"ok": true}`` once durable;
* ``C`` — close the sink and exit.

Any failure is answered ``{"ok": false, "error": "…"}`` and the process keeps going: the
proxy retries. End of input (the proxy exited, even by kill -9) closes the sink after
writing everything received so far.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import sys

from .keys import load_or_create_key
from .records import Sealer
from .sealing import seal_prefixes
from .settings import AuditSettings

_HEAD = struct.Struct("!QI")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _reply(out, obj) -> None:
    out.write(json.dumps(obj).encode() + b"\n")
    out.flush()


async def serve(stdin, out) -> None:
    from .sinks import make_local_sink

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31 - 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    first = await reader.readline()
    if not first:
        return
    settings = AuditSettings(**json.loads(first))
    sealer = Sealer(load_or_create_key(settings.key_file))
    sink = make_local_sink(settings, sealer)
    last_seq, last_hash, opened = 0, "", False
    try:
        while True:
            try:
                op = await reader.readexactly(1)
            except asyncio.IncompleteReadError:
                return  # the proxy is gone: everything received has been written
            if op == b"O":
                try:
                    tip = await sink.open()
                except Exception as exc:  # noqa: BLE001 - reported to the proxy
                    _reply(out, {"ok": False, "error": _reason(exc)})
                    continue
                last_seq, last_hash, opened = tip.seq, tip.hash, True
                _reply(out, {"ok": True, "seq": tip.seq, "hash": tip.hash, "notes": tip.notes})
            elif op == b"W":
                try:
                    first, size = _HEAD.unpack(await reader.readexactly(_HEAD.size))
                    prefixes = (await reader.readexactly(size)).split(b"\n")
                except asyncio.IncompleteReadError:
                    return  # the proxy died mid-request: that batch was never acknowledged
                if not opened:
                    _reply(out, {"ok": False, "error": "the audit sink is not open"})
                    continue
                skip = max(0, last_seq - first + 1)  # already durable (a retried batch)
                todo = prefixes[skip:]
                if not todo:
                    _reply(out, {"ok": True})
                    continue
                lines, tip = seal_prefixes(sealer, last_hash, todo)
                try:
                    await sink.write(first + skip, lines)
                except Exception as exc:  # noqa: BLE001 - reported to the proxy
                    _reply(out, {"ok": False, "error": _reason(exc)})
                    continue
                last_seq, last_hash = first + len(prefixes) - 1, tip
                _reply(out, {"ok": True})
            elif op == b"C":
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

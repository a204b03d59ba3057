"""Turning queued record *prefixes* into signed, chained lines.

The query path queues each record as the bytes of its JSON object without the closing
``"prev"`` and ``"mac"`` members (``{"seq":7,"ts":"…",…,"kind":"select"``). Sealing, at
write time, appends the chain link and the MAC::

    body = prefix + ',"prev":"<sha256 of the previous line>"}'
    line = body[:-1] + ',"mac":"<HMAC-SHA256(key, body)>"}'

which is byte for byte the line format :mod:`.records` documents and ``verify`` checks.
Sealing runs where the lines are written: in the audit writer process, or on the proxy's
writer task when the sink runs in the proxy (the stdout sink, tests).
"""

from __future__ import annotations

from .records import Sealer, line_hash


def seal_prefixes(sealer: Sealer, prev: str, prefixes: list[bytes]) -> tuple[list[bytes], str]:
    """The lines of ``prefixes`` chained from ``prev``, and the hash of the last line."""
    return sealer.seal_chain(prev, prefixes)


def seal_prefixes_plainly(sealer: Sealer, prev: str,
                          prefixes: list[bytes]) -> tuple[list[bytes], str]:
    """The same, written as the format above reads (the reference the tests compare)."""
    lines: list[bytes] = []
    for prefix in prefixes:
        body = b'%s,"prev":"%s"}' % (prefix, prev.encode())
        line = b'%s,"mac":"%s"}' % (body[:-1], sealer.mac(body).encode())
        lines.append(line)
        prev = line_hash(line)
    return lines, prev

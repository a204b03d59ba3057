"""A ring of audit records in memory shared by the proxy and its audit writer process.

The proxy copies each record into the ring when it queues it: no system call, no wake-up of
the writer. From then on the record lives in memory the writer process maps too, so it
survives a ``kill -9`` of the proxy: the writer, seeing its input end, takes whatever the
ring holds and writes it.

Layout: a header of :data:`HEADER` bytes, then ``size`` bytes (a power of two) used as a
circular buffer. Records are JSON prefixes, each followed by ``\\n`` (JSON never holds a raw
newline). Positions count bytes ever written, so ``pos % size`` is the offset:

* the proxy owns ``write_pos``, and stores it in the header after each record;
* the writer owns its read position, and reports it back (``taken``) in its answers on the
  request pipe. The proxy reuses space only up to what was reported.

Ordering: in normal operation the writer reads only up to the ``write_pos`` a request on the
pipe names (the pipe orders the proxy's stores before the writer's loads). The header's
copy is read only once the proxy is gone, when all its stores are complete.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile

HEADER = 64
_POS = struct.Struct("<Q")
NEWLINE = 10
#: map every page at once: the first pass through the ring takes no page faults
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def _shared_fd(size: int) -> int:
    """A descriptor of ``size`` bytes of shared memory (memfd on Linux, else a temp file)."""
    create = getattr(os, "memfd_create", None)
    if create is not None:
        fd = create("pgveil-audit-ring", getattr(os, "MFD_CLOEXEC", 1))
    else:  # pragma: no cover - not Linux
        handle = tempfile.TemporaryFile()
        fd = os.dup(handle.fileno())
        handle.close()
    os.ftruncate(fd, size)
    return fd


class RingWriter:
    """The proxy's side: puts records in, learns from the writer how far it has read."""

    def __init__(self, size: int) -> None:
        if size < 4096 or size & (size - 1):
            raise ValueError("the audit ring size must be a power of two, at least 4096")
        self.size = size
        self.fd = _shared_fd(HEADER + size)
        self.mm = mmap.mmap(self.fd, HEADER + size, flags=_MAP_FLAGS)
        self.write_pos = 0
        self.taken = 0  # the writer's read position, as last reported

    def reset(self) -> None:
        """Empty (a new writer process, or a reopened sink, starts reading at 0)."""
        self.write_pos = self.taken = 0
        _POS.pack_into(self.mm, 0, 0)

    def put(self, record: bytes) -> bool:
        """Append ``record`` and a newline; False (nothing written) when it does not fit."""
        n = len(record) + 1
        pos = self.write_pos
        size = self.size
        if pos + n - self.taken > size:
            return False
        mm = self.mm
        off = HEADER + (pos & (size - 1))
        end = off + n
        if end <= HEADER + size:
            mm[off : end - 1] = record
            mm[end - 1] = NEWLINE
        else:
            data = record + b"\n"
            k = HEADER + size - off
            mm[off : HEADER + size] = data[:k]
            mm[HEADER : HEADER + n - k] = data[k:]
        pos += n
        self.write_pos = pos
        _POS.pack_into(mm, 0, pos)
        return True

    def close(self) -> None:
        try:
            self.mm.close()
        finally:
            os.close(self.fd)


class RingReader:
    """The writer process's side."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self.mm = mmap.mmap(fd, HEADER + size, flags=_MAP_FLAGS)
        os.close(fd)
        self.read_pos = 0

    def reset(self) -> None:
        self.read_pos = 0

    def published(self) -> int:
        """The proxy's write position as stored in the header (read once the proxy is
        gone: its last stores are then visible)."""
        return _POS.unpack_from(self.mm, 0)[0]

    def take(self, end: int) -> bytes:
        """The records between the read position and ``end`` (whole lines, each ending
        with a newline), and advance. Nothing when ``end`` is not a position the proxy
        could have written (behind, or more than a ring ahead)."""
        pos, size = self.read_pos, self.size
        if end <= pos or end - pos > size:
            return b""
        mm = self.mm
        off = HEADER + (pos & (size - 1))
        n = end - pos
        if off + n <= HEADER + size:
            data = mm[off : off + n]
        else:
            k = HEADER + size - off
            data = mm[off : HEADER + size] + mm[HEADER : HEADER + n - k]
        self.read_pos = end
        return data

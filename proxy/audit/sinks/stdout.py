"""Audit lines to standard output, for containers whose log collector keeps them.

There is no state to recover: each process start begins a new chain at seq 1 (the
``instance`` field and the ``start`` event tell runs apart), and truncation of the tail
can only be detected by the collector. Writes happen on the sink's thread, since a full
pipe blocks.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from .base import ChainTip, ThreadedSink


class StdoutSink(ThreadedSink):
    name = "stdout"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._last_seq = 0

    def describe(self) -> str:
        return "stdout"

    def open_sync(self) -> ChainTip:
        if self._stream is None:
            self._stream = sys.stdout.buffer
        return ChainTip()

    def write_sync(self, first_seq: int, lines: list[bytes]) -> None:
        skip = max(0, self._last_seq - first_seq + 1)
        todo = lines[skip:]
        if not todo:
            return
        assert self._stream is not None
        self._stream.write(b"".join(line + b"\n" for line in todo))
        self._stream.flush()
        self._last_seq = first_seq + len(lines) - 1

    def close_sync(self) -> None:
        if self._stream is not None:
            self._stream.flush()

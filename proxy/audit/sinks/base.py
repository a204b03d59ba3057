"""What a sink is: somewhere audit lines become durable, in order, exactly once.

The writer hands a sink batches of sealed lines with the ``seq`` of the first one. A sink:

* ``open()`` — gets ready and reports the chain's tip (last ``seq`` and line hash) so the
  chain continues across restarts, plus notes about what it found (a torn line it cut,
  records missing from the tail) that the writer records as events;
* ``write(first_seq, lines)`` — returns once the lines are durable, or raises. It must be
  idempotent by ``seq``: after a failure the writer retries the same batch, and lines the
  sink already made durable are skipped, so a retry never duplicates a record;
* ``close()``.

Blocking sinks (file, stdout) run their work on one dedicated thread, never on the event
loop; the thread is theirs, so a busy default executor cannot stall the audit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from ..records import GENESIS

T = TypeVar("T")


@dataclass
class ChainTip:
    """Where a chain ends: the last durable record's seq and line hash."""

    seq: int = 0
    hash: str = GENESIS
    notes: list[dict[str, Any]] = field(default_factory=list)  # events for the writer to log


class Sink:
    """Base class; see the module docstring for the contract."""

    name = "sink"

    async def open(self) -> ChainTip:
        raise NotImplementedError

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    def describe(self) -> str:
        return self.name


class ThreadedSink(Sink):
    """A sink whose blocking work runs on its own single thread."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"pgveil-audit-{self.name}"
        )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> ChainTip:
        return await self._run(self.open_sync)

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        await self._run(self.write_sync, first_seq, lines)

    async def close(self) -> None:
        try:
            await self._run(self.close_sync)
        finally:
            self._executor.shutdown(wait=False)

    # subclasses implement these; they run on the sink's thread
    def open_sync(self) -> ChainTip:
        raise NotImplementedError

    def write_sync(self, first_seq: int, lines: list[bytes]) -> None:
        raise NotImplementedError

    def close_sync(self) -> None:
        return None

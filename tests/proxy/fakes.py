"""Stand-ins for the socket side of a session, for tests that feed it bytes directly."""

from __future__ import annotations

from proxy.audit.sinks.base import ChainTip, Sink

class FakeTransport:
    """Stands in for an asyncio transport in session tests without sockets: keeps what
    was written, and whether it was closed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, key, default=None):
        return default


class MemorySink(Sink):
    """An audit sink that keeps the sealed lines in memory."""

    name = "memory"

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    async def open(self) -> ChainTip:
        return ChainTip()

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        self.lines.extend(lines)

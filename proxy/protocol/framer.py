"""Incremental framing of the PostgreSQL protocol, version 3, without any I/O.

Bytes go in with ``feed()``; complete messages (or byte runs to relay) come out. Nothing here
touches a socket, so every path is reachable from unit tests and fuzzers.

Three framers, for the three shapes of traffic:

* :class:`StartupFramer` — the first packet of a connection, which has a length but no type
  byte (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
* :class:`MessageFramer` — typed messages, each returned whole as ``(type, raw)`` where
  ``raw`` is the complete message including its 5-byte header, ready to forward unchanged.
  Used for the client side, whose messages are small and all worth looking at.
* :class:`RelayScanner` — the server side. It returns runs of bytes to forward unchanged,
  only stopping to hand back whole messages whose type is in ``interesting``. A multi-megabyte
  DataRow is never buffered; it streams through as it arrives.

Every framer enforces a maximum message size and raises :class:`ProtocolViolation` on a
length that cannot be valid. After a violation the framer is unusable: the connection must
be closed.
"""

from __future__ import annotations

import struct

_LEN = struct.Struct("!I")
_u32 = _LEN.unpack_from  # the hot loops read message lengths with this

#: PostgreSQL refuses startup packets larger than this (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid protocol-3 stream."""


class StartupFramer:
    """Collects one length-prefixed, untyped startup packet."""

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = MAX_STARTUP_PACKET) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Return ``(packet, rest)`` once a whole packet is in, else ``None``.

        ``packet`` excludes the 4-byte length; ``rest`` is whatever followed it.
        """
        self._buf += data
        if len(self._buf) < 4:
            return None
        (length,) = _LEN.unpack_from(self._buf, 0)
        if length < 8 or length > self.max_size:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if len(self._buf) < length:
            return None
        packet = bytes(self._buf[4:length])
        rest = bytes(self._buf[length:])
        self._buf.clear()
        return packet, rest


#: a message larger than this, while it arrives, is gathered in a bytearray (see _gather)
_BIG = 1 << 16


class MessageFramer:
    """Splits a stream of typed messages into whole messages.

    ``valid_types`` (a ``bytes`` of allowed type bytes) makes an unknown type a violation
    as soon as its header arrives.
    """

    __slots__ = ("_buf", "max_size", "valid_types", "syncs_since_execute", "_big", "_big_end")

    def __init__(self, max_size: int, valid_types: bytes | None = None) -> None:
        self._buf = b""
        self.syncs_since_execute = 0
        self.max_size = max_size
        self.valid_types = valid_types
        # a large message still arriving: its bytes so far, and its whole size. Gathered in
        # a bytearray (amortised appends), not by joining what came so far to each read,
        # which costs time quadratic in the message's size on the event loop of every session
        self._big: bytearray | None = None
        self._big_end = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held for the next feed."""
        return len(self._buf) + (len(self._big) if self._big is not None else 0)

    def _gather(self, data: bytes) -> bytes | None:
        """Add ``data`` to the large message arriving; its bytes (and what follows) once it
        is whole, else None."""
        big = self._big
        assert big is not None
        big += data
        if len(big) < self._big_end:
            return None
        self._big = None
        return bytes(big)

    def _keep(self, buf: bytes, pos: int, end: int) -> None:
        """Keep ``buf[pos:end]``, the start of a message, for the next feed."""
        if end - pos >= 5:
            size = 1 + _u32(buf, pos + 1)[0]
            if size > _BIG:
                self._big, self._big_end, self._buf = bytearray(buf[pos:end]), size, b""
                return
        self._buf = buf[pos:] if pos < end else b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Whole messages as ``(type, raw)``; ``raw`` includes the 5-byte header."""
        buf, _, spans = self.feed_spans(data)
        return [(mtype, buf[a:b]) for mtype, a, b in spans]

    def feed_spans(self, data: bytes) -> tuple[bytes, int, list[tuple[int, int, int]]]:
        """Like :meth:`feed`, without copying: ``(buf, upto, spans)``.

        ``buf[:upto]`` holds whole messages only; ``spans`` lists each as
        ``(type, start, stop)``. Whatever follows ``upto`` is kept for the next call.
        """
        if self._big is not None:
            data = self._gather(data)  # type: ignore[assignment]
            if data is None:
                return b"", 0, []
        buf = self._buf + data if self._buf else data
        spans: list[tuple[int, int, int]] = []
        pos = 0
        end = len(buf)
        valid = self.valid_types
        maxsz = self.max_size
        while end - pos >= 5:
            mtype = buf[pos]
            length = _u32(buf, pos + 1)[0]
            if valid is not None and mtype not in valid:
                raise ProtocolViolation(f"invalid message type 0x{mtype:02x}")
            if length < 4 or length > maxsz:
                raise ProtocolViolation(
                    f"invalid length {length} for message type {chr(mtype)!r}"
                )
            stop = pos + 1 + length
            if stop > end:
                break
            spans.append((mtype, pos, stop))
            pos = stop
        if pos < end:
            self._keep(buf, pos, end)
        else:
            self._buf = b""
        return buf, pos, spans

    def feed_count(self, data: bytes) -> tuple[bytes, int, int, bool]:
        """The relay's fast path: ``(buf, upto, n, terminate)`` without a list of spans.

        ``n`` is how many more ReadyForQuery messages the server will send for these
        messages (see :func:`ready_delta`); ``terminate`` says a Terminate ('X') was among
        them.
        """
        if self._big is not None:
            data = self._gather(data)  # type: ignore[assignment]
            if data is None:
                return b"", 0, 0, False
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        valid = self.valid_types
        maxsz = self.max_size
        n = 0
        terminate = False
        while end - pos >= 5:
            mtype = buf[pos]
            length = _u32(buf, pos + 1)[0]
            if valid is not None and mtype not in valid:
                raise ProtocolViolation(f"invalid message type 0x{mtype:02x}")
            if length < 4 or length > maxsz:
                raise ProtocolViolation(
                    f"invalid length {length} for message type {chr(mtype)!r}"
                )
            stop = pos + 1 + length
            if stop > end:
                break
            if mtype == 81 or mtype == 83 or mtype == 70:  # Q S F: each answered by a Z
                n += 1
                if mtype == 83:
                    self.syncs_since_execute += 1
                else:
                    self.syncs_since_execute = 0
            elif mtype == 69:  # E
                self.syncs_since_execute = 0
            elif mtype == 99 or mtype == 102:  # c f: Syncs sent during copy-in were ignored
                n -= self.syncs_since_execute
                self.syncs_since_execute = 0
            elif mtype == 88:  # X
                terminate = True
            pos = stop
        if pos < end:
            self._keep(buf, pos, end)
        else:
            self._buf = b""
        return buf, pos, n, terminate

    def ready_delta(self, mtype: int) -> int:
        """The same accounting as :meth:`feed_count`, one message at a time.

        Query, FunctionCall and Sync are each answered by one ReadyForQuery, except that
        the server ignores a Sync that arrives in copy-in mode — i.e. one sent between the
        Execute that started a COPY FROM STDIN and its CopyDone/CopyFail.
        """
        if mtype == 81 or mtype == 70:
            self.syncs_since_execute = 0
            return 1
        if mtype == 83:
            self.syncs_since_execute += 1
            return 1
        if mtype == 69:
            self.syncs_since_execute = 0
        elif mtype == 99 or mtype == 102:
            n, self.syncs_since_execute = self.syncs_since_execute, 0
            return -n
        return 0

    def take_buffered(self) -> bytes:
        """Hand over (and forget) bytes of an incomplete message, e.g. to another framer."""
        rest, self._buf = self._buf, b""
        if self._big is not None:
            rest, self._big = bytes(self._big), None
        return rest


class RelayScanner:
    """Finds message boundaries in a relayed stream, stopping only where it matters.

    ``feed(data)`` returns ``(buf, upto, events)``: ``buf[:upto]`` is ready to forward as it
    is, and ``events`` lists the whole messages in it whose type is in ``interesting``, as
    ``(type, start, stop)`` offsets into ``buf``. A message of another type is forwarded as
    its bytes arrive, even when it is incomplete: a multi-megabyte DataRow is never
    buffered. An interesting message is held back until it is whole.
    """

    __slots__ = ("_pending", "_skip", "interesting", "max_size")

    def __init__(self, interesting: bytes | frozenset[int], max_size: int) -> None:
        self.interesting = frozenset(interesting)
        self.max_size = max_size
        self._skip = 0  # bytes still to relay of an uninteresting message
        self._pending = b""  # an incomplete header or interesting message

    def feed(self, data: bytes) -> tuple[bytes, int, list[tuple[int, int, int]]]:
        end = len(data)
        pos = 0
        skip = self._skip
        if skip:
            if skip >= end:
                self._skip = skip - end
                return data, end, []
            pos = skip
            self._skip = 0
        elif self._pending:
            data = self._pending + data
            self._pending = b""
            end = len(data)
        events: list[tuple[int, int, int]] = []
        interesting = self.interesting
        maxsz = self.max_size
        while end - pos >= 5:
            mtype = data[pos]
            length = _u32(data, pos + 1)[0]
            if length < 4 or length > maxsz:
                raise ProtocolViolation(f"invalid length {length} for message type {chr(mtype)!r}")
            stop = pos + 1 + length
            if stop > end:
                if mtype in interesting:
                    self._pending = data[pos:]
                    return data, pos, events
                self._skip = stop - end
                return data, end, events
            if mtype in interesting:
                events.append((mtype, pos, stop))
            pos = stop
        if pos < end:
            self._pending = data[pos:]
        return data, pos, events

"""Direct TLS negotiation (PostgreSQL 17+, libpq ``sslnegotiation=direct``).

Such a client skips the SSLRequest and opens with a TLS ClientHello. By the time the session
sees it the bytes have been read, and asyncio's ``start_tls`` cannot be handed bytes already
read; so this runs TLS itself over memory BIOs: encrypted bytes from the socket go into
``feed``, decrypted ones come out to the session, and :class:`DirectTLS` stands in for the
client transport (``write``, ``close``, …), encrypting on the way out. As PostgreSQL does,
the client must negotiate the ALPN protocol ``postgresql``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable

TLS_HANDSHAKE = 0x16  # first byte of a TLS record carrying a handshake (the ClientHello)
ALPN = "postgresql"


class DirectTLS:
    def __init__(self, raw: asyncio.Transport, ctx: ssl.SSLContext,
                 on_data: Callable[[bytes], None], on_failure: Callable[[str], None]) -> None:
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.on_data = on_data
        self.on_failure = on_failure
        self.ready = False

    # -- bytes from the socket ---------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._in.write(data)
        if not self.ready:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:
                self._flush()
                self.on_failure(f"TLS handshake failed: {exc.reason or exc}")
                return
            self._flush()
            if self.obj.selected_alpn_protocol() != ALPN:
                self.on_failure("direct TLS connection without ALPN 'postgresql'")
                return
            self.ready = True
        chunks = []
        while True:
            try:
                chunk = self.obj.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.raw.close()
                break
            except ssl.SSLError as exc:
                self.on_failure(f"TLS error: {exc.reason or exc}")
                return
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()
        if chunks:
            self.on_data(b"".join(chunks))

    def _flush(self) -> None:
        out = self._out.read()
        if out and not self.raw.is_closing():
            self.raw.write(out)

    # -- the transport the session writes to ------------------------------------------------
    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.obj.write(view)
            view = view[n:]
        self._flush()

    def close(self) -> None:
        if self.ready:
            try:
                self.obj.unwrap()
            except ssl.SSLError:
                pass
            self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.obj
        return self.raw.get_extra_info(name, default)


class DirectTLSProtocol(asyncio.Protocol):
    """Takes the raw socket's events once a session has switched to direct TLS."""

    def __init__(self, tls: DirectTLS, session: asyncio.Protocol) -> None:
        self.data_received = tls.feed  # type: ignore[method-assign]
        self.session = session

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()

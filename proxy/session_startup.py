"""Session part: the startup packet, TLS, the upstream connection and the auth relay.

A client's first packet is an SSLRequest (answered 'S' and TLS is terminated here), a
GSSENCRequest (declined), a CancelRequest (forwarded with the upstream's secret) or the
StartupMessage. Then the upstream is opened (TCP, then TLS per sslmode), the client's
startup packet is sent on, and authentication messages are relayed both ways until
ReadyForQuery: SCRAM-SHA-256-PLUS is struck from the mechanisms (the client's TLS channel
is not the upstream's) and BackendKeyData gets the client's own cancel secret.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from .guard import Guard
from .tls_direct import TLS_HANDSHAKE, DirectTLS, DirectTLSProtocol
from .protocol import messages as m
from .protocol.framer import MessageFramer, ProtocolViolation, RelayScanner, StartupFramer
from .states import (AUTH, CONNECT, READY, RELAY_INTERESTING, STARTUP, TRACKED_INTERESTING, _E, _K,
                     _R, _S, _Z)
from .tracker import StatementTracker

log = logging.getLogger("pgveil.session")


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _upstream_protocol(session):
    from .session import UpstreamProtocol  # the session module imports this one

    return UpstreamProtocol(session)


class StartupMixin:
    """Methods of :class:`proxy.session.Session` that run before it is ready."""

    def _startup_timed_out(self) -> None:
        if self.state in (STARTUP, CONNECT, AUTH):
            self.fatal("08P01", "pgveil: canceling authentication due to timeout",
                       hint="The client did not finish connecting within "
                            "proxy.startup_timeout seconds.")

    def _client_startup(self, data: bytes) -> None:
        if data and data[0] == TLS_HANDSHAKE and self._startup.buffered == 0 \
                and self._tls_pending is None and not self._direct_tls_tried:
            self._start_direct_tls(data)
            return
        got = self._startup.feed(data)
        if got is None:
            return
        packet, rest = got
        req = m.decode_startup(packet)
        if isinstance(req, m.SSLRequest):
            if rest:
                raise ProtocolViolation("unencrypted data after SSL request")
            ctx = self.server.client_tls
            if ctx is None:
                self.client.write(b"N")  # type: ignore[union-attr]
                return
            self.client.write(b"S")  # type: ignore[union-attr]
            self._spawn(self._start_client_tls(ctx))
            return
        if isinstance(req, m.GSSENCRequest):
            if rest:
                raise ProtocolViolation("unencrypted data after GSSENC request")
            self.client.write(b"N")  # type: ignore[union-attr]
            return
        if isinstance(req, m.CancelRequest):
            # close only once the upstream has the cancel: clients take the close to mean
            # "the cancel has been processed" (libpq's PQcancel waits for it)
            task = self.server.cancel(req.pid, req.secret)
            task.add_done_callback(lambda _t: self.close())
            return
        self.startup = req
        params = req.params
        if "user" not in params:
            self.fatal("28000", "pgveil: no PostgreSQL user name specified in startup packet",
                       hint="Set the user in the connection string.")
            return
        repl = params.get("replication", "false").lower()
        if repl not in ("false", "off", "no", "0"):
            self.fatal("0A000", "pgveil: replication connections are not supported",
                       hint="Connect replication clients directly to the database server.")
            return
        if self.server.closing:
            self.fatal("57P03", "pgveil: the proxy is shutting down",
                       hint="Reconnect in a moment; another instance may take the connection.")
            return
        self.state = CONNECT
        if rest:
            self._early.append(rest)
        px = self.settings.proxy
        if params.get("database") == px.console_database:
            # authenticate against the upstream like any session, then talk to pgveil itself
            from .console.handler import ConsoleHandler

            self.console = ConsoleHandler(self.server.jit, params["user"],
                                          self.server.approvers())
            params = {**params, "database": px.console_auth_database}
            packet = m.encode_startup(req.version, params)[4:]
        self._spawn(self._connect_upstream(packet))

    def _start_direct_tls(self, data: bytes) -> None:
        """The client opened with a TLS ClientHello (sslnegotiation=direct)."""
        self._direct_tls_tried = True
        ctx = self.server.client_tls
        if ctx is None:
            self.client.abort()  # no certificate configured: nothing can answer a ClientHello
            return
        raw = self.client

        def failed(reason: str) -> None:
            log.info("client %s: %s", self.peer, reason)
            raw.abort()

        tls = DirectTLS(raw, ctx, self.data_received, failed)
        raw.set_protocol(DirectTLSProtocol(tls, self))
        self.client = tls
        tls.feed(data)

    def _spawn(self, coro) -> None:
        self._task = asyncio.get_running_loop().create_task(coro)

    async def _start_client_tls(self, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        self._tls_pending = []
        try:
            self.client = await loop.start_tls(self.client, self, ctx, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            log.info("client %s: TLS handshake failed: %s", self.peer, exc)
            if self.client is not None:
                self.client.abort()
            return
        except asyncio.CancelledError:
            return
        self._startup = StartupFramer()
        early, self._tls_pending = self._tls_pending, None
        for data in early:  # the startup packet, when it came with the last handshake bytes
            self.data_received(data)

    async def _connect_upstream(self, startup_packet: bytes) -> None:
        up = self.settings.upstream
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _upstream_protocol(self), up.host, up.port),
                self.settings.proxy.connect_timeout,
            )
            self.upstream = transport
            _nodelay(transport)
            if up.sslmode != "disable":
                self._ssl_waiter = loop.create_future()
                transport.write(m.encode_ssl_request())
                answer = await asyncio.wait_for(self._ssl_waiter, self.settings.proxy.connect_timeout)
                self._ssl_waiter = None
                if answer[:1] == b"S":
                    if len(answer) > 1:
                        raise ConnectionError("upstream sent unencrypted data after SSL response")
                    self.upstream = await loop.start_tls(
                        transport,
                        transport.get_protocol(),
                        self.server.upstream_tls,
                        server_hostname=up.host,
                    )
                elif answer[:1] == b"N":
                    if up.sslmode != "prefer":
                        raise ConnectionError("the upstream server does not support SSL, "
                                              f"but sslmode is {up.sslmode}")
                else:
                    raise ConnectionError("unexpected answer to SSLRequest")
        except asyncio.CancelledError:
            if self.upstream is not None:
                self.upstream.abort()
            return
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("client %s: upstream connection failed: %s", self.peer, reason)
            self.server.metrics_upstream_error()
            if self.upstream is not None:
                self.upstream.abort()
                self.upstream = None
            self.fatal("08006", f"pgveil: could not connect to the upstream server: {reason}",
                       hint="Check [upstream] host, port and sslmode in the pgveil config.")
            return
        if self.state != CONNECT:  # client went away meanwhile
            self.upstream.close()
            return
        self._backend = MessageFramer(self.settings.proxy.max_message_bytes)
        self.state = AUTH
        self.upstream.write((len(startup_packet) + 4).to_bytes(4, "big") + startup_packet)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def upstream_data(self, data: bytes) -> None:
        if self.state == READY:
            self._relay(data)
            return
        if self._ssl_waiter is not None:
            if not self._ssl_waiter.done():
                self._ssl_waiter.set_result(data)
            return
        try:
            self._auth_from_upstream(data)
        except ProtocolViolation as exc:
            self.fatal("08P01", f"pgveil: the upstream server sent invalid data: {exc}")

    def _auth_from_upstream(self, data: bytes) -> None:
        out: list[bytes] = []
        framer = self._backend
        assert isinstance(framer, MessageFramer)
        msgs = framer.feed(data)
        for i, (mtype, raw) in enumerate(msgs):
            if mtype == _R:
                code, payload = m.decode_auth(raw[5:])
                if code == m.AUTH_SASL:
                    mechs = [x for x in m.decode_sasl_mechanisms(payload) if not x.endswith("-PLUS")]
                    raw = m.encode_auth_sasl(mechs)
            elif mtype == _K:
                self.backend_pid, self.upstream_secret = m.decode_backend_key(raw[5:])
                self.client_secret = self.server.client_cancel_secret(self.backend_pid, self.upstream_secret)
                raw = m.encode_backend_key(self.backend_pid, self.client_secret)
            elif mtype == _S:
                name, value = m.decode_parameter_status(raw[5:])
                self.parameters[name] = value
            elif mtype == _E:
                self.upstream_fatal = True
            elif mtype == _Z:
                out.append(raw)
                self.tx_status = raw[5:6]
                self.state = READY
                if self._startup_timer is not None:
                    self._startup_timer.cancel()
                if self.console is not None:
                    self.terminated = True
                    self.upstream.write(m.msg(b"X"))  # type: ignore[union-attr]
                    self.upstream.close()  # type: ignore[union-attr]
                    self.client.write(b"".join(out))  # type: ignore[union-attr]
                    self.server.session_ready(self)
                    return
                interesting = RELAY_INTERESTING
                if self.server.audit is not None or self.server.policy.policy is not None:
                    self.tracker = StatementTracker(self._begin, self._end,
                                                    rows=self.server.audit is not None)
                    interesting = TRACKED_INTERESTING
                    task = self.server.policy.ensure_catalog(self.database)
                    if (task is not None and self.server.audit is not None
                            and not self.server.policy.masks(self.user)):
                        # the audit records which tables a statement touches: that needs
                        # the catalog, so the first statements wait for its first load
                        # (a masked session waits for it below anyway)
                        self._hold(task)
                if self.server.policy.masks(self.user):
                    self.guard = Guard(self.server.policy, self.user, self.database,
                                       self.parameters, self.settings.proxy.notice_masked,
                                       self.settings.proxy.statement_cache)
                    interesting = bytes(set(interesting) | set(Guard.INTERESTING))
                    task = self.server.policy.ensure_catalog(self.database)
                    if task is not None:
                        self._hold(task)
                self._backend = RelayScanner(interesting, self.settings.proxy.max_message_bytes)
                self.client.write(b"".join(out))  # type: ignore[union-attr]
                rest = b"".join(r for _, r in msgs[i + 1 :]) + framer.take_buffered()
                if rest:
                    self._relay(rest)
                self.server.session_ready(self)
                return
            out.append(raw)
        if out:
            self.client.write(b"".join(out))  # type: ignore[union-attr]

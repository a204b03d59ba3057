"""One client session: a client connection, its upstream connection, and the relay between.

The session is an asyncio ``Protocol`` for the client socket; a thin :class:`UpstreamProtocol`
feeds the upstream socket's bytes back into it. Both directions run on callbacks, not
streams: on the hot path ``data_received`` frames the bytes with the sans-I/O codec and writes
them on in one call.

Life of a session::

    STARTUP   SSLRequest / GSSENCRequest / CancelRequest / StartupMessage from the client
    CONNECT   open the upstream (TCP, then TLS per sslmode), send the client's startup packet
    AUTH      relay authentication both ways; swap BackendKeyData for our own; strip
              SCRAM-SHA-256-PLUS (the client's TLS channel is not the upstream's)
    READY     relay: client messages are framed whole, server bytes stream through a scanner
              that stops only at the few message types the proxy must see
    CLOSED
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING

from .audit.errors import AuditUnavailable
from .guard import Guard, NeedApproval, NeedCatalog, NeedSync
from .protocol import messages as m
from .protocol.framer import MessageFramer, ProtocolViolation, RelayScanner, StartupFramer
from .tracker import StatementTracker

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger("pgveil.session")

STARTUP, CONNECT, AUTH, READY, CLOSED = range(5)

_Z, _E, _S, _K, _R, _V = b"ZESKRv"
_X, _Q, _SYNC, _P, _B, _EXEC, _CLOSE, _FUNC, _DESCRIBE = b"XQSPBECFD"
_CC, _EMPTY, _SUSPENDED = b"CIs"
#: Server messages the relay must look at once a session is ready.
RELAY_INTERESTING = b"ZES"
#: ... and when statements are tracked (audit): the answers that end a statement
TRACKED_INTERESTING = b"ZESCIs"


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class UpstreamProtocol(asyncio.Protocol):
    """Hands the upstream socket's events to the session."""

    def __init__(self, session: "Session") -> None:
        self.session = session
        self.data_received = session.upstream_data  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_client_reading()

    def resume_writing(self) -> None:
        self.session.resume_client_reading()


class Session(asyncio.Protocol):
    """The client side of one proxied connection."""

    def __init__(self, server: "ProxyServer") -> None:
        self.server = server
        self.settings = server.settings
        self.state = STARTUP
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.peer = ""
        self._startup = StartupFramer()
        self._frontend = MessageFramer(self.settings.proxy.max_message_bytes, m.FRONTEND_TYPES)
        self._backend: MessageFramer | RelayScanner | None = None
        self._early: list[bytes] = []  # client bytes that arrived before the upstream was up
        self._ssl_waiter: asyncio.Future | None = None
        self.startup: m.StartupMessage | None = None
        self.backend_pid = 0
        self.upstream_secret = b""
        self.client_secret = b""
        self.pending = 0  # Query and Sync messages sent upstream and not yet answered
        self.tx_status = b"I"
        self.parameters: dict[str, str] = {}
        self.upstream_fatal = False
        self.terminated = False
        self.drain_then_close = False
        self._client_paused = False
        self._task: asyncio.Task | None = None
        self._startup_timer: asyncio.TimerHandle | None = None
        self._tls_pending: list[bytes] | None = None  # set while the TLS handshake runs
        self.guard: Guard | None = None
        self.tracker: StatementTracker | None = None
        self.poisons: dict[str, bytes] = {}  # statements refused in-band without a guard
        self._last_rid = 0
        self._idle_waiters: list[asyncio.Future] = []
        self._audit_frag: bytes | None = None
        self._unclassified = server.metrics.statements.labels("unclassified", "forward")
        self.session_id = server.new_session_id()
        self.console = None  # a ConsoleHandler when the client opened the console database
        self._console_failed = False
        self._holding = False  # client bytes wait in _backlog while a statement is held
        self._backlog = b""

    @property
    def user(self) -> str:
        return self.startup.params.get("user", "") if self.startup else ""

    @property
    def database(self) -> str:
        if self.startup is None:
            return ""
        return self.startup.params.get("database") or self.user

    # ------------------------------------------------------------------ client socket events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.client = transport  # type: ignore[assignment]
        _nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        if not self.server.admit(self):
            self.fatal("53300", "pgveil: sorry, too many clients already",
                       hint="Raise proxy.max_connections or retry later.")
            return
        timeout = self.settings.proxy.startup_timeout
        if timeout:
            self._startup_timer = asyncio.get_running_loop().call_later(
                timeout, self._startup_timed_out)

    def _startup_timed_out(self) -> None:
        if self.state in (STARTUP, CONNECT, AUTH):
            self.fatal("08P01", "pgveil: canceling authentication due to timeout",
                       hint="The client did not finish connecting within "
                            "proxy.startup_timeout seconds.")

    def data_received(self, data: bytes) -> None:
        try:
            if self.state == READY:
                self._client_ready(data)
            elif self.state == STARTUP:
                if self._tls_pending is not None:
                    # decrypted bytes that beat start_tls() back: keep them for after it
                    self._tls_pending.append(data)
                    return
                self._client_startup(data)
            elif self.state == AUTH:
                for _, raw in self._frontend.feed(data):
                    self.upstream.write(raw)  # type: ignore[union-attr]
            elif self.state == CONNECT:
                self._early.append(data)
        except ProtocolViolation as exc:
            self.fatal("08P01", f"pgveil: protocol violation: {exc}",
                       hint="The client sent bytes that are not valid PostgreSQL protocol 3.")

    def connection_lost(self, exc: Exception | None) -> None:
        up = self.upstream
        if up is not None and not up.is_closing():
            if self.state == READY and not self.terminated:
                up.write(m.msg(b"X"))
            up.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.tracker is not None:
            self.tracker.abandon()
        if self._startup_timer is not None:
            self._startup_timer.cancel()
        self.state = CLOSED
        self.server.release(self)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def pause_client_reading(self) -> None:
        if self.client is not None and not self._client_paused:
            self._client_paused = True
            self.client.pause_reading()

    def resume_client_reading(self) -> None:
        if self.client is not None and self._client_paused:
            self._client_paused = False
            self.client.resume_reading()

    # ------------------------------------------------------------------ startup
    def _client_startup(self, data: bytes) -> None:
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
                loop.create_connection(lambda: UpstreamProtocol(self), up.host, up.port),
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

    # ------------------------------------------------------------------ upstream events
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
                    self.tracker = StatementTracker(self._begin, self._end)
                    interesting = TRACKED_INTERESTING
                    self.server.policy.ensure_catalog(self.database)
                if self.server.policy.masks(self.user):
                    self.guard = Guard(self.server.policy, self.user, self.database,
                                       self.parameters, self.settings.proxy.notice_masked)
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

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.state == CLOSED or self.client is None or self.client.is_closing():
            return
        if self.console is not None and self.state == READY:
            return  # the console's upstream was only for authentication
        if self._ssl_waiter is not None and not self._ssl_waiter.done():
            self._ssl_waiter.set_exception(ConnectionError("upstream closed the connection"))
            return
        if self.state in (CONNECT,):
            return  # the connect task reports it
        if not self.upstream_fatal and not self.terminated:
            self.server.metrics_upstream_error()
            self.fatal("08006", "pgveil: lost the connection to the upstream server",
                       hint="The database server closed the connection or crashed; reconnect.")
        else:
            self.close()

    # ------------------------------------------------------------------ the relay (hot path)
    def _client_ready(self, data: bytes) -> None:
        if self._holding:
            self._backlog += data
            return
        if self.console is not None:
            self._console_ready(data)
            return
        guard = self.guard
        tracker = self.tracker
        if guard is None and tracker is None:
            buf, upto, n, terminate = self._frontend.feed_count(data)
            if upto:
                if n > 0:
                    self._unclassified.inc(n)  # no policy, no audit: not classified
                self.pending += n
                if terminate:
                    self.terminated = True
                self.upstream.write(buf if upto == len(buf) else buf[:upto])  # type: ignore[union-attr]
            return
        buf, upto, spans = self._frontend.feed_spans(data)
        if not spans:
            return
        out: list[bytes] = []
        last = 0
        durable = 0  # the last audit intent to wait for (fsync = "always")
        for mtype, start, stop in spans:
            rep = None
            try:
                if mtype == _Q:
                    t0 = time.perf_counter()
                    if guard is not None:
                        rep = guard.client_query(buf[start + 5 : stop])
                        info = guard.last
                    else:
                        info = self._classify(m.decode_query(buf[start + 5 : stop]))
                    if tracker is not None:
                        self._last_rid = 0
                        try:
                            tracker.query(info, self._raw_if_logged(buf[start + 5 : stop]))
                        except AuditUnavailable:
                            rep = m.encode_query(self._poison(self._audit_down()))
                        durable = self._last_rid or durable
                    self.server.metrics.added.observe(time.perf_counter() - t0)
                    if guard is not None:
                        guard.stmts.end_batch()
                elif mtype == _P:
                    t0 = time.perf_counter()
                    if guard is not None:
                        rep = guard.client_parse(buf[start + 5 : stop])
                        info = guard.last
                    else:
                        parse = m.decode_parse(buf[start + 5 : stop])
                        info = self._classify(parse.query)
                    if tracker is not None:
                        body = buf[start + 5 : stop]
                        if self._logs_literals():
                            parsed = m.decode_parse(body)
                            tracker.parse(parsed.name, info, parsed.query)
                        else:
                            tracker.parse(m.decode_parse_name(body), info)
                    self.server.metrics.added.observe(time.perf_counter() - t0)
                elif mtype == _B:
                    if guard is not None:
                        rep = guard.client_bind(buf[start + 5 : stop])
                    if tracker is not None:
                        portal, stmt, _ = m.decode_bind_names(buf[start + 5 : stop])
                        tracker.bind(portal, stmt, m.decode_bind_values(buf[start + 5 : stop])
                                     if self._logs_literals() else None)
                        if rep is not None and guard is not None:  # re-prepared: new decision
                            prepared = guard.stmts.prepared.get(stmt)
                            if prepared is not None and prepared.decision is not None:
                                tracker.parse(stmt, prepared.decision)
                elif mtype == _EXEC:
                    if guard is not None:
                        rep = guard.client_execute(buf[start + 5 : stop])
                    if tracker is not None:
                        self._last_rid = 0
                        try:
                            tracker.execute(m.decode_execute_portal(buf[start + 5 : stop]),
                                            self._unknown_statement)
                        except AuditUnavailable:
                            # refuse the batch: a Parse of a poison statement fails in-band
                            rep = m.encode_parse(m.Parse("", self._poison(self._audit_down()),
                                                         [])) + buf[start:stop]
                        durable = self._last_rid or durable
                elif mtype == _SYNC:
                    if tracker is not None:
                        tracker.sync()
                    if guard is not None:
                        guard.stmts.end_batch()
                        if guard.path_dirty:
                            guard.synced_since_dirty = True
                elif mtype == _CLOSE:
                    if guard is not None:
                        rep = guard.client_close(buf[start + 5 : stop])
                    if tracker is not None:
                        what, name = m.decode_describe_or_close(buf[start + 5 : stop])
                        tracker.close(what, name)
                elif mtype == _DESCRIBE:
                    if guard is not None:
                        rep = guard.client_describe(buf[start + 5 : stop])
                elif mtype == _FUNC:
                    if tracker is not None:
                        tracker.function_call(self._unknown_statement())
                elif mtype == _X:
                    self.terminated = True
            except (NeedCatalog, NeedApproval, NeedSync) as exc:
                # send what came before; hold this statement and the rest until the catalog
                # is fresh, or the action's request is decided (or hold_seconds pass)
                out.append(buf[last:start])
                self._backlog = buf[start:upto] + self._frontend.take_buffered() + self._backlog
                if isinstance(exc, NeedCatalog):
                    task = self.server.policy.ensure_catalog(self.database, force=True)
                elif isinstance(exc, NeedSync):
                    task = self._until_idle()
                else:
                    task = asyncio.get_running_loop().create_task(
                        self.server.hold_for_approval(self, exc.decision))
                if task is not None:
                    self._hold(task)
                break
            delta = self._frontend.ready_delta(mtype)
            if delta:
                self.pending += delta
                if delta < 0:
                    if tracker is not None:
                        tracker.forget_syncs(-delta)
                    if guard is not None:
                        guard.stmts.batch += delta
            if rep is not None:
                out.append(buf[last:start])
                out.append(rep)
                last = stop
        else:
            out.append(buf[last:upto])
        data_out = b"".join(out)
        if not data_out:
            return
        audit = self.server.audit
        if durable and audit is not None and audit.wait_before_forward:
            self._hold(asyncio.get_running_loop().create_task(
                self._forward_when_durable(durable, data_out)))
            return
        self.upstream.write(data_out)  # type: ignore[union-attr]

    def _until_idle(self) -> asyncio.Future:
        """A future done once every statement sent so far has been answered."""
        fut = asyncio.get_running_loop().create_future()
        if self.pending == 0:
            fut.set_result(None)
        else:
            self._idle_waiters.append(fut)
        return fut

    async def _forward_when_durable(self, rid: int, data: bytes) -> None:
        from .audit.errors import AuditUnavailable as _Down

        try:
            ok = await self.server.audit.durable(rid)  # type: ignore[union-attr]
        except _Down:
            ok = False
            if self.server.audit.settings.on_failure == "fail_closed":  # type: ignore[union-attr]
                # the intent is not durable: the statement must not run (fail closed)
                from policy.errors import render

                sqlstate, message, hint = render("audit_unavailable")
                self.server.metrics.denials.labels("audit_unavailable").inc()
                self.fatal(sqlstate, message, hint=hint)
                return
        if not ok:
            log.warning("audit record %d is not durable (on_failure = continue)", rid)
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.write(data)

    # ------------------------------------------------------------------ audit and metrics
    def _logs_literals(self) -> bool:
        audit = self.server.audit
        return audit is not None and audit.settings.include_literals

    def _raw_if_logged(self, body: bytes) -> str | None:
        audit = self.server.audit
        if audit is not None and audit.settings.include_literals:
            return m.decode_query(body)
        return None

    def _classify(self, sql: str):
        """The decision record of a statement that is forwarded as it is (exempt users)."""
        return self.server.policy.classify(sql, user=self.user, database=self.database,
                                           parameters=self.parameters)

    def _unknown_statement(self):
        return self.server.policy.unknown_statement()

    def _poison(self, error: bytes) -> str:
        if self.guard is not None:
            return self.guard._poison(error)
        from .guard import POISON_PREFIX
        import secrets

        token = POISON_PREFIX + secrets.token_hex(8)
        self.poisons[token] = error
        return token

    def _audit_down(self) -> bytes:
        from policy.errors import render

        self.server.metrics.denials.labels("audit_unavailable").inc()
        sqlstate, message, hint = render("audit_unavailable")
        return m.error_response(sqlstate, message, hint=hint)

    def _begin(self, info, extended: bool, raw: str | None = None) -> int:
        """A statement is sent: write its audit intent (may raise), then count it."""
        audit = self.server.audit
        rid = 0
        if audit is not None:
            frag = self._session_fragment() + (
                b'"protocol":"extended",' if extended else b'"protocol":"simple",') + \
                statement_fragment(info)
            if raw is not None and audit.settings.include_literals:
                if isinstance(raw, dict):  # extended: the Parse text and the Bind values
                    frag += b',"sql":' + json.dumps(raw.get("sql"), ensure_ascii=False).encode()
                    frag += b',"params":' + json.dumps(raw.get("params"),
                                                       ensure_ascii=False).encode()
                else:
                    frag += b',"sql":' + json.dumps(raw, ensure_ascii=False).encode()
            rid = audit.intent_encoded(frag)
            self._last_rid = rid
        metrics = self.server.metrics
        action = info.action
        metrics.statements.labels(info.kind or "other", action).inc()
        if action == "deny":
            metrics.denials.labels(info.reason or "denied").inc()
        if info.masked:
            metrics.masked_columns.inc(len(info.masked))
        if info.grants_used:
            metrics.grant_uses.inc()
            jit = self.server.jit
            if jit is not None:
                for gid in info.grants_used:
                    jit.record_use(gid)
        return rid

    def _session_fragment(self) -> bytes:
        frag = self._audit_frag
        if frag is None:
            frag = self._audit_frag = json.dumps({
                "session": self.session_id, "client": self.peer, "user": self.user,
                "database": self.database,
                "application_name": self.parameters.get("application_name") or None,
            }, ensure_ascii=False, separators=(",", ":"))[1:-1].encode() + b","
        return frag

    def _end(self, running, executed: bool) -> None:
        elapsed = time.perf_counter() - running.started
        self.server.metrics.duration.observe(elapsed)
        audit = self.server.audit
        if audit is not None and running.ref:
            sqlstate = running.sqlstate or ("00000" if executed else "skipped")
            audit.complete_encoded(running.ref, b'"rows":%d,"duration_ms":%.3f,"sqlstate":"%s",'
                                   b'"session":"%s"' % (running.rows if executed else 0,
                                                       elapsed * 1000, sqlstate.encode(),
                                                       self.session_id.encode()))

    def _console_ready(self, data: bytes) -> None:
        """The console database: simple-protocol commands answered by pgveil itself."""
        buf, upto, spans = self._frontend.feed_spans(data)
        for i, (mtype, start, stop) in enumerate(spans):
            if mtype == _X:
                self.terminated = True
                self.close()
                return
            if mtype == _Q:
                text = m.decode_query(buf[start + 5 : stop])
                self._backlog = b"".join(buf[a:b] for _, a, b in spans[i + 1 :]) + \
                    self._frontend.take_buffered() + self._backlog
                self._hold(asyncio.get_running_loop().create_task(self._console_query(text)))
                return
            if mtype == _SYNC:
                self._console_failed = False
                self.client.write(m.ready_for_query(b"I"))  # type: ignore[union-attr]
            elif not self._console_failed and mtype != 72:  # 'H' Flush needs no answer
                self._console_failed = True
                self.client.write(m.error_response(  # type: ignore[union-attr]
                    "0A000", "pgveil console: only the simple query protocol is supported",
                    hint="Use psql, or your driver's simple-query mode."))

    async def _console_query(self, text: str) -> None:
        try:
            reply = await self.console.run(text)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - a console bug must not kill the proxy
            log.exception("console command failed")
            reply = m.error_response("XX000", f"pgveil console: internal error ({type(exc).__name__})")
        if self.client is not None and not self.client.is_closing():
            self.client.write(reply + m.ready_for_query(b"I"))

    def _hold(self, task: asyncio.Future) -> None:
        """Hold the client's statements until ``task`` is done, then carry on."""
        self._holding = True
        self.pause_client_reading()

        def release(_fut: asyncio.Future) -> None:
            self._holding = False
            if self.state != READY:
                return
            self.resume_client_reading()
            backlog, self._backlog = self._backlog, b""
            if backlog:
                try:
                    self._client_ready(backlog)
                except ProtocolViolation as exc:
                    self.fatal("08P01", f"pgveil: protocol violation: {exc}")

        task.add_done_callback(release)

    def _relay(self, data: bytes) -> None:
        try:
            buf, upto, events = self._backend.feed(data)  # type: ignore[union-attr]
        except ProtocolViolation as exc:
            self.fatal("08P01", f"pgveil: the upstream server sent invalid data: {exc}")
            return
        guard = self.guard
        out = None
        last = 0
        tracker = self.tracker
        for mtype, start, stop in events:
            replaced = False
            if mtype == _Z:
                self.tx_status = buf[start + 5 : stop]
                if self.pending:
                    self.pending -= 1
                if tracker is not None:
                    tracker.ready()
            elif mtype == _CC:
                if tracker is not None:
                    tracker.command_complete(buf[start + 5 : stop])
            elif mtype == _EMPTY or mtype == _SUSPENDED:
                if tracker is not None:
                    tracker.empty_or_suspended()
            elif mtype == _E:
                fields = m.decode_fields(buf[start + 5 : stop])
                if fields.get("V") in ("FATAL", "PANIC"):
                    self.upstream_fatal = True
                sqlstate = fields.get("C", "XX000")
                if self.poisons or (guard is not None and guard.poisons):
                    text = fields.get("M", "")
                    for poisons in (self.poisons, guard.poisons if guard is not None else {}):
                        token = next((t for t in poisons if t in text), None)
                        if token is not None:
                            mine = poisons.pop(token)
                            if out is None:
                                out = []
                            out.append(buf[last:start])
                            out.append(mine)
                            last = stop
                            replaced = True
                            sqlstate = m.decode_fields(mine[5:]).get("C", sqlstate)
                            break
                if tracker is not None:
                    tracker.error(sqlstate)
            if guard is not None and not replaced:
                dropping = guard.blocking  # after a failed wire check: drop all but Z
                rep = guard.server_message(mtype, buf[start:stop], self.pending == 0)
                if dropping or rep is not None:
                    if out is None:
                        out = []
                    if not dropping:
                        out.append(buf[last:start])
                    out.append(buf[start:stop] if rep is None else rep)
                    last = stop
                if mtype == _Z and guard.refresh_after and self.pending == 0:
                    guard.refresh_after = False
                    task = self.server.policy.ensure_catalog(self.database, force=True)
                    if task is not None:
                        self._hold(task)
        if guard is not None and guard.blocking:
            if out is None:
                out = []
            last = upto  # the rest of a withheld result is dropped
        if out is not None:
            out.append(buf[last:upto])
            self.client.write(b"".join(out))  # type: ignore[union-attr]
        elif upto:
            self.client.write(buf if upto == len(buf) else buf[:upto])  # type: ignore[union-attr]
        if self.pending == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        if self.drain_then_close and self.pending == 0:
            self.shutdown_now()

    # ------------------------------------------------------------------ endings
    def is_idle(self) -> bool:
        return self.state != READY or self.pending == 0

    def fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Send a FATAL ErrorResponse to the client and close the session."""
        if self.client is not None and not self.client.is_closing():
            self.client.write(m.error_response(sqlstate, message, severity="FATAL", hint=hint))
        self.close()

    def shutdown_now(self) -> None:
        self.fatal("57P01", "pgveil: terminating connection because the proxy is shutting down",
                   hint="Reconnect; the proxy is restarting or being replaced.")

    def close(self) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.close()
        if self.upstream is not None and not self.upstream.is_closing():
            if self.state == READY and not self.terminated:
                self.terminated = True
                self.upstream.write(m.msg(b"X"))
            self.upstream.close()
        self.state = CLOSED



_FRAGMENTS: dict[tuple, bytes] = {}


def statement_fragment(info) -> bytes:
    """The audit JSON members of a statement decision, cached by what they contain."""
    key = (info.fingerprint, info.action, info.kind, info.tables, info.masked, info.grants_used,
           info.reason)
    frag = _FRAGMENTS.get(key)
    if frag is None:
        if len(_FRAGMENTS) > 4096:
            _FRAGMENTS.clear()
        frag = _FRAGMENTS[key] = json.dumps({
            "fingerprint": info.fingerprint, "normalized": info.normalized,
            "decision": info.action, "kind": info.kind, "tables": list(info.tables),
            "masked": [f"{t}.{c}" for t, c, _ in info.masked],
            "grants": list(info.grants_used), "reason": info.reason,
        }, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()
    return frag

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
import logging
import time
from typing import TYPE_CHECKING

from .audit.errors import AuditUnavailable
from .guard import Guard, NeedApproval, NeedCatalog, NeedSync
from .protocol import messages as m
from .protocol.framer import MessageFramer, ProtocolViolation, RelayScanner, StartupFramer
from .console.session import ConsoleMixin
from .session_records import RecordsMixin
from .session_startup import StartupMixin, _nodelay  # noqa: F401 (re-exported)
from .tracker import StatementTracker
from . import bind_plans

if TYPE_CHECKING:
    from .server import ProxyServer

log = logging.getLogger("pgveil.session")

from .states import (
    _B, _CC, _CLOSE, _DESCRIBE, _E, _EMPTY, _EXEC, _FUNC, _P, _Q, _S, _SUSPENDED, _SYNC, _X, _Z,
    AUTH, CLOSED, CONNECT, READY, STARTUP,
)




_GUARD_TYPES = frozenset(Guard.INTERESTING)
_BIND_DONE = 50  # '2' BindComplete


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


class Session(StartupMixin, RecordsMixin, ConsoleMixin, asyncio.Protocol):
    """The client side of one proxied connection.

    Its parts live in their own modules: the startup and authentication relay
    (:mod:`proxy.session_startup`), audit records and statement metrics
    (:mod:`proxy.session_records`), the console database (:mod:`proxy.console.session`).
    This module keeps the socket events and the relay itself.
    """

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
        self._direct_tls_tried = False
        self.guard: Guard | None = None
        self.tracker: StatementTracker | None = None
        self.poisons: dict[str, bytes] = {}  # statements refused in-band without a guard
        self._last_rid = 0
        self._idle_waiters: list[asyncio.Future] = []
        self._audit_frag: bytes | None = None
        self._classified: dict[str, tuple] = {}  # skeleton -> (context, classification)
        self.session_id = server.new_session_id()
        self.console = None  # a ConsoleHandler when the client opened the console database
        self._console_failed = False
        self._holding = False  # client bytes wait in _backlog while a statement is held
        self._bind_plans: dict[bytes, bind_plans.BindPlan] = {}  # see proxy.bind_plans
        # without a guard: the last unnamed Parse that opened a replayable batch, with the
        # classification context and the statement it was classified as
        self._parse_hit: tuple[bytes, tuple, object] | None = None
        self._forwarded = False  # the statements being followed are already upstream
        self._deferred_n = 0  # statements whose audit intent waits for their outcome
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

    # ------------------------------------------------------------------ upstream events
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
                    self.server.unclassified += n  # no policy, no audit: counted, not classified
                self.pending += n
                if terminate:
                    self.terminated = True
                self.upstream.write(buf if upto == len(buf) else buf[:upto])  # type: ignore[union-attr]
            return
        if self._bind_plans:
            if data[:1] == b"B":
                plan = self._bind_plans.get(data[5 : data.find(b"\x00", 6) + 1])
                if plan is not None and self._replay_bind(plan, data):
                    return
            elif data[:1] == b"P":
                if guard is not None:
                    if self._replay_parse_bind(data):
                        return
                elif self._parse_hit is not None and self._replay_followed_parse(data):
                    return
        if guard is None:
            audit = self.server.audit
            if audit is None or audit.takes_forwarded:
                self._forward_then_follow(data)
                return
        buf, upto, spans = self._frontend.feed_spans(data)
        if not spans:
            return
        out: list[bytes] = []
        last = 0
        parse_rep = None  # what replaced a Parse that opens the batch
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
                    parsed = m.decode_parse(buf[start + 5 : stop])
                    if guard is not None:
                        rep = guard.client_parse(parsed)
                        info = guard.last
                        if start == 0:
                            parse_rep = rep
                    else:
                        info = self._classify(parsed.query)
                    if tracker is not None:
                        tracker.parse(parsed.name, info,
                                      parsed.query if self._logs_literals() else None)
                    self.server.metrics.added.observe(time.perf_counter() - t0)
                elif mtype == _B:
                    body = buf[start + 5 : stop]
                    portal, stmt, rest = m.decode_bind_names(body)
                    if guard is not None:
                        rep = guard.client_bind(body, portal, stmt, rest)
                    if tracker is not None:
                        tracker.bind(portal, stmt, m.decode_bind_values(body)
                                     if self._logs_literals() else None)
                        if rep is not None and guard is not None:  # re-prepared: new decision
                            prepared = guard.stmts.prepared.get(stmt)
                            if prepared is not None and prepared.decision is not None:
                                tracker.parse(stmt, prepared.decision)
                elif mtype == _EXEC:
                    portal = m.decode_execute_portal(buf[start + 5 : stop])
                    if guard is not None:
                        rep = guard.client_execute(buf[start + 5 : stop], portal)
                    if tracker is not None:
                        self._last_rid = 0
                        try:
                            tracker.execute(portal, self._unknown_statement)
                        except AuditUnavailable:
                            # refuse the batch: a Parse of a poison statement fails in-band
                            rep = m.encode_parse(m.Parse("", self._poison(self._audit_down()),
                                                         [])) + buf[start:stop]
                        durable = self._last_rid or durable
                elif mtype == _SYNC:
                    if tracker is not None:
                        tracker.sync()
                    if guard is not None:
                        guard.ext_open = False
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
                        if stop - start == 7 and buf[start + 5] == 80 and buf[start + 6] == 0:
                            # Describe(P, ""): nothing to point elsewhere
                            guard.ext_open = True
                        else:
                            rep = guard.client_describe(buf[start + 5 : stop])
                elif mtype == _FUNC:
                    info = None
                    if guard is not None:
                        # refused in-band: the server fails a statement of pgveil's in its
                        # place, and answers with an error and ReadyForQuery, as it would
                        rep = m.encode_query(self._poison(guard.function_call()))
                        info = guard.last
                    if tracker is not None:
                        tracker.function_call(info or self._unknown_statement())
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
        if not self._holding:
            if len(spans) == 4:
                self._learn_bind_plan(buf, upto, spans, data_out)
            elif len(spans) == 5 and parse_rep is not None and spans[0][0] == _P:
                self._learn_bind_plan(buf, upto, spans, data_out, parse_rep)
        self.upstream.write(data_out)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ bind plans
    def _learn_bind_plan(self, buf: bytes, upto: int, spans: list, sent: bytes,
                         parse_rep: bytes | None = None) -> None:
        """Keep a plan for replaying this batch's shape (see :mod:`proxy.bind_plans`);
        ``parse_rep``: what replaced the unnamed Parse that opened the batch."""
        fresh = parse_rep is not None
        if fresh:  # the Bind/Describe/Execute/Sync after the Parse
            cut = spans[1][1]
            if not sent.startswith(parse_rep):
                return
            buf, upto, sent = buf[cut:], upto - cut, sent[len(parse_rep):]
            spans = [(t, a - cut, b - cut) for t, a, b in spans[1:]]
        shape = bind_plans.batch_shape(buf, upto, spans)
        if shape is None or self._frontend.buffered or (fresh and shape[0] != ""):
            return
        audit = self.server.audit
        if audit is not None and (audit.wait_before_forward or audit.settings.include_literals):
            return
        guard = self.guard
        prepared = decision = None
        upstream_name = shape[0]
        if guard is not None:
            if guard.ext_open or guard.path_dirty or guard.blocking:
                return
            prepared = guard.stmts.prepared.get(shape[0])
            if prepared is None or prepared.decision is None or prepared.decision.grants_used:
                return
            decision, upstream_name = prepared.decision, prepared.upstream
        plan = bind_plans.make_plan(shape, prepared, decision, upstream_name, fresh)
        if bind_plans.replay_bytes(plan, buf) == sent:
            plans = self._bind_plans
            if len(plans) >= bind_plans.MAX_PLANS and plan.names not in plans:
                plans.clear()
            plans[plan.names] = plan

    def _replay_parse_bind(self, data: bytes) -> bool:
        """An unnamed Parse the guard answers from its parse plan, then a Bind/Describe/
        Execute/Sync that matches the unnamed statement's bind plan: the short way."""
        guard = self.guard
        assert guard is not None
        if (self._frontend.buffered or guard.ext_open or guard.path_dirty or guard.blocking
                or guard.plans is None):
            return False
        end = 1 + int.from_bytes(data[1:5], "big")
        rest = data[end:]
        plan = self._bind_plans.get(b"\x00\x00")
        if (plan is None or not plan.fresh or rest[:1] != b"B" or end < 6
                or not bind_plans.matches(plan, rest)):
            return False
        audit = self.server.audit
        if audit is not None and not audit.takes_forwarded:
            return False  # the full way refuses what the audit cannot record
        t0 = time.perf_counter()
        parsed = m.decode_parse(data[5:end])
        rep = guard.client_parse_planned(parsed)
        if rep is None:
            return False  # no plan for that Parse: nothing changed, the full way it is
        if self.tracker is not None:
            self.tracker.parse("", guard.last)
        self.server.metrics.added.observe(time.perf_counter() - t0)
        p = guard.stmts.prepared.get("")
        if p is not None and p.decision is plan.decision and p.upstream == plan.upstream_name:
            self.upstream.write(rep + self._replayed(plan, rest))  # type: ignore[union-attr]
            return True
        # the Parse is done; the rest of the batch takes the full way
        self.upstream.write(rep)  # type: ignore[union-attr]
        self._client_ready(rest)
        return True

    def _replay_bind(self, plan: bind_plans.BindPlan, data: bytes) -> bool:
        """Send a batch that matches ``plan`` the short way; False to take the full way."""
        if not bind_plans.matches(plan, data) or self._frontend.buffered:
            return False
        guard = self.guard
        if guard is not None:
            if guard.ext_open or guard.path_dirty or guard.blocking:
                return False
            p = guard.stmts.prepared.get(plan.stmt)
            if (p is None or (p is not plan.prepared and not plan.fresh)
                    or p.decision is not plan.decision or p.upstream != plan.upstream_name
                    or p.version != guard._catalog_version()):
                return False  # (a schema change: the Bind checks the statement again)
        tracker = self.tracker
        if tracker is not None:
            audit = self.server.audit
            if audit is not None and not audit.takes_forwarded:
                return False  # the full way refuses what the audit cannot record
        if guard is None:
            # nothing to point elsewhere: the batch goes first, its statement is followed
            self.upstream.write(data)  # type: ignore[union-attr]
            self._replayed(plan, data)
        else:
            self.upstream.write(self._replayed(plan, data))  # type: ignore[union-attr]
        return True

    def _replayed(self, plan: bind_plans.BindPlan, data: bytes) -> bytes:
        """The calls and state changes of a replayed Bind/Describe/Execute/Sync, as the full
        way makes them; returns the bytes to send. The caller has checked that the audit
        takes records now: the intent is queued without a second check."""
        tracker = self.tracker
        if tracker is not None:
            self._forwarded = True
            try:
                tracker.bind("", plan.stmt)
                if plan.upstream and plan.decision is not None:
                    tracker.parse(plan.stmt, plan.decision)  # as the full way after a redirect
                tracker.execute("", self._unknown_statement)
                tracker.sync()
            finally:
                self._forwarded = False
        guard = self.guard
        if guard is not None:
            guard.stmts.portals[""] = plan.stmt
            guard.stmts.end_batch()
            guard.ext_open = False  # the Sync closes the batch
        self._frontend.syncs_since_execute = 1  # an Execute, then one Sync
        self.pending += 1
        return bind_plans.replay_bytes(plan, data)

    def _forward_then_follow(self, data: bytes) -> None:
        """No guard: the client's bytes go upstream as they are, so they go first, and the
        statements are classified and their audit intents queued while the server works.
        Only when the audit log takes records now (see ``AuditLog.takes_forwarded``): a
        statement it would refuse takes the full way, and is refused before forwarding."""
        t0 = time.perf_counter()
        frontend = self._frontend
        tracker = self.tracker
        assert tracker is not None
        if (data[:1] == b"Q" and not frontend.buffered and len(data) <= frontend.max_size
                and len(data) == 1 + int.from_bytes(data[1:5], "big")):
            # one whole Query, nothing before it: what the loop below does for it, without
            # framing (the commonest read of simple-protocol clients)
            self.upstream.write(data)  # type: ignore[union-attr]
            added = time.perf_counter() - t0
            self._forwarded = True
            try:
                tracker.query(self._classify(m.decode_query(data[5:])))
            finally:
                self._forwarded = False
            self.server.metrics.added.observe(added)
            frontend.syncs_since_execute = 0
            self.pending += 1
            return
        buf, upto, spans = frontend.feed_spans(data)
        if not spans:
            return
        self.upstream.write(buf if upto == len(buf) else buf[:upto])  # type: ignore[union-attr]
        added = time.perf_counter() - t0
        self._forwarded = True
        try:
            for mtype, start, stop in spans:
                if mtype == _Q:
                    tracker.query(self._classify(m.decode_query(buf[start + 5 : stop])))
                    self.server.metrics.added.observe(added)
                elif mtype == _P:
                    parsed = m.decode_parse(buf[start + 5 : stop])
                    tracker.parse(parsed.name, self._classify(parsed.query))
                    self.server.metrics.added.observe(added)
                elif mtype == _B:
                    portal, stmt, _ = m.decode_bind_names(buf[start + 5 : stop])
                    tracker.bind(portal, stmt)
                elif mtype == _EXEC:
                    tracker.execute(m.decode_execute_portal(buf[start + 5 : stop]),
                                    self._unknown_statement)
                elif mtype == _SYNC:
                    tracker.sync()
                elif mtype == _CLOSE:
                    tracker.close(*m.decode_describe_or_close(buf[start + 5 : stop]))
                elif mtype == _FUNC:
                    tracker.function_call(self._unknown_statement())
                elif mtype == _X:
                    self.terminated = True
                delta = frontend.ready_delta(mtype)
                if delta:
                    self.pending += delta
                    if delta < 0:
                        tracker.forget_syncs(-delta)
        finally:
            self._forwarded = False
        if len(spans) == 4:
            self._learn_bind_plan(buf, upto, spans, buf[:upto])
        elif len(spans) == 5 and spans[0][0] == _P and upto == len(buf):
            self._learn_followed_parse(buf, spans)

    def _context(self) -> tuple:
        """What a classification depends on besides the text (see ``_classify``)."""
        st = self.server.policy.catalogs.get(self.database)
        return (self.parameters.get("search_path"), st.version if st is not None else 0)

    def _learn_followed_parse(self, buf: bytes, spans: list) -> None:
        """An unnamed Parse, then Bind/Describe/Execute/Sync, followed after forwarding
        (``pgbench -M extended``, psycopg's default): keep the Parse's bytes and how it
        was classified, and a bind plan for the rest, so the same batch again is replayed
        (:meth:`_replay_followed_parse`)."""
        parse = buf[: spans[0][2]]
        if parse[5:6] != b"\x00" or self.tracker is None:
            return  # a named statement: its Parse runs once, nothing to gain
        info = self.tracker.prepared.get("")
        self._learn_bind_plan(buf, len(buf), spans, buf, parse)
        plan = self._bind_plans.get(b"\x00\x00")
        self._parse_hit = ((parse, self._context(), info)
                           if info is not None and plan is not None else None)

    def _replay_followed_parse(self, data: bytes) -> bool:
        """No guard: the very bytes of the unnamed Parse learnt by
        :meth:`_learn_followed_parse`, then a Bind/Describe/Execute/Sync its plan matches,
        classified as before (same text, same search_path and catalog version). The batch
        goes as it is; the tracker gets the same calls as the full way. False to take the
        full way."""
        parse, context, info = self._parse_hit  # type: ignore[misc]
        if not data.startswith(parse):
            return False
        rest = data[len(parse):]
        plan = self._bind_plans.get(b"\x00\x00")
        if (plan is None or rest[:1] != b"B" or self._frontend.buffered
                or not bind_plans.matches(plan, rest) or self._context() != context):
            return False
        audit = self.server.audit
        if audit is not None and not audit.takes_forwarded:
            return False  # the full way refuses what the audit cannot record
        t0 = time.perf_counter()
        self.upstream.write(data)  # type: ignore[union-attr]
        self.tracker.parse("", info)  # type: ignore[union-attr]
        self.server.metrics.added.observe(time.perf_counter() - t0)
        self._replayed(plan, rest)
        return True

    def _until_idle(self) -> asyncio.Future:
        """A future done once every statement sent so far has been answered."""
        fut = asyncio.get_running_loop().create_future()
        if self.pending == 0:
            fut.set_result(None)
        else:
            self._idle_waiters.append(fut)
        return fut

    # ------------------------------------------------------------------ holds
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
        tracker = self.tracker
        if guard is None and tracker is None and not self.poisons:
            # the plain relay: note the few messages that matter, forward the bytes as they are
            for mtype, start, stop in events:
                if mtype == _Z:
                    self.tx_status = buf[stop - 1 : stop]
                    if self.pending:
                        self.pending -= 1
                elif mtype == _S:
                    name, value = m.decode_parameter_status(buf[start + 5 : stop])
                    self.parameters[name] = value
                elif mtype == _E:
                    if m.decode_fields(buf[start + 5 : stop]).get("V") in ("FATAL", "PANIC"):
                        self.upstream_fatal = True
            if upto:
                self.client.write(buf if upto == len(buf) else buf[:upto])  # type: ignore[union-attr]
            if self.pending == 0 and (self._idle_waiters or self.drain_then_close):
                self._became_idle()
            return
        out = None
        last = 0
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
            elif mtype == _S:  # ParameterStatus: the server's word on search_path and others
                name, value = m.decode_parameter_status(buf[start + 5 : stop])
                self.parameters[name] = value
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
            if guard is not None and not replaced and (mtype in _GUARD_TYPES or guard.blocking) and (
                    mtype != _BIND_DONE or guard.blocking or guard.stmts.answers.bind):
                # (a BindComplete matters only while pgveil waits for one of its own Binds)
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
        if self._deferred_n:
            self._flush_deferred()  # answers of statements still running are about to go
        audit = self.server.audit
        if audit is not None and audit._unsent:
            audit.handoff()  # the intents leave this process before their answers do
        if out is not None:
            out.append(buf[last:upto])
            self.client.write(b"".join(out))  # type: ignore[union-attr]
        elif upto:
            self.client.write(buf if upto == len(buf) else buf[:upto])  # type: ignore[union-attr]
        if self.pending == 0 and (self._idle_waiters or self.drain_then_close):
            self._became_idle()

    def _became_idle(self) -> None:
        """Every statement sent has been answered: release waiters, or finish a drain."""
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self.drain_then_close:
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



"""The listener: accepts clients, owns the sessions, cancel keys and graceful shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import os
import socket
import ssl

from .config import Settings
from .protocol import messages as m
from .metrics import Metrics
from .policy_runtime import PolicyRuntime
from .session import Session
from .tls import client_side_context, server_side_context

log = logging.getLogger("pgveil.server")


class ProxyServer:
    def __init__(self, settings: Settings, cancel_key: bytes | None = None) -> None:
        self.settings = settings
        self.policy = PolicyRuntime(settings)
        self.jit = None  # a JitService when [jit] is configured
        self.audit = None  # an AuditLog when [audit] is configured
        self.unclassified = 0  # statements relayed with no policy and no audit (a plain int:
        # the relay's hot path; folded into pgveil_statements_total at scrape time)
        self.metrics = Metrics()
        self.metrics.attach(self)
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self._session_ids = itertools.count(1)
        self.sessions: set[Session] = set()
        self.client_tls: ssl.SSLContext | None = None
        if settings.proxy.tls_cert and settings.proxy.tls_key:
            self.client_tls = server_side_context(settings.proxy.tls_cert, settings.proxy.tls_key)
        self.upstream_tls = client_side_context(settings.upstream)
        self.cancel_key = cancel_key or os.urandom(32)
        self._server: asyncio.base_events.Server | None = None
        self.closing = False
        self._idle = asyncio.Event()
        self.connections_total = 0
        self.upstream_errors = 0

    # ------------------------------------------------------------------ listening
    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        listen = self.settings.proxy.listen
        if sock is not None:
            self._server = await loop.create_server(self._new_session, sock=sock, backlog=1024)
        else:
            self._server = await loop.create_server(
                self._new_session, listen.host, listen.port, backlog=1024, reuse_address=True
            )

    def _new_session(self) -> Session:
        return Session(self)

    @property
    def bound(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    def new_session_id(self) -> str:
        return f"{os.getpid():x}-{next(self._session_ids):x}"

    def approvers(self) -> frozenset[str]:
        if self.jit is None:
            return frozenset()
        return frozenset(self.jit.settings.approvers)

    async def hold_for_approval(self, session: Session, decision) -> None:
        """Open (or join) the approval request for a held statement and wait for it.

        Whatever happens, the guard learns the request's id and state, so the statement
        is decided again: it runs if a grant now allows it, or fails naming the request.
        """
        guard = session.guard
        key = decision.approval
        if self.jit is None:
            guard.held[key] = ("", "Approvals need a [jit] section in the pgveil config.")
            return
        from .jit.service import JitError

        rule, _, fingerprint = key.partition(":")
        try:
            req = None
            for r in self.jit.requests(state="pending", user=session.user):
                d = r.to_dict()
                if d.get("action") == rule and d.get("fingerprint") == fingerprint:
                    req = r
                    break
            if req is None:
                req = await self.jit.create_request(
                    user=session.user, action=rule, fingerprint=fingerprint,
                    statement=decision.normalized, duration=None,
                    reason=f"statement held by action rule {rule}", requested_by=session.user)
            rid = req.to_dict()["id"]
            if req.to_dict()["state"] == "pending":
                req = await self.jit.wait_for(rid, self.jit.settings.hold_seconds)
            guard.held[key] = (rid, req.to_dict()["state"])
        except JitError as exc:
            guard.held[key] = ("", f"{exc.message}")

    # ------------------------------------------------------------------ sessions
    def admit(self, session: Session) -> bool:
        self.connections_total += 1
        self.metrics.connections_total.inc()
        if len(self.sessions) >= self.settings.proxy.max_connections:
            return False
        self.sessions.add(session)
        self._idle.clear()
        return True

    def release(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    def session_ready(self, session: Session) -> None:
        if self.closing:
            session.drain_then_close = True
            if session.pending == 0:
                session.shutdown_now()

    def metrics_upstream_error(self) -> None:
        self.upstream_errors += 1
        self.metrics.upstream_errors.inc()

    # ------------------------------------------------------------------ cancel
    # The secret a client gets is the upstream's secret XOR a pad derived from the backend PID
    # and this server's cancel key. Any process holding the key (every --workers child) can
    # turn a client's CancelRequest back into the upstream's without a shared table; the
    # client, not knowing the upstream secret, learns nothing about the pad.
    def _pad(self, pid: int, length: int) -> bytes:
        out = b""
        counter = 0
        while len(out) < length:
            out += hmac.new(self.cancel_key, pid.to_bytes(4, "big") + counter.to_bytes(4, "big"),
                            hashlib.sha256).digest()
            counter += 1
        return out[:length]

    def client_cancel_secret(self, pid: int, upstream_secret: bytes) -> bytes:
        pad = self._pad(pid, len(upstream_secret))
        return bytes(a ^ b for a, b in zip(upstream_secret, pad))

    def cancel(self, pid: int, secret: bytes) -> asyncio.Task:
        upstream_secret = self.client_cancel_secret(pid, secret)  # XOR is its own inverse
        return asyncio.get_running_loop().create_task(self._send_cancel(pid, upstream_secret))

    async def _send_cancel(self, pid: int, secret: bytes) -> None:
        up = self.settings.upstream
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(up.host, up.port), self.settings.proxy.connect_timeout
            )
            if up.sslmode != "disable":
                writer.write(m.encode_ssl_request())
                answer = await reader.readexactly(1)
                if answer == b"S":
                    await writer.start_tls(self.upstream_tls, server_hostname=up.host)
                elif up.sslmode != "prefer":
                    raise ConnectionError("upstream refused SSL for the cancel request")
            writer.write(m.encode_cancel_request(pid, secret))
            await writer.drain()
            await reader.read()  # the server closes once it has read the request
            writer.close()
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError,
                asyncio.IncompleteReadError) as exc:
            self.upstream_errors += 1
            log.warning("forwarding a cancel request failed: %s", exc)

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; let running statements finish (up to ``timeout``); close the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            if session.is_idle():
                session.shutdown_now()
            else:
                session.drain_then_close = True
        if self.sessions:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("shutdown timeout: closing %d busy sessions", len(self.sessions))
                for session in list(self.sessions):
                    session.shutdown_now()
        if self._server is not None:
            await self._server.wait_closed()


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket that several worker processes can share (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


"""Signed webhooks for JIT events, delivered in the background.

``WebhookDispatcher.emit(kind, data)`` never blocks and never raises: it serialises the event
once per endpoint and puts it on that endpoint's bounded queue (a full queue drops the event
and counts it in ``stats``). Each endpoint has its own queue and workers, so one slow or dead
endpoint delays nobody — not a statement, not another endpoint.

Every POST carries:

- ``X-Pgveil-Event: <kind>`` and ``X-Pgveil-Delivery: <id>`` (the same id on every retry, so
  receivers can de-duplicate);
- ``X-Pgveil-Signature: sha256=<hex>`` — HMAC-SHA256 of the exact body bytes with the
  endpoint's ``secret`` (omitted when no secret is configured).

Body, ``format = "json"``::

    {"id": "d_…", "event": "request.created", "instance": "…",
     "time": "2025-01-01T00:00:00.000Z", "time_epoch": 1735689600.0, "data": {…}}

``format = "slack"``: ``{"text": "<one-line human summary>"}`` (Slack incoming webhooks).

Failures (connection errors, timeouts, HTTP 408/429/5xx) are retried with exponential backoff:
``backoff × 2^(attempt-1)`` capped at ``max_backoff``, up to ``max_attempts`` attempts. Other
4xx answers are final. The data carries names, ids, scopes, reasons and normalized statement
text only — never values or literals.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import aiohttp

from .model import iso, new_id
from .settings import WebhookSettings

log = logging.getLogger("pgveil.jit.webhooks")

WORKERS_PER_ENDPOINT = 2
RETRY_STATUSES = frozenset({408, 425, 429})


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """For receivers (and tests): does ``header`` sign ``body`` with ``secret``?"""
    return bool(header) and hmac.compare_digest(sign(secret, body), header or "")


def _who(d: dict[str, Any]) -> str:
    return str(d.get("user") or d.get("subject") or "?")


def _scope(d: dict[str, Any]) -> str:
    if d.get("action"):
        s = f"action `{d['action']}`"
        if d.get("statement"):
            s += f" (`{d['statement'][:200]}`)"
        return s
    cols = d.get("columns") or []
    return f"`{d.get('table')}` ({', '.join(cols)})"


def slack_text(kind: str, d: dict[str, Any]) -> str:
    """A one-line summary for chat (no values: names, scopes, ids and reasons only)."""
    from .durations import format_duration

    if kind.startswith("request."):
        rid, gid = d.get("id"), d.get("grant_id")
    else:
        rid, gid = d.get("request_id"), d.get("id")
    dur = format_duration(d["duration_s"]) if d.get("duration_s") else None
    if kind == "request.created":
        auto = " (auto-approved)" if d.get("state") == "approved" else ""
        return (f":key: pgveil: *{_who(d)}* requests {_scope(d)} for {dur} — "
                f"reason: {d.get('reason') or '-'} (request {rid}){auto}")
    if kind == "request.approved":
        return (f":white_check_mark: pgveil: request {rid} by *{_who(d)}* for {_scope(d)} "
                f"approved by {d.get('decided_by')} (grant {gid})")
    if kind == "request.denied":
        return (f":no_entry: pgveil: request {rid} by *{_who(d)}* for {_scope(d)} denied by "
                f"{d.get('decided_by')}: {d.get('deny_reason') or '-'}")
    if kind == "request.cancelled":
        return f":heavy_multiplication_x: pgveil: request {rid} by *{_who(d)}* cancelled by {d.get('decided_by')}"
    if kind == "request.expired":
        return f":hourglass: pgveil: request {rid} by *{_who(d)}* for {_scope(d)} expired undecided"
    if kind == "grant.created":
        return (f":key: pgveil: grant {gid} to *{_who(d)}* for {_scope(d)} by {d.get('approved_by')} "
                f"until {d.get('expires_at')}")
    if kind == "grant.used":
        return f":eyes: pgveil: grant {gid} ({_scope(d)}) used for the first time by *{_who(d)}*"
    if kind == "grant.expired":
        why = "used up" if d.get("ended") == "used_up" else "expired"
        return f":lock: pgveil: grant {gid} to *{_who(d)}* for {_scope(d)} {why}"
    if kind == "grant.revoked":
        return f":lock: pgveil: grant {gid} to *{_who(d)}* for {_scope(d)} revoked by {d.get('revoked_by')}"
    return f"pgveil: {kind}"


@dataclass
class EndpointStats:
    delivered: int = 0
    failed: int = 0      # gave up (attempts exhausted or a final 4xx)
    dropped: int = 0     # queue full: never attempted
    retries: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Endpoint:
    settings: WebhookSettings
    queue: asyncio.Queue
    stats: EndpointStats = field(default_factory=EndpointStats)
    workers: list[asyncio.Task] = field(default_factory=list)


class WebhookDispatcher:
    def __init__(
        self,
        hooks: Sequence[WebhookSettings],
        instance: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instance = instance
        self.clock = clock
        self._hooks = list(hooks)
        self._endpoints: list[_Endpoint] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def stats(self) -> list[dict[str, Any]]:
        return [{"url": e.settings.url, "pending": e.queue.qsize(), **e.stats.to_dict()}
                for e in self._endpoints]

    async def start(self) -> None:
        if not self._hooks:
            return
        self._session = aiohttp.ClientSession()
        for h in self._hooks:
            ep = _Endpoint(h, asyncio.Queue(maxsize=h.max_queue))
            for i in range(WORKERS_PER_ENDPOINT):
                ep.workers.append(asyncio.create_task(self._worker(ep), name=f"pgveil-webhook-{i}"))
            self._endpoints.append(ep)

    async def close(self, grace: float = 1.0) -> None:
        """Give queued deliveries up to ``grace`` seconds, then stop."""
        if self._endpoints and grace > 0:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(e.queue.join() for e in self._endpoints)), grace)
            except asyncio.TimeoutError:
                pass
        tasks = [t for e in self._endpoints for t in e.workers]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._endpoints = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if not self._endpoints:
            return
        now = self.clock()
        delivery = new_id("d_")
        bodies: dict[str, bytes] = {}
        for ep in self._endpoints:
            h = ep.settings
            if kind not in h.events:
                continue
            if h.format not in bodies:
                if h.format == "slack":
                    doc: dict[str, Any] = {"text": slack_text(kind, data)}
                else:
                    doc = {"id": delivery, "event": kind, "instance": self.instance,
                           "time": iso(now), "time_epoch": now, "data": data}
                bodies[h.format] = json.dumps(doc, separators=(",", ":"), default=str).encode()
            try:
                ep.queue.put_nowait((kind, delivery, bodies[h.format]))
            except asyncio.QueueFull:
                ep.stats.dropped += 1

    async def _worker(self, ep: _Endpoint) -> None:
        while True:
            kind, delivery, body = await ep.queue.get()
            try:
                await self._deliver(ep, kind, delivery, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # pragma: no cover - never let a worker die
                ep.stats.failed += 1
                ep.stats.last_error = repr(exc)
            finally:
                ep.queue.task_done()

    async def _deliver(self, ep: _Endpoint, kind: str, delivery: str, body: bytes) -> None:
        h = ep.settings
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "pgveil-webhook",
            "X-Pgveil-Event": kind,
            "X-Pgveil-Delivery": delivery,
        }
        if h.secret:
            headers["X-Pgveil-Signature"] = sign(h.secret, body)
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=h.timeout)
        for attempt in range(1, h.max_attempts + 1):
            retry = True
            try:
                async with self._session.post(h.url, data=body, headers=headers, timeout=timeout,
                                              allow_redirects=False) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        ep.stats.delivered += 1
                        return
                    ep.stats.last_error = f"HTTP {resp.status}"
                    retry = resp.status >= 500 or resp.status in RETRY_STATUSES
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                ep.stats.last_error = f"{type(exc).__name__}: {exc}"
            if not retry or attempt == h.max_attempts:
                break
            ep.stats.retries += 1
            delay = min(h.backoff * (2 ** (attempt - 1)), h.max_backoff)
            await asyncio.sleep(delay * random.uniform(0.9, 1.1))
        ep.stats.failed += 1
        log.warning("webhook %s: giving up on %s %s: %s", h.url, kind, delivery, ep.stats.last_error)

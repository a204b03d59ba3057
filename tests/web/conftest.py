"""A live admin app (API + approver page) on 127.0.0.1, served from a background loop.

``live`` starts one per test with a fresh service and these tokens:

============  =========  ===================
name          role       token
============  =========  ===================
alice         approver   ``alice-token``
bob           admin      ``bob-token``
carol         requester  ``carol-token``
============  =========  ===================

The service is the real :class:`proxy.jit.service.JitService` on an in-memory SQLite store
(``fake_service.FakeJitService`` when ``proxy.jit`` cannot be imported, or when
``PGVEIL_WEB_FAKE_SERVICE=1``), wrapped in a :class:`Spy` that records the calls the web
layer makes. ``live.call(coro)`` runs a coroutine on the server's loop (to set up
requests); ``live.http(...)`` is a small synchronous client (urllib) with an optional
cookie jar.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
from aiohttp import web

from proxy.web import add_routes, hash_token, tokens_from_config

from .fake_service import FakeJitService

try:
    from proxy.jit.service import JitService
    from proxy.jit.settings import JitSettings, StateSettings
except Exception:  # pragma: no cover - the JIT package is missing or broken
    JitService = None  # type: ignore[assignment,misc]

TOKENS = {"alice": ("alice-token", "approver"), "bob": ("bob-token", "admin"),
          "carol": ("carol-token", "requester")}
EXPOSURE = {"public.customers": 12345, "public.orders": 1}


def exposure(table: str) -> int | None:
    return EXPOSURE.get(table)


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_SPIED = ("create_request", "approve", "deny", "cancel", "grant", "revoke")


class Spy:
    """Delegates to the service and records ``(method, args, kwargs)`` of each change."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in _SPIED:
            return attr

        async def spied(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return await attr(*args, **kwargs)
        return spied

    def changes(self, *names: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        return [c for c in self.calls if not names or c[0] in names]

    def set_healthy(self, ok: bool) -> None:
        store = getattr(self.inner, "store", None)
        if store is not None:
            store._healthy = ok  # the in-memory SQLite store has no poller to undo this
        else:
            self.inner.healthy = ok

    def use(self, grant_id: str) -> None:
        self.inner.record_use(grant_id)


def make_service() -> Any:
    if JitService is None or os.environ.get("PGVEIL_WEB_FAKE_SERVICE") == "1":
        return FakeJitService()
    settings = JitSettings(approvers=("alice", "bob"),
                           state=StateSettings(url="sqlite::memory:", kind="sqlite",
                                               path=":memory:"))
    return JitService(settings, "web-test")


class LiveServer:
    def __init__(self, service: Any) -> None:
        self.service = Spy(service)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.runner: web.AppRunner | None = None
        self.port = self.call(self._start())
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        if hasattr(self.service.inner, "start"):
            await self.service.inner.start()
        app = web.Application()
        raw = [{"name": n, "token_sha256": hash_token(t), "role": r}
               for n, (t, r) in TOKENS.items()]
        add_routes(app, service=self.service, tokens=tokens_from_config(raw), exposure=exposure)
        self.app = app
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
        if hasattr(self.service.inner, "close"):
            self.call(self.service.inner.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    # -- a tiny synchronous client -----------------------------------------------------
    def opener(self, *, follow: bool = True) -> urllib.request.OpenerDirector:
        jar = http.cookiejar.CookieJar()
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(jar)]
        if not follow:
            handlers.append(_NoRedirect())
        op = urllib.request.build_opener(*handlers)
        op.jar = jar  # type: ignore[attr-defined]
        return op

    def http(self, method: str, path: str, *, token: str | None = None, json_body: Any = None,
             raw: bytes | None = None, form: dict[str, str] | None = None,
             headers: dict[str, str] | None = None,
             opener: urllib.request.OpenerDirector | None = None) -> Reply:
        hdrs = dict(headers or {})
        data = raw
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        op = opener or self.opener()
        try:
            with op.open(req, timeout=10) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.headers, exc.read())

    # -- setup helpers -----------------------------------------------------------------
    def pending(self, *, user: str = "dave", table: str | None = "public.customers",
                columns: tuple[str, ...] = ("ssn", "email"), action: str | None = None,
                statement: str | None = None, reason: str = "ticket 123",
                requested_by: str = "dave", duration: Any = "30 minutes") -> str:
        r = self.call(self.service.create_request(
            user=user, table=table, columns=columns, action=action, statement=statement,
            duration=duration, reason=reason, requested_by=requested_by))
        return r.to_dict()["id"]


@pytest.fixture
def live() -> Iterator[LiveServer]:
    server = LiveServer(make_service())
    try:
        yield server
    finally:
        server.close()

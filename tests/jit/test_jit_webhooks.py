"""Webhooks: signed, retried, queued; a slow or dead endpoint never delays a request."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from aiohttp import web

from jit_helpers import FakeClock, Recorder, run, sqlite_settings
from proxy.embedded import free_port
from proxy.jit import JitService
from proxy.jit.settings import WebhookSettings
from proxy.jit.webhooks import sign, verify

SECRET = "s3cret"


class Hook:
    """A local receiver on 127.0.0.1; ``behaviour`` picks the answer for each POST."""

    def __init__(self, behaviour=None) -> None:
        self.got: list[tuple[dict, bytes]] = []
        self.arrived = asyncio.Event()
        self.behaviour = behaviour or (lambda n: 200)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((dict(request.headers), body))
        self.arrived.set()
        status = self.behaviour(len(self.got))
        if status == "hang":
            await asyncio.sleep(3600)
        return web.Response(status=status)

    async def __aenter__(self) -> "Hook":
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        async def loop():
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(loop(), timeout)


def hook_settings(url: str, **kw) -> WebhookSettings:
    kw.setdefault("secret", SECRET)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 2.0)
    return WebhookSettings(url=url, **kw)


def make(tmp_path, hooks, clock=None, **kw):
    s = dataclasses.replace(sqlite_settings(str(tmp_path / "s.db"), **kw), webhooks=tuple(hooks))
    rec = Recorder()
    return JitService(s, "inst-1", on_change=rec.on_change, on_event=rec.on_event,
                      clock=clock or FakeClock()), rec


def test_signed_json_delivery_and_event_filter(tmp_path):
    async def main():
        async with Hook() as hook:
            svc, _ = make(tmp_path, [hook_settings(hook.url, events=("request.created", "request.denied"))])
            async with svc:
                r = await svc.create_request(user="ann", table="public.customers", columns=["ssn"],
                                             reason="ticket 7")
                await hook.wait(1)
                headers, body = hook.got[0]
                assert headers["X-Pgveil-Event"] == "request.created"
                assert headers["X-Pgveil-Delivery"].startswith("d_")
                assert headers["X-Pgveil-Signature"] == sign(SECRET, body)
                assert verify(SECRET, body, headers["X-Pgveil-Signature"])
                assert not verify("wrong", body, headers["X-Pgveil-Signature"])
                doc = json.loads(body)
                assert doc["event"] == "request.created" and doc["instance"] == "inst-1"
                assert doc["data"]["id"] == r.id and doc["data"]["columns"] == ["ssn"]
                assert doc["time"].endswith("Z")
                await svc.approve(r.id, "boss")              # not subscribed
                r2 = await svc.create_request(user="ann", table="public.t", columns=["a"], reason="x")
                await svc.deny(r2.id, "boss", "no")
                await hook.wait(3)
                assert [h["X-Pgveil-Event"] for h, _ in hook.got] == [
                    "request.created", "request.created", "request.denied"]
    run(main())


def test_retry_after_500_then_success(tmp_path):
    async def main():
        async with Hook(lambda n: 500 if n == 1 else 200) as hook:
            svc, _ = make(tmp_path, [hook_settings(hook.url)])
            async with svc:
                await svc.grant(user="ann", table="public.t", columns=["a"], duration=60, granted_by="root")
                await hook.wait(2)
                (h1, b1), (h2, b2) = hook.got
                assert h1["X-Pgveil-Delivery"] == h2["X-Pgveil-Delivery"] and b1 == b2
                assert h2["X-Pgveil-Signature"] == sign(SECRET, b2)
                await asyncio.sleep(0.05)
                st = svc.webhook_stats[0]
                assert (st["delivered"], st["retries"], st["failed"]) == (1, 1, 0)
    run(main())


def test_client_error_is_not_retried(tmp_path):
    async def main():
        async with Hook(lambda n: 400) as hook:
            svc, _ = make(tmp_path, [hook_settings(hook.url)])
            async with svc:
                await svc.grant(user="ann", table="public.t", columns=["a"], duration=60, granted_by="root")
                await hook.wait(1)
                await asyncio.sleep(0.1)
                assert len(hook.got) == 1 and svc.webhook_stats[0]["failed"] == 1
    run(main())


def test_dead_and_hanging_endpoints_never_delay_requests(tmp_path):
    async def main():
        refused = f"http://127.0.0.1:{free_port()}/hook"      # nothing listens there
        async with Hook(lambda n: "hang") as hang:
            svc, _ = make(tmp_path, [hook_settings(refused, max_attempts=2, timeout=0.3),
                                     hook_settings(hang.url, max_attempts=2, timeout=0.3, max_queue=2)])
            async with svc:
                r0 = await svc.create_request(user="ann", table="public.t", columns=["a"], reason="x")
                await hang.wait(1)                           # the endpoint now hangs on it
                worst = 0.0
                for i in range(10):
                    t0 = time.perf_counter()
                    await svc.create_request(user=f"u{i}", table="public.t", columns=["a"], reason="x")
                    worst = max(worst, time.perf_counter() - t0)
                assert worst < 0.05, worst
                t0 = time.perf_counter()
                await svc.approve(r0.id, "boss")
                assert time.perf_counter() - t0 < 0.05
                stats = svc.webhook_stats
                assert stats[1]["dropped"] > 0                # bounded queue: counted drops
                await asyncio.sleep(0.5)
                assert svc.webhook_stats[0]["failed"] >= 1   # refused: retried, then given up
                assert svc.webhook_stats[0]["retries"] >= 1
    run(main())


def test_slack_format_and_no_literals(tmp_path):
    async def main():
        async with Hook() as hook:
            svc, _ = make(tmp_path, [hook_settings(hook.url, format="slack", secret=None)])
            async with svc:
                r = await svc.create_request(
                    user="ann", action="delete_without_where", fingerprint="f00",
                    statement="DELETE FROM customers WHERE email = 'ann@example.com' OR id = 42",
                    duration="10 minutes", reason="GDPR erasure")
                await hook.wait(1)
                headers, body = hook.got[0]
                assert "X-Pgveil-Signature" not in headers     # no secret configured
                doc = json.loads(body)
                assert list(doc) == ["text"]
                text = doc["text"]
                assert "ann" in text and r.id in text and "delete_without_where" in text
                assert "10m" in text and "GDPR erasure" in text
                assert "ann@example.com" not in body.decode() and "42" not in body.decode()
    run(main())


def test_json_body_never_holds_literals(tmp_path):
    async def main():
        async with Hook() as hook:
            svc, rec = make(tmp_path, [hook_settings(hook.url)])
            async with svc:
                await svc.create_request(user="ann", action="update_all", fingerprint="f1",
                                         statement="UPDATE t SET ssn = '123-45-6789'", reason="fix")
                await hook.wait(1)
                body = hook.got[0][1].decode()
                assert "123-45-6789" not in body and "update t set ssn = ?" in body
                assert "123-45-6789" not in json.dumps(rec.events, default=str)
    run(main())

"""Two JitServices sharing one PostgreSQL store: NOTIFY propagation and failing closed."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from jit_helpers import Recorder, pg_settings, run
from proxy.embedded import EmbeddedPostgres, free_port
from proxy.jit import JitError, JitService, action_key
from proxy.jit import store_pg


@pytest.fixture(scope="module")
def pg_url():
    with EmbeddedPostgres() as pg:
        yield f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(store_pg, "BACKOFF_MAX", 0.3)
    monkeypatch.setattr(store_pg, "HEARTBEAT_SECONDS", 0.5)


def unique(name):
    return f"{name}_{uuid.uuid4().hex[:8]}"


def pair(url, **kw):
    ra, rb = Recorder(), Recorder()
    a = JitService(pg_settings(url, **kw), "inst-a", on_change=ra.on_change, on_event=ra.on_event)
    b = JitService(pg_settings(url, **kw), "inst-b", on_change=rb.on_change, on_event=rb.on_event)
    return a, ra, b, rb


def spy_remote(svc, kind):
    """An Event set once ``svc`` has applied a change of ``kind`` made elsewhere."""
    ev = asyncio.Event()
    orig = svc.store.on_remote

    async def spy(k, ident):
        await orig(k, ident)
        if k == kind:
            ev.set()

    svc.store.on_remote = spy
    return ev


def covers(svc, user, table, col):
    return svc.grant_set().covers(user, table, col, time.time())


def test_tables_created_in_pgveil_schema(pg_url):
    async def main():
        a, _, b, _ = pair(pg_url)
        async with a, b:          # two instances creating the schema at once: no race
            assert a.healthy and b.healthy
    run(main())
    with psycopg.connect(pg_url) as conn:
        names = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'pgveil'")}
    assert {"requests", "grants"} <= names


def test_revoke_on_one_is_seen_by_the_other_within_a_second(pg_url):
    ann = unique("ann")

    async def main():
        a, ra, b, rb = pair(pg_url)
        async with a, b:
            g = await a.grant(user=ann, table="public.customers", columns=["email"],
                              duration="1h", granted_by="root", reason="incident 9")
            await rb.until(lambda: rb.current is not None and
                           rb.current.covers(ann, "public.customers", "email", time.time()) is not None,
                           timeout=1.0)
            assert b.grants()[0].reason == "incident 9"
            t0 = time.monotonic()
            await b.revoke(g.id, "boss")
            await ra.until(lambda: covers(a, ann, "public.customers", "email") is None, timeout=1.0)
            assert time.monotonic() - t0 < 1.0
            assert ra.current is a.grant_set()
            assert a.grants(active_only=False)[0].revoked_by == "boss"
            assert "grant.revoked" in rb.kinds() and "grant.revoked" not in ra.kinds()  # emitted once
    run(main())


def test_request_on_one_approved_on_the_other(pg_url):
    ann = unique("ann")

    async def main():
        a, ra, b, rb = pair(pg_url)
        async with a, b:
            seen = spy_remote(b, "request")
            r = await a.create_request(user=ann, action="truncate", fingerprint="fp9",
                                       statement="truncate public.orders", reason="reset")
            waiter = asyncio.create_task(a.wait_for(r.id, 5.0))
            await asyncio.wait_for(seen.wait(), 2.0)          # b learns of it through NOTIFY
            assert [x.id for x in b.requests(state="pending", user=ann)] == [r.id]
            t0 = time.monotonic()
            approved = await b.approve(r.id, "boss", via="console")
            held = await asyncio.wait_for(waiter, 2.0)        # the held statement on a is released
            assert held.state == "approved" and held.grant_id == approved.grant_id
            assert time.monotonic() - t0 < 1.0
            key = action_key("truncate", "fp9")
            await ra.until(lambda: a.grant_set().allows_action(ann, key, time.time()) is not None, 1.0)
            # single use: a uses it; b's index drops it too (uses are shared)
            g = a.grant_set().allows_action(ann, key, time.time())
            a.record_use(g.id)
            assert a.grant_set().allows_action(ann, key, time.time()) is None
            await rb.until(lambda: b.grant_set().allows_action(ann, key, time.time()) is None, 1.0)
            await ra.until(lambda: "grant.used" in ra.kinds(), 2.0)
            assert "grant.used" not in rb.kinds()
            # deciding twice: the second instance gets not_pending
            with pytest.raises(JitError) as ei:
                await a.deny(r.id, "boss2", "late")
            assert ei.value.code == "not_pending"
    run(main())


def test_concurrent_approvals_decide_once(pg_url):
    ann = unique("ann")

    async def main():
        a, ra, b, rb = pair(pg_url)
        async with a, b:
            r = await a.create_request(user=ann, table="public.t", columns=["x"], reason="r")
            await asyncio.sleep(0.2)
            res = await asyncio.gather(a.approve(r.id, "boss"), b.deny(r.id, "boss2", "no"),
                                       return_exceptions=True)
            ok = [x for x in res if not isinstance(x, Exception)]
            errs = [x for x in res if isinstance(x, JitError)]
            assert len(ok) == 1 and len(errs) == 1 and errs[0].code == "not_pending"
    run(main())


def test_expiry_event_emitted_once_across_instances(pg_url):
    ann = unique("ann")

    async def main():
        a, ra, b, rb = pair(pg_url)
        async with a, b:
            g = await a.grant(user=ann, table="public.t", columns=["x"], duration=1, granted_by="root")
            await rb.until(lambda: covers(b, ann, "public.t", "x") is not None, 1.0)
            await ra.until(lambda: covers(a, ann, "public.t", "x") is None, 3.0)
            await rb.until(lambda: covers(b, ann, "public.t", "x") is None, 3.0)
            await asyncio.sleep(1.2)    # both sweepers have run at least once since
            n = [k for k, f in ra.events + rb.events if k == "grant.expired" and f["id"] == g.id]
            assert len(n) == 1
    run(main())


def test_unreachable_store_fails_closed(tmp_path):
    ann = unique("ann")

    async def main():
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        rec = Recorder()
        svc = JitService(pg_settings(url), "inst-x", on_change=rec.on_change, on_event=rec.on_event)
        t0 = time.monotonic()
        await svc.start()
        try:
            assert not svc.healthy and "store.unavailable" in rec.kinds()
            assert time.monotonic() - t0 < 10
            t0 = time.monotonic()
            with pytest.raises(JitError) as ei:
                await svc.create_request(user=ann, table="public.t", columns=["a"], reason="r")
            assert ei.value.code == "store_unavailable" and time.monotonic() - t0 < 0.05
            assert not svc.grant_set()
        finally:
            await svc.close()
    run(main())


def test_server_outage_and_recovery():
    # Not tmp_path: pytest prunes old basetemp folders, and other runs may share them.
    base = tempfile.mkdtemp(prefix="pgveil-jit-")
    pg = EmbeddedPostgres(datadir=Path(base) / "data")
    pg.start()
    url = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"

    ann, bob = unique("ann"), unique("bob")

    async def main():
        a, ra, b, rb = pair(url)
        async with a, b:
            g = await a.grant(user=ann, table="public.t", columns=["a"], duration="1h", granted_by="root")
            g2 = await a.grant(user=bob, table="public.t", columns=["a"], duration="1h", granted_by="root")
            await rb.until(lambda: covers(b, bob, "public.t", "a") is not None, 1.0)
            await asyncio.get_running_loop().run_in_executor(None, pg.stop)
            await ra.until(lambda: "store.unavailable" in ra.kinds(), 5.0)
            await rb.until(lambda: "store.unavailable" in rb.kinds(), 5.0)
            for svc in (a, b):
                assert not svc.healthy
                with pytest.raises(JitError) as ei:
                    await svc.create_request(user=ann, table="public.t", columns=["b"], reason="r")
                assert ei.value.code == "store_unavailable"
                with pytest.raises(JitError) as ei:
                    await svc.revoke(g.id, "boss")
                assert ei.value.code == "store_unavailable"
                # grants already in memory keep working
                assert covers(svc, ann, "public.t", "a").id == g.id
            a.record_use(g.id)                             # counted now, persisted later
            await asyncio.get_running_loop().run_in_executor(None, pg.start)
            await ra.until(lambda: a.healthy, 10.0)
            await rb.until(lambda: b.healthy, 10.0)
            assert ra.kinds().count("store.available") == 1
            await a.revoke(g2.id, "boss")
            await rb.until(lambda: covers(b, bob, "public.t", "a") is None, 1.0)
            await ra.until(lambda: "grant.used" in ra.kinds(), 5.0)
            assert [x.uses for x in a.grants() if x.id == g.id] == [1]
            assert (await b.store.get_grant(g.id)).uses == 1
    try:
        run(main())
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)

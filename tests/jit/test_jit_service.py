"""JitService rules and lifecycle on the embedded SQLite store, with an injected clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from jit_helpers import FakeClock, Recorder, run, sqlite_settings
from proxy.jit import JitError, JitService, action_key
from proxy.jit.settings import AutoApproveRule


def service(tmp_path, clock=None, rec=None, **kw):
    rec = rec or Recorder()
    svc = JitService(sqlite_settings(str(tmp_path / "state.db"), **kw), "test-1",
                     on_change=rec.on_change, on_event=rec.on_event, clock=clock or FakeClock())
    return svc, rec


async def table_request(svc, user="ann", cols=("email",), **kw):
    kw.setdefault("reason", "ticket 1")
    return await svc.create_request(user=user, table="public.customers", columns=cols, **kw)


def test_request_approve_grant_and_to_dict(tmp_path):
    async def main():
        svc, rec = service(tmp_path)
        async with svc:
            r = await table_request(svc, duration="1 hour")
            assert r.state == "pending" and r.id.startswith("r_") and len(r.id) == 12
            assert r.duration_s == 3600 and r.requested_by == "ann"
            assert svc.grant_set().covers("ann", "public.customers", "email", svc.clock()) is None
            a = await svc.approve(r.id, "boss", via="console")
            assert a.state == "approved" and a.decided_by == "boss" and a.approvals == ("boss",)
            g = svc.grants()[0]
            assert g.id == a.grant_id and g.id.startswith("g_") and g.approved_by == "boss"
            assert g.expires_at == svc.clock() + 3600 and g.max_uses is None
            gs = svc.grant_set()
            assert gs.covers("ann", "public.customers", "email", svc.clock()).id == g.id
            assert gs.covers("ann", "public.customers", "ssn", svc.clock()) is None
            assert rec.current is gs
            d = a.to_dict()
            assert d["created_at"].endswith("Z") and d["created_at_epoch"] == r.created_at
            assert d["columns"] == ["email"] and "version" not in d
            gd = g.to_dict()
            assert gd["user"] == "ann" and gd["expires_at_epoch"] == g.expires_at
            assert rec.kinds() == ["request.created", "request.approved"]
    run(main())


def test_self_approval_refused_unless_enabled(tmp_path):
    async def main():
        svc, _ = service(tmp_path)
        async with svc:
            r = await table_request(svc, user="boss")
            with pytest.raises(JitError) as ei:
                await svc.approve(r.id, "boss", via="console")
            assert ei.value.code == "self_approval"
            # requested on someone's behalf: the requester cannot approve either
            r2 = await table_request(svc, user="ann", requested_by="boss2")
            with pytest.raises(JitError) as ei:
                await svc.approve(r2.id, "boss2", via="api")
            assert ei.value.code == "self_approval"
        svc, _ = service(tmp_path, self_approval=True)
        async with svc:
            r = await table_request(svc, user="boss", cols=("ssn",))
            assert (await svc.approve(r.id, "boss", via="console")).state == "approved"
    run(main())


def test_console_approver_must_be_listed(tmp_path):
    async def main():
        svc, _ = service(tmp_path)
        async with svc:
            r = await table_request(svc)
            with pytest.raises(JitError) as ei:
                await svc.approve(r.id, "mallory", via="console")
            assert ei.value.code == "not_approver" and ei.value.hint
            assert svc.is_approver("boss") and not svc.is_approver("mallory")
            with pytest.raises(JitError) as ei:
                await svc.approve("r_nope", "boss")
            assert ei.value.code == "not_found"
    run(main())


def test_min_approvals_needs_distinct_approvers(tmp_path):
    async def main():
        svc, rec = service(tmp_path, min_approvals=2)
        async with svc:
            r = await table_request(svc)
            r1 = await svc.approve(r.id, "boss", via="console")
            assert r1.state == "pending" and r1.approvals == ("boss",) and not svc.grants()
            with pytest.raises(JitError) as ei:
                await svc.approve(r.id, "boss", via="console")
            assert ei.value.code == "already_approved"
            r2 = await svc.approve(r.id, "boss2", via="console")
            assert r2.state == "approved" and r2.approvals == ("boss", "boss2")
            assert svc.grants()[0].approved_by == "boss,boss2"
            with pytest.raises(JitError) as ei:
                await svc.approve(r.id, "boss3", via="console")
            assert ei.value.code == "not_pending"
            assert rec.kinds() == ["request.created", "request.approval", "request.approved"]
    run(main())


def test_durations_default_and_max(tmp_path):
    async def main():
        svc, _ = service(tmp_path)
        async with svc:
            assert (await table_request(svc)).duration_s == 1800
            assert (await table_request(svc, duration="2h")).duration_s == 7200
            assert (await table_request(svc, duration=90)).duration_s == 90
            with pytest.raises(JitError) as ei:
                await table_request(svc, duration="9 hours")
            assert ei.value.code == "too_long" and "8h" in ei.value.message
            with pytest.raises(JitError) as ei:
                await table_request(svc, duration="a while")
            assert ei.value.code == "bad_duration"
            with pytest.raises(JitError) as ei:
                await svc.grant(user="ann", table="public.t", columns=["*"], duration="2 days", granted_by="root")
            assert ei.value.code == "too_long"
    run(main())


def test_bad_scopes(tmp_path):
    async def main():
        svc, _ = service(tmp_path)
        async with svc:
            for kw in (dict(table="customers", columns=["a"]), dict(table="public.t"),
                       dict(), dict(table="public.t", columns=["a"], action="x")):
                with pytest.raises(JitError) as ei:
                    await svc.create_request(user="ann", reason="r", **kw)
                assert ei.value.code == "bad_request"
    run(main())


def test_auto_approve_match_and_audit(tmp_path):
    rules = (
        AutoApproveRule(0, ("ci",), columns=("public.customers.email", "public.customers.phone"),
                        max_duration=3600),
        AutoApproveRule(1, ("ops",), actions=("truncate",), max_duration=600),
        AutoApproveRule(2, ("ops",), tables=("public.orders",), max_duration=3600),
    )

    async def main():
        svc, rec = service(tmp_path, auto_approve=rules)
        async with svc:
            r = await table_request(svc, user="ci", cols=("email", "phone"), duration="1h")
            assert r.state == "approved" and r.decided_by == "auto:0" and r.approvals == ("auto:0",)
            g = svc.grants(user="ci")[0]
            assert g.approved_by == "auto:0"
            assert rec.kinds()[-2:] == ["request.created", "request.approved"]
            assert rec.events[-1][1]["auto_rule"] == 0
            # a column outside the rule, a longer duration, another user: manual
            assert (await table_request(svc, user="ci", cols=("email", "ssn"))).state == "pending"
            assert (await table_request(svc, user="ci", cols=("email",), duration="2h")).state == "pending"
            assert (await table_request(svc, user="ann", cols=("email",))).state == "pending"
            assert (await table_request(svc, user="ci", cols=("*",))).state == "pending"
            a = await svc.create_request(user="ops", action="truncate", fingerprint="fp1",
                                         statement="truncate t", duration="5 minutes", reason="cleanup")
            assert a.state == "approved" and a.decided_by == "auto:1"
            o = await svc.create_request(user="ops", table="public.orders", columns=["*"], reason="x")
            assert o.state == "approved" and o.decided_by == "auto:2"
    run(main())


def test_expiry_with_injected_clock(tmp_path):
    async def main():
        clock = FakeClock()
        svc, rec = service(tmp_path, clock=clock)
        async with svc:
            r = await table_request(svc, duration="10 minutes")
            await svc.approve(r.id, "boss")
            gid = svc.grants()[0].id
            assert svc.grant_set().covers("ann", "public.customers", "email", clock()) is not None
            clock.advance(599)
            await svc.sweep()
            assert "grant.expired" not in rec.kinds() and svc.grants()
            clock.advance(2)
            await svc.sweep()
            assert not svc.grant_set()                      # masks are back
            assert rec.current is svc.grant_set() and not rec.current
            assert rec.kinds().count("grant.expired") == 1
            assert rec.events[-1][1]["id"] == gid
            assert svc.grants() == [] and svc.grants(active_only=False)[0].ended == "expired"
            await svc.sweep()
            assert rec.kinds().count("grant.expired") == 1  # once
    run(main())


def test_expiry_noticed_by_background_task(tmp_path):
    async def main():
        svc, rec = service(tmp_path, clock=time.time)
        async with svc:
            g = await svc.grant(user="ann", table="public.t", columns=["a"], duration=1, granted_by="root")
            t0 = time.monotonic()
            await rec.until(lambda: "grant.expired" in rec.kinds(), timeout=3)
            assert time.monotonic() - t0 < 2.0
            assert not svc.grant_set() and rec.events[-1][1]["id"] == g.id
    run(main())


def test_pending_request_expires(tmp_path):
    async def main():
        clock = FakeClock()
        svc, rec = service(tmp_path, clock=clock, request_ttl=3600)
        async with svc:
            r = await table_request(svc)
            clock.advance(3601)
            await svc.sweep()
            assert svc.request(r.id).state == "expired"
            assert "request.expired" in rec.kinds()
    run(main())


def test_max_uses_and_action_binding(tmp_path):
    async def main():
        clock = FakeClock()
        svc, rec = service(tmp_path, clock=clock)
        async with svc:
            r = await svc.create_request(user="ann", action="delete_all", fingerprint="abc123",
                                         statement="DELETE FROM t WHERE note = 'secret' AND id > 5",
                                         reason="cleanup")
            assert r.max_uses == 1
            assert "secret" not in (r.statement or "") and "5" not in r.statement
            again = await svc.create_request(user="ann", action="delete_all", fingerprint="abc123",
                                             statement="DELETE FROM t", reason="again")
            assert again.id == r.id                        # the same held statement: one request
            await svc.approve(r.id, "boss")
            key = action_key("delete_all", "abc123")
            g = svc.grant_set().allows_action("ann", key, clock())
            assert g is not None and g.max_uses == 1
            assert svc.grant_set().allows_action("ann", action_key("delete_all", "other"), clock()) is None
            n_changes = len(rec.sets)
            svc.record_use(g.id)                            # synchronous: gone at once
            assert svc.grant_set().allows_action("ann", key, clock()) is None
            assert len(rec.sets) == n_changes + 1
            await rec.until(lambda: "grant.used" in rec.kinds())
            await svc.sweep()
            assert "grant.expired" in rec.kinds()
            assert svc.grants(active_only=False)[0].ended == "used_up"
            # a table grant with max_uses=3 given by the approver
            r2 = await table_request(svc)
            await svc.approve(r2.id, "boss", max_uses=3)
            g2 = svc.grant_set().covers("ann", "public.customers", "email", clock())
            for _ in range(2):
                svc.record_use(g2.id)
            assert svc.grant_set().covers("ann", "public.customers", "email", clock()) is not None
            svc.record_use(g2.id)
            assert svc.grant_set().covers("ann", "public.customers", "email", clock()) is None
            assert [u["grant_id"] for u in svc.recent_uses(limit=4)] == [g2.id] * 3 + [g.id]
            await rec.until(lambda: rec.kinds().count("grant.used") == 2)   # first use only
    run(main())


def test_revoke_calls_on_change(tmp_path):
    async def main():
        svc, rec = service(tmp_path)
        async with svc:
            g1 = await svc.grant(user="ann", table="public.t", columns=["a"], duration="1h", granted_by="root")
            g2 = await svc.grant(user="bob", table="public.t", columns=["*"], duration="1h", granted_by="root")
            assert g1.max_uses is None
            r = await svc.revoke(g1.id, "boss")
            assert r.revoked_by == "boss" and r.revoked_at is not None
            gs = rec.current
            assert gs is svc.grant_set()
            assert gs.covers("ann", "public.t", "a", svc.clock()) is None
            assert gs.covers("bob", "public.t", "a", svc.clock()).id == g2.id
            assert rec.kinds() == ["grant.created", "grant.created", "grant.revoked"]
            with pytest.raises(JitError) as ei:
                await svc.revoke(g1.id, "boss")
            assert ei.value.code == "not_active"
            with pytest.raises(JitError) as ei:
                await svc.revoke(g2.id, "mallory", via="console")
            assert ei.value.code == "forbidden"
            await svc.revoke(g2.id, "bob", via="console")   # giving up one's own grant
            assert not svc.grant_set()
    run(main())


def test_deny_and_cancel(tmp_path):
    async def main():
        svc, rec = service(tmp_path)
        async with svc:
            r = await table_request(svc)
            d = await svc.deny(r.id, "boss", "not needed")
            assert d.state == "denied" and d.deny_reason == "not needed" and d.decided_by == "boss"
            with pytest.raises(JitError) as ei:
                await svc.deny(r.id, "boss", "again")
            assert ei.value.code == "not_pending"
            r2 = await table_request(svc)
            with pytest.raises(JitError) as ei:
                await svc.cancel(r2.id, "mallory", via="console")
            assert ei.value.code == "forbidden"
            c = await svc.cancel(r2.id, "ann", via="console")
            assert c.state == "cancelled"
            assert [x.id for x in svc.requests(state="cancelled")] == [r2.id]
            assert {x.id for x in svc.requests(user="ann")} == {r.id, r2.id}
            assert "request.denied" in rec.kinds() and "request.cancelled" in rec.kinds()
    run(main())


def test_wait_for_resolves_on_approve_deny_timeout(tmp_path):
    async def main():
        svc, _ = service(tmp_path)
        async with svc:
            r1, r2, r3 = [await table_request(svc) for _ in range(3)]
            w1 = asyncio.create_task(svc.wait_for(r1.id, 5))
            w2 = asyncio.create_task(svc.wait_for(r2.id, 5))
            await asyncio.sleep(0)
            await svc.approve(r1.id, "boss")
            await svc.deny(r2.id, "boss", "no")
            t0 = time.monotonic()
            assert (await asyncio.wait_for(w1, 1)).state == "approved"
            assert (await asyncio.wait_for(w2, 1)).state == "denied"
            assert time.monotonic() - t0 < 0.5
            t0 = time.monotonic()
            assert (await svc.wait_for(r3.id, 0.2)).state == "pending"
            assert 0.15 < time.monotonic() - t0 < 1.0
            assert (await svc.wait_for(r1.id, 5)).state == "approved"   # already decided: at once
            with pytest.raises(JitError):
                await svc.wait_for("r_unknown", 1)
    run(main())


def test_sqlite_round_trip_survives_restart(tmp_path):
    async def main():
        clock = FakeClock()
        svc, _ = service(tmp_path, clock=clock)
        async with svc:
            r = await table_request(svc, duration="1h")
            await svc.approve(r.id, "boss")
            pending = await table_request(svc, cols=("ssn",))
            g = svc.grants()[0]
            svc.record_use(g.id)
            svc.record_use(g.id)
        rec2 = Recorder()
        svc2, rec2 = service(tmp_path, clock=clock, rec=rec2)
        async with svc2:
            assert svc2.grant_set().covers("ann", "public.customers", "email", clock()).id == g.id
            g2 = svc2.grants()[0]
            assert (g2.uses, g2.approved_by, g2.request_id, g2.reason) == (2, "boss", r.id, "ticket 1")
            assert svc2.request(pending.id).state == "pending"
            assert (await svc2.approve(pending.id, "boss2")).state == "approved"
            assert rec2.current is svc2.grant_set()
    run(main())


def test_two_processes_on_one_sqlite_file(tmp_path):
    """--workers on one SQLite file: each sees the other's changes (data_version polling)."""
    async def main():
        a, _ = service(tmp_path, clock=time.time)
        rb = Recorder()
        b, rb = service(tmp_path, clock=time.time, rec=rb)
        async with a, b:
            g = await a.grant(user="ann", table="public.t", columns=["a"], duration="1h", granted_by="root")
            await rb.until(lambda: rb.current is not None and bool(rb.current), timeout=3)
            assert b.grant_set().covers("ann", "public.t", "a", time.time()).id == g.id
    run(main())


def test_store_failure_fails_closed(tmp_path):
    async def main():
        clock = FakeClock()
        svc, _ = service(tmp_path, clock=clock)
        async with svc:
            g = await svc.grant(user="ann", table="public.t", columns=["a"], duration="1h", granted_by="root")
            svc.store._poller.cancel()           # (it would notice the file is fine again)
            svc.store._healthy = False          # as after a failed write
            for call in (lambda: table_request(svc), lambda: svc.revoke(g.id, "boss"),
                         lambda: svc.grant(user="x", table="public.t", columns=["a"], granted_by="r")):
                with pytest.raises(JitError) as ei:
                    await call()
                assert ei.value.code == "store_unavailable" and ei.value.hint
            assert not svc.healthy
            assert svc.grant_set().covers("ann", "public.t", "a", clock()).id == g.id
    run(main())


def test_history_is_pruned(tmp_path):
    async def main():
        clock = FakeClock()
        svc, _ = service(tmp_path, clock=clock)
        async with svc:
            r = await table_request(svc)
            await svc.deny(r.id, "boss", "no")
            await svc.grant(user="ann", table="public.t", columns=["a"], duration=60, granted_by="root")
            clock.advance(120)
            await svc.sweep()
            assert svc.requests() and svc.grants(active_only=False)
            clock.advance(8 * 86400)
            await svc.sweep()
            assert svc.requests() == [] and svc.grants(active_only=False) == []
    run(main())


def test_ids_are_short_and_url_safe(tmp_path):
    from proxy.jit.model import new_id
    ids = {new_id("r_") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 12 and i[2:].isalnum() and i == i.lower() for i in ids)

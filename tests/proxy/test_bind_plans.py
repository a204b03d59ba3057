"""Bind plans (proxy/bind_plans.py): a replayed Bind/Describe/Execute/Sync batch sends
exactly what the full way sends and leaves the session in the same state.

No database: sessions over the sample catalog with stand-in transports; the server's
answers are simulated. Each scenario runs twice — once with plans, once with replay turned
off — and compares, batch by batch, the bytes sent upstream (pgveil's upstream statement
names carry a random part per session, so names are numbered in order of appearance) and
the state a later batch depends on.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from policy.grants import Grant, GrantSet
from proxy import bind_plans
from proxy.config import parse_settings
from proxy.guard import Guard
from proxy.policy_runtime import CatalogState
from proxy.protocol import messages as m
from proxy.protocol.framer import RelayScanner
from proxy.server import ProxyServer
from proxy.session import Session
from proxy.states import READY, TRACKED_INTERESTING
from proxy.tracker import StatementTracker
from tests.proxy.fakes import FakeTransport
from tests.policy.sample import sample_catalog, sample_policy

MASKED = "SELECT id, name, email, ssn FROM customers WHERE id = $1"
PLAIN = "SELECT id, name FROM customers WHERE id = $1"
_SYNC = b"S\x00\x00\x00\x04"
_TAIL = b"D\x00\x00\x00\x06P\x00" + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + _SYNC
_ANSWER = (b"2\x00\x00\x00\x04" + m.row_description(["id", "name"]) + m.data_row(["1", "a"])
           + m.command_complete("SELECT 1") + m.ready_for_query(b"I"))


def _session(cache: int = 64) -> Session:
    srv = ProxyServer(parse_settings(f"[proxy]\nstatement_cache = {cache}\n"))
    srv.policy.policy = sample_policy()
    srv.policy.catalogs["db"] = CatalogState(catalog=sample_catalog(), version=1)
    s = Session(srv)
    s.client, s.upstream = FakeTransport(), FakeTransport()
    s.startup = m.StartupMessage(196608, {"user": "analyst", "database": "db"})
    s.parameters = {"search_path": '"$user", public', "standard_conforming_strings": "on"}
    s.state = READY
    s.tracker = StatementTracker(s._begin, s._end, rows=False)
    s.guard = Guard(srv.policy, "analyst", "db", s.parameters, False, cache)
    s._backend = RelayScanner(bytes(set(TRACKED_INTERESTING) | set(Guard.INTERESTING)), 1 << 20)
    return s


def bind(stmt: str, value: str, portal: str = "") -> bytes:
    return m.encode_bind_text(portal, stmt, [value])


def parse(stmt: str, sql: str) -> bytes:
    return m.encode_parse(m.Parse(stmt, sql, []))


def close(stmt: str) -> bytes:
    return b"C" + (len(stmt) + 6).to_bytes(4, "big") + b"S" + stmt.encode() + b"\x00"


def _answer_for(sent: bytes) -> bytes:
    """What the server says to a batch: ParseComplete/CloseComplete for each Parse/Close,
    then for each Sync a BindComplete, a row and ReadyForQuery (or just ReadyForQuery)."""
    out, pos, execs = [], 0, 0
    while pos < len(sent):
        t = sent[pos:pos + 1]
        if t == b"P":
            out.append(b"1\x00\x00\x00\x04")
        elif t == b"C":
            out.append(b"3\x00\x00\x00\x04")
        elif t == b"E":
            execs += 1
        elif t == b"S":
            out.append(_ANSWER if execs else m.ready_for_query(b"I"))
            execs = 0
        pos += 1 + int.from_bytes(sent[pos + 1:pos + 5], "big")
    return b"".join(out)


def _state(s: Session) -> tuple:
    g, t = s.guard, s.tracker
    return (s.pending, s._frontend.syncs_since_execute, s._frontend.buffered,
            dict(g.stmts.portals), g.stmts.batch, g.stmts.closed, g.ext_open,
            dict(t.portals), {k: (v.action, v.masked) for k, v in t.prepared.items()},
            len(t.queue),
            {k: c.value for k, c in s.server.metrics.statements._children.items()},
            s.server.metrics.duration.counts[-1] + sum(s.server.metrics.duration.counts))


class _Names:
    """Numbers pgveil's per-session upstream statement names in order of appearance."""

    def __init__(self) -> None:
        self.seen: dict[bytes, bytes] = {}

    def __call__(self, data: bytes) -> bytes:
        def sub(mo: re.Match) -> bytes:
            return self.seen.setdefault(mo.group(0), b"pgveil#%d" % len(self.seen))
        return re.sub(rb"pgveil_[0-9A-Za-z_]+", sub, data)


def _run(chunks: list[bytes], *, plans: bool, cache: int = 64,
         grants: GrantSet | None = None) -> tuple[list, int]:
    """Feed each chunk (a whole client write) and the server's answer; returns per chunk
    (bytes sent upstream, state after), and how many batches were replayed."""
    async def go():
        s = _session(cache)
        if grants is not None:
            s.server.policy.set_grants(grants)
        replayed = 0
        full = Session._replay_bind
        full_parse = Session._replay_parse_bind

        def replay(self, plan, data):
            nonlocal replayed
            if not plans:
                return False
            done = full(self, plan, data)
            replayed += done
            return done

        def replay_parse(self, data):
            nonlocal replayed
            if not plans:
                return False
            done = full_parse(self, data)
            replayed += done
            return done
        s._replay_bind = replay.__get__(s)
        s._replay_parse_bind = replay_parse.__get__(s)
        names, log = _Names(), []
        for chunk in chunks:
            if callable(chunk):  # a change between two writes (grants, ...)
                chunk(s)
                log.append(None)
                continue
            before = len(s.upstream.sent)
            s.data_received(chunk)
            sent = b"".join(s.upstream.sent[before:])
            in_flight = _state(s)
            if sent and s.state == READY:
                s.upstream_data(_answer_for(sent))
            log.append((names(sent), in_flight, _state(s), names(b"".join(s.client.sent))))
        return log, replayed
    return asyncio.run(go())


def _same(chunks: list[bytes], **kw) -> int:
    with_plans, replayed = _run(chunks, plans=True, **kw)
    without, none = _run(chunks, plans=False, **kw)
    assert none == 0
    for i, (a, b) in enumerate(zip(with_plans, without)):
        assert a == b, f"batch {i} differs"
    return replayed


def _executions(stmt: str, values) -> list[bytes]:
    return [bind(stmt, str(v)) + _TAIL for v in values]


# ---------------------------------------------------------------------- the pure part
def test_batch_shape_takes_only_bind_describe_execute_sync_of_the_unnamed_portal() -> None:
    def shape(buf: bytes):
        from proxy.protocol.framer import MessageFramer
        b, upto, spans = MessageFramer(1 << 20).feed_spans(buf)
        return bind_plans.batch_shape(b, upto, spans)

    good = bind("P0", "7") + _TAIL
    assert shape(good) == ("P0", b"\x00P0\x00", _TAIL)
    assert shape(bind("P0", "7", portal="c1") + _TAIL) is None            # named portal
    assert shape(bind("P0", "7") + b"D\x00\x00\x00\x06S\x00" + _TAIL[7:]) is None
    assert shape(bind("P0", "7") + _TAIL[:7] + b"E\x00\x00\x00\x0bc1\x00\x00\x00\x00\x00"
                 + _SYNC) is None                                         # Execute of c1
    assert shape(good + good) is None                                     # two batches
    assert shape(good[:-1]) is None                                       # incomplete
    assert shape(parse("P0", MASKED) + good[: -len(_TAIL)] + _TAIL[7:]) is None


def test_matches_needs_the_same_statement_tail_and_a_consistent_length() -> None:
    plan = bind_plans.make_plan(("P0", b"\x00P0\x00", _TAIL), None, None, "P0")
    assert bind_plans.matches(plan, bind("P0", "123456") + _TAIL)
    assert not bind_plans.matches(plan, bind("P01", "1") + _TAIL)
    assert not bind_plans.matches(plan, bind("P", "1") + _TAIL)
    assert not bind_plans.matches(plan, bind("P0", "1", portal="x") + _TAIL)
    assert not bind_plans.matches(plan, bind("P0", "1") + _TAIL[:-5] + b"H\x00\x00\x00\x04")
    assert not bind_plans.matches(plan, bind("P0", "1") + _TAIL + _SYNC)
    # a Bind whose length field does not match where the tail starts
    data = bytearray(bind("P0", "1") + _TAIL)
    data[4] += 1
    assert not bind_plans.matches(plan, bytes(data))


def test_replay_bytes_redirects_like_the_codec() -> None:
    plan = bind_plans.make_plan(("P0", b"\x00P0\x00", _TAIL), None, None, "pgveil_s1_x")
    data = bind("P0", "42") + _TAIL
    body = data[5:len(data) - len(_TAIL)]
    assert bind_plans.replay_bytes(plan, data) == (
        m.encode_bind_with_statement(body, "pgveil_s1_x") + _TAIL)
    same = bind_plans.make_plan(("P0", b"\x00P0\x00", _TAIL), None, None, "P0")
    assert bind_plans.replay_bytes(same, data) is data


# ---------------------------------------------------------------------- sessions
@pytest.mark.parametrize("cache", [64, 0])
@pytest.mark.parametrize("stmt", ["P0", ""])
def test_repeated_executions_are_replayed_and_send_the_same(cache: int, stmt: str) -> None:
    chunks = [parse(stmt, MASKED) + _SYNC] + _executions(stmt, range(1, 30))
    replayed = _same(chunks, cache=cache)
    assert replayed == 28  # the first execution teaches the plan
    log, _ = _run(chunks, plans=True, cache=cache)
    # the unnamed statement stands for pgveil's cached one: its Binds are redirected
    redirected = b"\x00pgveil#0\x00" in log[-1][0]
    assert redirected == (stmt == "" and cache > 0)


def test_a_statement_prepared_again_under_the_same_name_is_not_replayed_stale() -> None:
    chunks = ([parse("P0", MASKED) + _SYNC] + _executions("P0", range(5))
              + [close("P0") + parse("P0", PLAIN) + _SYNC] + _executions("P0", range(5))
              + [close("P0") + parse("P0", MASKED) + _SYNC] + _executions("P0", range(5)))
    assert _same(chunks) == 12  # 4 of each 5: a new statement object is learnt afresh


def test_several_statements_and_interleavings_match_the_full_way() -> None:
    chunks = [parse("A", MASKED) + parse("B", PLAIN) + _SYNC]
    for i in range(12):
        stmt = "A" if i % 3 else "B"
        chunks += _executions(stmt, [i])
    chunks.append(_executions("A", [1])[0] + _executions("A", [2])[0])  # pipelined: two
    chunks.append(bind("A", "3", portal="c1") + b"E\x00\x00\x00\x0bc1\x00\x00\x00\x00\x00"
                  + _SYNC)
    chunks += _executions("A", [4, 5])
    assert _same(chunks) > 0


def test_a_batch_split_across_reads_takes_the_full_way() -> None:
    one = _executions("P0", [77])[0]
    chunks = [parse("P0", MASKED) + _SYNC] + _executions("P0", [1, 2]) + [one[:9], one[9:]]
    chunks += _executions("P0", [3])
    log, replayed = _run(chunks, plans=True)
    assert replayed == 2  # the 2nd execution and the last; not the split one
    assert _same(chunks) == 2


def test_a_statement_decided_under_a_grant_is_never_replayed() -> None:
    grants = GrantSet([Grant(id="g1", user="analyst", table="public.customers",
                             columns=("ssn",), expires_at=4e9)])
    chunks = [parse("P0", MASKED) + _SYNC] + _executions("P0", range(6))
    assert _same(chunks, grants=grants) == 0


def test_an_unknown_statement_name_is_left_to_the_server() -> None:
    chunks = _executions("nope", range(4))
    assert _same(chunks) == 0


def test_other_batches_in_between_leave_nothing_a_replay_depends_on() -> None:
    unnamed = (parse("", PLAIN) + bind("", "9") + _TAIL)  # rebinds the unnamed portal
    chunks = ([parse("A", MASKED) + parse("B", PLAIN) + _SYNC] + _executions("A", [1, 2])
              + _executions("B", [1, 2])
              + [unnamed] + _executions("A", [3])                  # portal "" was ""'s
              + [parse("X", PLAIN) + _SYNC] + _executions("A", [4])  # a Sync with no Execute
              + _executions("B", [3]) + _executions("A", [5]) + _executions("B", [4]))
    assert _same(chunks) == 7  # every execution but the first of A (5) and of B (4)


def test_many_statements_keep_their_plans_up_to_the_bound() -> None:
    names = [f"S{i}" for i in range(bind_plans.MAX_PLANS)]
    chunks = [b"".join(parse(n, MASKED) for n in names) + _SYNC]
    for _ in range(2):
        chunks += [_executions(n, [7])[0] for n in names]
    assert _same(chunks) == bind_plans.MAX_PLANS  # the second round, all replayed
    more = [f"T{i}" for i in range(5)]  # past the bound: plans start afresh, still the same
    chunks += [b"".join(parse(n, MASKED) for n in more) + _SYNC]
    chunks += [_executions(n, [8])[0] for n in names + more + names]
    assert _same(chunks) > bind_plans.MAX_PLANS


def test_a_partial_message_before_a_batch_shaped_read_is_not_replayed() -> None:
    batch = _executions("P0", [5])[0]
    # a Query whose body happens to be the bytes of a batch: the framer holds its header
    query_head = b"Q" + (4 + len(batch) + 1).to_bytes(4, "big")
    chunks = ([parse("P0", MASKED) + _SYNC] + _executions("P0", [1, 2])
              + [query_head, batch, b"\x00"])
    assert _same(chunks) == 1


def test_an_open_batch_before_a_batch_shaped_read_is_not_replayed() -> None:
    chunks = ([parse("P0", MASKED) + parse("Y", PLAIN) + _SYNC] + _executions("P0", [1, 2])
              + [bind("Y", "3") + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"]  # no Sync yet
              + _executions("P0", [4]) + _executions("P0", [5]))
    assert _same(chunks) == 2  # the 2nd and the 5th; not the one in the open batch


def _unnamed(sql: str, value: str) -> bytes:
    return parse("", sql) + bind("", value) + _TAIL


def test_unnamed_parse_then_bind_batches_are_replayed_and_send_the_same() -> None:
    """psycopg's default and pgbench -M extended: Parse of the same text in every batch."""
    chunks = [_unnamed(MASKED, str(i)) for i in range(12)]
    replayed = _same(chunks)
    # the 1st prepares pgveil's statement, the 2nd is answered by the parse plan and teaches
    # the bind plan, the rest are replayed
    assert replayed == 10
    log, _ = _run(chunks, plans=True)
    assert b"\x00pgveil#0\x00" in log[-1][0]  # on pgveil's cached statement


def test_unnamed_batches_of_other_texts_in_between_match_the_full_way() -> None:
    chunks = []
    for i in range(8):
        chunks.append(_unnamed(MASKED, str(i)))
        if i % 3 == 1:
            chunks.append(_unnamed(PLAIN, str(i)))           # a forwarded text
        if i == 4:
            chunks.append(parse("P9", MASKED) + _SYNC)       # a named statement
            chunks.extend(_executions("P9", [1, 2]))
            chunks.append(_unnamed(MASKED, "x")[:-2])         # a split batch
            chunks.append(_unnamed(MASKED, "x")[-2:] + b"")
    assert _same(chunks) > 0


def test_unnamed_batches_follow_a_new_grant() -> None:
    chunks = [_unnamed(MASKED, str(i)) for i in range(6)]
    grants = GrantSet([Grant(id="g1", user="analyst", table="public.customers",
                             columns=("ssn",), expires_at=4e9)])
    assert _same(chunks, grants=grants) == 0


def test_a_grant_given_between_batches_stops_the_replay() -> None:
    grants = GrantSet([Grant(id="g1", user="analyst", table="public.customers",
                             columns=("ssn", "email"), expires_at=4e9)])
    chunks = [_unnamed(MASKED, str(i)) for i in range(5)]
    chunks.append(lambda s: s.server.policy.set_grants(grants))
    chunks += [_unnamed(MASKED, str(i)) for i in range(5, 9)]
    chunks += [parse("P0", MASKED) + _SYNC] + _executions("P0", range(3))
    log, replayed = _run(chunks, plans=True)
    assert replayed == 3  # before the grant only
    # after it, each batch is decided again under the grant (ssn no longer redacted)
    assert all(entry[0].startswith(b"P") and b".ssn," in entry[0] for entry in log[6:10])
    assert all(b".ssn," not in entry[0] for entry in log[:5])
    assert _same(chunks) == 3


def test_unnamed_batches_after_a_partial_message_or_an_open_batch_take_the_full_way() -> None:
    batch = _unnamed(MASKED, "5")
    query_head = b"Q" + (4 + len(batch) + 1).to_bytes(4, "big")
    warm = [_unnamed(MASKED, str(i)) for i in range(3)]
    assert _same(warm + [query_head, batch, b"\x00"]) == 1
    assert _same(warm + [parse("Y", PLAIN), batch, _unnamed(MASKED, "6")]) == 2


def test_an_audited_replay_records_its_statement_before_any_of_its_answer_leaves() -> None:
    """A masked session with the audit on: a replayed execution's intent waits to be merged
    with its outcome, but when its answer starts to reach the client before it ends, the
    intent is queued first (the general relay flushes it)."""
    import json

    from proxy.audit import AuditLog, AuditSettings
    from tests.proxy.fakes import MemorySink

    async def go():
        sink = MemorySink()
        log = AuditLog(AuditSettings(instance="t"), sink=sink, key=b"k" * 32)
        await log.start()
        s = _session()
        s.server.audit = log
        s.tracker = StatementTracker(s._begin, s._end, rows=True)
        queued_at_write = []
        write = s.client.write

        def watched(data: bytes) -> None:
            queued_at_write.append([json.loads(p + b"}")["type"] for _, p, _ in log._queue])
            write(data)
        s.client.write = watched
        for chunk in [parse("st", MASKED) + _SYNC, bind("st", "1") + _TAIL]:
            sent_before = len(s.upstream.sent)
            s.data_received(chunk)
            s.upstream_data(_answer_for(b"".join(s.upstream.sent[sent_before:])))
        before = len(s.upstream.sent)
        intents = sum(b'"type":"intent"' in p for _, p, _ in log._queue)
        s.data_received(bind("st", "2") + _TAIL)  # a replay (its intent deferred)
        assert len(s.upstream.sent) > before and s._deferred_n == 1
        assert sum(b'"type":"intent"' in p for _, p, _ in log._queue) == intents
        head, tail = _ANSWER.split(b"C\x00", 1)
        s.upstream_data(head)  # BindComplete, the row description and a row: no end yet
        assert queued_at_write[-1][-1] == "intent"
        s.upstream_data(b"C\x00" + tail)
        await log.close()
        return [json.loads(line) for line in sink.lines]
    recs = asyncio.run(go())
    kinds = [r["type"] for r in recs]
    # the first execution took the full way: answered whole, one statement record; the
    # replay's intent was flushed by its partial answer, its completion followed
    assert kinds == ["event", "statement", "intent", "complete", "event"], kinds
    assert recs[1]["decision"] == "rewrite" and recs[1]["rows"] == 1
    assert recs[3]["rid"] == recs[2]["seq"] and recs[2]["decision"] == "rewrite"
    assert recs[3]["rows"] == 1

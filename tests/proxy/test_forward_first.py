"""Sessions without a guard forward first and follow after (Session._forward_then_follow,
the replay of a learnt Parse batch, and the bind-plan replay): the same bytes go both ways
and the audit log gets the same records as when every statement takes the full way.

No database: a session with an audit log over an in-memory sink, fed whole client writes;
the server's answers are simulated. Each scenario runs with forwarding first and with it
turned off, and the records are compared without what differs by nature (seq, time,
session id, chain).
"""

from __future__ import annotations

import asyncio
import json

from proxy.audit import AuditLog, AuditSettings
from proxy.config import parse_settings
from proxy.policy_runtime import CatalogState
from proxy.protocol import messages as m
from proxy.protocol.framer import RelayScanner
from proxy.server import ProxyServer
from proxy.session import Session
from proxy.states import READY, TRACKED_INTERESTING
from proxy.tracker import StatementTracker
from tests.policy.sample import sample_catalog
from tests.proxy.fakes import FakeTransport, MemorySink

_SYNC = b"S\x00\x00\x00\x04"
_TAIL = b"D\x00\x00\x00\x06P\x00" + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + _SYNC
_ROWS = m.row_description(["n"]) + m.data_row(["1"]) + m.command_complete("SELECT 1")
_FAIL = m.error_response("22012", "division by zero")
_Z = m.ready_for_query(b"I")


def _answer_for(sent: bytes) -> bytes:
    """A Query is answered with one row (or an error if it divides by zero) and Z; an
    extended batch with '1' per Parse, '3' per Close, '2' per Bind, a row (or the error)
    per Execute, Z per Sync."""
    out, pos, failed = [], 0, False
    while pos < len(sent):
        t, end = sent[pos:pos + 1], pos + 1 + int.from_bytes(sent[pos + 1:pos + 5], "big")
        body = sent[pos + 5:end]
        if t == b"Q":
            out.append((_FAIL if b"1/0" in body else _ROWS) + _Z)
        elif t == b"P":
            failed = b"1/0" in body
            out.append(b"1\x00\x00\x00\x04")
        elif t == b"C":
            out.append(b"3\x00\x00\x00\x04")
        elif t == b"B":
            out.append(b"2\x00\x00\x00\x04")
        elif t == b"E":
            out.append(_FAIL if failed else _ROWS)
        elif t == b"S":
            out.append(_Z)
        pos = end
    return b"".join(out)


def _run(chunks: list, *, forward_first: bool) -> tuple[list, list[dict], int, list[str]]:
    async def go():
        srv = ProxyServer(parse_settings(""))
        srv.policy.catalogs["db"] = CatalogState(catalog=sample_catalog(), version=1)
        sink = MemorySink()
        log = AuditLog(AuditSettings(instance="t"), sink=sink, key=b"k" * 32)
        await log.start()
        srv.audit = log
        original = AuditLog.__dict__["takes_forwarded"]
        if not forward_first:
            AuditLog.takes_forwarded = property(lambda self: False)  # restored below
        s = Session(srv)
        s.client, s.upstream = FakeTransport(), FakeTransport()
        s.startup = m.StartupMessage(196608, {"user": "postgres", "database": "db"})
        s.parameters = {"search_path": '"$user", public', "standard_conforming_strings": "on",
                        "application_name": "t"}
        s.state = READY
        s.tracker = StatementTracker(s._begin, s._end, rows=True)
        s._backend = RelayScanner(TRACKED_INTERESTING, 1 << 20)
        if not forward_first:
            # a refusal token pending (one that never matches): the relay checks every
            # error against it, as after a refusal, and must record the same
            s.poisons["pgveil-test-never-matches"] = b""
        used = 0
        follow = Session._forward_then_follow

        def counting(self, data):
            nonlocal used
            used += 1
            return follow(self, data)
        s._forward_then_follow = counting.__get__(s)
        replayed = 0
        replay = Session._replay_followed_parse

        def counting_replays(self, data):
            nonlocal replayed
            done = replay(self, data)
            replayed += done
            return done
        s._replay_followed_parse = counting_replays.__get__(s)
        wire = []
        try:
            for chunk in chunks:
                if callable(chunk):  # a change between two writes
                    chunk(s)
                    continue
                before = len(s.upstream.sent)
                s.data_received(chunk)
                sent = b"".join(s.upstream.sent[before:])
                wire.append((sent, s.pending))
                if sent:
                    before = len(s.client.sent)
                    s.upstream_data(_answer_for(sent))
                    wire.append((b"".join(s.client.sent[before:]), s.pending, s.tx_status))
            metrics = srv.metrics
            wire.append(("metrics", sum(metrics.added.counts), sum(metrics.duration.counts),
                         {k: c.value for k, c in metrics.statements._children.items()}))
            await log.close()
        finally:
            AuditLog.takes_forwarded = original
        raw = [json.loads(line) for line in sink.lines]
        done = {r["rid"]: r for r in raw if r["type"] == "complete"}
        records, types = [], [r["type"] for r in raw]
        for rec in raw:
            # per statement: an intent with its completion's outcome, or a statement record
            if rec["type"] == "complete":
                continue
            if rec["type"] == "intent":
                c = done[rec["seq"]]
                rec = {**rec, **{k: c[k] for k in ("rows", "sqlstate") if k in c}}
            rec = dict(rec, type="statement" if rec["type"] == "intent" else rec["type"])
            for key in ("seq", "ts", "prev", "mac", "duration_ms", "session", "rid", "pid",
                        "key_id", "client"):
                rec.pop(key, None)
            records.append(rec)
        _run.replayed = replayed  # type: ignore[attr-defined]
        return wire, records, used if forward_first else used + replayed, types
    return asyncio.run(go())


def _same(chunks: list[bytes]) -> tuple[list[dict], int, list[str]]:
    """Both ways send the same bytes and record the same statements; the full way as an
    intent and a completion each, forwarding first mostly as one statement record each."""
    wire, records, used, types = _run(chunks, forward_first=True)
    wire_full, records_full, used_full, types_full = _run(chunks, forward_first=False)
    assert used_full == 0  # no short way at all while the log does not take forwarding
    assert wire == wire_full
    assert records == records_full
    assert "statement" not in types_full and types_full.count("intent") == types_full.count("complete")
    return records, used, types


def _ext(sql: str) -> bytes:
    return (m.encode_parse(m.Parse("", sql, [])) + m.encode_bind_text("", "", []) + _TAIL)


def test_simple_queries_forward_first_with_the_same_records() -> None:
    chunks = [m.encode_query("SELECT 1"), m.encode_query("SELECT 1/0"),
              m.encode_query("SELECT 2; SELECT 3"), m.encode_query("SET search_path = public")]
    records, used, types = _same(chunks)
    assert used == len(chunks)
    stmts = [r for r in records if r["type"] == "statement"]
    assert len(stmts) == 4 and any(r["sqlstate"] == "22012" for r in stmts)
    # queries answered before any group commit: one record each; anything else (the SET)
    # has its intent queued as soon as it is forwarded, and a completion
    assert types.count("statement") == 3 and types.count("intent") == types.count("complete") == 1


def test_extended_and_prepared_batches_forward_first_with_the_same_records() -> None:
    prepare = m.encode_parse(m.Parse("st", "SELECT $1::int", [])) + _SYNC
    runs = [m.encode_bind_text("", "st", [str(i)]) + _TAIL for i in range(5)]
    chunks = [_ext("SELECT 1"), _ext("SELECT 1/0"), prepare, *runs,
              b"C\x00\x00\x00\x08Sst\x00" + _SYNC, _ext("SELECT 4")]
    records, used, types = _same(chunks)
    assert used == len(chunks) - 4  # the prepared runs after the first: bind-plan replays
    assert [r["type"] for r in records].count("statement") == 8
    assert types.count("statement") == 8


def test_repeated_unnamed_parse_batches_are_replayed_with_the_same_records() -> None:
    """psycopg's default and ``pgbench -M extended``: the same unnamed Parse with a Bind of
    new values in every batch. After one batch followed the full way, the same bytes take
    the short way — until the text, the batch's shape or the search_path changes."""
    def search_path(value: str):
        def change(s: Session) -> None:
            s.parameters["search_path"] = value
        return change

    def bound(sql: str, value: str) -> bytes:
        return (m.encode_parse(m.Parse("", sql, [])) + m.encode_bind_text("", "", [value])
                + _TAIL)
    q = "SELECT name FROM customers WHERE id = $1"
    chunks = [bound(q, "1"), bound(q, "2"), bound(q, "3"),       # learnt, then replayed
              bound("SELECT $1::int AS other", "4"), bound(q, "5"),  # another text: relearnt
              bound(q, "6"),
              # a text of the same length: not the learnt Parse
              bound("SELECT id   FROM customers WHERE id = $1", "6"),
              bound(q, "6"), bound(q, "6"),
              # the unnamed statement closed in between: the replay parses it again
              b"C\x00\x00\x00\x06S\x00" + _SYNC, bound(q, "6"),
              search_path("pg_catalog"), bound(q, "7"),          # a new context: full way
              bound(q, "8"),
              # the same Parse, another tail (Describe of the statement): the full way
              m.encode_parse(m.Parse("", q, [])) + m.encode_bind_text("", "", ["9"])
              + b"D\x00\x00\x00\x06S\x00" + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + _SYNC,
              bound(q, "10")[:7], bound(q, "10")[7:],            # split: the full way
              bound("SELECT 1/0", "1"), bound("SELECT 1/0", "1")]  # errors, replayed too
    records, used, types = _same(chunks)
    # full way: the first of each run, the Close, the changed context, the other tail,
    # the split write (two reads), the first division
    assert used == 11, used
    assert len([r for r in records if r["type"] == "statement"]) == 16
    assert [r["sqlstate"] for r in records if r["type"] == "statement"][-2:] == ["22012"] * 2
    # the search_path decides what "customers" is: before, public.customers; after, nothing
    tables = [r["tables"] for r in records if r["type"] == "statement" and "customers" in r["normalized"]]
    assert tables == [["public.customers"]] * 9 + [[]] * 4, tables


def test_a_learnt_parse_is_not_replayed_when_the_log_stops_taking_forwarding() -> None:
    """Once the log would refuse (here: drops not yet reported), the full way runs even for
    a learnt batch."""
    def drops(s: Session) -> None:
        s.server.audit._unreported_drops = 1  # type: ignore[union-attr]

    q = m.encode_parse(m.Parse("", "SELECT $1::int", [])) + m.encode_bind_text("", "", ["1"]) + _TAIL
    wire, records, used, types = _run([q, q, drops, q], forward_first=True)
    assert used == 1 and _run.replayed == 1  # type: ignore[attr-defined]
    # (the first was followed after forwarding, the second replayed, the third took the
    # full way: its intent queued before it was forwarded)
    assert (wire, records) == _run([q, q, drops, q], forward_first=False)[:2]
    assert "event" in types[2:-1]  # the full way reported the drops before its intent


def test_a_learnt_parse_is_not_replayed_after_a_partial_message() -> None:
    """Bytes that continue a buffered partial message are not a new batch, even when they
    look like the learnt one."""
    q = m.encode_parse(m.Parse("", "SELECT $1::int", [])) + m.encode_bind_text("", "", ["1"]) + _TAIL
    wire, _, _, _ = _run([q, q, b"Q\x00\x00", q], forward_first=True)
    assert wire[-2] == (b"", 0)  # swallowed into the Query the partial message began


def test_a_query_completing_a_buffered_partial_message_is_not_taken_for_a_new_one() -> None:
    """The one-whole-Query short way needs nothing buffered: bytes that look like a Query
    but continue a partial message are framed with it."""
    async def go():
        log = AuditLog(AuditSettings(instance="t"), sink=MemorySink(), key=b"k" * 32)
        await log.start()
        s = _session(log)
        s.data_received(b"Q\x00\x00\x00")  # a header cut short: its length's last byte follows
        second = m.encode_query("SELECT " + "1" * 80)
        s.data_received(second)
        await log.close()
        return b"".join(s.upstream.sent), second
    sent, second = asyncio.run(go())
    # framed with the partial header (here: an invalid stream, so the session ends), never
    # forwarded as a Query of its own
    assert second not in sent


def test_pipelined_and_split_writes_forward_first_with_the_same_records() -> None:
    two = _ext("SELECT 5") + _ext("SELECT 6")
    q = m.encode_query("SELECT 7")
    chunks = [two, q[:3], q[3:], _ext("SELECT 1/0") + _ext("SELECT 8")]
    records, _, types = _same(chunks)
    skipped = [r for r in records if r.get("sqlstate") == "skipped"]
    assert len(skipped) == 0 or all(r["rows"] == 0 for r in skipped)


def _session(log: AuditLog) -> Session:
    srv = ProxyServer(parse_settings(""))
    srv.audit = log
    s = Session(srv)
    s.client, s.upstream = FakeTransport(), FakeTransport()
    s.startup = m.StartupMessage(196608, {"user": "postgres", "database": "db"})
    s.parameters = {"search_path": '"$user", public', "standard_conforming_strings": "on"}
    s.state = READY
    s.tracker = StatementTracker(s._begin, s._end, rows=True)
    s._backend = RelayScanner(TRACKED_INTERESTING, 1 << 20)
    return s


def _types(lines: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        rec = json.loads(line)
        out.append((rec["type"], rec.get("normalized", rec.get("event", ""))))
    return out


def test_an_answer_that_starts_before_its_statement_ends_follows_its_intent() -> None:
    """The first part of a result reaches the client while the statement still runs: its
    intent is queued (so in the writer's hands) before those bytes are written, and its
    outcome follows as a completion."""
    async def go():
        sink = MemorySink()
        log = AuditLog(AuditSettings(instance="t"), sink=sink, key=b"k" * 32)
        await log.start()
        s = _session(log)
        queued_at_write = []
        write = s.client.write
        s.client.write = lambda data: (queued_at_write.append(
            [json.loads(p + b"}")["type"] for _, p, _ in log._queue]), write(data))[1]
        s.data_received(m.encode_query("SELECT n FROM big"))
        assert s._deferred_n == 1 and not [p for _, p, _ in log._queue if b'"intent"' in p]
        s.upstream_data(m.row_description(["n"]) + m.data_row(["1"]))  # part of the result
        assert queued_at_write[-1].count("intent") == 1  # queued before the write
        s.upstream_data(m.data_row(["2"]) + m.command_complete("SELECT 2") + _Z)
        await log.close()
        return sink.lines
    lines = asyncio.run(go())
    types = _types(lines)
    assert [t for t, _ in types] == ["event", "intent", "complete", "event"]
    assert json.loads(lines[2])["rows"] == 2


def test_a_statement_still_running_at_a_group_commit_gets_its_intent_written() -> None:
    """A long statement: the group commit writes its intent while it runs (the auditor sees
    it in flight); the completion comes when it ends."""
    async def go():
        sink = MemorySink()
        log = AuditLog(AuditSettings(instance="t", fsync="batch"), sink=sink, key=b"k" * 32)
        await log.start()
        await log.flush(5)
        s = _session(log)
        s.data_received(m.encode_query("SELECT pg_sleep(60)"))
        assert s.pending == 1 and s._deferred_n == 1
        for _ in range(500):  # the writer's next group commit, without any other record
            if any(b'"type":"intent"' in line for line in sink.lines):
                break
            await asyncio.sleep(0.01)
        in_flight = _types(sink.lines)
        s.upstream_data(_ROWS + _Z)
        await log.close()
        return in_flight, sink.lines
    in_flight, lines = asyncio.run(go())
    assert in_flight[-1] == ("intent", "select pg_sleep ( ? )")
    assert [t for t, _ in _types(lines)] == ["event", "intent", "complete", "event"]
    intent, done = json.loads(lines[1]), json.loads(lines[2])
    assert done["rid"] == intent["seq"] and done["sqlstate"] == "00000"


def test_the_merged_record_is_the_intent_and_outcome_in_one_line() -> None:
    async def go():
        sink = MemorySink()
        log = AuditLog(AuditSettings(instance="t"), sink=sink, key=b"k" * 32)
        await log.start()
        s = _session(log)
        s.data_received(m.encode_query("SELECT 1/0"))
        s.upstream_data(_FAIL + _Z)
        s.data_received(m.encode_query("SELECT 1"))
        s.upstream_data(_ROWS + _Z)
        await log.close()
        return sink.lines
    lines = asyncio.run(go())
    recs = [json.loads(line) for line in lines[1:-1]]
    assert [r["type"] for r in recs] == ["statement", "statement"]
    assert [r["sqlstate"] for r in recs] == ["22012", "00000"]
    assert [r["rows"] for r in recs] == [0, 1]
    assert recs[0]["normalized"] == "select ? / ?" and recs[0]["decision"] == "forward"
    assert recs[0]["ts"] <= recs[1]["ts"]


def test_a_write_has_its_intent_queued_as_soon_as_it_is_forwarded() -> None:
    """Only queries wait to be merged with their outcome: a statement that may change data
    is in the writer's hands from the moment it is sent, answered or not."""
    async def go():
        sink = MemorySink()
        log = AuditLog(AuditSettings(instance="t"), sink=sink, key=b"k" * 32)
        await log.start()
        s = _session(log)
        s.data_received(m.encode_query("DELETE FROM orders WHERE id = 1"))
        queued = [json.loads(p + b"}")["type"] for _, p, _ in log._queue]
        assert s._deferred_n == 0
        s.upstream_data(m.command_complete("DELETE 1") + _Z)
        await log.close()
        return queued, sink.lines
    queued, lines = asyncio.run(go())
    assert queued[-1] == "intent"
    assert [t for t, _ in _types(lines)] == ["event", "intent", "complete", "event"]
    assert json.loads(lines[2])["rows"] == 1

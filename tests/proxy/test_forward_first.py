"""Sessions without a guard forward first and follow after (Session._forward_then_follow,
_relay_then_follow, and the bind-plan replay): the same bytes go both ways and the audit
log gets the same records as when every statement takes the full way.

No database: a session with an audit log over an in-memory sink, fed whole client writes;
the server's answers are simulated. Each scenario runs with forwarding first and with it
turned off, and the records are compared without what differs by nature (seq, time,
session id, chain).
"""

from __future__ import annotations

import asyncio
import json

from proxy.audit import AuditLog, AuditSettings
from proxy.audit.sinks.base import ChainTip, Sink
from proxy.config import parse_settings
from proxy.protocol import messages as m
from proxy.protocol.framer import RelayScanner
from proxy.server import ProxyServer
from proxy.session import Session
from proxy.states import READY, TRACKED_INTERESTING
from proxy.tracker import StatementTracker
from tests.proxy.fakes import FakeTransport

_SYNC = b"S\x00\x00\x00\x04"
_TAIL = b"D\x00\x00\x00\x06P\x00" + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + _SYNC
_ROWS = m.row_description(["n"]) + m.data_row(["1"]) + m.command_complete("SELECT 1")
_FAIL = m.error_response("22012", "division by zero")
_Z = m.ready_for_query(b"I")


class _Memory(Sink):
    name = "memory"

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    async def open(self) -> ChainTip:
        return ChainTip()

    async def write(self, first_seq: int, lines: list[bytes]) -> None:
        self.lines.extend(lines)


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


def _run(chunks: list[bytes], *, forward_first: bool) -> tuple[list, list[dict], int]:
    async def go():
        srv = ProxyServer(parse_settings(""))
        sink = _Memory()
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
            # answers take the full way too: a refusal token pending (one that never
            # matches) keeps the relay off its short way
            s.poisons["pgveil-test-never-matches"] = b""
        used = 0
        follow = Session._forward_then_follow

        def counting(self, data):
            nonlocal used
            used += 1
            return follow(self, data)
        s._forward_then_follow = counting.__get__(s)
        wire = []
        try:
            for chunk in chunks:
                before = len(s.upstream.sent)
                s.data_received(chunk)
                sent = b"".join(s.upstream.sent[before:])
                wire.append((sent, s.pending))
                if sent:
                    before = len(s.client.sent)
                    s.upstream_data(_answer_for(sent))
                    wire.append((b"".join(s.client.sent[before:]), s.pending, s.tx_status))
            await log.close()
        finally:
            AuditLog.takes_forwarded = original
        records = []
        for line in sink.lines:
            rec = json.loads(line)
            for key in ("seq", "ts", "prev", "mac", "duration_ms", "session", "rid", "pid",
                        "key_id", "client"):
                rec.pop(key, None)
            records.append(rec)
        return wire, records, used
    return asyncio.run(go())


def _same(chunks: list[bytes]) -> tuple[list[dict], int]:
    wire, records, used = _run(chunks, forward_first=True)
    wire_full, records_full, used_full = _run(chunks, forward_first=False)
    assert used_full == 0
    assert wire == wire_full
    assert records == records_full
    return records, used


def _ext(sql: str) -> bytes:
    return (m.encode_parse(m.Parse("", sql, [])) + m.encode_bind_text("", "", []) + _TAIL)


def test_simple_queries_forward_first_with_the_same_records() -> None:
    chunks = [m.encode_query("SELECT 1"), m.encode_query("SELECT 1/0"),
              m.encode_query("SELECT 2; SELECT 3"), m.encode_query("SET search_path = public")]
    records, used = _same(chunks)
    assert used == len(chunks)
    intents = [r for r in records if r["type"] == "intent"]
    assert len(intents) == 4 and [r["type"] for r in records].count("complete") == 4
    assert any(r["type"] == "complete" and r["sqlstate"] == "22012" for r in records)


def test_extended_and_prepared_batches_forward_first_with_the_same_records() -> None:
    prepare = m.encode_parse(m.Parse("st", "SELECT $1::int", [])) + _SYNC
    runs = [m.encode_bind_text("", "st", [str(i)]) + _TAIL for i in range(5)]
    chunks = [_ext("SELECT 1"), _ext("SELECT 1/0"), prepare, *runs,
              b"C\x00\x00\x00\x08Sst\x00" + _SYNC, _ext("SELECT 4")]
    records, used = _same(chunks)
    assert used == len(chunks) - 4  # the prepared runs after the first: bind-plan replays
    assert [r["type"] for r in records].count("intent") == 8


def test_pipelined_and_split_writes_forward_first_with_the_same_records() -> None:
    two = _ext("SELECT 5") + _ext("SELECT 6")
    q = m.encode_query("SELECT 7")
    chunks = [two, q[:3], q[3:], _ext("SELECT 1/0") + _ext("SELECT 8")]
    records, _ = _same(chunks)
    skipped = [r for r in records if r["type"] == "complete" and r["sqlstate"] == "skipped"]
    assert len(skipped) == 0 or all(r["rows"] == 0 for r in skipped)

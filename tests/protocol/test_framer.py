"""The sans-I/O framers: exact reassembly at any split, and only ProtocolViolation on garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol import messages as m
from proxy.protocol.framer import (
    MessageFramer,
    ProtocolViolation,
    RelayScanner,
    StartupFramer,
)

bodies = st.binary(min_size=0, max_size=300)
types = st.sampled_from(list(b"DTCZENSA123dcQFf"))
message = st.builds(lambda t, b: m.msg(bytes([t]), b), types, bodies)
streams = st.lists(message, min_size=0, max_size=30)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_message_framer_reassembles_any_split(msgs, cuts):
    data = b"".join(msgs)
    framer = MessageFramer(max_size=1 << 20)
    got = []
    for chunk in split_at(data, cuts):
        got += [raw for _, raw in framer.feed(chunk)]
    assert got == msgs
    assert framer.buffered == 0


@given(streams, st.lists(st.integers(min_value=0), max_size=20), st.sets(types, max_size=4))
def test_relay_scanner_relays_exact_bytes_and_finds_interesting(msgs, cuts, interesting):
    data = b"".join(msgs)
    scanner = RelayScanner(bytes(interesting), max_size=1 << 20)
    relayed = bytearray()
    found = []
    for chunk in split_at(data, cuts):
        buf, upto, events = scanner.feed(chunk)
        for mtype, start, stop in events:
            assert mtype in interesting and stop <= upto
            found.append(buf[start:stop])
        relayed += buf[:upto]
    assert bytes(relayed) == data
    assert found == [x for x in msgs if x[0] in interesting]


@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_message_framer_spans_match_messages(msgs, cuts):
    data = b"".join(msgs)
    framer = MessageFramer(max_size=1 << 20)
    got = []
    for chunk in split_at(data, cuts):
        buf, upto, spans = framer.feed_spans(chunk)
        assert (spans[-1][2] if spans else 0) == upto
        got += [buf[a:b] for _, a, b in spans]
    assert got == msgs


@given(st.binary(min_size=1, max_size=2000), st.lists(st.integers(min_value=0), max_size=10))
@settings(max_examples=300)
def test_garbage_raises_only_protocol_violation(garbage, cuts):
    for framer in (
        MessageFramer(max_size=4096, valid_types=m.FRONTEND_TYPES),
        RelayScanner(b"ZE", max_size=4096),
    ):
        try:
            for chunk in split_at(garbage, cuts):
                framer.feed(chunk)
        except ProtocolViolation:
            pass
    try:
        got = StartupFramer().feed(garbage)
        if got is not None:
            m.decode_startup(got[0])
    except ProtocolViolation:
        pass


@given(st.binary(max_size=400))
def test_decoders_raise_only_protocol_violation(body):
    for decode in (
        m.decode_fields, m.decode_query, m.decode_parse, m.decode_row_description,
        m.decode_backend_key, m.decode_parameter_status, m.decode_describe_or_close,
        m.decode_auth, m.decode_bind_names,
    ):
        try:
            decode(body)
        except ProtocolViolation:
            pass


def test_oversized_and_unknown_messages_are_violations():
    framer = MessageFramer(max_size=1024, valid_types=m.FRONTEND_TYPES)
    with pytest.raises(ProtocolViolation, match="invalid length"):
        framer.feed(b"Q" + (10_000).to_bytes(4, "big"))
    with pytest.raises(ProtocolViolation, match="invalid message type"):
        MessageFramer(1024, m.FRONTEND_TYPES).feed(b"\x01\x00\x00\x00\x04")
    with pytest.raises(ProtocolViolation, match="invalid length"):
        MessageFramer(1024).feed(b"Q\x00\x00\x00\x02")
    with pytest.raises(ProtocolViolation):
        RelayScanner(b"Z", 1024).feed(b"D\xff\xff\xff\xff")


def test_large_uninteresting_message_streams_without_buffering():
    big = m.msg(b"D", b"x" * 5_000_000)
    scanner = RelayScanner(b"Z", max_size=1 << 30)
    chunk = big[:65536]
    buf, upto, events = scanner.feed(chunk)
    assert buf is chunk and upto == len(chunk) and events == []
    tail = big[65536:] + m.ready_for_query()
    buf, upto, events = scanner.feed(tail)
    assert buf is tail and upto == len(tail)
    assert events == [(ord("Z"), len(big) - 65536, len(tail))]


def test_startup_roundtrip_and_special_requests():
    pkt = m.encode_startup(m.PROTOCOL_3_2, {"user": "u", "database": "d"})
    got = StartupFramer().feed(pkt + b"tail")
    assert got is not None and got[1] == b"tail"
    s = m.decode_startup(got[0])
    assert isinstance(s, m.StartupMessage) and s.minor == 2 and s.params == {"user": "u", "database": "d"}
    assert isinstance(m.decode_startup(m.encode_ssl_request()[4:]), m.SSLRequest)
    c = m.decode_startup(m.encode_cancel_request(42, b"k" * 32)[4:])
    assert isinstance(c, m.CancelRequest) and c.pid == 42 and c.secret == b"k" * 32
    with pytest.raises(ProtocolViolation, match="unsupported frontend protocol"):
        m.decode_startup((2 << 16).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ProtocolViolation):
        StartupFramer().feed((20_000).to_bytes(4, "big"))


def test_message_codecs_roundtrip():
    p = m.Parse("s1", "select $1", [23])
    assert m.decode_parse(m.encode_parse(p)[5:]) == p
    assert m.decode_query(m.encode_query("select 1")[5:]) == "select 1"
    err = m.error_response("42501", "pgveil: no", hint="ask")
    f = m.decode_fields(err[5:])
    assert f["C"] == "42501" and f["M"] == "pgveil: no" and f["H"] == "ask" and f["S"] == "ERROR"
    assert m.decode_backend_key(m.encode_backend_key(7, b"abcd")[5:]) == (7, b"abcd")
    sasl = m.encode_auth_sasl(["SCRAM-SHA-256"])
    code, payload = m.decode_auth(sasl[5:])
    assert code == m.AUTH_SASL and m.decode_sasl_mechanisms(payload) == ["SCRAM-SHA-256"]
    bind = m.msg(b"B", m.cstr("p") + m.cstr("old") + b"\x00\x00\x00\x00\x00\x00")
    assert m.decode_bind_names(m.encode_bind_with_statement(bind[5:], "new")[5:])[:2] == ("p", "new")


@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_feed_count_matches_spans(msgs, cuts):
    data = b"".join(msgs)
    a, b = MessageFramer(max_size=1 << 20), MessageFramer(max_size=1 << 20)
    for chunk in split_at(data, cuts):
        buf1, upto1, spans = a.feed_spans(chunk)
        buf2, upto2, n, term = b.feed_count(chunk)
        assert buf1[:upto1] == buf2[:upto2]
        assert n == sum(a.ready_delta(t) for t, _, _ in spans)
        assert term == any(t == ord("X") for t, _, _ in spans)


def test_ready_accounting_for_copy_in_over_the_extended_protocol():
    # libpq: Parse/Bind/Execute/Sync, CopyData, CopyDone, Sync -> the server sends one Z
    f = MessageFramer(1 << 20)
    stream = b"".join(m.msg(t, b"x") for t in (b"P", b"B", b"E", b"S", b"d", b"c", b"S"))
    assert f.feed_count(stream)[2] == 1
    g = MessageFramer(1 << 20)
    assert sum(g.ready_delta(t) for t in b"PBESdcS") == 1
    # simple-protocol COPY and FunctionCall: one Z each
    assert MessageFramer(1 << 20).feed_count(
        b"".join(m.msg(t, b"x") for t in (b"Q", b"d", b"c", b"F")))[2] == 2


@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_large_messages_are_gathered_exactly(msgs, cuts):
    """A message larger than the gathering threshold (lowered here to 64 bytes) arrives in
    pieces: it is gathered in a bytearray instead of joined again on every read, and comes
    out byte for byte, through feed (spans) and feed_count (the relay's path) alike."""
    from proxy.protocol import framer as framer_module

    data = b"".join(msgs)
    _, _, expected_n, _ = MessageFramer(max_size=1 << 20).feed_count(data)  # in one piece
    saved = framer_module._BIG
    framer_module._BIG = 64
    try:
        spans_framer = MessageFramer(max_size=1 << 20)
        count_framer = MessageFramer(max_size=1 << 20)
        got, relayed, answered = [], b"", 0
        for chunk in split_at(data, cuts):
            got += [raw for _, raw in spans_framer.feed(chunk)]
            buf, upto, n, _ = count_framer.feed_count(chunk)
            relayed += buf[:upto]
            answered += n
        assert got == msgs and spans_framer.buffered == 0
        assert relayed == data and count_framer.buffered == 0
        assert answered == expected_n
    finally:
        framer_module._BIG = saved


def test_a_large_message_is_held_until_whole_and_handed_over():
    big = m.msg(b"Q", b"x" * 200_000 + b"\x00")
    framer = MessageFramer(max_size=1 << 20)
    assert framer.feed(big[:70_000]) == []
    assert framer.buffered == 70_000
    assert framer.feed(big[70_000:140_000]) == [] and framer.buffered == 140_000
    other = MessageFramer(max_size=1 << 20)  # e.g. the session changes hands mid-message
    assert other.feed(framer.take_buffered() + big[140_000:]) == [(ord("Q"), big)]
    assert framer.buffered == 0

"""The record sealer: its MAC is exactly HMAC-SHA256."""



def test_sealer_mac_is_rfc2104_hmac_sha256() -> None:
    import hmac as _hmac
    import os as _os

    from proxy.audit.records import Sealer as _Sealer

    for size in (1, 32, 64, 65, 200):  # keys longer than a block are hashed first
        key = _os.urandom(size)
        sealer = _Sealer(key)
        for body in (b"", b"{}", _os.urandom(5000)):
            assert sealer.mac(body) == _hmac.digest(key, body, "sha256").hex()


def test_timestamp_bytes_match_the_text_form() -> None:
    from proxy.audit.records import utc_timestamp, utc_timestamp_bytes

    for t in (0.0, 1767225599.999999, 1767225600.000001, 1796200000.5):
        assert utc_timestamp_bytes(t) == utc_timestamp(t).encode()
    assert utc_timestamp_bytes(1767225600.25) == b"2026-01-01T00:00:00.250000Z"


def test_the_writers_sealing_loop_makes_the_lines_the_format_describes() -> None:
    """Sealer.seal_chain (the writer's hot loop) against the format written out plainly,
    and against the checker: same bytes, lines that check, the same chain tip."""
    from proxy.audit.records import Sealer
    from proxy.audit.sealing import seal_prefixes, seal_prefixes_plainly

    sealer = Sealer(b"k" * 70)  # a key longer than a block is hashed first
    prefixes = [b'{"seq":%d,"ts":"t","type":"event","note":"%s"' % (i, "\u00e9".encode() * i)
                for i in range(1, 200)]
    fast = seal_prefixes(sealer, "a" * 64, prefixes)
    assert fast == seal_prefixes_plainly(sealer, "a" * 64, prefixes)
    assert all(sealer.check(line) for line in fast[0])

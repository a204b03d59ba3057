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

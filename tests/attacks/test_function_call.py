"""The FunctionCall message ('F') of the frontend protocol.

libpq's PQfn (and its client-side large-object API) calls a function by OID with a
FunctionCall message: there is no SQL text for the policy to check. For a masked user pgveil
refuses it in-band (an error, then ReadyForQuery, as the server answers a failed call) and the
session carries on; for an exempt user it goes through as it is.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import psycopg
import pytest

from attack_oracle import secret_forms, secret_values

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def forms(attacks_path: Path) -> dict[str, str]:
    return secret_forms(secret_values((attacks_path / "schema.sql").read_text()))


def function_call(dsn: str, signature: str, args: list[str]) -> tuple[list[tuple[bytes, bytes]], object]:
    """Send one FunctionCall of ``signature`` with text arguments; the messages answered up
    to ReadyForQuery, and the result of a statement on the same connection afterwards."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        oid = conn.execute("SELECT %s::regprocedure::oid", [signature]).fetchone()[0]
        s = socket.socket(fileno=os.dup(conn.pgconn.socket))
        s.settimeout(10)
        body = struct.pack("!I", oid) + struct.pack("!hh", 1, 0) + struct.pack("!h", len(args))
        for a in args:
            b = a.encode()
            body += struct.pack("!i", len(b)) + b
        body += struct.pack("!h", 0)  # text result
        s.sendall(b"F" + struct.pack("!I", len(body) + 4) + body)
        buf, out = b"", []
        while True:
            while len(buf) < 5:
                buf += s.recv(65536)
            (n,) = struct.unpack("!I", buf[1:5])
            while len(buf) < 1 + n:
                buf += s.recv(65536)
            out.append((buf[:1], buf[5 : 1 + n]))
            buf = buf[1 + n :]
            if out[-1][0] == b"Z":
                break
        s.close()
        try:
            after = conn.execute("SELECT 'alive'").fetchone()
        except psycopg.Error as exc:
            after = exc
    return out, after


def leaked(answers, forms) -> list[str]:
    text = b"".join(p for _, p in answers).decode("latin-1")
    return [f"{label} {f!r}" for f, label in forms.items() if f in text]


def test_function_call_of_a_masked_user_is_refused(veil, attacks_db, forms):
    answers, after = function_call(veil.dsn(attacks_db, "analyst", password="analyst-pw"),
                                   "customer_ssn(integer)", ["1"])
    assert not leaked(answers, forms), f"FunctionCall leaked: {answers!r}"
    assert [t for t, _ in answers] == [b"E", b"Z"], answers
    error = answers[0][1]
    assert b"C42501\x00" in error and b"FunctionCall" in error, error
    assert after == ("alive",), after  # the session goes on
    # a built-in is refused the same way: no SQL text means nothing to check
    answers, after = function_call(veil.dsn(attacks_db, "analyst", password="analyst-pw"),
                                   "int4pl(integer,integer)", ["40", "2"])
    assert [t for t, _ in answers] == [b"E", b"Z"] and after == ("alive",), answers


def test_function_call_leaks_without_pgveil(pg, attacks_db, forms):
    answers, _ = function_call(pg.dsn(attacks_db, "analyst", password="analyst-pw",
                                      sslmode="disable"), "customer_ssn(integer)", ["1"])
    assert leaked(answers, forms), answers


def test_function_call_of_an_exempt_user_goes_through(veil, pg, attacks_db):
    answers, after = function_call(veil.dsn(attacks_db, pg.superuser), "int4pl(integer,integer)",
                                   ["40", "2"])
    assert [t for t, _ in answers] == [b"V", b"Z"] and answers[0][1].endswith(b"42"), answers
    assert after == ("alive",)

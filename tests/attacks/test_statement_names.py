"""pgveil's own prepared statements are not the client's to replace.

pgveil prepares masked statements upstream under names of its own (``pgveil_c…``), which a
client can read in pg_prepared_statements. Closing one and Parsing a statement of one's own
under its name would make pgveil's next simple-protocol SELECT of that shape Bind the
client's statement: the audit and the notice would describe the masked SELECT while
something else ran. Both the Close and the Parse are refused for such names.
"""

from __future__ import annotations

import os
import socket
import struct

import psycopg
import pytest

pytestmark = pytest.mark.timeout(60)


def _msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _c(s: str) -> bytes:
    return s.encode() + b"\0"


def Q(q): return _msg(b"Q", _c(q))
def P(n, q): return _msg(b"P", _c(n) + _c(q) + b"\0\0")
def S(): return _msg(b"S")
def Cs(n): return _msg(b"C", b"S" + _c(n))


class Raw:
    def __init__(self, dsn):
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.s = socket.socket(fileno=os.dup(self.conn.pgconn.socket))
        self.s.settimeout(10)
        self.buf = b""

    def x(self, *msgs):
        self.s.sendall(b"".join(msgs))
        out = []
        while True:
            while len(self.buf) < 5:
                self.buf += self.s.recv(65536)
            n = struct.unpack("!I", self.buf[1:5])[0]
            while len(self.buf) < 1 + n:
                self.buf += self.s.recv(65536)
            out.append((self.buf[:1], self.buf[5:1 + n]))
            self.buf = self.buf[1 + n:]
            if out[-1][0] == b"Z":
                return out


def datarows(answers):
    return [body for t, body in answers if t == b"D"]


def test_cached_statement_name_cannot_be_taken_over(veil, attacks_db):
    r = Raw(veil.dsn(attacks_db, "analyst", password="analyst-pw"))
    r.x(Q("SELECT name, lower(ssn) FROM customers WHERE id = 1"))
    r.x(Q("SELECT name, lower(ssn) FROM customers WHERE id = 2"))  # a plan exists now
    names = [d[6:].decode() for d in datarows(r.x(Q(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgveil%'")))]
    assert names, "no cached statement"
    closed = r.x(Cs(names[0]), S())
    assert [t for t, _ in closed] == [b"3", b"Z"], closed  # answered, not done
    refused = r.x(P(names[0], "SELECT 'hijacked'::text, $1::text"), S())
    assert any(t == b"E" for t, _ in refused), refused
    got = datarows(r.x(Q("SELECT name, lower(ssn) FROM customers WHERE id = 3")))
    assert got and not any(b"hijacked" in d for d in got), got
    refused = r.x(Q(f"DEALLOCATE {names[0]}"))
    assert any(t == b"E" and b"42501" in body for t, body in refused), refused

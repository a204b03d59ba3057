"""Encoders and decoders for the protocol-3 messages pgveil reads or writes.

Decoders take a message *body* (after the 5-byte header) or, for startup packets, the
packet after its length; encoders return complete messages ready to send. A body that does
not parse raises :class:`~proxy.protocol.framer.ProtocolViolation`.

Only what the proxy inspects or produces has a codec here; everything else is relayed as
the bytes that came in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .framer import ProtocolViolation

# --- protocol codes -------------------------------------------------------------------
PROTOCOL_3_0 = 196608  # 3 << 16
PROTOCOL_3_2 = 196610  # 3 << 16 | 2
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

#: Message types a frontend may send once started (PostgreSQL 18 protocol docs).
FRONTEND_TYPES = b"BCdcfDEHFPpQSX"

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


#: parameters a Parse or Bind can carry (the protocol counts them in an Int16)
MAX_PARAMETERS = 32767

def msg(mtype: bytes, body: bytes = b"") -> bytes:
    """A complete message: type byte, length, body."""
    return mtype + _U32.pack(len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


def _read_cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    try:
        return body[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid UTF-8 in message") from exc


# --- startup packets --------------------------------------------------------------------
@dataclass
class StartupMessage:
    version: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF


@dataclass
class SSLRequest:
    pass


@dataclass
class GSSENCRequest:
    pass


@dataclass
class CancelRequest:
    pid: int
    secret: bytes


def decode_startup(packet: bytes) -> StartupMessage | SSLRequest | GSSENCRequest | CancelRequest:
    """Decode a startup packet (the bytes after its 4-byte length)."""
    if len(packet) < 4:
        raise ProtocolViolation("startup packet too short")
    (code,) = _U32.unpack_from(packet, 0)
    if code == SSL_REQUEST:
        if len(packet) != 4:
            raise ProtocolViolation("malformed SSLRequest")
        return SSLRequest()
    if code == GSSENC_REQUEST:
        if len(packet) != 4:
            raise ProtocolViolation("malformed GSSENCRequest")
        return GSSENCRequest()
    if code == CANCEL_REQUEST:
        if len(packet) < 12 or len(packet) > 8 + 256:
            raise ProtocolViolation("malformed CancelRequest")
        (pid,) = _U32.unpack_from(packet, 4)
        return CancelRequest(pid, packet[8:])
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.2"
        )
    params: dict[str, str] = {}
    pos = 4
    while True:
        if pos >= len(packet):
            raise ProtocolViolation("startup packet has no terminator")
        if packet[pos] == 0:
            if pos != len(packet) - 1:
                raise ProtocolViolation("trailing bytes after startup parameters")
            break
        key, pos = _read_cstr(packet, pos)
        value, pos = _read_cstr(packet, pos)
        params[key] = value
    return StartupMessage(code, params)


def encode_startup(version: int, params: dict[str, str]) -> bytes:
    body = _U32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\x00"
    return _U32.pack(len(body) + 4) + body


def encode_ssl_request() -> bytes:
    return _U32.pack(8) + _U32.pack(SSL_REQUEST)


def encode_cancel_request(pid: int, secret: bytes) -> bytes:
    return _U32.pack(12 + len(secret)) + _U32.pack(CANCEL_REQUEST) + _U32.pack(pid) + secret


# --- errors and notices -------------------------------------------------------------------
def decode_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse body → {field code: value}."""
    fields: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n:
        code = body[pos]
        if code == 0:
            return fields
        end = body.find(b"\x00", pos + 1)
        if end < 0:
            raise ProtocolViolation("unterminated error field")
        fields[chr(code)] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    raise ProtocolViolation("error fields have no terminator")


def encode_fields(mtype: bytes, fields: dict[str, str]) -> bytes:
    body = b"".join(k.encode() + cstr(v) for k, v in fields.items() if v is not None) + b"\x00"
    return msg(mtype, body)


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    hint: str | None = None,
    detail: str | None = None,
) -> bytes:
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail:
        fields["D"] = detail
    if hint:
        fields["H"] = hint
    return encode_fields(b"E", fields)


def notice_response(message: str, *, hint: str | None = None, sqlstate: str = "00000") -> bytes:
    fields = {"S": "NOTICE", "V": "NOTICE", "C": sqlstate, "M": message}
    if hint:
        fields["H"] = hint
    return encode_fields(b"N", fields)


# --- authentication -------------------------------------------------------------------------
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def decode_auth(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise ProtocolViolation("authentication message too short")
    return _I32.unpack_from(body, 0)[0], body[4:]


def decode_sasl_mechanisms(payload: bytes) -> list[str]:
    mechs: list[str] = []
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        name, pos = _read_cstr(payload, pos)
        mechs.append(name)
    return mechs


def encode_auth_sasl(mechanisms: list[str]) -> bytes:
    return msg(b"R", _I32.pack(AUTH_SASL) + b"".join(cstr(m) for m in mechanisms) + b"\x00")


# --- small backend messages -------------------------------------------------------------------
def decode_backend_key(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8 or len(body) > 4 + 256:
        raise ProtocolViolation("malformed BackendKeyData")
    return _U32.unpack_from(body, 0)[0], body[4:]


def encode_backend_key(pid: int, secret: bytes) -> bytes:
    return msg(b"K", _U32.pack(pid) + secret)


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _read_cstr(body, 0)
    value, _ = _read_cstr(body, pos)
    return name, value


def ready_for_query(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def decode_notification(body: bytes) -> tuple[int, str, str]:
    (pid,) = _U32.unpack_from(body, 0)
    channel, pos = _read_cstr(body, 4)
    payload, _ = _read_cstr(body, pos)
    return pid, channel, payload


def encode_notification(pid: int, channel: str, payload: str) -> bytes:
    return msg(b"A", _U32.pack(pid) + cstr(channel) + cstr(payload))


def decode_command_complete(body: bytes) -> str:
    return _read_cstr(body, 0)[0]


@dataclass
class FieldDescription:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    type_size: int
    type_mod: int
    format: int


def decode_row_description(body: bytes) -> list[FieldDescription]:
    if len(body) < 2:
        raise ProtocolViolation("malformed RowDescription")
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    fields: list[FieldDescription] = []
    unpack = struct.Struct("!IhIhih").unpack_from
    for _ in range(count):
        name, pos = _read_cstr(body, pos)
        if pos + 18 > len(body):
            raise ProtocolViolation("malformed RowDescription")
        toid, attnum, typ, size, mod, fmt = unpack(body, pos)
        pos += 18
        fields.append(FieldDescription(name, toid, attnum, typ, size, mod, fmt))
    return fields


# --- frontend query messages ------------------------------------------------------------------
def decode_query(body: bytes) -> str:
    if not body or body[-1] != 0:
        raise ProtocolViolation("malformed Query message")
    text, pos = _read_cstr(body, 0)
    if pos != len(body):
        raise ProtocolViolation("malformed Query message")
    return text


def encode_query(text: str) -> bytes:
    return msg(b"Q", cstr(text))


@dataclass(slots=True)
class Parse:
    name: str
    query: str
    param_types: list[int]


def decode_parse(body: bytes) -> Parse:
    end = body.find(b"\x00")
    stop = body.find(b"\x00", end + 1) if end >= 0 else -1
    if stop < 0:
        raise ProtocolViolation("unterminated string in message")
    try:
        name = body[:end].decode()
        query = body[end + 1 : stop].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid UTF-8 in message") from exc
    pos = stop + 1
    if pos + 2 == len(body) and body[pos] == 0 and body[pos + 1] == 0:
        return Parse(name, query, [])  # no parameter types: the common case
    if pos + 2 > len(body):
        raise ProtocolViolation("malformed Parse message")
    (n,) = _I16.unpack_from(body, pos)
    pos += 2
    if n < 0 or pos + 4 * n != len(body):
        raise ProtocolViolation("malformed Parse message")
    types = list(struct.unpack_from(f"!{n}I", body, pos))
    return Parse(name, query, types)


def encode_parse(p: Parse) -> bytes:
    n = len(p.param_types)
    return msg(
        b"P", cstr(p.name) + cstr(p.query) + _I16.pack(n) + struct.pack(f"!{n}I", *p.param_types)
    )


def decode_parse_name(body: bytes) -> str:
    return _read_cstr(body, 0)[0]


def decode_execute_portal(body: bytes) -> str:
    portal, pos = _read_cstr(body, 0)
    if pos + 4 != len(body):
        raise ProtocolViolation("malformed Execute message")
    return portal


def decode_bind_names(body: bytes) -> tuple[str, str, int]:
    """Portal name, statement name, and where the rest of the Bind begins."""
    end = body.find(b"\x00")
    stop = body.find(b"\x00", end + 1) if end >= 0 else -1
    if stop < 0:
        raise ProtocolViolation("unterminated string in message")
    try:
        return body[:end].decode(), body[end + 1 : stop].decode(), stop + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid UTF-8 in message") from exc


def decode_bind_values(body: bytes) -> list[str | None]:
    """A Bind's parameter values: text as text, binary as hex (only for include_literals)."""
    _, _, pos = decode_bind_names(body)
    try:
        (nfmt,) = _I16.unpack_from(body, pos)
        pos += 2
        fmts = list(struct.unpack_from(f"!{nfmt}h", body, pos))
        pos += 2 * nfmt
        (n,) = _I16.unpack_from(body, pos)
        pos += 2
        out: list[str | None] = []
        for i in range(n):
            (ln,) = _I32.unpack_from(body, pos)
            pos += 4
            if ln < 0:
                out.append(None)
                continue
            value = body[pos : pos + ln]
            pos += ln
            fmt = fmts[i] if len(fmts) > 1 else (fmts[0] if fmts else 0)
            out.append(value.decode("utf-8", "replace") if fmt == 0 else "\\x" + value.hex())
        return out
    except struct.error as exc:
        raise ProtocolViolation("malformed Bind message") from exc


def encode_bind_with_statement(body: bytes, statement: str, rest: int = -1) -> bytes:
    """Re-emit a Bind with a different statement name, parameters untouched. ``rest``:
    where the Bind goes on after its two names, if the caller decoded them already."""
    if rest < 0:
        rest = decode_bind_names(body)[2]
    portal_end = body.index(b"\x00") + 1
    out = body[:portal_end] + statement.encode() + b"\x00" + body[rest:]
    return b"B" + _U32.pack(len(out) + 4) + out


def bind_text_head(portal: str, statement: str, count: int) -> bytes:
    """The start of a Bind of ``count`` text parameters (see :func:`encode_bind_text`)."""
    return cstr(portal) + cstr(statement) + b"\x00\x00" + _I16.pack(count)


def encode_bind_text(portal: str, statement: str, values, head: bytes | None = None) -> bytes:
    """A Bind of text parameters (none NULL), all results in text format. ``head``: the
    :func:`bind_text_head` of these names and this many values, if the caller keeps one."""
    parts = [head or bind_text_head(portal, statement, len(values))]
    for v in values:
        raw = v.encode()
        parts.append(_I32.pack(len(raw)))
        parts.append(raw)
    parts.append(b"\x00\x00")
    body = b"".join(parts)
    return b"B" + _U32.pack(len(body) + 4) + body


def decode_describe_or_close(body: bytes) -> tuple[str, str]:
    if len(body) < 2 or body[0] not in b"SP":
        raise ProtocolViolation("malformed Describe/Close message")
    name, pos = _read_cstr(body, 1)
    if pos != len(body):
        raise ProtocolViolation("malformed Describe/Close message")
    return chr(body[0]), name


# --- result sets the proxy answers itself (the console) ------------------------------------
TEXT_OID = 25


def row_description(names: list[str]) -> bytes:
    body = _I16.pack(len(names)) + b"".join(
        cstr(n) + struct.pack("!IhIhih", 0, 0, TEXT_OID, -1, -1, 0) for n in names
    )
    return msg(b"T", body)


def data_row(values: list[str | None]) -> bytes:
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            b = v.encode()
            parts.append(_I32.pack(len(b)) + b)
    return msg(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def empty_query_response() -> bytes:
    return msg(b"I")

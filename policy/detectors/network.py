"""IP addresses (v4 and v6) in text columns, and ``inet``/``cidr`` columns by type.

IPv4 must be four dotted decimal octets 0–255 (optionally ``/prefix``); IPv6 must parse with
:mod:`ipaddress` and contain a colon. An ``inet``/``cidr`` column is an IP column by type.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterator

from .base import Detector, Strength, TypeClass, hints

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?\d))?")
_IPV4_IN_TEXT = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


def _is_ipv6(v: str) -> bool:
    if ":" not in v or len(v) > 49:
        return False
    addr = v.split("/", 1)[0].split("%", 1)[0]
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        return False
    return True


def match_ip(value: str) -> Strength:
    v = value.strip()
    if _IPV4.fullmatch(v) or _is_ipv6(v):
        return Strength.STRONG
    return Strength.NONE


def find_ip(text: str) -> Iterator[str]:
    yield from (m.group(0) for m in _IPV4_IN_TEXT.finditer(text))
    if "::" in text or text.count(":") >= 7:
        yield from (m.group(0) for m in _IPV6_CANDIDATE.finditer(text) if _is_ipv6(m.group(0)))


def example_ip(value: str) -> str:
    v = value.strip()
    if ":" in v:
        return v.split(":", 1)[0] + ":****:…"
    return v.split(".", 1)[0] + ".*.*.*"


IP = Detector(
    name="ip_address",
    label="IP address",
    match=match_ip,
    find=find_ip,
    example=example_ip,
    name_hints=hints(strong=["ip", "ip_address", "ipaddr", "ipv4", "ipv6", "remote_addr",
                             "client_addr", "inet"], weak=["addr", "host"]),
    applies_to=frozenset({TypeClass.TEXT, TypeClass.INET}),
    type_evidence=frozenset({TypeClass.INET}),
    reliability=0.9,
)

"""Email addresses and phone numbers.

Email: the usual ``local@domain.tld`` shape with RFC length limits. Phone: either E.164
(``+`` country code, 8–15 digits, optional separators) or a common national layout —
US ``(555) 123-4567`` / ``555-123-4567``, and trunk-prefixed European forms such as
``020 7946 0958``, ``01 23 45 67 89`` or ``030 12345678``. Bare digit runs are only WEAK
(an order number looks the same), and dates, times, SSN and card layouts are rejected.
"""

from __future__ import annotations

import re
from typing import Iterator

from .base import Detector, Strength, TypeClass, hints

_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}")
_EMAIL_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b"
)


def match_email(value: str) -> Strength:
    v = value.strip()
    if len(v) <= 254 and _EMAIL.fullmatch(v) and ".." not in v:
        return Strength.STRONG
    return Strength.NONE


def find_email(text: str) -> Iterator[str]:
    if "@" in text:
        yield from (m.group(0) for m in _EMAIL_IN_TEXT.finditer(text))


def example_email(value: str) -> str:
    local, _, domain = value.strip().rpartition("@")
    return f"{local[:1]}***@{domain}"


_E164 = re.compile(r"\+[1-9][0-9 ().-]{6,22}")
_NATIONAL = re.compile(r"\(?\d{2,5}\)?(?:[ .-]\d{2,8}){1,4}")
_US = re.compile(r"(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}")
_DATEISH = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")
_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")
_CARD_SHAPE = re.compile(r"\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}")
_PHONE_IN_TEXT = re.compile(
    r"(?<![\w+])(?:\+[1-9]\d{0,3}[ .-]?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{2,5}){1,4}"
    r"|\(\d{3}\) ?\d{3}-\d{4}|\d{3}-\d{3}-\d{4})(?![\w-])"
)


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def match_phone(value: str) -> Strength:
    v = value.strip()
    if not v or len(v) > 26:
        return Strength.NONE
    if v[0] == "+":
        if _E164.fullmatch(v) and 8 <= len(_digits(v)) <= 15 and v.count("(") == v.count(")"):
            return Strength.STRONG
        return Strength.NONE
    if v.isdigit():
        return Strength.WEAK if 10 <= len(v) <= 15 else Strength.NONE
    if _DATEISH.fullmatch(v) or _SSN_SHAPE.fullmatch(v) or _CARD_SHAPE.fullmatch(v):
        return Strength.NONE
    d = _digits(v)
    if _US.fullmatch(v) and d[0] in "23456789":
        return Strength.STRONG
    if _NATIONAL.fullmatch(v) and d[0] == "0" and 9 <= len(d) <= 11 and d[1] != "0":
        return Strength.STRONG
    if _NATIONAL.fullmatch(v) and 10 <= len(d) <= 12:
        return Strength.WEAK
    return Strength.NONE


def find_phone(text: str) -> Iterator[str]:
    for m in _PHONE_IN_TEXT.finditer(text):
        if match_phone(m.group(0)) is Strength.STRONG:
            yield m.group(0)


def example_phone(value: str) -> str:
    v = value.strip()
    out, seen, total = [], 0, len(_digits(v))
    for ch in v:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > total - 2 else "*")
        else:
            out.append(ch)
    return "".join(out)


EMAIL = Detector(
    name="email",
    label="email address",
    match=match_email,
    find=find_email,
    example=example_email,
    name_hints=hints(strong=["email", "e_mail", "mail_address"], weak=["mail"],
                     veto=["verified", "confirmed", "sent", "count", "opt", "status", "enabled",
                           "bounced", "template", "domain", "subject", "body"]),
    reliability=0.99,
)

PHONE = Detector(
    name="phone",
    label="phone number",
    match=match_phone,
    find=find_phone,
    example=example_phone,
    name_hints=hints(strong=["phone", "telephone", "tel", "mobile", "cellphone", "msisdn",
                             "fax", "phone_number", "contact_number"], weak=["cell"],
                     veto=["verified", "confirmed", "count", "type", "enabled", "status"]),
    applies_to=frozenset({TypeClass.TEXT, TypeClass.INTEGER, TypeClass.NUMERIC}),
    reliability=0.9,
)

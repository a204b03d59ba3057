"""Payment card numbers and IBANs.

Card: 13–19 digits (optionally grouped by single spaces or dashes), a known issuer prefix
for that length, a valid Luhn digit, and not a valid EAN-13 barcode. IBAN: country code,
two check digits, the country's length, and the ISO 7064 mod-97 check.
"""

from __future__ import annotations

import re
from typing import Iterator

from .base import Detector, Strength, TypeClass, hints
from .checksums import card_ok, iban_ok

_CARD = re.compile(r"\d{13,19}|\d{4}([ -])\d{4,6}\1\d{4,6}(?:\1\d{1,5}){0,2}")
_CARD_IN_TEXT = re.compile(r"(?<![\d-])\d{4}(?:[ -]?\d{2,6}){2,4}(?![\d-])")
_IBAN = re.compile(r"[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{1,4}){3,9}")
_IBAN_IN_TEXT = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def match_card(value: str) -> Strength:
    v = value.strip()
    if not _CARD.fullmatch(v):
        return Strength.NONE
    return Strength.STRONG if card_ok(v.replace(" ", "").replace("-", "")) else Strength.NONE


def find_card(text: str) -> Iterator[str]:
    for m in _CARD_IN_TEXT.finditer(text):
        if card_ok(m.group(0).replace(" ", "").replace("-", "")):
            yield m.group(0)


def example_card(value: str) -> str:
    digits = "".join(c for c in value if c.isdigit())
    return "*" * (len(digits) - 4) + digits[-4:]


def match_iban(value: str) -> Strength:
    v = value.strip()
    if len(v) > 42 or not _IBAN.fullmatch(v):
        return Strength.NONE
    return Strength.STRONG if iban_ok(v.replace(" ", "")) else Strength.NONE


def find_iban(text: str) -> Iterator[str]:
    for m in _IBAN_IN_TEXT.finditer(text):
        if iban_ok(m.group(0).replace(" ", "")):
            yield m.group(0)


def example_iban(value: str) -> str:
    compact = value.replace(" ", "").upper()
    return compact[:2] + "*" * (len(compact) - 6) + compact[-4:]


CARD = Detector(
    name="card",
    label="payment card number",
    match=match_card,
    find=find_card,
    example=example_card,
    name_hints=hints(strong=["card_number", "card_no", "card_num", "credit_card", "cc_number",
                             "ccnum", "pan"], weak=["card", "cc"],
                     veto=["type", "brand", "expiry", "exp", "holder", "count", "token", "last"]),
    applies_to=frozenset({TypeClass.TEXT, TypeClass.INTEGER, TypeClass.NUMERIC}),
    reliability=0.97,
)

IBAN = Detector(
    name="iban",
    label="IBAN",
    match=match_iban,
    find=find_iban,
    example=example_iban,
    name_hints=hints(strong=["iban", "bank_account", "account_iban"], weak=["account_number"]),
    reliability=0.99,
)

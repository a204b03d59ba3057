"""US Social Security numbers.

``123-45-6789`` (or space-separated) whose area is not 000, 666 or 900–999, whose group is
not 00 and whose serial is not 0000 is STRONG. Nine bare digits passing the same rules, or a
dashed number in an invalid range, are only WEAK: they count when the column's name says
SSN, so employee and order numbers in other columns do not fire.
"""

from __future__ import annotations

import re
from typing import Iterator

from .base import Detector, Strength, TypeClass, hints
from .checksums import ssn_ok

_SSN = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")
_SSN_BARE = re.compile(r"(\d{3})(\d{2})(\d{4})")
_SSN_IN_TEXT = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")


def match_ssn(value: str) -> Strength:
    v = value.strip()
    m = _SSN.fullmatch(v)
    if m:
        return Strength.STRONG if ssn_ok(m.group(1), m.group(3), m.group(4)) else Strength.WEAK
    m = _SSN_BARE.fullmatch(v)
    if m and ssn_ok(m.group(1), m.group(2), m.group(3)):
        return Strength.WEAK
    return Strength.NONE


def find_ssn(text: str) -> Iterator[str]:
    for m in _SSN_IN_TEXT.finditer(text):
        if ssn_ok(m.group(1), m.group(2), m.group(3)):
            yield m.group(0)


def example_ssn(value: str) -> str:
    digits = "".join(c for c in value if c.isdigit())
    return f"***-**-{digits[-4:]}"


SSN = Detector(
    name="ssn",
    label="US social security number",
    match=match_ssn,
    find=find_ssn,
    example=example_ssn,
    name_hints=hints(strong=["ssn", "social_security", "social_security_number", "ss_number"],
                     weak=["tin", "taxpayer_id", "tax_id"]),
    applies_to=frozenset({TypeClass.TEXT, TypeClass.INTEGER}),
    reliability=0.9,
    weak_reliability=0.6,
)

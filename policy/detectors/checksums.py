"""Check digits and validity rules that separate real identifiers from look-alikes.

A random 16-digit number passes Luhn one time in ten, and a random 9-digit number has the
shape of an SSN every time; these checks are what lets a detector say STRONG.
"""

from __future__ import annotations

# ISO 13616 lengths for the countries we are most likely to meet; an unknown country code
# still passes if the mod-97 check does (the registry grows).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment cards."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def ean13_ok(digits: str) -> bool:
    """GTIN/EAN-13 check digit (weights 1,3,1,3,… from the left)."""
    if len(digits) != 13 or not digits.isdigit():
        return False
    s = sum((ord(c) - 48) * (3 if i % 2 else 1) for i, c in enumerate(digits[:12]))
    return (10 - s % 10) % 10 == ord(digits[12]) - 48


def card_issuer_ok(digits: str) -> bool:
    """Does the number start with a prefix a major card network issues, at a length it uses?"""
    n = len(digits)
    if not 13 <= n <= 19:
        return False
    two, four, six = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if two in (34, 37):  # American Express
        return n == 15
    if four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649 or 622126 <= six <= 622925:
        return n in (16, 19)  # Discover
    if 3528 <= four <= 3589:  # JCB
        return n in (16, 19)
    if 300 <= int(digits[:3]) <= 305 or two in (36, 38, 39):  # Diners Club
        return n in (14, 16, 19)
    if two == 62:  # UnionPay
        return 16 <= n <= 19
    if two in (50, 56, 57, 58) or two == 67 or two == 63:  # Maestro
        return 12 < n <= 19
    return False


def card_ok(digits: str) -> bool:
    """A plausible payment card number: issuer prefix, length, Luhn, and not an EAN-13."""
    if not card_issuer_ok(digits) or not luhn_ok(digits):
        return False
    return not (len(digits) == 13 and ean13_ok(digits))


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """US SSN validity: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    if area in ("000", "666") or area[0] == "9":
        return False
    return group != "00" and serial != "0000"


def iban_ok(compact: str) -> bool:
    """ISO 13616 IBAN: country code, check digits, known length, mod-97 remainder 1."""
    s = compact.upper()
    if len(s) < 15 or len(s) > 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    if not s.isalnum() or not s.isascii():
        return False
    expected = IBAN_LENGTHS.get(s[:2])
    if expected is not None and len(s) != expected:
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1

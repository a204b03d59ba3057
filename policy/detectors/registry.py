"""All detectors, in priority order (earlier wins a tie)."""

from __future__ import annotations

from .base import Detector
from .contact import EMAIL, PHONE
from .credentials import PASSWORD_HASH, SECRET
from .financial import CARD, IBAN
from .government import SSN
from .network import IP
from .personal import DOB, PERSON_NAME

DETECTORS: tuple[Detector, ...] = (
    PASSWORD_HASH, SECRET, CARD, IBAN, SSN, EMAIL, PHONE, IP, DOB, PERSON_NAME,
)
BY_NAME: dict[str, Detector] = {d.name: d for d in DETECTORS}

# Detectors whose matches inside longer text make a free-text column sensitive.
EMBEDDED: tuple[Detector, ...] = (EMAIL, PHONE, CARD, SSN, IBAN, IP, SECRET, PASSWORD_HASH)

FREE_TEXT = "free_text"

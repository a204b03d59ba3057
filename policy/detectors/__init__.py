"""Pure detectors of sensitive data, used by ``pgveil discover``.

Nothing here touches a database, a file or a clock: :func:`classify_column` gets a column's
name, its type and an iterable of sampled values (as text) and returns a
:class:`ColumnFinding` — the detector, the share of values that matched, a confidence that
combines value and name evidence, and at most a masked example — or None.
:func:`suggest_mask` maps a finding to a ``[[policy.mask]]`` entry.

Detectors (see each module for how it decides): ``email``, ``phone`` (contact);
``card``, ``iban`` (financial); ``ssn`` (government); ``ip_address`` (network);
``date_of_birth``, ``person_name`` (personal); ``secret``, ``password_hash`` (credentials);
and ``free_text`` for text columns with any of the above inside.
"""

from __future__ import annotations

from .base import Detector, NameHints, Strength, TypeClass, name_tokens, shannon_entropy, type_class
from .column import DEFAULT_THRESHOLD, ColumnFinding, classify_column
from .registry import BY_NAME, DETECTORS, EMBEDDED, FREE_TEXT
from .suggest import suggest_mask

__all__ = [
    "BY_NAME", "DEFAULT_THRESHOLD", "DETECTORS", "EMBEDDED", "FREE_TEXT", "ColumnFinding",
    "Detector", "NameHints", "Strength", "TypeClass", "classify_column", "name_tokens",
    "shannon_entropy", "suggest_mask", "type_class",
]

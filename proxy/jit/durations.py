"""Durations as people write them, to whole seconds.

Accepts PostgreSQL-interval-like text — ``"30 minutes"``, ``"1 hour"``, ``"1 hour 30 minutes"``,
``"2h"``, ``"90s"``, ``"1 day"``, ``"1h30m"``, ``"00:30:00"`` — and plain numbers of seconds
(``90``, ``"90"``). Anything else raises :class:`ValueError` with a message that can be shown
to a user as is. Months and years are refused on purpose: a grant that long is not
"just in time".
"""

from __future__ import annotations

import re

_UNITS: dict[str, int] = {}
for _names, _secs in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "week", "weeks"), 7 * 86400),
):
    for _n in _names:
        _UNITS[_n] = _secs

_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*,?")
_CLOCK = re.compile(r"(\d+):([0-5]\d)(?::([0-5]\d))?")


def parse_duration(value: object) -> int:
    """``value`` (text or a number of seconds) as a positive whole number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '30 minutes', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError(f"expected a duration such as '30 minutes', got {value!r}")
    if seconds != seconds or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    if seconds > 366 * 86400:
        raise ValueError(f"duration {value!r} is too long")
    return max(1, round(seconds))


def _parse_text(text: str) -> float:
    s = text.strip().lower()
    if s.startswith("interval"):
        s = s[len("interval"):].strip().strip("'").strip()
    if not s:
        raise ValueError("empty duration; expected e.g. '30 minutes'")
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    m = _CLOCK.fullmatch(s)
    if m:
        h, mi, se = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        return h * 3600 + mi * 60 + se
    total, pos = 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or m.end() == pos:
            raise ValueError(
                f"cannot read duration {text!r}; expected e.g. '30 minutes', '1 hour', '2h', '90s'"
            )
        unit = m.group(2)
        if unit not in _UNITS:
            raise ValueError(
                f"unknown unit {unit!r} in duration {text!r}; use seconds, minutes, hours, days or weeks"
            )
        total += float(m.group(1)) * _UNITS[unit]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    """Seconds as short text: ``5400`` → ``"1h30m"``, ``30`` → ``"30s"``."""
    s = int(round(seconds))
    if s <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out.append(f"{s // size}{unit}")
            s %= size
    return "".join(out)

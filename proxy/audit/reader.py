"""Reading the audit log for people: ``tail`` and ``search`` over the rotated files.

Records are read in chain order (oldest file first). ``format_record`` prints one record
per line — time, seq, type, who, decision, statement — so a terminal shows a readable
trail; ``--json`` prints the raw lines instead. Completions print under their intent's
``rid`` (``done #42``) and are matched to it by ``search``, so a filter on the intent
(user, table, decision) also shows the outcome.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Any, Iterator, TextIO

from . import files, records

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``90s``, ``15m``, ``1h``, ``2d``, ``1w`` ago, or an ISO date/time (UTC if naive)."""
    now = now or datetime.now(timezone.utc)
    m = _DURATION.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a duration like 1h or 30m, or an ISO time, got {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def record_time(rec: dict[str, Any]) -> datetime | None:
    ts = rec.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def iter_records(path: str | Path) -> Iterator[tuple[Path, int, bytes, dict[str, Any] | None]]:
    """``(file, line number, raw line, record or None)`` over the whole chain, oldest first."""
    for file in files.chain_files(path):
        try:
            f = open(file, "rb")
        except FileNotFoundError:  # rotated away while we listed
            continue
        with f:
            for n, raw in enumerate(f, 1):
                line = raw.rstrip(b"\n")
                yield file, n, line, records.parse(line)


def last_records(path: str | Path, n: int) -> list[bytes]:
    """The last ``n`` lines of the chain, reading files backwards from the newest."""
    out: list[bytes] = []
    for file in reversed(files.chain_files(path)):
        try:
            with open(file, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                pos, buf = size, b""
                while pos > 0 and buf.count(b"\n") <= n - len(out):
                    step = min(64 * 1024, pos)
                    pos -= step
                    f.seek(pos)
                    buf = f.read(step) + buf
        except FileNotFoundError:
            continue
        lines = [ln for ln in buf.split(b"\n") if ln]
        if pos > 0:
            lines = lines[1:]  # the first piece may be a partial line
        out = lines[-(n - len(out)):] + out if n > len(out) else out
        if len(out) >= n:
            break
    return out[-n:] if n else []


# -- formatting ---------------------------------------------------------------------------

_RED, _YELLOW, _DIM, _RESET = "\033[31m", "\033[33m", "\033[2m", "\033[0m"


def _list(v: Any) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)


def _outcome(rec: dict[str, Any]) -> str:
    parts = [f"rows={rec['rows']}" if "rows" in rec else "",
             f"{rec['duration_ms']}ms" if "duration_ms" in rec else "",
             f"sqlstate={rec['sqlstate']}" if rec.get("sqlstate") else ""]
    return " ".join(p for p in parts if p)


def format_record(rec: dict[str, Any] | None, raw: bytes = b"", *, color: bool = False) -> str:
    """One readable line for a record."""
    if rec is None:
        return f"(unreadable line) {raw[:120].decode(errors='replace')}"
    ts = str(rec.get("ts", "")).replace("T", " ").rstrip("Z")[:23]
    seq = f"#{rec.get('seq')}"
    kind = rec.get("type")
    hide = {"seq", "ts", "type", "prev", "mac", "instance", "event", "rid"}
    if kind in ("intent", "statement"):
        who = f"{rec.get('user', '?')}@{rec.get('database', '?')}"
        decision = str(rec.get("decision", "?"))
        if color and decision == "deny":
            decision = f"{_RED}{decision}{_RESET}"
        elif color and decision == "hold":
            decision = f"{_YELLOW}{decision}{_RESET}"
        extras = [f"{k} {_list(rec[k])}" for k in ("tables", "masked", "grants", "reason", "request")
                  if rec.get(k)]
        extra = f"  [{'; '.join(extras)}]" if extras else ""
        sess = f"s={rec.get('session')}" if rec.get("session") else ""
        line = (f"{ts}  {seq:>7} {kind:<10}{who:<22} {sess:<10} {decision:<8} "
                f"{rec.get('kind') or '':<8} {rec.get('normalized', '')}{extra}")
        if kind == "statement":  # the outcome is in the same record
            line += "  -> " + _outcome(rec)
        return line
    if kind == "complete":
        parts = [_outcome(rec), f"decision={rec['decision']}" if rec.get("decision") else ""]
        line = f"{ts}  {seq:>7} done #{rec.get('rid')}  " + " ".join(p for p in parts if p)
        return f"{_DIM}{line}{_RESET}" if color else line
    fields = " ".join(f"{k}={_list(v)}" for k, v in rec.items() if k not in hide)
    return f"{ts}  {seq:>7} event    {rec.get('event')}  {fields}"


# -- search -------------------------------------------------------------------------------


@dataclass
class Filter:
    """Conditions on intents (and events); completions follow their intent."""

    user: str | None = None
    table: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    decision: str | None = None
    session: str | None = None
    fingerprint: str | None = None
    type: str | None = None          # statement (intent and statement records) | event
    text: str | None = None          # substring of the normalized text

    def matches(self, rec: dict[str, Any]) -> bool:
        if self.since or self.until:
            t = record_time(rec)
            if t is None or (self.since and t < self.since) or (self.until and t > self.until):
                return False
        if self.type:
            kind = rec.get("type")
            if kind == "statement":
                kind = "intent"  # an intent with its outcome in the same record
            if kind != ("intent" if self.type == "statement" else self.type):
                return False
        if self.user and rec.get("user") != self.user:
            return False
        if self.decision and rec.get("decision") != self.decision:
            return False
        if self.session and rec.get("session") != self.session:
            return False
        if self.fingerprint and rec.get("fingerprint") != self.fingerprint:
            return False
        if self.text and self.text.lower() not in str(rec.get("normalized", "")).lower():
            return False
        if self.table:
            want = self.table.lower()
            tables = [str(t).lower() for t in rec.get("tables") or []]
            if not any(t == want or t.rsplit(".", 1)[-1] == want for t in tables):
                return False
        return True


def search(path: str | Path, flt: Filter) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Matching records, and the completions of matching intents, in chain order (a
    ``statement`` record carries its outcome: nothing follows it)."""
    matched: set[int] = set()
    for _, _, raw, rec in iter_records(path):
        if rec is None:
            continue
        if rec.get("type") == "complete":
            rid = rec.get("rid")
            if rid in matched:
                matched.discard(rid)
                yield rec, raw
            continue
        if flt.matches(rec):
            if rec.get("type") == "intent":
                matched.add(rec.get("seq"))  # type: ignore[arg-type]
            yield rec, raw


def follow(path: str | Path, out: TextIO, *, as_json: bool, color: bool,
           poll: float = 0.25, stop_after: float | None = None,
           stop: Callable[[], bool] | None = None,
           ready: Callable[[], None] | None = None) -> None:
    """Print records appended to ``path`` from now on, across rotations (``tail -f``).

    The current file is read as it grows. When it is rotated away (its inode changes), the
    records written since the last one printed are found by ``seq`` in the rotated files —
    however many rotations happened between two polls — and following goes on in the new
    current file.
    """
    path = Path(path)
    started = time.monotonic()
    last_seq: int | None = None

    def emit(line: bytes) -> None:
        nonlocal last_seq
        rec = records.parse(line)
        seq = rec.get("seq") if rec else None
        if isinstance(seq, int):
            if last_seq is not None and seq <= last_seq:
                return
            last_seq = seq
        out.write((line.decode(errors="replace") if as_json
                   else format_record(rec, line, color=color)) + "\n")

    def catch_up() -> tuple[Any, int | None]:
        """Print what was written since ``last_seq``; return the current file, at its end."""
        chain = files.chain_files(path)
        start = 0
        if last_seq is not None:
            for i, f in enumerate(chain[:-1]):
                if 0 <= files.first_seq(f) <= last_seq + 1:
                    start = i
        for f in chain[start:-1]:
            for _, _, line, _ in _lines(f):
                emit(line)
        try:
            cur = open(path, "rb")
        except FileNotFoundError:
            return None, None
        buf = cur.read()
        for line in buf.split(b"\n")[:-1]:
            emit(line)
        cur.seek(len(buf) - len(buf.split(b"\n")[-1]))
        out.flush()
        return cur, os.fstat(cur.fileno()).st_ino

    # start at the end, like tail -f
    f, inode = None, None
    try:
        f = open(path, "rb")
        inode = os.fstat(f.fileno()).st_ino
        tail = last_records(path, 1)
        if tail:
            rec = records.parse(tail[-1])
            last_seq = rec.get("seq") if rec else None
        f.seek(0, os.SEEK_END)
    except FileNotFoundError:
        f = None
    if ready is not None:
        ready()  # positioned: everything written from now on will be printed
    buf = b""
    while stop_after is None or time.monotonic() - started < stop_after:
        if stop is not None and stop():
            break
        if f is not None:
            chunk = f.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    emit(line)
                out.flush()
                continue
        try:
            rotated = f is None or os.stat(path).st_ino != inode
        except FileNotFoundError:
            rotated = False
        if rotated:
            if f is not None:
                f.close()
            buf = b""
            f, inode = catch_up()
            continue
        time.sleep(poll)
    if f is not None:
        f.close()


def _lines(file: Path) -> Iterator[tuple[Path, int, bytes, None]]:
    try:
        with open(file, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                yield file, n, raw.rstrip(b"\n"), None
    except FileNotFoundError:
        return

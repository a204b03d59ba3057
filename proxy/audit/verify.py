"""``pgveil audit verify``: walk the chain and report the first record that is not right.

Checks, record by record (across rotated files, oldest first):

* the line is a complete JSON object ending in a MAC that matches its bytes (an edited byte,
  a cut line, a line signed with another key → *edited*);
* ``seq`` is the previous seq + 1 (a jump → records *deleted*; going back → *reordered* or
  *duplicated*); the first record has seq 1 and ``prev`` = 64 zeros unless ``allow_pruned``
  (old rotated files removed on purpose);
* ``prev`` is the SHA-256 of the previous line (a record from another chain);
* events the writer logged at restart about damage it found (``tail_missing``,
  ``tail_mismatch``, ``head_invalid``) are failures too;

and at the end, against the signed head file (file sink): the log must reach the head's
``seq`` and the record there must have the head's hash. That is how a *truncated tail* is
detected — removing the last records (or the newest file) leaves the log ending before the
head. Missing the head file is itself a failure unless ``require_head=False`` (stdout and
PostgreSQL sinks keep no head; there, removing the very last records is not detectable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import files, records
from .records import GENESIS, Sealer, line_hash
from .sinks.file import read_head

_DAMAGE_EVENTS = {
    "tail_missing": "at restart the writer found records missing from the end of the log "
                    "(head seq {head_seq}, log ended at seq {found_seq}): truncated while pgveil was down",
    "tail_mismatch": "at restart the writer found the last record differs from the head: replaced",
    "head_invalid": "at restart the writer found the head file invalid ({error})",
}


@dataclass
class Problem:
    """The first bad record: where it is and what is wrong."""

    file: str
    line: int
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: " + (f"seq {self.seq}: " if self.seq is not None else "") + self.reason


@dataclass
class VerifyReport:
    ok: bool = True
    records: int = 0
    files: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int | None = None
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAIL {self.problem}"
        span = f"seq {self.first_seq}..{self.last_seq}" if self.records else "no records"
        head = f", head at seq {self.head_seq}" if self.head_seq is not None else ""
        return f"OK {self.records} records in {len(self.files)} file(s), {span}{head}"


class ChainChecker:
    """Feed it lines in order; it stops at the first problem."""

    def __init__(self, sealer: Sealer, *, allow_pruned: bool = False,
                 expect: dict[int, str] | None = None) -> None:
        self._sealer = sealer
        self._allow_pruned = allow_pruned
        self._expect = expect or {}       # seq -> line hash that must be found there
        self.report = VerifyReport()
        self._prev_hash: str | None = None
        self._prev_seq: int | None = None
        self.last_where: tuple[str, int] = ("", 0)

    def fail(self, file: str, line: int, seq: int | None, reason: str) -> None:
        self.report.ok = False
        self.report.problem = Problem(file, line, seq, reason)

    def feed(self, file: str, lineno: int, line: bytes, *, complete: bool = True) -> bool:
        """Check one line; False when it is bad (then ``report.problem`` says why)."""
        self.last_where = (file, lineno)
        if not complete:
            self.fail(file, lineno, None, "incomplete last line: the file was cut mid-record")
            return False
        rec = records.parse(line)
        seq = rec.get("seq") if rec else None
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        if rec is None or seq is None:
            self.fail(file, lineno, None, "not a valid audit record (edited or damaged line)")
            return False
        if not records.has_mac_tail(line):
            self.fail(file, lineno, seq, "no MAC at the end of the record (edited)")
            return False
        if not self._sealer.check(line):
            self.fail(file, lineno, seq,
                      "MAC mismatch: the record was edited (or signed with another key)")
            return False
        prev = rec.get("prev")
        if self._prev_seq is None:
            if (seq != 1 or prev != GENESIS) and not self._allow_pruned:
                self.fail(file, lineno, seq,
                          "the chain does not start at seq 1: earlier records or files are "
                          "missing (use --allow-pruned if old files were removed on purpose)")
                return False
            if seq != 1:
                self.report.notes.append(f"chain starts at seq {seq} (earlier files pruned)")
            self.report.first_seq = seq
        else:
            expected = self._prev_seq + 1
            if seq > expected:
                self.fail(file, lineno, seq,
                          f"seq {expected} expected: records {expected}..{seq - 1} are missing "
                          f"(deleted, or records reordered)")
                return False
            if seq < expected:
                self.fail(file, lineno, seq,
                          f"seq {expected} expected: record out of order or duplicated")
                return False
            if prev != self._prev_hash:
                self.fail(file, lineno, seq,
                          "does not link to the previous record (prev hash mismatch)")
                return False
        h = line_hash(line)
        want = self._expect.get(seq)
        if want is not None and want != h:
            self.fail(file, lineno, seq, "differs from the record the head file vouches for")
            return False
        if rec.get("type") == "event":
            kind = rec.get("event")
            if kind in _DAMAGE_EVENTS:
                self.fail(file, lineno, seq, _DAMAGE_EVENTS[kind].format_map(_Default(rec)))
                return False
            if kind == "records_dropped":
                self.report.notes.append(
                    f"{file}:{lineno}: {rec.get('count')} records were dropped while the "
                    f"sink was failing (on_failure = continue)")
            elif kind == "torn_tail_removed":
                self.report.notes.append(
                    f"{file}:{lineno}: the writer cut an unacknowledged partial line at restart")
        self._prev_seq, self._prev_hash = seq, h
        self.report.records += 1
        self.report.last_seq = seq
        self._last_type = (rec.get("type"), rec.get("event"))
        return True

    @property
    def ended_with_stop(self) -> bool:
        return getattr(self, "_last_type", None) == ("event", "stop")


class _Default(dict[str, Any]):  # format_map that tolerates missing keys
    def __missing__(self, key: str) -> str:
        return "?"


def iter_file_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number, line without newline, complete)`` for each line of a file."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.endswith(b"\n"):
                yield n, raw[:-1], True
            else:
                yield n, raw, False


def verify_files(path: str | Path, key: bytes, *, require_head: bool = True,
                 allow_pruned: bool = False) -> VerifyReport:
    """Verify the file sink's chain at ``path`` (and its rotated files) with ``key``."""
    sealer = Sealer(key)
    chain = files.chain_files(path)
    head: dict[str, Any] | None = None
    head_error: str | None = None
    try:
        head = read_head(path, sealer)
    except ValueError as exc:
        head_error = str(exc)
    checker = ChainChecker(sealer, allow_pruned=allow_pruned,
                           expect={head["seq"]: head["hash"]} if head else None)
    report = checker.report
    report.files = [str(p) for p in chain]
    report.head_seq = head["seq"] if head else None
    if not chain:
        checker.fail(str(path), 0, None, "no audit log file found")
        return report
    for file in chain:
        for lineno, line, complete in iter_file_lines(file):
            if not checker.feed(str(file), lineno, line, complete=complete):
                return report
    last_file, last_line = checker.last_where
    if head_error is not None:
        checker.fail(str(files.head_path(path)), 1, None, f"{head_error}: the head was edited")
    elif head is None:
        if require_head:
            checker.fail(str(files.head_path(path)), 0, None,
                         "head file missing: a truncated tail cannot be ruled out "
                         "(--no-head for logs written without one)")
    elif report.last_seq is None or head["seq"] > report.last_seq:
        ends = report.last_seq or 0
        checker.fail(last_file or str(path), last_line + 1, ends + 1,
                     f"missing: the log ends at seq {ends} but the head records seq "
                     f"{head['seq']}: the last {head['seq'] - ends} record(s) were removed "
                     f"(truncated tail or deleted newest file)")
    elif head["seq"] < report.last_seq:
        report.notes.append(f"head lags the log by {report.last_seq - head['seq']} record(s) "
                            "(written after the last head update: a crash or a live writer)")
    if report.ok and not checker.ended_with_stop:
        report.notes.append("the last record is not a stop event: pgveil is running or "
                            "stopped without closing the log")
    return report


def verify_lines(lines: Iterable[tuple[str, int, bytes]], key: bytes, *,
                 allow_pruned: bool = False) -> VerifyReport:
    """Verify an already ordered sequence of ``(source, number, line)``."""
    checker = ChainChecker(Sealer(key), allow_pruned=allow_pruned)
    for source, n, line in lines:
        if not checker.feed(source, n, line):
            break
    return checker.report


def verify_postgres(url: str, key: bytes, instance: str | None = None, *,
                    allow_pruned: bool = False) -> dict[str, VerifyReport]:
    """Verify each instance's chain in the PostgreSQL sink's table."""
    import psycopg

    from .sinks.postgres import TABLE

    reports: dict[str, VerifyReport] = {}
    with psycopg.connect(url) as conn:
        if instance is None:
            names = [r[0] for r in conn.execute(f"SELECT DISTINCT instance FROM {TABLE} ORDER BY 1")]
        else:
            names = [instance]
        for name in names:
            cur = conn.cursor(name="pgveil_audit_verify")  # server-side: big tables stream
            cur.execute(f"SELECT seq, line FROM {TABLE} WHERE instance = %s ORDER BY seq", (name,))
            src = f"{TABLE}[{name}]"
            reports[name] = verify_lines(
                ((src, seq, line.encode()) for seq, line in cur), key, allow_pruned=allow_pruned)
            cur.close()
            reports[name].files = [src]
            reports[name].notes.append("the table keeps no head: removal of the newest rows "
                                       "is not detectable from the table alone")
    return reports

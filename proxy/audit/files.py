"""Where the file sink's pieces live, and how rotated files are named and ordered.

For ``path = pgveil-audit.jsonl``:

* ``pgveil-audit.jsonl`` — the file being written;
* ``pgveil-audit.jsonl.20250131T120000.123456Z`` — rotated files, named by the UTC time
  they were rotated out (so names never shift, unlike ``.1``/``.2``);
* ``pgveil-audit.jsonl.head`` — the signed head state: seq and hash of the last durable
  record (how truncation of the tail is detected);
* ``pgveil-audit.jsonl.lock`` — held (flock) by the one process writing this chain.

Readers order files by the ``seq`` of their first record, not by name or mtime, so a
clock step or a copy does not reorder the chain.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from . import records

_ROTATED = re.compile(r"\.\d{8}T\d{6}\.\d{6}Z(-\d+)?\Z")


def head_path(path: str | Path) -> Path:
    return Path(f"{path}.head")


def lock_path(path: str | Path) -> Path:
    return Path(f"{path}.lock")


def rotated_name(path: str | Path, now: float | None = None) -> Path:
    """A fresh name for the file being rotated out (never an existing one)."""
    t = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(int(t))) + f".{int((t % 1) * 1e6):06d}Z"
    candidate = Path(f"{path}.{stamp}")
    n = 1
    while candidate.exists():
        candidate = Path(f"{path}.{stamp}-{n}")
        n += 1
    return candidate


def first_seq(file: Path) -> int:
    """The ``seq`` of a file's first record (-1 when unreadable or empty)."""
    try:
        with open(file, "rb") as f:
            line = f.readline(1 << 20)
    except OSError:
        return -1
    rec = records.parse(line)
    seq = rec.get("seq") if rec else None
    return seq if isinstance(seq, int) else -1


def chain_files(path: str | Path) -> list[Path]:
    """The rotated files of ``path`` and ``path`` itself, oldest first."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    rotated: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    prefix = path.name
    for name in names:
        if name.startswith(prefix) and _ROTATED.fullmatch(name[len(prefix):]):
            rotated.append(folder / name)
    rotated.sort(key=lambda p: (first_seq(p), p.name))
    if path.exists():
        rotated.append(path)
    return rotated

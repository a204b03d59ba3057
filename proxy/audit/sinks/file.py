"""The file sink: append-only JSON lines, group-committed, rotated by size, with a head.

Each batch is one ``write`` plus one ``fdatasync``; only then is it acknowledged. A batch
that would grow the file past ``max_bytes`` is split: the file is closed, renamed to a
timestamped name and a new one is started, whose first record links (``prev``) to the last
record of the old one.

After a batch the **head file** (``<path>.head``) is replaced (write, fdatasync,
rename) with a signed note of the last durable ``seq`` and its hash — at most every
``HEAD_INTERVAL`` seconds under load (two more fsyncs and a rename per 5 ms batch cost the
proxy about a fifth of its throughput), and always when the sink closes. Cutting records
off the end of the log then no longer goes unnoticed: ``verify`` finds the log ending
before the head. The head is written after the log, so after a crash it may lag up to
``HEAD_INTERVAL`` behind, never lead. (Replacing both the log and the head with an older consistent copy cannot be
seen from these files alone; an external copy of the head — the PostgreSQL sink, the
``seq`` metric — is needed for that.)

On open, the sink recovers the chain's tip from the last line on disk. A line without its
newline was never acknowledged (the process died mid-write): it is cut off and noted. If
the head says records exist beyond the tip, the tail was truncated while pgveil was down:
the writer logs a ``tail_missing`` event, which ``verify`` reports.

A failed write is rolled back to the last acknowledged size (``ftruncate``) so a retry
starts clean; if even that fails the file is reopened (and recovered) on the next try.
A ``flock`` on ``<path>.lock`` keeps a second process from writing the same chain.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Any

from .. import files, records
from ..records import Sealer, line_hash, utc_timestamp
from .base import ChainTip, ThreadedSink

_TAIL_CHUNK = 64 * 1024
#: the head file is replaced at most this often (seconds), and at close
HEAD_INTERVAL = 0.2
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def last_line(path: Path) -> tuple[bytes | None, int, int]:
    """``(last complete line, bytes after it without a newline, file size)``."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None, 0, 0
            pos, buf = size, b""
            while pos > 0:
                step = min(_TAIL_CHUNK, pos)
                pos -= step
                f.seek(pos)
                buf = f.read(step) + buf
                end = buf.rfind(b"\n")
                if end < 0:
                    continue
                torn = len(buf) - end - 1
                start = buf.rfind(b"\n", 0, end)
                if start >= 0 or pos == 0:
                    return buf[start + 1 : end], torn, size
            return None, len(buf), size
    except FileNotFoundError:
        return None, 0, 0


def read_head(path: str | Path, sealer: Sealer) -> dict[str, Any] | None:
    """The head state if present and correctly signed; raises ValueError when forged/bad."""
    try:
        raw = files.head_path(path).read_bytes().strip()
    except FileNotFoundError:
        return None
    if not sealer.check(raw):
        raise ValueError("head file signature does not match")
    head = records.parse(raw)
    if head is None or not isinstance(head.get("seq"), int) or not isinstance(head.get("hash"), str):
        raise ValueError("head file is not a head record")
    return head


class FileSink(ThreadedSink):
    name = "file"

    def __init__(self, path: str, sealer: Sealer, instance: str, max_bytes: int) -> None:
        super().__init__()
        self.path = Path(path)
        self._sealer = sealer
        self._instance = instance
        self._max_bytes = max_bytes
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._size = 0                  # acknowledged size of the current file
        self._last_seq = 0              # last durable seq
        self._last_hash = records.GENESIS
        self._head_at = float("-inf")   # monotonic time of the last head write
        self._head_stale = False

    def describe(self) -> str:
        return str(self.path)

    # -- open / recover -------------------------------------------------------------------
    def open_sync(self) -> ChainTip:
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            fd = os.open(files.lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise OSError(exc.errno, f"another process is writing {self.path}") from exc
                raise
            self._lock_fd = fd
        return self._open_file()

    def _open_file(self) -> ChainTip:
        notes: list[dict[str, Any]] = []
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            line, torn, size = last_line(self.path)
            if torn:
                os.ftruncate(fd, size - torn)
                _fdatasync(fd)
                notes.append({"event": "torn_tail_removed", "bytes": torn, "file": self.path.name})
                size -= torn
            if line is None:  # empty: the chain may end in the newest rotated file
                for older in reversed(files.chain_files(self.path)[:-1]):
                    line, _, _ = last_line(older)
                    if line is not None:
                        break
        except BaseException:
            os.close(fd)
            raise
        if size == 0:
            _fsync_dir(self.path.parent)
        seq, hash_ = 0, records.GENESIS
        if line is not None:
            rec = records.parse(line)
            hash_ = line_hash(line)
            if rec is not None and isinstance(rec.get("seq"), int):
                seq = rec["seq"]
            else:
                notes.append({"event": "tail_unreadable", "file": self.path.name})
        try:
            head = read_head(self.path, self._sealer)
        except ValueError as exc:
            head = None
            notes.append({"event": "head_invalid", "error": str(exc)})
        if head is not None:
            if head["seq"] > seq:
                notes.append({"event": "tail_missing", "head_seq": head["seq"], "found_seq": seq})
                seq = max(seq, head["seq"])  # keep seq unique; verify reports the gap
            elif head["seq"] == seq and head["hash"] != hash_:
                notes.append({"event": "tail_mismatch", "head_seq": head["seq"]})
        self._fd, self._size = fd, size
        self._last_seq, self._last_hash = seq, hash_
        return ChainTip(seq=seq, hash=hash_, notes=notes)

    # -- write ----------------------------------------------------------------------------
    def write_sync(self, first_seq: int, lines: list[bytes]) -> None:
        if self._fd is None:
            self._open_file()
        skip = max(0, self._last_seq - first_seq + 1)
        start = skip
        while start < len(lines):
            if self._size > 0 and self._size + len(lines[start]) + 1 > self._max_bytes:
                self._rotate()
            room = self._max_bytes - self._size
            end, nbytes = start, 0
            while end < len(lines) and (nbytes + len(lines[end]) + 1 <= room or end == start):
                nbytes += len(lines[end]) + 1
                end += 1
            self._append(lines[start:end], nbytes)
            self._last_seq = first_seq + end - 1
            self._last_hash = line_hash(lines[end - 1])
            start = end
        if lines:  # also on a retry whose lines were all written already
            now = time.monotonic()
            if now - self._head_at >= HEAD_INTERVAL:
                self._write_head()
                self._head_at = now
                self._head_stale = False
            else:
                self._head_stale = True

    def _append(self, chunk: list[bytes], nbytes: int) -> None:
        assert self._fd is not None
        data = memoryview(b"\n".join(chunk) + b"\n")
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
            _fdatasync(self._fd)
        except OSError:
            self._rollback()
            raise
        self._size += nbytes

    def _rollback(self) -> None:
        """Cut what a failed write left behind, or drop the fd to reopen and recover later."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, self._size)
            self._fd = fd
        except OSError:
            try:
                os.close(fd)
            except OSError:
                pass

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        os.rename(self.path, files.rotated_name(self.path))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = 0
        _fsync_dir(self.path.parent)

    def _write_head(self) -> None:
        head = {
            "instance": self._instance,
            "seq": self._last_seq,
            "hash": self._last_hash,
            "file": self.path.name,
            "ts": utc_timestamp(),
        }
        data = self._sealer.seal(head) + b"\n"
        target = files.head_path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            _fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)

    def close_sync(self) -> None:
        if self._head_stale and self._fd is not None:
            try:
                self._write_head()
                self._head_stale = False
            except OSError:
                pass  # verify then reports the head behind the log, which it tolerates
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr)
            setattr(self, attr, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


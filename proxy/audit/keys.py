"""The HMAC key that makes the audit chain tamper-evident.

The key is 32 random bytes stored as hex in ``key_file``. It is generated on first start
with mode 0600. It is written aside and linked into place, so two processes never overwrite
each other's key and none reads a half-written one.
Whoever holds the key can forge a chain: keep the key readable by pgveil and by the
verifier only, and preferably not writable by whoever can write the log.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat

KEY_BYTES = 32


class AuditKeyError(RuntimeError):
    """The key file exists but cannot be used."""


def _parse(text: str, path: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise AuditKeyError(f"{path}: expected {KEY_BYTES * 2} hex digits") from exc
    if len(key) < 16:
        raise AuditKeyError(f"{path}: key too short ({len(key)} bytes, expected {KEY_BYTES})")
    return key


def load_key(path: str) -> bytes:
    """Read an existing key file (for ``pgveil audit verify``)."""
    try:
        with open(path, encoding="ascii") as f:
            return _parse(f.read(), path)
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key {path}: {exc.strerror}") from exc


def load_or_create_key(path: str) -> bytes:
    """Load ``path``, creating it (mode 0600, fresh random key) when it does not exist.

    The key is written to a temporary file first and linked into place, so no process
    ever reads a key file that is being written (``--workers`` processes start at once)."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        if os.path.lexists(path):
            return _load_existing(path)
        key = secrets.token_bytes(KEY_BYTES)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)  # umask cannot widen it, but be explicit
                os.write(fd, key.hex().encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)  # atomic, and never replaces a key another process made
        except FileExistsError:
            return _load_existing(path)
        finally:
            os.unlink(tmp)
    except AuditKeyError:
        raise
    except OSError as exc:
        raise AuditKeyError(f"cannot create audit key {path}: {exc.strerror}") from exc
    _fsync_dir(parent)
    return key


def _load_existing(path: str) -> bytes:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise AuditKeyError(
            f"{path}: audit key is readable by others (mode {mode:04o}); chmod 600 it")
    return load_key(path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def key_id(key: bytes) -> str:
    """A short public name for a key (first 8 hex digits of its SHA-256), safe to log."""
    return hashlib.sha256(key).hexdigest()[:8]

"""The ``[audit]`` table of pgveil.toml, as one typed dataclass.

``audit_settings_from_dict`` is what the config loader calls with the raw TOML table. It
checks every key and value and raises :class:`AuditConfigError` (a ``ValueError``) that
carries the dotted key (``audit.fsync``) and what was expected, so the loader can turn it
into its own error with the file and line. Relative paths are resolved against the folder of
the config file, so a config works the same from any working directory.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FSYNC_MODES = ("batch", "always")
ON_FAILURE = ("fail_closed", "continue")
SINKS = ("file", "stdout", "postgresql")
MiB = 1024 * 1024


class AuditConfigError(ValueError):
    """A bad ``[audit]`` key or value; ``key`` is dotted (``audit.fsync``)."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


@dataclass
class AuditSettings:
    """Where and how the audit log is written. Defaults suit one instance on local disk."""

    path: str = "pgveil-audit.jsonl"
    key_file: str = "pgveil-audit.key"
    fsync: str = "batch"                    # "batch": group commit; "always": wait before forwarding
    on_failure: str = "fail_closed"         # or "continue" (count dropped records)
    max_bytes: int = 100 * MiB              # rotate the file once it would grow past this
    include_literals: bool = False          # never log SQL literals / parameter values unless true
    sink: str = "file"                      # "file" | "stdout" | "postgresql"
    url: str | None = None                  # postgresql://… for sink = "postgresql"
    instance: str = field(default_factory=socket.gethostname)
    max_pending: int = 100_000              # records held in memory while the sink is slow or down
    writer: str = "process"                 # "process": seal and write in a writer process; "thread"

    def for_worker(self, n: int) -> "AuditSettings":
        """A copy for worker process ``n`` of ``--workers``: each keeps its own chain."""
        return dataclasses.replace(self, path=f"{self.path}.w{n}", instance=f"{self.instance}-w{n}")


WRITERS = ("process", "thread")


def _expect_str(key: str, value: Any, *, nonempty: bool = True) -> str:
    if not isinstance(value, str) or (nonempty and not value):
        raise AuditConfigError(f"audit.{key}", f"expected a non-empty string, got {value!r}")
    return value


def _expect_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise AuditConfigError(
            f"audit.{key}", f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )
    return str(value)


def _expect_int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AuditConfigError(f"audit.{key}", f"expected an integer >= {minimum}, got {value!r}")
    return value


def _resolve(value: str, base: Path) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else base / p)


def audit_settings_from_dict(raw: Mapping[str, Any], path_of_config: str) -> AuditSettings:
    """Build :class:`AuditSettings` from the raw ``[audit]`` table of ``path_of_config``."""
    if not isinstance(raw, Mapping):
        raise AuditConfigError("audit", "expected a table")
    s = AuditSettings()
    known = {f.name for f in dataclasses.fields(AuditSettings)}
    base = Path(path_of_config).resolve().parent if path_of_config else Path.cwd()
    for key, value in raw.items():
        if key not in known:
            raise AuditConfigError(f"audit.{key}", f"unknown key; expected one of: {', '.join(sorted(known))}")
        if key in ("path", "key_file"):
            setattr(s, key, _resolve(_expect_str(key, value), base))
        elif key == "fsync":
            s.fsync = _expect_choice(key, value, FSYNC_MODES)
        elif key == "on_failure":
            s.on_failure = _expect_choice(key, value, ON_FAILURE)
        elif key == "sink":
            s.sink = _expect_choice(key, value, SINKS)
        elif key == "max_bytes":
            s.max_bytes = _expect_int(key, value, 4096)
        elif key == "max_pending":
            s.max_pending = _expect_int(key, value, 1)
        elif key == "include_literals":
            if not isinstance(value, bool):
                raise AuditConfigError("audit.include_literals", f"expected true or false, got {value!r}")
            s.include_literals = value
        elif key == "url":
            url = _expect_str(key, value)
            if not url.startswith(("postgresql://", "postgres://")):
                raise AuditConfigError("audit.url", "expected a postgresql://… URL")
            s.url = url
        elif key == "instance":
            s.instance = _expect_str(key, value)
        elif key == "writer":
            s.writer = _expect_choice(key, value, WRITERS)
    if "path" not in raw:
        s.path = _resolve(s.path, base)
    if "key_file" not in raw:
        s.key_file = _resolve(s.key_file, base)
    if s.sink == "postgresql" and not s.url:
        raise AuditConfigError("audit.url", 'expected a postgresql://… URL when sink = "postgresql"')
    return s

"""Where audit lines go: a file (default), standard output, or a PostgreSQL table."""

from __future__ import annotations

from ..records import Sealer
from ..settings import AuditSettings
from .base import ChainTip, Sink
from .file import FileSink
from .stdout import StdoutSink


def make_sink(settings: AuditSettings, sealer: Sealer) -> Sink:
    """The sink ``settings.sink`` names; file and PostgreSQL sinks run in the audit writer
    process unless ``writer = "thread"``."""
    if settings.writer == "process" and settings.sink in ("file", "postgresql"):
        from .child import ChildSink

        return ChildSink(settings, make_local_sink(settings, sealer).describe())
    return make_local_sink(settings, sealer)


def make_local_sink(settings: AuditSettings, sealer: Sealer) -> Sink:
    """The sink ``settings.sink`` names, in this process."""
    if settings.sink == "stdout":
        return StdoutSink()
    if settings.sink == "postgresql":
        from .postgres import PostgresSink  # psycopg only when used

        assert settings.url, "audit.url is required for the postgresql sink"
        return PostgresSink(settings.url, settings.instance)
    return FileSink(settings.path, sealer, settings.instance, settings.max_bytes)


__all__ = ["ChainTip", "FileSink", "Sink", "StdoutSink", "make_local_sink", "make_sink"]

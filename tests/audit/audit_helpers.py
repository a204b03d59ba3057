"""Helpers for the audit tests: run a coroutine, write a log, read it back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from proxy.audit import AuditLog, AuditSettings
from proxy.audit.keys import load_key

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def intent_fields(session: str = "s1", n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"session": session, "user": "alice", "database": "shop", "protocol": "simple",
            "fingerprint": "0123456789abcdef", "normalized": "select * from t where id = ?",
            "kind": "select", "tables": ["public.t"], "decision": "forward", "n": n, **extra}


async def write_log(settings: AuditSettings, count: int,
                    each: Callable[[AuditLog, int], None] | None = None) -> AuditLog:
    """Open a log, write ``count`` intent+complete pairs, close it."""
    log = AuditLog(settings)
    await log.start()
    for i in range(count):
        rid = log.intent(intent_fields(n=i))
        log.complete(rid, {"rows": i, "duration_ms": 0.25, "sqlstate": "00000"})
        if each is not None:
            each(log, i)
    await log.close()
    return log


def key_of(settings: AuditSettings) -> bytes:
    return load_key(settings.key_file)


def lines_of(path: str | Path) -> list[bytes]:
    return Path(path).read_bytes().splitlines(keepends=True)

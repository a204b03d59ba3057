"""Helpers for the JIT tests: a settable clock, settings, and recorders for callbacks."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Awaitable, Callable, TypeVar

from policy.grants import GrantSet
from proxy.jit.settings import JitSettings, StateSettings

T = TypeVar("T")
START = 1_750_000_000.0


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sqlite_settings(path: str, **kw: Any) -> JitSettings:
    state = StateSettings(url=f"sqlite://{path}", kind="sqlite", path=str(path))
    return dataclasses.replace(JitSettings(approvers=("boss", "boss2", "boss3")), state=state, **kw)


def pg_settings(url: str, **kw: Any) -> JitSettings:
    state = StateSettings(url=url, kind="postgresql", path="", dsn=url, connect_timeout=1.0)
    return dataclasses.replace(JitSettings(approvers=("boss", "boss2")), state=state, **kw)


class Recorder:
    """Collects ``on_change`` GrantSets and ``on_event`` calls; lets a test await one."""

    def __init__(self) -> None:
        self.sets: list[GrantSet] = []
        self.events: list[tuple[str, dict]] = []
        self._cond: asyncio.Condition | None = None

    def _notify(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._cond is None:
            self._cond = asyncio.Condition()

        async def wake() -> None:
            assert self._cond is not None
            async with self._cond:
                self._cond.notify_all()

        loop.create_task(wake())

    def on_change(self, gs: GrantSet) -> None:
        self.sets.append(gs)
        self._notify()

    def on_event(self, kind: str, fields: dict) -> None:
        self.events.append((kind, fields))
        self._notify()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    @property
    def current(self) -> GrantSet | None:
        return self.sets[-1] if self.sets else None

    async def until(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (event-driven, no polling) until ``pred()`` holds after a callback."""
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(pred), timeout)

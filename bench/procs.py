"""Start a helper process, wait until it listens, and stop it cleanly.

Helpers (pgbouncer, the pgveil proxy) run in their own session (``start_new_session``), so
a Ctrl-C in the terminal reaches only the bench, which then stops them in order: SIGTERM,
a grace period, then SIGKILL. Their output goes to a log file rather than a pipe, so a
chatty helper can never block on a full pipe while the bench is busy running pgbench.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class StartError(RuntimeError):
    """A helper did not come up; the message says why and quotes its log."""


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Service:
    """One background process with a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.cwd = cwd
        self.env = env
        self.user = user
        self.group = group
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        """Start the process and wait until ``ready()`` is true, or raise StartError."""
        kwargs: dict = {}
        if self.user is not None:
            kwargs.update(user=self.user, group=self.group, extra_groups=[])
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                **kwargs,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(
                    f"{self.name} exited with status {self.proc.returncode} while starting:\n"
                    f"{tail(self.log)}"
                )
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise StartError(f"{self.name} was not ready after {timeout:.0f} s:\n{tail(self.log)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, then SIGKILL it after ``grace`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

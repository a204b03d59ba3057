"""A description of the machine a run was measured on, for the report.

Ratios travel between machines better than absolute numbers, but both depend on how many
cores pgbench, PostgreSQL and the proxy share; so the report always says.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import time

from bench.server import tool


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def pgbench_version() -> str:
    try:
        out = subprocess.run([tool("pgbench"), "--version"], capture_output=True, text=True)
        return out.stdout.strip().split()[-1]
    except (OSError, IndexError):
        return "unknown"


def busy_percent(seconds: float = 1.0) -> float | None:
    """How busy the CPUs are (all of them, %) over ``seconds``, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 100.0 * (total - (idle1 - idle0)) / total if total else None


def describe(postgres_version: str, pgbouncer_version: str | None) -> dict:
    return {
        "nproc": usable_cpus(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "postgresql": postgres_version,
        "pgbench": pgbench_version(),
        "pgbouncer": pgbouncer_version or "not installed",
        "python": platform.python_version(),
        "uvloop": has_uvloop(),
        "loadavg": os.getloadavg()[0],
        "busy_before_percent": busy_percent(),
    }

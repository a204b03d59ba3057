"""Workloads, the pgbench command line, and reading pgbench's report.

A :class:`Workload` is what pgbench runs: a built-in script (``-S``, select-only) or custom
script files (``-f``). It may carry SQL to run once on the database before the runs (say,
a table with personal data) and a fragment of pgveil configuration (say, the policy that
masks it) that is merged into every pgveil target. Built-in named workloads live in
:data:`WORKLOADS`; ``--script FILE`` adds a workload made from a file.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.server import tool

MODES = ("simple", "extended", "prepared")


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    args: tuple[str, ...]  # pgbench arguments choosing the script(s)
    setup_sql: str | None = None  # run once, directly on the database, after pgbench -i
    pgveil_config: dict = field(default_factory=dict)  # merged into each pgveil target's TOML
    modes: tuple[str, ...] = MODES  # query modes this workload makes sense in
    script: str | None = None  # a built-in pgbench script; "@name" in args is its file


WORKLOADS: dict[str, Workload] = {
    "select-only": Workload(
        name="select-only",
        description="pgbench built-in select-only: one SELECT by primary key on pgbench_accounts",
        args=("-S",),
    ),
    # Selecting masked columns by primary key. Compare target "pgveil-masked" (a policy masks
    # ssn and email for the bench user) with "pgveil" (no policy) on this same workload.
    "masked": Workload(
        name="masked",
        description="SELECT id, name, email, ssn FROM bench_customers WHERE id = :id "
                    "(100k rows; ssn redacted, email masked in pgveil-masked)",
        args=("-f", "@masked"),
        setup_sql="""
DROP TABLE IF EXISTS bench_customers;
CREATE TABLE bench_customers (id int PRIMARY KEY, name text NOT NULL, email text, ssn text,
                              card_number text);
INSERT INTO bench_customers
  SELECT g, 'name ' || g, 'user' || g || '@example.com',
         lpad((g % 900 + 100)::text, 3, '0') || '-' || lpad((g % 90 + 10)::text, 2, '0') || '-'
           || lpad((g % 9000 + 1000)::text, 4, '0'),
         '4000' || lpad(g::text, 12, '0')
  FROM generate_series(1, 100000) g;
ANALYZE bench_customers;
""",
        script="\\set id random(1, 100000)\nSELECT id, name, email, ssn FROM bench_customers WHERE id = :id;\n",
    ),
}


def script_workload(path: Path, scale: int) -> Workload:
    """A workload from a pgbench custom script file; ``:scale`` is set for it."""
    path = path.resolve()
    if not path.is_file():
        raise SystemExit(f"--script {path}: no such file")
    return Workload(
        name=path.stem,
        description=f"custom script {path.name}",
        args=("-f", str(path), "-D", f"scale={scale}"),
    )


@dataclass
class RunResult:
    ok: bool
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    connect_ms: float | None = None
    seconds: float = 0.0
    error: str | None = None


_PATTERNS = {
    "tps": re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M),
    "latency_ms": re.compile(r"^latency average = ([\d.]+) ms", re.M),
    "transactions": re.compile(r"^number of transactions actually processed: (\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions: (\d+)", re.M),
    "connect_ms": re.compile(r"^initial connection time = ([\d.]+) ms", re.M),
}


def parse_output(text: str) -> dict[str, float | int]:
    """The numbers from pgbench's end-of-run report (absent ones are left out)."""
    found: dict[str, float | int] = {}
    for key, pattern in _PATTERNS.items():
        m = pattern.search(text)
        if m:
            found[key] = int(m.group(1)) if key in ("transactions", "failed") else float(m.group(1))
    return found


def default_threads(clients: int, cpus: int) -> int:
    """pgbench threads: one per client up to the number of CPUs (8 clients on 2 cores: -j 2)."""
    return max(1, min(clients, cpus))


def command(
    dsn: str, workload: Workload, mode: str, clients: int, threads: int, duration: int
) -> list[str]:
    return [
        tool("pgbench"),
        "-n",  # no vacuum: the tables are vacuumed once by pgbench -i
        "-M", mode,
        "-c", str(clients),
        "-j", str(threads),
        "-T", str(duration),
        *[script_file(workload) if a.startswith("@") else a for a in workload.args],
        dsn,
    ]


def script_file(workload: Workload) -> str:
    """Write a built-in workload's pgbench script to a temporary file; its path."""
    import tempfile

    path = Path(tempfile.gettempdir()) / f"pgveil-bench-{workload.name}.sql"
    if not path.exists() or path.read_text() != workload.script:
        path.write_text(workload.script or "")
    return str(path)


def run(argv: list[str], duration: int) -> RunResult:
    """Run one pgbench; never raises on a failed run (the result says what went wrong)."""
    t0 = time.monotonic()
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    except subprocess.TimeoutExpired:
        return RunResult(ok=False, seconds=time.monotonic() - t0, error="pgbench timed out")
    seconds = time.monotonic() - t0
    numbers = parse_output(res.stdout)
    if res.returncode != 0 or "tps" not in numbers:
        err = (res.stderr.strip() or res.stdout.strip())[-600:]
        return RunResult(ok=False, seconds=seconds, error=f"exit {res.returncode}: {err}", **numbers)
    return RunResult(ok=True, seconds=seconds, **numbers)

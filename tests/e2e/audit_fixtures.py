"""Shared helpers for the end-to-end audit and metrics tests (``test_audit_e2e_*``,
``test_metrics_e2e_*``).

Deliberately not a ``conftest.py``: other suites share ``tests/e2e``. Test modules import what
they need from here; the ``pg`` and ``pgveil_factory`` fixtures come from ``tests/conftest.py``.

- :func:`audit_config` — the ``[audit]`` table (plus anything else) for a private proxy;
- :func:`read_log` — the records of a log file, parsed, in file order;
- :func:`run_verify` — ``python -m proxy audit verify PATH --key KEY`` as a subprocess;
- :func:`scrape` / :func:`sample` — ``/metrics`` parsed with prometheus_client's parser.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from helpers import REPO_ROOT

#: An identifier that survives normalization and says which session/statement a record is.
MARKER = re.compile(r"\bc_s(\d+)_k(\d+)(?:_p(\d+))?\b")


def audit_config(workdir: Path, *, fsync: str = "batch", on_failure: str = "fail_closed",
                 include_literals: bool = False, path: Path | None = None,
                 extra_audit: str = "", extra: str = "") -> str:
    """``[audit]`` for a proxy whose log lives in ``workdir`` (``audit.jsonl``/``audit.key``)."""
    log = path or workdir / "audit.jsonl"
    return (
        "[audit]\n"
        f'path = "{log}"\n'
        f'key_file = "{workdir / "audit.key"}"\n'
        f'fsync = "{fsync}"\n'
        f'on_failure = "{on_failure}"\n'
        f"include_literals = {'true' if include_literals else 'false'}\n"
        f"{extra_audit}\n{extra}\n"
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every complete line of the log, parsed (a torn last line is skipped)."""
    out = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            out.append(json.loads(raw))
    return out


STATEMENT_TYPES = ("intent", "statement")  # the records that stand for a statement


def statements(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per statement, in log order: its ``intent`` record with the members of its
    ``complete`` record added (outcome members: ``rows``, ``duration_ms``, ``sqlstate``),
    or its ``statement`` record (both in one)."""
    done = {r["rid"]: r for r in records if r["type"] == "complete"}
    out = []
    for r in records:
        if r["type"] == "statement":
            out.append(r)
        elif r["type"] == "intent":
            c = done.get(r["seq"])
            out.append({**r, **({k: c[k] for k in ("rows", "duration_ms", "sqlstate") if k in c}
                                if c else {})})
    return out


def run_verify(path: Path, key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``pgveil audit verify`` exactly as an operator runs it (a separate process)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", str(path), "--key", str(key), *extra],
        capture_output=True, text=True, timeout=60, env=env, cwd=str(REPO_ROOT),
    )


def scrape(admin_port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple], float]:
    """``/metrics`` as ``{(sample name, sorted label items): value}``."""
    with urllib.request.urlopen(f"http://{host}:{admin_port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples: dict[tuple[str, tuple], float], name: str, default: float = 0.0,
           **labels: str) -> float:
    """One sample's value (``default`` when it is not exported yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), default)


def metric_names(samples: dict[tuple[str, tuple], float]) -> set[str]:
    return {name for name, _ in samples}

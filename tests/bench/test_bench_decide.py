"""``python -m bench.decide`` runs against a real PostgreSQL and reports its figures.

No timing is asserted here (speed targets are shown by the bench, not by tests): the run
must load the catalog, time the requested number of rewrites and print sane quantiles.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_decide_bench_reports_quantiles_of_cold_rewrites() -> None:
    res = subprocess.run([sys.executable, "-m", "bench.decide", "-n", "60", "--warmup", "5",
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert figures["decisions"] == 60
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert figures["target_p50_ms"] == 2.0

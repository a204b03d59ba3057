"""The bench runs end to end (``--quick``, one round) and prints its table.

Slow (about a minute and a half): excluded from the default run; ``pytest -m slow``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_bench_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--rounds", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    header = lines[0].split()
    assert header[:3] == ["workload", "mode", "clients"], res.stdout
    assert "direct" in header and "tps" in header
    rows = [line.split() for line in lines[2:]]
    assert {(r[1], r[2]) for r in rows} == {
        (mode, clients)
        for mode in ("simple", "extended", "prepared")
        for clients in ("1", "8")
    }
    assert all(float(r[3]) > 0 for r in rows), res.stdout  # direct tps
    assert re.search(r"\[(\d+)/\1\]", res.stderr), res.stderr[-3000:]  # progress got to n of n
    results = json.loads(out.read_text())
    assert len(results["cells"]) == 6
    assert results["machine"]["nproc"] >= 1

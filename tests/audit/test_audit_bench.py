"""The writer benchmark runs (tiny sizes here; run the module itself for real figures)."""

from __future__ import annotations

from proxy.audit.bench_writer import bench

from audit_helpers import run


def test_bench_writer_smoke(tmp_path) -> None:
    for mode in ("batch", "always"):
        result = run(bench(records=2000, sessions=10, fsync=mode, folder=str(tmp_path)))
        assert result.records == 2000 and result.per_second > 0 and result.batches >= 1
        assert "records/s" in str(result)

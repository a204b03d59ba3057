"""Merging the workers' metrics for /metrics (no processes: texts in, one text out)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics
from proxy.worker_metrics import fetch, merge, serve_text


def _worker(statements: int, slow: float) -> bytes:
    m = Metrics()
    m.statement("select", "forward").inc(statements)
    m.connections_total.inc(statements)
    m.duration.observe(slow)
    return m.render()


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_every_sample_is_labelled_by_its_worker_and_none_is_lost() -> None:
    merged = _samples(merge({"0": _worker(3, 0.002), "1": _worker(5, 0.2), "2": None}))
    sel = {w: merged[("pgveil_statements_total",
                      (("decision", "forward"), ("kind", "select"), ("worker", w)))]
           for w in ("0", "1")}
    assert sel == {"0": 3.0, "1": 5.0}
    assert merged[("pgveil_client_connections_total", (("worker", "1"),))] == 5.0
    # histograms keep their buckets per worker
    assert merged[("pgveil_statement_duration_seconds_bucket", (("le", "0.0025"), ("worker", "0")))] == 1
    assert merged[("pgveil_statement_duration_seconds_bucket", (("le", "0.0025"), ("worker", "1")))] == 0
    assert merged[("pgveil_statement_duration_seconds_count", (("worker", "1"),))] == 1
    up = {k[1][0][1]: v for k, v in merged.items() if k[0] == "pgveil_worker_up"}
    assert up == {"0": 1, "1": 1, "2": 0}  # worker 2 did not answer


def test_a_worker_serves_its_text_on_a_socket_and_a_dead_one_is_none(tmp_path) -> None:
    async def go():
        path = str(tmp_path / "w.sock")
        server = await serve_text(path, lambda: b"hello\n")
        try:
            got = await fetch(path)
        finally:
            server.close()
            await server.wait_closed()
        return got, await fetch(str(tmp_path / "nobody.sock"), timeout=1)
    assert asyncio.run(go()) == (b"hello\n", None)

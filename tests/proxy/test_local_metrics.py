"""Local counters and histograms render exactly as prometheus_client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.local_metrics import LocalCollector, LocalCounter, LocalHistogram


def _samples(text: bytes) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_same_exposition_as_prometheus_client():
    buckets = (0.001, 0.01, 0.1, 1.0)
    values = [0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 3.0, 0.0]
    ref, mine = CollectorRegistry(), CollectorRegistry()
    h = Histogram("x_seconds", "x", buckets=buckets, registry=ref)
    c = Counter("y", "y", ["kind"], registry=ref)
    lh = LocalHistogram("x_seconds", "x", buckets)
    lc = LocalCounter("y", "y", ("kind",))
    mine.register(LocalCollector([lh, lc]))
    for v in values:
        h.observe(v)
        lh.observe(v)
    for kind, n in (("select", 3), ("insert", 1), ("select", 2)):
        c.labels(kind).inc(n)
        lc.labels(kind).inc(n)
    assert _samples(generate_latest(mine)) == _samples(generate_latest(ref))
    assert lc.value("select") == 5 and lc.value("update") == 0

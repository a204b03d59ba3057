"""Counters and histograms cheap enough for the per-statement path.

prometheus_client's own ``inc`` and ``observe`` take a lock and cost about 0.5 and 1.5 µs;
a proxy that handles every statement of every session on one event loop pays that several
times per statement. These keep plain Python numbers (one event loop per process, so no
lock is needed) and are turned into metric families only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class _Child:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class LocalCounter:
    """A counter, optionally labelled: ``c.inc()`` or ``c.labels("a", "b").inc()``."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self._children[()] = self._only = _Child()

    def labels(self, *values: str) -> _Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}")
            child = self._children[values] = _Child()
        return child

    def inc(self, amount: float = 1) -> None:
        self._only.value += amount

    def value(self, *values: str) -> float:
        child = self._children.get(values)
        return child.value if child is not None else 0.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            fam.add_metric(list(values), child.value)
        yield fam


class LocalHistogram:
    """A histogram with fixed upper bounds (seconds); ``+Inf`` is added."""

    __slots__ = ("name", "documentation", "bounds", "counts", "sum")

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # le semantics: a value equal to a bound falls in that bound's bucket
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=self.sum)


class LocalCollector:
    """Registers any number of local metrics with a prometheus registry."""

    def __init__(self, metrics: list) -> None:
        self.metrics = metrics

    def describe(self):  # noqa: D401 - prometheus_client protocol
        return []

    def collect(self):
        for metric in self.metrics:
            yield from metric.collect()

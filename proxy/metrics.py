"""Prometheus metrics, served on the admin listener at ``/metrics``.

Counters and histograms are updated on the query path as plain numbers (tens of
nanoseconds each, :mod:`.local_metrics`) and become metric families at scrape time;
values that already live elsewhere (sessions, grants, requests, the audit writer) are read
at scrape time by a collector, so the query path does not maintain them twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .local_metrics import LocalCollector, LocalCounter, LocalHistogram

if TYPE_CHECKING:
    from .server import ProxyServer

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ADDED_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_total = LocalCounter(
            "pgveil_client_connections", "Client connections accepted")
        self.statements = LocalCounter(
            "pgveil_statements", "Statements by kind and decision", ("kind", "decision"))
        self.duration = LocalHistogram(
            "pgveil_statement_duration_seconds",
            "Statement time from forwarding to its answer, as the client waits for it",
            LATENCY_BUCKETS)
        self.added = LocalHistogram(
            "pgveil_proxy_added_seconds",
            "Time pgveil spends on a statement before forwarding it (decision, rewrite, audit)",
            ADDED_BUCKETS)
        self.masked_columns = LocalCounter(
            "pgveil_masked_columns", "Masked columns served (per statement and column)")
        self.denials = LocalCounter("pgveil_denials", "Statements denied, by reason", ("reason",))
        self.grant_uses = LocalCounter("pgveil_grant_uses", "Statements that used a grant")
        self.upstream_errors = LocalCounter(
            "pgveil_upstream_errors", "Failed or lost upstream connections")
        r.register(LocalCollector([
            self.connections_total, self.statements, self.duration, self.added,
            self.masked_columns, self.denials, self.grant_uses, self.upstream_errors]))

    def statement(self, kind: str, decision: str):
        """The statements counter child for (kind, decision)."""
        return self.statements.labels(kind, decision)

    def attach(self, server: "ProxyServer") -> None:
        self.server = server
        self.registry.register(_Live(server))
        self._unclassified_synced = 0
        self._unclassified = self.statements.labels("unclassified", "forward")

    def render(self) -> bytes:
        server = getattr(self, "server", None)
        if server is not None:
            delta = server.unclassified - self._unclassified_synced
            if delta > 0:
                self._unclassified.inc(delta)
                self._unclassified_synced += delta
        return generate_latest(self.registry)


class _Live:
    """Gauges read from the server's own state at scrape time."""

    def __init__(self, server: "ProxyServer") -> None:
        self.server = server

    def describe(self):  # noqa: D401 - prometheus_client protocol
        return []

    def collect(self):
        s = self.server
        g = GaugeMetricFamily("pgveil_client_connections_current", "Open client connections")
        g.add_metric([], len(s.sessions))
        yield g
        jit = s.jit
        if jit is not None:
            req = GaugeMetricFamily("pgveil_requests", "Access requests by state", labels=["state"])
            counts: dict[str, int] = {}
            for r in jit.requests():
                st = r.to_dict().get("state", "unknown")
                counts[st] = counts.get(st, 0) + 1
            for st in ("pending", "approved", "denied", "cancelled", "expired"):
                req.add_metric([st], counts.get(st, 0))
            yield req
            ag = GaugeMetricFamily("pgveil_active_grants", "Grants live now")
            ag.add_metric([], len(jit.grants(active_only=True)))
            yield ag
        cv = GaugeMetricFamily(
            "pgveil_catalog_version", "Version of the schema catalog pgveil decides with, by "
            "database: it grows when DDL is reported or a load finds a change", labels=["database"])
        for database, st in s.policy.catalogs.items():
            cv.add_metric([database], st.version)
        yield cv
        a = s.audit
        if a is not None:
            w = CounterMetricFamily("pgveil_audit_records_written", "Audit records written")
            w.add_metric([], a.written)
            yield w
            d = CounterMetricFamily("pgveil_audit_records_dropped",
                                    "Audit records dropped (on_failure = continue)")
            d.add_metric([], a.dropped)
            yield d
            lag = GaugeMetricFamily("pgveil_audit_writer_lag_seconds",
                                    "Age of the oldest audit record not yet durable")
            lag.add_metric([], a.lag_seconds)
            yield lag
            st = CounterMetricFamily(
                "pgveil_audit_handoffs_stalled",
                "Audit records the writer process's shared ring could not take when they "
                "were queued (the writer lagged a whole ring behind): they waited in the "
                "proxy's memory until the next group commit or hand-off")
            st.add_metric([], a.handoffs_stalled)
            yield st
            h = GaugeMetricFamily("pgveil_audit_healthy", "1 when the audit sink accepts writes")
            h.add_metric([], 1 if a.healthy else 0)
            yield h

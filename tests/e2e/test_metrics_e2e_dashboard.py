"""The monitoring files in ``docker/`` agree with what the proxy exports.

* ``docker/grafana/dashboards/pgveil.json`` is valid JSON, every panel queries the
  provisioned Prometheus datasource, and every ``pgveil_*`` series its queries use is one a
  running proxy (with audit, policy and JIT configured) actually exports;
* ``docker/prometheus.yml`` scrapes ``pgveil:8433/metrics``, and ``docker/compose.yaml`` runs
  prometheus and grafana with the provisioning mounted (YAML checks need PyYAML: skipped
  when it is not installed).
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from audit_fixtures import metric_names
from helpers import REPO_ROOT
from test_metrics_e2e import lab  # noqa: F401 - the module fixture

DOCKER = REPO_ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "pgveil.json"
SERIES = re.compile(r"\bpgveil_[a-z0-9_]+\b")


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def _exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]


def test_dashboard_is_valid_and_uses_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in _panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    exprs = " ".join(_exprs(dash))
    # what the dashboard must show
    for needle in ("pgveil_statements_total", "by (decision)",
                   "histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99",
                   "pgveil_statement_duration_seconds_bucket", "pgveil_proxy_added_seconds_bucket",
                   "by (reason) (rate(pgveil_denials_total", "pgveil_masked_columns_total",
                   "pgveil_active_grants", 'pgveil_requests{state="pending"}',
                   "pgveil_audit_writer_lag_seconds", "pgveil_audit_records_dropped_total",
                   "pgveil_client_connections_current", "pgveil_client_connections_total"):
        assert needle in exprs, needle
    # grants and requests live in the shared state store: every worker and instance reports
    # the same ones, so they are never summed across them
    for series in ("pgveil_active_grants", "pgveil_requests"):
        for expr in _exprs(dash):
            assert series not in expr or not expr.startswith("sum"), expr


def test_dashboard_queries_only_series_the_proxy_exports(lab) -> None:  # noqa: F811
    # make sure labelled series exist (a labelled counter appears once it was incremented)
    with lab.masked_conn() as conn:
        conn.execute(f"SELECT * FROM {lab.table}", prepare=False)
        with pytest.raises(psycopg.Error):
            conn.execute("DO $$ begin end $$", prepare=False)
    exported = metric_names(lab.scrape())
    used = set(SERIES.findall(" ".join(_exprs(json.loads(DASHBOARD.read_text())))))
    assert used, "no pgveil series in the dashboard"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_prometheus_scrapes_the_admin_listener_and_compose_runs_the_stack() -> None:
    yaml = pytest.importorskip("yaml")
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "pgveil"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["pgveil:8433"]

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "pgveil", "prometheus", "grafana"} <= set(services)
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            src = volume.split(":", 1)[0]
            assert (DOCKER / src).exists(), f"{name} mounts {src}, which does not exist"
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/pgveil.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"

"""Grafana cannot run here: its provisioning files and dashboard are checked statically, every panel's
PromQL against the metrics the service really exports (a fresh `Metrics()`'s registry)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from deploy_support import DEPLOY, check_promql, exported_metrics, load_yaml

pytestmark = pytest.mark.unit

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rnnserve.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return exported_metrics()


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def test_exported_names_include_the_suffixes(exported: dict[str, set[str]]) -> None:
    # the check below is only as good as this list: counters, histograms and gauges as Prometheus sees them
    for name in (
        "rnnserve_events_total",
        "rnnserve_request_duration_seconds_bucket",
        "rnnserve_request_duration_seconds_count",
        "rnnserve_batch_size_sum",
        "rnnserve_active_sessions",
    ):
        assert name in exported
    assert "rnnserve_events" not in exported
    assert "le" in exported["rnnserve_batch_size_bucket"]


def test_datasource_is_the_compose_prometheus() -> None:
    config = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert (source["type"], source["uid"], source["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    assert source["isDefault"] is True


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    config = load_yaml(GRAFANA / "provisioning" / "dashboards" / "rnnserve.yml")
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = load_yaml(DEPLOY.parent / "docker-compose.yml")
    volumes = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in volumes
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "rnnserve"
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"], panel["title"]
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_names_exported_metrics_and_labels(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    problems = [
        f"{title}: {expr}: {problem}"
        for title, expr in _queries(dashboard)
        for problem in check_promql(expr, exported).problems
    ]
    assert not problems, "\n".join(problems)


def test_template_variables_read_exported_labels(
    dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    variables = dashboard["templating"]["list"]
    assert variables
    for variable in variables:
        found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert found is not None, variable["name"]
        metric, label = found.groups()
        assert label in exported[metric], variable["name"]
    used = {name for _, expr in _queries(dashboard) for name in re.findall(r"\$(\w+)", expr)}
    assert used - {"__rate_interval", "__range", "__interval"} <= {v["name"] for v in variables}


@pytest.mark.parametrize(
    ("topic", "pattern"),
    [
        ("events/s", r"rate\(rnnserve_events_total"),
        ("latency percentiles", r"histogram_quantile\(0\.99, .*rnnserve_request_duration_seconds_bucket"),
        ("batch size", r"rnnserve_batch_size_(bucket|sum)"),
        ("active sessions", r"rnnserve_active_sessions"),
        ("evictions", r"rnnserve_sessions_ended_total\{[^}]*reason=\"evicted\""),
        ("anomalies flagged", r"rnnserve_anomalies_total"),
    ],
)
def test_dashboard_covers(dashboard: dict[str, Any], topic: str, pattern: str) -> None:
    assert any(re.search(pattern, expr) for _, expr in _queries(dashboard)), f"no panel shows {topic}"


def test_prometheus_alert_rules_name_exported_metrics(exported: dict[str, set[str]]) -> None:
    rules = [
        rule for group in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"] for rule in group["rules"]
    ]
    assert rules
    problems = []
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        check = check_promql(rule["expr"], exported, need_metric=not rule["expr"].startswith("up{"))
        problems += [f"{rule['alert']}: {problem}" for problem in check.problems]
    assert not problems, "\n".join(problems)


def test_promql_check_catches_mistakes(exported: dict[str, set[str]]) -> None:
    assert check_promql("rate(rnnserve_events[5m])", exported).problems  # the counter lacks _total
    assert check_promql("sum by (reason) (rate(rnnserve_events_total[5m]))", exported).problems
    assert check_promql('rnnserve_active_sessions{route="x"}', exported).problems
    assert not check_promql("sum by (model, le) (rate(rnnserve_batch_size_bucket[1m]))", exported).problems

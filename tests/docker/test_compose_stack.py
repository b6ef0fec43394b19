"""docker-compose.yml for real (default profile): the service, Redis and Prometheus come up healthy on
loopback ports, Prometheus scrapes the service's /metrics and loads the alert rules; the nginx and
Prometheus configs pass their own tools' checks."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from docker_support import (
    ROOT,
    ComposeProject,
    Models,
    client,
    docker,
    image_exists,
    new_session,
    step,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def prometheus(stack: ComposeProject, path: str, **params: str) -> Any:
    response = httpx.get(
        f"{stack.url('PROMETHEUS_PORT')}/api/v1/{path}", params=params, timeout=10, trust_env=False
    )
    response.raise_for_status()
    return response.json()["data"]


def test_service_answers_on_its_published_port(stack: ComposeProject) -> None:
    with client(stack.url("RNNSERVE_HTTP_PORT")) as http:
        assert http.get("/readyz").status_code == 200
        assert http.get("/v1/models").status_code == 200
        assert http.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_prometheus_scrapes_the_service(stack: ComposeProject, models: Models) -> None:
    name = models.names["sensor"]
    with client(stack.url("RNNSERVE_HTTP_PORT")) as http:
        features = next(m["features"] for m in http.get("/v1/models").json()["models"] if m["name"] == name)
        step(http, new_session(http, name), "sensor", 0, [[0.0] * len(features), [1.0] * len(features)])

    def scraped() -> bool:
        targets = prometheus(stack, "targets")["activeTargets"]
        return any(t["labels"]["job"] == "rnnserve" and t["health"] == "up" for t in targets)

    wait_for("Prometheus scrapes rnnserve:8000/metrics", scraped, 60, lambda: stack.logs("prometheus"))

    def counted() -> bool:
        result = prometheus(stack, "query", query='sum(rnnserve_events_total{job="rnnserve"})')["result"]
        return bool(result) and float(result[0]["value"][1]) >= 2

    wait_for("rnnserve_events_total reaches Prometheus", counted, 60)
    groups = {group["name"] for group in prometheus(stack, "rules")["groups"]}
    assert "rnnserve" in groups, "deploy/prometheus/alerts.yml is loaded"


def test_only_loopback_ports_are_published(stack: ComposeProject) -> None:
    ids = stack.run("ps", "-q").stdout.split()
    assert ids
    published: dict[str, list[str]] = {}
    for container in ids:
        info = json.loads(docker("inspect", "--format", "{{json .}}", container).stdout)
        bindings = [b for ports in (info["NetworkSettings"]["Ports"] or {}).values() for b in ports or []]
        published[info["Name"]] = [b["HostIp"] for b in bindings]
    assert all(ip == "127.0.0.1" for ips in published.values() for ip in ips), published
    redis = [name for name in published if "redis" in name]
    assert redis and all(not published[name] for name in redis), "Redis is reachable from the network only"


def _need_image(tag: str) -> None:
    if not image_exists(tag):
        pytest.skip(f"{tag} is missing: ../shared/tools/docker-engine --standins builds it")


def test_nginx_config_passes_nginx_t(engine: None) -> None:
    _need_image("nginx:1.27")
    conf = ROOT / "deploy" / "nginx" / "rnnserve.conf"
    result = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--add-host",
        "rnnserve-a:127.0.0.1",
        "--add-host",
        "rnnserve-b:127.0.0.1",
        "-v",
        f"{conf}:/etc/nginx/conf.d/default.conf:ro",
        "nginx:1.27",
        "nginx",
        "-t",
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_config_passes_promtool(engine: None) -> None:
    _need_image("prom/prometheus:v2.53.0")
    config = ROOT / "deploy" / "prometheus"
    result = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "promtool",
        "-v",
        f"{config / 'prometheus.yml'}:/etc/prometheus/prometheus.yml:ro",
        "-v",
        f"{config / 'alerts.yml'}:/etc/prometheus/alerts.yml:ro",
        "prom/prometheus:v2.53.0",
        "check",
        "config",
        "/etc/prometheus/prometheus.yml",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr

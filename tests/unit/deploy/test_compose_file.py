"""docker-compose.yml and the nginx and Prometheus configs it mounts, statically; then
`docker-compose config` / `docker compose config` where one is installed (no engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import COMPOSE_FILE, DEPLOY, ROOT, load_yaml

pytestmark = pytest.mark.unit

DEFAULT = {"rnnserve", "redis", "prometheus"}
PROFILES = {"replicas": {"rnnserve-a", "rnnserve-b", "nginx"}, "grafana": {"grafana"}}
# the stand-ins that ../shared/tools/docker-engine --standins builds here, under the upstream tags
IMAGES = {"redis": "redis:7", "nginx": "nginx:1.27", "prometheus": "prom/prometheus:v2.53.0"}
LOOPBACK = "${RNNSERVE_BIND:-127.0.0.1}:"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def services(compose: dict[str, Any], profile: str | None = None) -> set[str]:
    return {
        name
        for name, spec in compose["services"].items()
        if not spec.get("profiles") or profile in spec["profiles"]
    }


def test_profiles(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification: v1.29 and v2 both read it without"
    assert services(compose) == DEFAULT
    for profile, extra in PROFILES.items():
        assert services(compose, profile) == DEFAULT | extra, profile


def test_images(compose: dict[str, Any]) -> None:
    spec = compose["services"]
    for name, image in IMAGES.items():
        assert spec[name]["image"] == image
    assert spec["grafana"]["image"].startswith("grafana/grafana:")
    for name in ("rnnserve", "rnnserve-a", "rnnserve-b"):
        assert spec[name]["image"] == "${RNNSERVE_IMAGE:-rnnserve:latest}"
        assert spec[name]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile", "network": "host"}


def test_ports_listen_on_loopback_by_default(compose: dict[str, Any]) -> None:
    published = {name: spec["ports"] for name, spec in compose["services"].items() if "ports" in spec}
    assert set(published) == {"rnnserve", "prometheus", "grafana", "nginx"}, (
        "redis and the replicas stay inside"
    )
    for name, ports in published.items():
        for port in ports:
            assert port.startswith(LOOPBACK), (name, port)


def test_depends_on_waits_for_health(compose: dict[str, Any]) -> None:
    spec = compose["services"]
    for name, service in spec.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert set(condition) == {"condition"}, name
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in spec[dependency], (
                    f"{name} waits on {dependency}, which has no healthcheck"
                )
            # a service never waits on one of a profile it is not in
            assert not spec[dependency].get("profiles") or set(spec[dependency]["profiles"]) & set(
                service.get("profiles", [])
            ), (name, dependency)
    assert spec["nginx"]["depends_on"] == {
        "rnnserve-a": {"condition": "service_healthy"},
        "rnnserve-b": {"condition": "service_healthy"},
    }
    for name in ("rnnserve", "rnnserve-a", "rnnserve-b"):
        assert spec[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert spec[name]["healthcheck"]["test"][-1] == "/readyz", "ready = models loaded"


def test_service_settings(compose: dict[str, Any]) -> None:
    spec = compose["services"]
    single = spec["rnnserve"]
    assert single["environment"]["RNNSERVE_SNAPSHOT_PATH"].startswith("/var/lib/rnnserve/")
    assert "rnnserve-state:/var/lib/rnnserve" in single["volumes"], "the snapshot survives the container"
    for name in ("rnnserve-a", "rnnserve-b"):
        environment = spec[name]["environment"]
        assert environment["RNNSERVE_STORE"] == "redis"
        assert environment["RNNSERVE_REDIS_URL"] == "redis://redis:6379/0"
        assert spec[name]["networks"]["default"]["aliases"] == ["rnnserve-replica"]
    for name in ("rnnserve", "rnnserve-a", "rnnserve-b"):
        service = spec[name]
        assert service["environment"]["RNNSERVE_API_KEYS_FILE"] == "/run/secrets/api_keys"
        assert service["secrets"] == ["api_keys"]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace > float(service["environment"]["RNNSERVE_SHUTDOWN_DRAIN_S"]), name


def test_required_secret_fails_fast(compose: dict[str, Any]) -> None:
    # a missing API-keys file stops `up` before anything starts, with a message saying what to set;
    # the interpolation runs for every profile, so only the secret every profile needs is required
    assert re.fullmatch(r"\$\{RNNSERVE_API_KEYS_FILE:\?.+\}", compose["secrets"]["api_keys"]["file"])
    assert ":?" not in compose["secrets"]["grafana_admin_password"]["file"]
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert len(re.findall(r"\$\{\w+:\?", text)) == 1
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def test_nginx_balances_the_two_replicas() -> None:
    conf = (DEPLOY / "nginx" / "rnnserve.conf").read_text(encoding="utf-8")
    assert conf.count("{") == conf.count("}")
    upstream = re.search(r"upstream rnnserve \{(.*?)\}", conf, re.S)
    assert upstream is not None
    servers = re.findall(r"^\s*server (\S+)", upstream.group(1), re.M)
    assert servers == ["rnnserve-a:8000", "rnnserve-b:8000"]
    assert "ip_hash" not in upstream.group(1) and "hash " not in upstream.group(1), "no stickiness"
    assert re.search(r"proxy_next_upstream error timeout", conf)
    assert "proxy_pass http://rnnserve;" in conf
    assert "$upstream_addr" in conf  # tests/docker tell the replicas apart by it
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", conf), "WebSocket streams pass through"


def test_prometheus_scrapes_every_rnnserve(compose: dict[str, Any]) -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["rnnserve"]["static_configs"][0]["targets"] == ["rnnserve:8000"]
    assert jobs["rnnserve"]["metrics_path"] == "/metrics"
    [discovery] = jobs["rnnserve-replicas"]["dns_sd_configs"]
    assert discovery["names"] == ["rnnserve-replica"] and discovery["port"] == 8000
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


# ---- the real tools, where installed ---------------------------------------------------------------


def _compose_commands() -> list[list[str]]:
    commands = []
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        ).returncode
        == 0
    ):
        commands.append([docker, "compose"])
    return commands


def _config(command: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RNNSERVE_", "COMPOSE_", "GRAFANA_", "PROMETHEUS_"))
    }
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "-p", "rnnserve-config-check", *args, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module", params=["v1", "v2"])
def compose_command(request: pytest.FixtureRequest) -> list[str]:
    for command in _compose_commands():
        if ("compose" in command) == (request.param == "v2"):
            return command
    tool = "docker-compose (v1)" if request.param == "v1" else "docker compose (v2)"
    pytest.skip(f"{tool} is not installed")


def test_compose_config_fails_fast_without_the_api_keys(compose_command: list[str]) -> None:
    result = _config(compose_command, {})
    assert result.returncode != 0
    assert "RNNSERVE_API_KEYS_FILE" in result.stderr


@pytest.mark.parametrize("profile", [None, "replicas", "grafana"])
def test_compose_config_resolves(compose_command: list[str], tmp_path: Path, profile: str | None) -> None:
    keys = tmp_path / "api_keys"
    keys.write_text("a-key\n", encoding="utf-8")
    profiles = ["--profile", profile] if profile else []
    result = _config(compose_command, {"RNNSERVE_API_KEYS_FILE": str(keys)}, *profiles)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    for service in resolved["services"].values():
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", port
    assert resolved["secrets"]["api_keys"]["file"] == str(keys)

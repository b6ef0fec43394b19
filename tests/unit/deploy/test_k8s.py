"""deploy/k8s: every manifest against the Kubernetes OpenAPI schema (kubernetes-validate, offline,
strict: unknown fields fail too), then the wiring between them and the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_support import CPU, DEPLOY, env, load_yaml, load_yaml_all, parse

pytestmark = pytest.mark.unit

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
REQUIRED = {"apiVersion", "kind", "metadata"}


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    return documents()


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_schema(path: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")
    for doc in load_yaml_all(K8S / path):
        assert doc.keys() >= REQUIRED, path
        assert doc["metadata"].get("name"), path
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert all((K8S / resource).is_file() for resource in kustomization["resources"])


def _container(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    [container] = docs[("Deployment", "rnnserve")]["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def test_probes(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    container = _container(docs)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports


def test_draining_fits_the_grace_period(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod = docs[("Deployment", "rnnserve")]["spec"]["template"]["spec"]
    container = _container(docs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(docs[("ConfigMap", "rnnserve")]["data"]["RNNSERVE_SHUTDOWN_DRAIN_S"])
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain


def test_resources_and_security(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    container = _container(docs)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    pod = docs[("Deployment", "rnnserve")]["spec"]["template"]["spec"]
    _, stages = parse(CPU)
    uid, gid = stages[-1].one("USER").split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in mounts


def test_wiring(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = docs[("Deployment", "rnnserve")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = docs[("Service", "rnnserve")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in _container(docs)["ports"]}
    pdb = docs[("PodDisruptionBudget", "rnnserve")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = docs[("HorizontalPodAutoscaler", "rnnserve")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rnnserve",
    }
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2

    config = docs[("ConfigMap", "rnnserve")]
    assert _container(docs)["envFrom"] == [{"configMapRef": {"name": "rnnserve"}}]
    settings = config["data"]
    assert all(key.startswith("RNNSERVE_") for key in settings)
    assert all(isinstance(value, str) for value in settings.values())
    # several pods share sessions through Redis, at the Service that redis.yaml defines
    assert settings["RNNSERVE_STORE"] == "redis"
    redis_host = settings["RNNSERVE_REDIS_URL"].split("//")[1].split(":")[0]
    assert ("Service", redis_host) in docs
    assert settings["RNNSERVE_PORT"] == str(_container(docs)["ports"][0]["containerPort"])
    # the API keys come from a Secret mounted where RNNSERVE_API_KEYS_FILE points, never from the ConfigMap
    keys_file = Path(settings["RNNSERVE_API_KEYS_FILE"])
    [mount] = [m for m in _container(docs)["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["optional"] is False
    assert not any("KEY" in key and key != "RNNSERVE_API_KEYS_FILE" for key in settings)


def test_settings_names_exist() -> None:
    from service.settings import Settings

    known = {f"RNNSERVE_{name.upper()}" for name in Settings.model_fields}
    config = documents()[("ConfigMap", "rnnserve")]["data"]
    assert set(config) <= known
    compose = load_yaml(DEPLOY.parent / "docker-compose.yml")
    for service in ("rnnserve", "rnnserve-a", "rnnserve-b"):
        assert set(compose["services"][service]["environment"]) <= known, service
    _, stages = parse(CPU)
    assert {k for k in env(stages[-1]) if k.startswith("RNNSERVE_")} <= known

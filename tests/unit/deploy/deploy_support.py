"""What the static deployment tests share: the repository paths, the scripts of deploy/, a Dockerfile
reader, the metric names the service exports, and a small PromQL check (every metric and label a
query names must exist)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU = DEPLOY / "Dockerfile"
GPU = DEPLOY / "Dockerfile.gpu"


def deploy_script(name: str) -> ModuleType:
    """deploy/<name>.py as a module (the images run these scripts; they are no package)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name a fresh `Metrics()` exports (`_total`, `_bucket`, `_count`, `_sum`, ...),
    with its label names. Labelled metrics export nothing until a child exists, so one is made each."""
    metrics = Metrics()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*["x"] * len(collector._labelnames))
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


# Labels Prometheus itself adds to every scraped series, or that our scrape configs add.
TARGET_LABELS = {"job", "instance", "deployment"}
_METRIC = re.compile(r"\b(rnnserve_[a-zA-Z0-9_]+)\b(\s*\{([^}]*)\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass
class QueryCheck:
    metrics: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def check_promql(expr: str, exported: dict[str, set[str]], need_metric: bool = True) -> QueryCheck:
    """The rnnserve metrics `expr` reads, and what is wrong with it: a metric the service does not
    export, a label matcher or grouping label that none of its metrics carry, or (with `need_metric`)
    no rnnserve metric at all."""
    result = QueryCheck()
    labels: set[str] = set(TARGET_LABELS)
    for match in _METRIC.finditer(expr):
        name = match.group(1)
        result.metrics.add(name)
        if name not in exported:
            result.problems.append(f"{name} is not exported by service/metrics.py")
            continue
        labels |= exported[name]
        for label, _ in _MATCHER.findall(match.group(3) or ""):
            if label not in exported[name] | TARGET_LABELS:
                result.problems.append(f"{name} has no label {label!r}")
    if need_metric and not result.metrics:
        result.problems.append("names no rnnserve metric")
    for group in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in labels:
                result.problems.append(f"groups by {label!r}, a label none of its metrics carry")
    return result


# ---- Dockerfiles ---------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        [args] = self.all(keyword)
        return args


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text(encoding="utf-8"))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base, parts[2] if len(parts) > 2 else None))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def env(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in args.split():
            name, _, value = pair.partition("=")
            values[name] = value
    return values

"""The closing summary of what did not run: every skipped group, and the one command that enables it.

A test run on a machine without Redis, Docker, the shared data or a browser passes with those tests
skipped; this says so loudly at the end instead of leaving it in pytest's `-ra` lines.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Group:
    name: str
    pattern: re.Pattern[str]  # matched against the skip reason
    enable: str


GROUPS = (
    Group(
        "redis",
        re.compile(r"redis-server", re.I),
        "apt-get install redis-server  (./scripts/test does it when run as root)",
    ),
    Group(
        "docker compose",
        re.compile(r"compose", re.I),
        "../shared/tools/docker-engine --standins  (README: Docker tests)",
    ),
    Group(
        "docker",
        re.compile(r"docker|engine|image", re.I),
        "../shared/tools/docker-engine --standins  (README: Docker tests)",
    ),
    Group(
        "data",
        re.compile(r"wikitext|shared data|NAB", re.I),
        "put the shared data directory at ../shared/data  (README: Test data)",
    ),
    Group(
        "browser",
        re.compile(r"chromium|playwright|browser", re.I),
        "apt-get install chromium  (and pip install -e '.[dev]' for playwright)",
    ),
    Group("training", re.compile(r"torch|\[train\]|\[bench\]", re.I), "pip install -e '.[dev,train]'"),
)


def group_of(reason: str) -> Group | None:
    return next((g for g in GROUPS if g.pattern.search(reason)), None)


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def write_summary(terminal: pytest.TerminalReporter, not_collected: list[str]) -> None:
    """`not_collected`: test paths left out because torch is missing (their modules import it)."""
    skipped: list[pytest.TestReport] = terminal.stats.get("skipped", [])
    if not skipped and not not_collected:
        return
    counts: Counter[str] = Counter()
    enable: dict[str, str] = {}
    for report in skipped:
        reason = skip_reason(report)
        group = group_of(reason)
        name = group.name if group else "other"
        counts[name] += 1
        enable.setdefault(name, group.enable if group else reason)
    terminal.section(f"NOT TESTED HERE: {len(skipped)} skipped", sep="=", yellow=True, bold=True)
    if not_collected:
        terminal.write_line(
            f"  {'training':<15} not collected (no torch: {', '.join(not_collected)})   "
            "enable: pip install -e '.[dev,train]'"
        )
    for name, count in counts.most_common():
        how = "enable:" if name != "other" else "reason:"
        terminal.write_line(f"  {name:<15} {count:>4} skipped   {how} {enable[name]}")

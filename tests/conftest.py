"""Shared fixtures: tiny real models built with the project's own model and export code.

Every cell type for both tasks, exported and verified by `training.export.write_artifact`, once per
test session (tests/tiny_models.py). Weights are random (seeded): serving correctness does not depend
on training quality, and the training tests train their own models.

Without torch (`pip install -e '.[dev]'` alone) the committed copy of the tiny models serves, and the
tests that need torch (training, benchmarks) are not collected; the closing summary says so.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from skip_summary import write_summary
from tiny_models import COMMITTED, build_tiny_models

HAVE_TORCH = importlib.util.find_spec("torch") is not None
TESTS = Path(__file__).resolve().parent
NEEDS_TORCH = (
    TESTS / "unit" / "training",
    TESTS / "integration" / "training",
    TESTS / "integration" / "test_benchmarks.py",
)
NOT_COLLECTED: list[Path] = []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not HAVE_TORCH and collection_path in NEEDS_TORCH:
        # listed in the summary only when the run asked for it (pytest also looks at siblings)
        asked = [Path(arg.split("::")[0]).resolve() for arg in config.args]
        path = collection_path
        if any(a == path or path in a.parents or a in path.parents for a in asked):
            NOT_COLLECTED.append(collection_path)
        return True
    return None


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with `lm-<cell>/1` and `sensor-<cell>/1` for every cell type: built fresh
    where torch is installed, else the committed copy (tests/tiny_models.py)."""
    root = tmp_path_factory.mktemp("models")
    if HAVE_TORCH:
        return build_tiny_models(root)
    shutil.copytree(COMMITTED, root, dirs_exist_ok=True)
    return root


def publish_version(source: Path, root: Path, name: str, version: str) -> Path:
    """Publish `source` (an artifact directory) as `root/name/version` the way the README says:
    copy into a hidden directory, rename the manifest, then one atomic rename into place."""
    import json

    staging = root / name / f".{version}.tmp"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    final = root / name / version
    staging.rename(final)
    return final


@pytest.fixture
def publish() -> Callable[[Path, Path, str, str], Path]:
    return publish_version


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_summary(terminalreporter, [str(p.relative_to(TESTS.parent)) for p in NOT_COLLECTED])

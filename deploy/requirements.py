"""Print the serving requirements from pyproject.toml, one per line, for `pip install -r`.

    python requirements.py pyproject.toml          the base install (onnxruntime, never torch)
    python requirements.py pyproject.toml --gpu    the same with onnxruntime swapped for the `gpu` extra

Both images install their dependencies from this list in a layer of their own, so that a change in
service/ does not reinstall them. Standard library only: it runs in the bare build stage.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_CPU_ONLY = {"onnxruntime"}  # what the gpu extra replaces (the two wheels hold the same module)


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    if match is None:
        raise ValueError(f"cannot read a package name from {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def requirements(pyproject: Path, gpu: bool = False) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    base: list[str] = list(project["dependencies"])
    if not gpu:
        return base
    extra: list[str] = list(project["optional-dependencies"]["gpu"])
    return [req for req in base if _name(req) not in _CPU_ONLY] + extra


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 1 or set(argv) - {*args, "--gpu"}:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(requirements(Path(args[0]), gpu="--gpu" in argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

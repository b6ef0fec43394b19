"""The artifacts under test: found in a models directory, or stand-ins exported where none exist.

The server, the in-process limit and the baseline all read the same artifact directory, so they run
the same ONNX file (the baseline rebuilds the same architecture in PyTorch from its manifest).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from service.manifest import ArtifactError, Manifest, read_manifest, read_vocab
from service.registry import version_key

# Stand-ins have the shipped models' shapes: the default lm model is a 10k-word, 2x200 tied LSTM.
STANDIN_VOCAB = 10_000
STANDIN_FEATURES = 4


@dataclass(frozen=True)
class Artifact:
    dir: Path
    manifest: Manifest
    standin: bool = False
    source: Path | None = None  # where it was copied from

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def onnx_path(self) -> Path:
        return self.dir / self.manifest.onnx.file

    @property
    def state_bytes(self) -> int:
        """Raw float32 bytes of one session's state: every state tensor's [L, H] slice."""
        layers, hidden = self.manifest.state_shape
        return len(self.manifest.onnx.states) * layers * hidden * 4

    def words(self) -> list[str]:
        """Vocabulary words a client would send (special tokens left out)."""
        assert self.manifest.lm is not None
        spec = self.manifest.lm
        return [w for w in read_vocab(self.dir, spec) if w not in (spec.unk_token, spec.eos_token)]

    @property
    def features(self) -> int:
        assert self.manifest.sensor is not None
        return len(self.manifest.sensor.features)

    def describe(self) -> dict[str, object]:
        arch = self.manifest.architecture
        info: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "cell": arch.cell,
            "layers": arch.layers,
            "hidden": arch.hidden,
            "input_size": arch.input_size,
            "state_bytes_per_session": self.state_bytes,
            "standin": self.standin,
            "source": str(self.source) if self.source else None,
            "onnx_sha256": self.manifest.onnx.sha256,
        }
        if self.manifest.lm is not None:
            info["vocab_size"] = self.manifest.lm.vocab_size
        return info


def find_artifact(models_dir: Path, name: str) -> Artifact | None:
    """The highest valid version of `models_dir/name/` (the server's default version), or None."""
    root = models_dir / name
    if not root.is_dir():
        return None
    for version_dir in sorted(root.iterdir(), key=lambda p: version_key(p.name), reverse=True):
        try:
            return Artifact(version_dir, read_manifest(version_dir))
        except ArtifactError:
            continue
    return None


def _export_standin(models_dir: Path, name: str, task: str) -> Artifact:
    import torch

    from service.manifest import Calibration, SensorSpec, TrainingSummary
    from training.export import TaskData, write_artifact
    from training.model import ModelSpec, RecurrentNet

    torch.manual_seed(0)
    summary = TrainingSummary(
        data_fingerprint="benchmark-stand-in (random weights)",
        epochs=0,
        metrics={},
        wall_time_s=0.0,
        libraries={},
        seed=0,
    )
    if task == "lm":
        vocab = ["<unk>", "<eos>", *(f"w{i}" for i in range(STANDIN_VOCAB - 2))]
        spec = ModelSpec(
            task="lm", cell="lstm", input_size=200, hidden=200, layers=2, vocab_size=len(vocab), tied=True
        )
        data = TaskData(vocab=vocab)
    else:
        n = STANDIN_FEATURES
        spec = ModelSpec(task="sensor", cell="lstm", input_size=n, hidden=64, layers=2)
        data = TaskData(
            sensor=SensorSpec(
                features=[f"f{i}" for i in range(n)],
                mean=[0.0] * n,
                std=[1.0] * n,
                calibration=Calibration(center=6.0, scale=1.5),
            )
        )
    target = write_artifact(RecurrentNet(spec), models_dir, name, "1", data, summary, overwrite=True)
    return Artifact(target, read_manifest(target), standin=True)


def prepare_models(source: Path, names: dict[str, str], workdir: Path) -> tuple[Path, dict[str, Artifact]]:
    """A models directory holding one artifact per task in `names` ({"lm": "lm", "sensor": "sensor"}).

    Artifacts found in `source` are copied as they are; a missing one is replaced by a stand-in of the
    shipped model's shape with random weights (speed does not depend on weight values), and marked so.
    """
    target = workdir / "models"
    target.mkdir(parents=True, exist_ok=True)
    found: dict[str, Artifact] = {}
    for task, name in names.items():
        art = find_artifact(source, name)
        if art is not None and art.task == task:
            dest = target / name / art.version
            shutil.copytree(art.dir, dest, dirs_exist_ok=True)
            found[task] = Artifact(dest, art.manifest, source=art.dir)
        else:
            found[task] = _export_standin(target, name, task)
    return target, found


def prepare_model(source: Path, name: str, workdir: Path) -> tuple[Path, Artifact]:
    """`prepare_models` for one model of any task; a missing one is a stand-in of the task it is named
    after (lm or sensor)."""
    found = find_artifact(source, name)
    task = found.task if found is not None else name
    models_dir, arts = prepare_models(source, {task: name}, workdir)
    return models_dir, arts[task]

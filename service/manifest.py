"""The artifact contract: `models/<name>/<version>/manifest.json`.

The manifest tells the service everything it needs to serve a model and nothing it must guess
(the nanoGPT habit of saving `model_args` beside the weights; Triton's `config.pbtxt`). The training
job writes it through these classes and the service reads it back through them, so the two sides
cannot drift apart. This module is deliberately free of torch and onnxruntime imports.

Layout of an artifact directory::

    models/lm/1/
        manifest.json   # this schema
        model.onnx      # inputs x, h_in[, c_in]; outputs log_probs | mean, log_var; h_out[, c_out]
        vocab.txt       # lm only: one token per line, the line number is the token id
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT_VERSION: Final = 1
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
VOCAB_FILE = "vocab.txt"

Task = Literal["lm", "sensor"]
Cell = Literal["rnn", "gru", "lstm"]
DType = Literal["int64", "float32"]
# A dimension is either fixed or one of the two dynamic axes: B (sessions) and T (events).
Dim = int | Literal["B", "T"]


class ArtifactError(Exception):
    """An artifact that cannot be served: missing file, bad hash, manifest or graph mismatch."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: DType
    shape: list[Dim]


class StateSpec(_Strict):
    """One recurrent state tensor: fed as `input`, returned as `output`, shape [L, B, H]."""

    input: str
    output: str
    shape: list[Dim]


class OnnxSpec(_Strict):
    file: str = ONNX_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    states: list[StateSpec]


class Architecture(_Strict):
    cell: Cell
    layers: int = Field(ge=1)
    hidden: int = Field(ge=1)
    input_size: int = Field(ge=1, description="embedding size (lm) or feature count (sensor)")
    dense: int | None = Field(default=None, description="width of the optional dense layer before the head")
    tied: bool = False
    dropout: float = 0.0


class Tokenizer(_Strict):
    """How the service turns text into tokens: `re.findall(pattern, text)`, lower-cased if asked."""

    pattern: str = r"\S+"
    lowercase: bool = False


class LmSpec(_Strict):
    vocab_file: str = VOCAB_FILE
    vocab_size: int = Field(ge=2)
    vocab_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    unk_token: str = "<unk>"
    eos_token: str = "<eos>"
    tokenizer: Tokenizer = Tokenizer()


class Calibration(_Strict):
    """Raw score -> anomaly probability: `1 / (1 + exp(-(score - center) / scale))`.

    The raw score of a reading is the Gaussian negative log-likelihood of the (normalized) reading
    under the prediction made one step earlier, summed over features::

        score = 0.5 * sum_f(log(2*pi) + log_var_f + (x_f - mean_f)**2 / exp(log_var_f))

    `is_anomaly` is `probability >= 0.5`, that is `score >= center`: `center` is the threshold.
    """

    method: Literal["logistic"] = "logistic"
    center: float
    scale: float = Field(gt=0)
    # How the threshold was chosen and how it did on validation data; informative only.
    summary: dict[str, float | int | str] = Field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """Whether training chose the threshold on labelled validation anomalies (its summary counts
        them as valid_all_events), not at a quantile of unlabelled scores."""
        events = self.summary.get("valid_all_events", 0)
        return isinstance(events, int | float) and events > 0

    def probability(self, score: float) -> float:
        z = (score - self.center) / self.scale
        # Written so that exp never overflows for large |z|.
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class SensorSpec(_Strict):
    features: list[str] = Field(min_length=1)
    mean: list[float]
    std: list[float]
    calibration: Calibration
    # "fixed": readings are normalised by `mean`/`std`; "online": by each session's running mean and std
    # of its own past readings (a fleet model that serves streams it never saw; service.anomaly).
    normalization: Literal["fixed", "online"] = "fixed"

    @model_validator(mode="after")
    def _lengths_agree(self) -> SensorSpec:
        n = len(self.features)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(f"features, mean and std must have one entry per feature ({n})")
        if any(s <= 0 or not math.isfinite(s) for s in self.std):
            raise ValueError("every std must be finite and > 0")
        return self


class TrainingSummary(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)

    data_fingerprint: str
    epochs: int
    metrics: dict[str, float]
    wall_time_s: float
    libraries: dict[str, str]
    seed: int
    config: dict[str, object] = Field(default_factory=dict)


class Manifest(_Strict):
    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Task
    created_at: str
    architecture: Architecture
    onnx: OnnxSpec
    lm: LmSpec | None = None
    sensor: SensorSpec | None = None
    training: TrainingSummary

    @model_validator(mode="after")
    def _task_section_present(self) -> Manifest:
        if self.task == "lm" and (self.lm is None or self.sensor is not None):
            raise ValueError("an lm manifest needs an `lm` section and no `sensor` section")
        if self.task == "sensor" and (self.sensor is None or self.lm is not None):
            raise ValueError("a sensor manifest needs a `sensor` section and no `lm` section")
        expected_states = 2 if self.architecture.cell == "lstm" else 1
        if len(self.onnx.states) != expected_states:
            raise ValueError(f"a {self.architecture.cell} model has {expected_states} state tensor(s)")
        return self

    @property
    def state_shape(self) -> tuple[int, int]:
        """(layers, hidden) of every state tensor; the batch axis sits between them."""
        return self.architecture.layers, self.architecture.hidden

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(artifact_dir: Path) -> Manifest:
    """Parse and validate `manifest.json`; raise ArtifactError with a readable reason otherwise."""
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir}: no {MANIFEST_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({exc})") from exc
    if isinstance(raw, dict) and raw.get("format_version") not in (None, FORMAT_VERSION):
        raise ArtifactError(
            f"{path}: manifest format {raw.get('format_version')!r} is not supported "
            f"(this service reads format {FORMAT_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {exc}") from exc


def verify_files(artifact_dir: Path, manifest: Manifest) -> None:
    """Check that the files the manifest names exist and that their hashes match."""
    onnx_path = artifact_dir / manifest.onnx.file
    if not onnx_path.is_file():
        raise ArtifactError(f"{artifact_dir}: {manifest.onnx.file} is missing")
    actual = sha256_file(onnx_path)
    if actual != manifest.onnx.sha256:
        raise ArtifactError(
            f"{onnx_path}: sha256 {actual} does not match the manifest's {manifest.onnx.sha256}"
        )
    if manifest.lm is not None:
        vocab_path = artifact_dir / manifest.lm.vocab_file
        if not vocab_path.is_file():
            raise ArtifactError(f"{artifact_dir}: {manifest.lm.vocab_file} is missing")
        if sha256_file(vocab_path) != manifest.lm.vocab_sha256:
            raise ArtifactError(f"{vocab_path}: sha256 does not match the manifest")


def read_vocab(artifact_dir: Path, spec: LmSpec) -> list[str]:
    """The vocabulary, id order; checks its size and special tokens against the manifest."""
    tokens = (artifact_dir / spec.vocab_file).read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    if len(tokens) != spec.vocab_size:
        raise ArtifactError(
            f"{artifact_dir}: vocab has {len(tokens)} tokens, manifest says {spec.vocab_size}"
        )
    if len(set(tokens)) != len(tokens):
        raise ArtifactError(f"{artifact_dir}: vocab has duplicate tokens")
    for special in (spec.unk_token, spec.eos_token):
        if special not in tokens:
            raise ArtifactError(f"{artifact_dir}: vocab lacks the special token {special!r}")
    return tokens

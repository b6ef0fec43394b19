"""Export a RecurrentNet to ONNX with explicit state, verify it against PyTorch, write the artifact.

The legacy TorchScript exporter turns nn.RNN/GRU/LSTM into ONNX's fused RNN/GRU/LSTM operators with
dynamic batch (B) and time (T) axes, which ONNX Runtime runs as single kernels; the dynamo exporter
unrolls them. Verification is not optional: an artifact is only written after ONNX Runtime agrees with
PyTorch on random inputs and stepping T events one at a time agrees with one call over all T.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from service.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    VOCAB_FILE,
    Architecture,
    LmSpec,
    Manifest,
    OnnxSpec,
    SensorSpec,
    StateSpec,
    TensorSpec,
    Tokenizer,
    TrainingSummary,
    sha256_file,
)
from training.model import RecurrentNet, State

OPSET = 17
# Outputs must agree to 1e-5, measured as |diff| / max(1, |value|): absolute for the values of order one
# (states, probabilities, normalized readings) and relative for large ones. A 10k-way log-softmax puts
# log-probabilities near -20, where one float32 ulp is 2e-6 and two correct implementations differ by a
# few ulps (1.1e-5 absolute was seen on the default lm), so a purely absolute 1e-5 would refuse them.
TOLERANCE = 1e-5


class ExportMismatch(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


class _Exportable(torch.nn.Module):
    """Flat tensor signature for the exporter: (x, h_in[, c_in]) -> (outputs..., h_out[, c_out])."""

    def __init__(self, model: RecurrentNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs, new_state = self.model(x, tuple(state))
        prior = self.model.predict_from_state(tuple(state))
        return (*outputs, *prior, *new_state)


def _state_names(model: RecurrentNet) -> list[tuple[str, str]]:
    names = [("h_in", "h_out"), ("c_in", "c_out")]
    return names[: model.spec.state_count]


def _output_names(model: RecurrentNet) -> list[str]:
    """Per-event outputs [B, T, ...], then the prediction made from h_in [B, ...] (see model.py)."""
    if model.spec.task == "lm":
        return ["log_probs", "log_probs_in"]
    return ["mean", "log_var", "mean_in", "log_var_in"]


def onnx_spec(model: RecurrentNet, sha256: str) -> OnnxSpec:
    spec = model.spec
    L, H = spec.layers, spec.hidden
    width = spec.vocab_size if spec.task == "lm" else spec.input_size
    if spec.task == "lm":
        x = TensorSpec(name="x", dtype="int64", shape=["B", "T"])
    else:
        x = TensorSpec(name="x", dtype="float32", shape=["B", "T", width])
    outs = [
        TensorSpec(name=n, dtype="float32", shape=["B", width] if n.endswith("_in") else ["B", "T", width])
        for n in _output_names(model)
    ]
    states = [StateSpec(input=i, output=o, shape=[L, "B", H]) for i, o in _state_names(model)]
    return OnnxSpec(
        file=ONNX_FILE,
        sha256=sha256,
        opset=OPSET,
        inputs=[x, *(TensorSpec(name=s.input, dtype="float32", shape=s.shape) for s in states)],
        outputs=[*outs, *(TensorSpec(name=s.output, dtype="float32", shape=s.shape) for s in states)],
        states=states,
    )


def _example_input(model: RecurrentNet, batch: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    if model.spec.task == "lm":
        return torch.randint(0, model.spec.vocab_size, (batch, steps), generator=gen)
    return torch.randn(batch, steps, model.spec.input_size, generator=gen)


def _random_state(model: RecurrentNet, batch: int, gen: torch.Generator) -> State:
    shape = (model.spec.layers, batch, model.spec.hidden)
    # tanh-bounded values, like real states, so that the comparison exercises realistic magnitudes
    return tuple(torch.tanh(torch.randn(shape, generator=gen)) for _ in range(model.spec.state_count))


def export_onnx(model: RecurrentNet, path: Path) -> None:
    """Write `model` as an ONNX graph with dynamic B and T to `path`."""
    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(0)
    x = _example_input(model, 2, 3, gen)
    state = _random_state(model, 2, gen)
    names = _state_names(model)
    input_names = ["x", *(i for i, _ in names)]
    output_names = [*_output_names(model), *(o for _, o in names)]
    dynamic_axes: dict[str, dict[int, str]] = {"x": {0: "B", 1: "T"}}
    for name in _output_names(model):
        dynamic_axes[name] = {0: "B"} if name.endswith("_in") else {0: "B", 1: "T"}
    for i, o in names:
        dynamic_axes[i] = {1: "B"}
        dynamic_axes[o] = {1: "B"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation; we chose it
        torch.onnx.export(
            _Exportable(model).eval(),  # the exporter restores this mode afterwards: keep the model in eval
            (x, *state),
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            # Folding would write a tied head's transposed weight as a second copy of the embedding
            # (8 MB more for a 10k x 200 lm); ONNX Runtime folds these constants at load instead.
            do_constant_folding=False,
        )


@dataclass(frozen=True)
class VerifyReport:
    max_abs_diff_vs_torch: float
    max_abs_diff_step_vs_chunk: float
    checks: int
    max_scaled_diff_vs_torch: float = 0.0  # max |diff| / max(1, |value|): what the tolerance applies to


def _scaled_gap(got: np.ndarray, want: np.ndarray) -> float:
    return float((np.abs(got - want) / np.maximum(1.0, np.abs(want))).max())


def _ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_export(
    model: RecurrentNet,
    path: Path,
    batch_sizes: tuple[int, ...] = (1, 7),
    steps: int = 6,
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> VerifyReport:
    """Compare ONNX Runtime with PyTorch, and T single steps with one T-step call; raise on mismatch."""
    model = model.cpu().eval()
    session = _ort_session(path)
    names = _state_names(model)
    n_events = len(_output_names(model)) // 2  # per-event outputs; as many priors follow them
    gen = torch.Generator().manual_seed(seed)
    worst_torch = worst_torch_abs = worst_step = 0.0
    checks = 0
    for batch in batch_sizes:
        x = _example_input(model, batch, steps, gen)
        state = _random_state(model, batch, gen)
        feed = {"x": x.numpy(), **{i: s.numpy() for (i, _), s in zip(names, state, strict=True)}}
        chunk = session.run(None, feed)
        with torch.no_grad():
            outputs, new_state = model(x, state)
            prior = model.predict_from_state(state)
        reference = [t.numpy() for t in (*outputs, *prior, *new_state)]
        for got, want in zip(chunk, reference, strict=True):
            worst_torch = max(worst_torch, _scaled_gap(got, want))
            worst_torch_abs = max(worst_torch_abs, float(np.abs(got - want).max()))
            checks += 1
        # The same events one at a time, state fed back. Each step's prior (prediction from h_in)
        # must equal the previous step's per-event prediction: that is what the service relies on.
        step_state = [feed[i] for i, _ in names]
        step_outputs: list[list[np.ndarray]] = [[] for _ in range(n_events)]
        for t in range(steps):
            step_inputs = dict(zip((i for i, _ in names), step_state, strict=True))
            step_feed = {"x": feed["x"][:, t : t + 1], **step_inputs}
            result = session.run(None, step_feed)
            for k in range(n_events):
                step_outputs[k].append(result[k])
                if t > 0:
                    prior_gap = _scaled_gap(result[n_events + k], step_outputs[k][t - 1][:, 0])
                    worst_step = max(worst_step, prior_gap)
            step_state = result[2 * n_events :]
        stepped = [np.concatenate(parts, axis=1) for parts in step_outputs] + list(step_state)
        chunk_events_and_state = chunk[:n_events] + chunk[2 * n_events :]
        for got, want in zip(stepped, chunk_events_and_state, strict=True):
            worst_step = max(worst_step, _scaled_gap(got, want))
            checks += 1
    if not (worst_torch <= tolerance and worst_step <= tolerance):
        raise ExportMismatch(
            f"{path}: ONNX Runtime vs PyTorch max |diff| / max(1, |value|) {worst_torch:.3g} "
            f"(max |diff| {worst_torch_abs:.3g}), single steps vs one chunk {worst_step:.3g}; "
            f"both must be <= {tolerance:g}"
        )
    return VerifyReport(worst_torch_abs, worst_step, checks, worst_torch)


def library_versions() -> dict[str, str]:
    import onnx

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


@dataclass(frozen=True)
class TaskData:
    """What the service needs to speak the task's language: a vocabulary or sensor statistics."""

    vocab: list[str] | None = None
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    sensor: SensorSpec | None = None


def write_artifact(
    model: RecurrentNet,
    models_dir: Path,
    name: str,
    version: str,
    task_data: TaskData,
    training: TrainingSummary,
    overwrite: bool = False,
) -> Path:
    """Export, verify and atomically write `models_dir/name/version/`; returns that directory."""
    target = models_dir / name / version
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; choose another version or pass overwrite")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=models_dir))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a server running as another user must read it
    try:
        onnx_path = staging / ONNX_FILE
        export_onnx(model, onnx_path)
        report = verify_export(model, onnx_path)
        lm_spec = None
        if model.spec.task == "lm":
            if task_data.vocab is None or len(task_data.vocab) != model.spec.vocab_size:
                raise ValueError("an lm artifact needs the vocabulary the model was trained with")
            vocab_path = staging / VOCAB_FILE
            vocab_path.write_text("\n".join(task_data.vocab) + "\n", encoding="utf-8")
            lm_spec = LmSpec(
                vocab_size=len(task_data.vocab),
                vocab_sha256=sha256_file(vocab_path),
                tokenizer=task_data.tokenizer,
            )
        elif task_data.sensor is None:
            raise ValueError("a sensor artifact needs feature statistics and a calibration")
        spec = model.spec
        metrics = {
            **training.metrics,
            "export_max_abs_diff": report.max_abs_diff_vs_torch,
            "export_step_vs_chunk_diff": report.max_abs_diff_step_vs_chunk,
            "export_max_scaled_diff": report.max_scaled_diff_vs_torch,
        }
        manifest = Manifest(
            name=name,
            version=version,
            task=spec.task,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            architecture=Architecture(
                cell=spec.cell,
                layers=spec.layers,
                hidden=spec.hidden,
                input_size=spec.input_size,
                dense=spec.dense,
                tied=spec.tied,
                dropout=spec.dropout,
            ),
            onnx=onnx_spec(model, sha256_file(onnx_path)),
            lm=lm_spec,
            sensor=task_data.sensor if spec.task == "sensor" else None,
            training=training.model_copy(update={"metrics": metrics}),
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

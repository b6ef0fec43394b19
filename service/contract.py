"""An artifact's serving contract, checked at load (Triton's habit: declare the contract, check it):
the manifest agrees with the graph contract training/export.py writes for its task and cell, and the
ONNX graph's real inputs and outputs agree with the manifest. Either refusal is an ArtifactError.
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort

from service.manifest import ArtifactError, Manifest, TensorSpec

_ORT_DTYPES = {"int64": "tensor(int64)", "float32": "tensor(float)"}
TASK_OUTPUTS = {"lm": ("log_probs", "log_probs_in"), "sensor": ("mean", "log_var", "mean_in", "log_var_in")}


def check_contract(manifest: Manifest) -> None:
    """The manifest agrees with the graph contract of training/export.py for its task and cell."""
    layers, hidden = manifest.state_shape
    onnx = manifest.onnx
    inputs = {t.name: t for t in onnx.inputs}
    outputs = {t.name: t for t in onnx.outputs}
    x = inputs.get("x")
    if manifest.task == "lm":
        want_x = TensorSpec(name="x", dtype="int64", shape=["B", "T"])
    else:
        want_x = TensorSpec(name="x", dtype="float32", shape=["B", "T", manifest.architecture.input_size])
    if x != want_x:
        raise ArtifactError(f"input x is {x}, the {manifest.task} contract needs {want_x}")
    for state in onnx.states:
        if state.shape != [layers, "B", hidden]:
            raise ArtifactError(
                f"state {state.input} has shape {state.shape}, expected [{layers}, 'B', {hidden}]"
            )
        for name, table in ((state.input, inputs), (state.output, outputs)):
            spec = table.get(name)
            if spec is None or spec.dtype != "float32" or spec.shape != state.shape:
                raise ArtifactError(f"state tensor {name} is {spec}, expected float32 {state.shape}")
    missing = [n for n in TASK_OUTPUTS[manifest.task] if n not in outputs]
    if missing:
        raise ArtifactError(f"a {manifest.task} graph needs outputs {missing}")
    if set(inputs) != {"x", *(s.input for s in onnx.states)}:
        raise ArtifactError(f"inputs {sorted(inputs)} are not x and the state inputs")


def _dims_agree(declared: list[int | str], actual: list[Any]) -> bool:
    if len(declared) != len(actual):
        return False
    for want, got in zip(declared, actual, strict=True):
        fixed = isinstance(got, int) and not isinstance(got, bool)
        if isinstance(want, int) and fixed and got != want:
            return False  # ORT names a fixed dim it could not infer; a concrete one must match
        if isinstance(want, str) and fixed:
            return False  # the manifest says dynamic (B or T), the graph fixed it
    return True


def check_graph(manifest: Manifest, session: ort.InferenceSession) -> None:
    """The graph's real inputs and outputs match the manifest: names, dtypes, ranks, fixed dims."""
    for kind, declared, actual in (
        ("input", manifest.onnx.inputs, session.get_inputs()),
        ("output", manifest.onnx.outputs, session.get_outputs()),
    ):
        graph = {a.name: a for a in actual}
        if kind == "input" and set(graph) != {t.name for t in declared}:
            raise ArtifactError(
                f"graph inputs {sorted(graph)} differ from the manifest's {sorted(t.name for t in declared)}"
            )
        for spec in declared:
            node = graph.get(spec.name)
            if node is None:
                raise ArtifactError(f"the manifest's {kind} {spec.name!r} is not in the graph")
            if node.type != _ORT_DTYPES[spec.dtype]:
                raise ArtifactError(f"{kind} {spec.name}: graph type {node.type}, manifest {spec.dtype}")
            if not _dims_agree(list(spec.shape), list(node.shape)):
                raise ArtifactError(f"{kind} {spec.name}: graph shape {node.shape}, manifest {spec.shape}")

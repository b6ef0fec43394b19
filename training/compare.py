"""`python -m training.compare ARTIFACT...`: the README's cell table, measured side by side.

For each lm artifact (models/<name>/<version>): parameters, file size, the test perplexity its training
run recorded, and, measured here with the models taking turns in short rounds (so that the load of a
shared machine falls on all of them alike):

- training events/s: TBPTT windows of the artifact's architecture (batch 20, bptt 35, Adam, one
  thread) on random tokens, in train mode;
- served events/s and server CPU per event: single steps (T = 1) of `--sessions` sessions batched into
  one ONNX Runtime call, as the service's batcher makes them, on one intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from service.manifest import MANIFEST_FILE, Manifest
from training.model import ModelSpec, RecurrentNet
from training.tasks.lm import lm_loss

Measure = Callable[[float], tuple[int, float, float]]  # seconds -> (events, wall s, cpu s)


def _spec(manifest: Manifest) -> ModelSpec:
    a = manifest.architecture
    assert manifest.lm is not None, f"{manifest.name} is not an lm artifact"
    return ModelSpec(
        task="lm", cell=a.cell, input_size=a.input_size, hidden=a.hidden, layers=a.layers,
        vocab_size=manifest.lm.vocab_size, dense=a.dense, tied=a.tied, dropout=a.dropout,
    )  # fmt: skip


def _trainer(spec: ModelSpec, batch: int = 20, bptt: int = 35) -> Measure:
    torch.manual_seed(0)
    model = RecurrentNet(spec).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, spec.vocab_size, (batch, bptt), generator=gen)
    y = torch.randint(0, spec.vocab_size, (batch, bptt), generator=gen)
    mask = torch.ones(batch, bptt)

    def run(seconds: float) -> tuple[int, float, float]:
        state = model.init_state(batch)
        events, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while events == 0 or time.perf_counter() - wall0 < seconds:
            state = tuple(s.detach() for s in state)
            outputs, state = model(x, state)
            total, count = lm_loss(outputs, y, mask)
            optimizer.zero_grad(set_to_none=True)
            (total / count).backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            optimizer.step()
            events += batch * bptt
        return events, time.perf_counter() - wall0, time.process_time() - cpu0

    return run


def _server(onnx_path: Path, spec: ModelSpec, sessions: int) -> Measure:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    states = {
        i.name: np.zeros((spec.layers, sessions, spec.hidden), np.float32) for i in session.get_inputs()[1:]
    }
    outputs = [o.name for o in session.get_outputs()]
    state_out = [n for n in outputs if n.endswith("_out")]

    def run(seconds: float) -> tuple[int, float, float]:
        feed = dict(states)
        events, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while events == 0 or time.perf_counter() - wall0 < seconds:
            x = rng.integers(0, spec.vocab_size, (sessions, 1), dtype=np.int64)
            result = session.run(outputs, {"x": x, **feed})
            feed = dict(zip(states, result[-len(state_out) :], strict=True))
            events += sessions
        return events, time.perf_counter() - wall0, time.process_time() - cpu0

    return run


def _interleaved(measures: dict[str, Measure], seconds: float, rounds: int) -> dict[str, tuple[float, float]]:
    """name -> (events/s, cpu us/event), the measures taking turns, reversed every other round."""
    totals = {name: [0, 0.0, 0.0] for name in measures}
    for measure in measures.values():
        measure(0.0)  # warm-up: allocations, thread pools
    names = list(measures)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            events, wall, cpu = measures[name](seconds / rounds)
            totals[name][0] += events
            totals[name][1] += wall
            totals[name][2] += cpu
    return {name: (e / w, c / e * 1e6) for name, (e, w, c) in totals.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path, nargs="+", help="models/<name>/<version> directories")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per model and phase")
    parser.add_argument("--rounds", type=int, default=4, help="turns each model takes (%(default)s)")
    parser.add_argument("--sessions", type=int, default=64, help="sessions batched per served step")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifests = {
        str(p): Manifest.model_validate_json((p / MANIFEST_FILE).read_text()) for p in args.artifacts
    }
    specs = {name: _spec(m) for name, m in manifests.items()}
    train = _interleaved({n: _trainer(s) for n, s in specs.items()}, args.seconds, args.rounds)
    served = _interleaved(
        {n: _server(Path(n) / manifests[n].onnx.file, s, args.sessions) for n, s in specs.items()},
        args.seconds,
        args.rounds,
    )
    rows = []
    for name, manifest in manifests.items():
        history = manifest.training.config.get("history", [])
        assert isinstance(history, list)
        trained_events = sum(h["train_events_per_s"] * h["seconds"] for h in history)  # approx.: incl. eval
        rows.append(
            {
                "artifact": name,
                "cell": manifest.architecture.cell,
                "params": sum(p.numel() for p in RecurrentNet(specs[name]).parameters()),
                "onnx_mb": round((Path(name) / manifest.onnx.file).stat().st_size / 1e6, 2),
                "valid_ppl": manifest.training.metrics.get("valid_ppl"),
                "test_ppl": manifest.training.metrics.get("test_ppl"),
                "trained_s": manifest.training.wall_time_s,
                "trained_events_upper_bound": int(trained_events),
                "train_events_per_s": round(train[name][0]),
                "served_events_per_s": round(served[name][0]),
                "served_cpu_us_per_event": round(served[name][1], 1),
            }
        )
    print(json.dumps({"sessions_per_step": args.sessions, "threads": 1, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

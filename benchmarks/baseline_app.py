"""THE BASELINE, not the service: the minimal server a user might write before reaching for rnnserve.

A FastAPI app that keeps every session's PyTorch hidden state in a dict and runs the eager PyTorch
model once per request (batch of one), on the event loop. It speaks the subset of API v1 that the
benchmark drives (create a session, post events, WebSocket stream) with the same answers' shape, so
the load generator treats it exactly like the service.

The model is rebuilt from the artifact's manifest (same cell, layers, sizes, vocabulary, tied head),
with seeded random weights: speed does not depend on weight values, and the service never ships a
PyTorch checkpoint beside the ONNX file.

    python -m benchmarks.baseline_app --artifact models/lm/1 --port 8002 --threads 1
"""

from __future__ import annotations

import argparse
import math
import uuid
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect

from service.manifest import Manifest, read_manifest, read_vocab
from training.model import ModelSpec, RecurrentNet, State, gaussian_nll


def build_model(manifest: Manifest) -> RecurrentNet:
    arch = manifest.architecture
    spec = ModelSpec(
        task=manifest.task,
        cell=arch.cell,
        input_size=arch.input_size,
        hidden=arch.hidden,
        layers=arch.layers,
        vocab_size=manifest.lm.vocab_size if manifest.lm else 0,
        dense=arch.dense,
        tied=arch.tied,
    )
    torch.manual_seed(0)
    return RecurrentNet(spec).eval()


class _Session:
    __slots__ = ("prior", "seq", "state")

    def __init__(self, state: State) -> None:
        self.state = state
        self.prior: tuple[torch.Tensor, ...] | None = None  # prediction for the next event
        self.seq = 0


def create_app(artifact_dir: Path, threads: int) -> FastAPI:
    torch.set_num_threads(threads)
    manifest = read_manifest(artifact_dir)
    model = build_model(manifest)
    vocab = read_vocab(artifact_dir, manifest.lm) if manifest.lm else []
    ids = {word: i for i, word in enumerate(vocab)}
    unk = ids.get(manifest.lm.unk_token, 0) if manifest.lm else 0
    sensor = manifest.sensor
    sessions: dict[str, _Session] = {}
    app = FastAPI(title="naive baseline (not rnnserve)")

    def step_lm(s: _Session, body: dict[str, Any]) -> list[dict[str, Any]]:
        tokens = body.get("tokens") or str(body.get("text", "")).split()
        top_k = int(body.get("top_k", 5))
        x = torch.tensor([[ids.get(t, unk) for t in tokens]])  # [1, T]
        (log_probs,), s.state = model(x, s.state)  # [1, T, V]
        outputs = []
        for t, token in enumerate(tokens):
            before = s.prior[0][0] if t == 0 and s.prior is not None else (log_probs[0, t - 1] if t else None)
            top = torch.topk(log_probs[0, t], top_k) if top_k else None
            outputs.append(
                {
                    "token": token,
                    "token_id": int(x[0, t]),
                    "unknown": token not in ids,
                    "logprob": float(before[x[0, t]]) if before is not None else None,
                    "next": [
                        {"token": vocab[i], "prob": math.exp(v)}
                        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                    ]
                    if top
                    else [],
                }
            )
        s.prior = (log_probs[:, -1],)
        return outputs

    def step_sensor(s: _Session, body: dict[str, Any]) -> list[dict[str, Any]]:
        assert sensor is not None
        mean, std = torch.tensor(sensor.mean), torch.tensor(sensor.std)
        x = (torch.tensor(body["readings"], dtype=torch.float32) - mean) / std  # [T, F]
        (mu, log_var), s.state = model(x[None], s.state)  # [1, T, F] each
        outputs = []
        for t in range(x.shape[0]):
            prev = (
                (s.prior[0][0], s.prior[1][0])
                if t == 0 and s.prior
                else ((mu[0, t - 1], log_var[0, t - 1]) if t else None)
            )
            score = float(gaussian_nll(prev[0], prev[1], x[t]).sum()) if prev is not None else None
            p = sensor.calibration.probability(score) if score is not None else None
            outputs.append(
                {
                    "score": score,
                    "probability": p,
                    "is_anomaly": p >= 0.5 if p is not None else None,
                    "predicted_mean": (mu[0, t] * std + mean).tolist(),
                    "predicted_std": ((0.5 * log_var[0, t]).exp() * std).tolist(),
                }
            )
        s.prior = (mu[:, -1], log_var[:, -1])
        return outputs

    def step(session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        s = sessions.get(session_id)
        if s is None:
            raise HTTPException(404, "unknown session")
        with torch.inference_mode():
            outputs = step_lm(s, body) if manifest.task == "lm" else step_sensor(s, body)
        s.seq += len(outputs)
        return {"seq": s.seq, "outputs": outputs}

    @app.get("/healthz")
    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/sessions", status_code=201)
    async def create(body: dict[str, Any]) -> dict[str, Any]:
        session_id = uuid.uuid4().hex
        sessions[session_id] = _Session(model.init_state(1))
        return {"session_id": session_id, "model": manifest.name, "version": manifest.version, "seq": 0}

    @app.post("/v1/sessions/{session_id}/events")
    async def events(session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return step(session_id, body)

    @app.websocket("/v1/sessions/{session_id}/stream")
    async def stream(websocket: WebSocket, session_id: str) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_json(step(session_id, await websocket.receive_json()))
        except WebSocketDisconnect:
            return

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifact", type=Path, required=True, help="models/<name>/<version> directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        create_app(args.artifact, args.threads),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()

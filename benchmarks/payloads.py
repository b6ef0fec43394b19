"""Request bodies the load generator sends, encoded once up front so that sending costs no JSON work."""

from __future__ import annotations

import json
import random

from benchmarks.models import Artifact

POOL = 512  # distinct bodies cycled through; enough that no cache on the server could help


def session_body(art: Artifact) -> bytes:
    return json.dumps({"model": art.name, "version": art.version}).encode()


def event_bodies(
    art: Artifact, events_per_request: int, top_k: int = 5, seed: int = 0, timestamps: bool = False
) -> list[bytes]:
    """`POOL` step bodies of `events_per_request` events each: random vocabulary words or readings,
    with `timestamps` each reading stamped with an ISO time of a random minute of the day (what a
    replay of real streams sends; the daily profile reads its hour)."""
    rng = random.Random(seed)
    bodies: list[bytes] = []
    if art.task == "lm":
        words = art.words()
        for _ in range(POOL):
            tokens = [rng.choice(words) for _ in range(events_per_request)]
            bodies.append(json.dumps({"tokens": tokens, "top_k": top_k}).encode())
    else:
        n = art.features
        assert art.manifest.sensor is not None
        mean, std = art.manifest.sensor.mean, art.manifest.sensor.std
        for _ in range(POOL):
            readings = [
                [round(mean[f] + std[f] * rng.gauss(0, 1), 4) for f in range(n)]
                for _ in range(events_per_request)
            ]
            body: dict[str, object] = {"readings": readings}
            if timestamps:
                minutes = [rng.randrange(24 * 60) for _ in range(events_per_request)]
                body["timestamps"] = [f"2014-04-01 {m // 60:02d}:{m % 60:02d}:00" for m in minutes]
            bodies.append(json.dumps(body).encode())
    return bodies

"""The session metrics a store keeps per model version, the same for every backend: sessions ended (by
reason), live sessions and the bytes their states take. A store made without metrics (tests,
measurements) counts nothing."""

from __future__ import annotations

from service.metrics import Metrics


def count_ended(metrics: Metrics | None, model_key: str, reason: str, count: int) -> None:
    """`count` sessions of the version `model_key` ("name/version") ended for `reason`."""
    if metrics is not None and count:
        metrics.sessions_ended.labels(model_key.partition("/")[0], reason).inc(count)


def set_live(metrics: Metrics | None, model_key: str, live: int, state_bytes: int) -> None:
    """The version `model_key` holds `live` sessions, whose states take `state_bytes`."""
    if metrics is not None:
        name, _, version = model_key.partition("/")
        metrics.active_sessions.labels(name, version).set(live)
        metrics.state_bytes.labels(name, version).set(state_bytes)

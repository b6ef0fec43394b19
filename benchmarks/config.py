"""What one run of the suite measures: loads, durations, thread settings; `--quick` is a preset."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = (
    "client",
    "limit",
    "loads",
    "low_load",
    "multi_event",
    "open_loop",
    "sensor",
    "cost",
    "memory",
    "training",
)


def default_threads() -> int:
    """Half the cores, at least one: the other half is left to the HTTP layer and the load generator."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class SuiteConfig:
    models_dir: Path = Path("models")
    lm_model: str = "lm"
    sensor_model: str = "sensor"
    out_dir: Path = RESULTS_DIR
    quick: bool = False
    threads: int = field(default_factory=default_threads)
    providers: tuple[str, ...] = ("cpu",)
    # closed-loop loads (concurrent sessions); each run warms up for `warmup_s`, then measures `duration_s`
    loads: tuple[int, ...] = (1, 16, 64, 256, 1024)
    duration_s: float = 3.0
    warmup_s: float = 0.5
    events_per_session: int | None = None  # M: also stop each session after M events (None: time only)
    limit_batches: tuple[int, ...] = (1, 16, 64, 256, 1024)
    limit_s: float = 1.0
    low_load_s: float = 5.0  # one session per server, taking turns request by request
    multi_event_sizes: tuple[int, ...] = (1, 8, 64)
    multi_event_sessions: int = 64
    ws_loads: tuple[int, ...] = (1, 256)
    sensor_loads: tuple[int, ...] = (1, 256)
    cost_duration_s: float = 3.0  # each cell of the serving-cost section (benchmarks/cost.py)
    cost_rounds: int = 3  # the section's cells run this many times over; each reports its median round
    # (task, transport, sessions) cells of that section; the targets are at these loads
    cost_cells: tuple[tuple[str, str, int], ...] = (
        ("lm", "http", 256),
        ("lm", "ws", 256),
        ("sensor", "http", 256),
        ("sensor", "ws", 256),
        ("lm", "bulk", 512),
        ("lm", "bulk_ws", 512),
        ("sensor", "bulk", 1000),
        ("sensor", "bulk_ws", 1000),
        ("sensor", "bulk_ts", 1000),  # with a timestamp per reading: what real streams send (no target)
    )
    open_loop_sessions: int = 256
    open_loop_fractions: tuple[float, ...] = (0.5, 0.9)  # of the closed-loop events/s at that load
    memory_sessions: int = 100_000
    client_sessions: int = 64
    max_batch_size: int | None = None  # the batcher-on server; None keeps the service's default
    top_k: int = 5
    training_s: float = 20.0  # both training loops together (at least one window each per slice)
    training_slices: int = 4  # the two loops alternate this many times
    skip: frozenset[str] = frozenset()

    @classmethod
    def quick_preset(cls, **overrides: Any) -> SuiteConfig:
        quick = cls(
            quick=True,
            loads=(1, 16, 256),
            duration_s=1.0,
            warmup_s=0.3,
            limit_batches=(1, 16, 256, 1024),
            limit_s=0.4,
            ws_loads=(1, 256),
            sensor_loads=(256,),
            cost_duration_s=1.0,
            cost_rounds=1,
            low_load_s=2.0,
            multi_event_sessions=32,
            open_loop_fractions=(0.5,),
            memory_sessions=5_000,
            training_s=4.0,
            training_slices=2,
        )
        return replace(quick, **overrides)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models_dir"], out["out_dir"] = str(self.models_dir), str(self.out_dir)
        out["skip"] = sorted(self.skip)
        return out

"""The serving-cost cells run in rounds, and each cell's median round is its figure.

On a shared VM one 3 s cell swings by +-10% from one run to the next (a neighbour's load, ONNX Runtime's
speed a second apart), more than the margin of a target such as lm WebSocket's 0.6 share. The cells
therefore run in rounds (every cell once per round, the servers taking turns cell by cell as before),
and a cell's reported row is its median round, judged by the figure its target is stated in: the
inference share for lm, whose inference is most of the server's CPU, and the server's CPU per event
for sensor, whose inference is ~1% of it. The row is one round's measurement as it was taken (its
figures agree with one another, which medians of each figure apart would not), with every round's
figures of that kind beside it:

    rounds                                 how many rounds the cell ran
    rounds_inference_share                 each round's inference share, in round order
    rounds_server_cpu_us_per_event         each round's server CPU per event
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# the figure a task's cells are judged by (their targets are stated in it), and whether more is better
JUDGED_BY = {"lm": ("inference_share", True), "sensor": ("server_cpu_us_per_event", False)}


def median_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, task, transport, sessions), in the order the cells first ran: the round at
    the median of its judged figure (of an even count of rounds, the less favourable middle one)."""
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["server"], row["task"], row["transport"], row["sessions"]), []).append(row)
    out = []
    for runs in cells.values():
        figure, more_is_better = JUDGED_BY[runs[0]["task"]]
        measured = [r for r in runs if r.get(figure) is not None] or runs
        # worst first: the middle of an odd count, the worse middle of an even one
        ranked = sorted(measured, key=lambda r: r.get(figure) or 0.0, reverse=not more_is_better)
        median = dict(ranked[(len(ranked) - 1) // 2])
        median["rounds"] = len(runs)
        for name in ("inference_share", "server_cpu_us_per_event"):
            median[f"rounds_{name}"] = [r.get(name) for r in runs]
        out.append(median)
    return out


def spread(row: dict[str, Any]) -> str:
    """' (median of 3 rounds: 0.581-0.617)': the range of the judged figure, for the table."""
    count = row.get("rounds", 1)
    figure, _ = JUDGED_BY[row["task"]]
    values = [v for v in row.get(f"rounds_{figure}", []) if v is not None]
    if count < 2 or not values:
        return ""
    fmt = ".3f" if figure == "inference_share" else ".1f"
    return f"  (median of {count} rounds: {format(min(values), fmt)}-{format(max(values), fmt)})"

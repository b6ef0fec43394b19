"""The transport's floor under the per-session cells: `python -m benchmarks.cost --floor`.

A bare ASGI app on uvicorn (`benchmarks.noop_app --kind asgi`: the service's protocol settings, a canned
answer to every request and every WebSocket message, no Starlette) runs the `http` and `ws` cells beside
the service, taking its turn like any other server. Its CPU per message is what uvicorn, its HTTP parser
or WebSocket protocol and the event loop cost before any application code runs, so each service row of
those cells gets, beside its figures:

    floor_cpu_us_per_event   the floor's own server CPU per message in the same cell
    share_ceiling            ORT / (ORT + floor): the inference share the server would have if all of
                             its own work (decoding, turns, batching, post-processing, encoding) were free
    own_cpu_us_per_event     server - ORT - floor: what the service's own code costs per event

A target share above `share_ceiling` cannot be met by any change to the service on this transport.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.servers import Launch, free_port

NAME = "floor"
TRANSPORTS = ("http", "ws")


def launch(env: dict[str, str]) -> Launch:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.noop_app", "--kind", "asgi", "--port", str(port)]
    return Launch(NAME, argv, env, port)


def skips(server: str, transport: str) -> bool:
    """Whether `server` sits out a cell: the floor answers the per-session routes only."""
    return server == NAME and transport not in TRANSPORTS


def annotate(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One cell's rows -> the service rows, each beside the floor's figures of the cell (module docs),
    and a line for each; the floor's own row is printed as it is measured, not returned."""
    floor = next((r for r in rows if r["server"] == NAME and r["events"]), None)
    served = [r for r in rows if r["server"] != NAME]
    if floor is None:
        return served, []
    lines = []
    for r in served:
        ort, f = r["ort_cpu_us_per_event"], floor["server_cpu_us_per_event"]
        r["floor_cpu_us_per_event"] = f
        r["share_ceiling"] = ort / (ort + f)
        r["own_cpu_us_per_event"] = r["server_cpu_us_per_event"] - ort - f
        lines.append(
            f"  {r['server']:<8} {r['task']:<6} {r['transport']:<8} floor {f:6.1f} us/msg"
            f"  share ceiling {r['share_ceiling']:5.3f}"
            f"  the service's own work {r['own_cpu_us_per_event']:6.1f} us/ev"
        )
    return served, lines

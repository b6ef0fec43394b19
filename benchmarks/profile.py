"""Flame graphs of a running server under load: py-spy records the measured phase only.

    rnnserve serve --port 8000 &                      # the server to profile (RNNSERVE_INTRA_OP_THREADS=1)
    python -m benchmarks.profile --port 8000 --pid $! --task lm --transport ws --out lm-ws.svg

Transports: http and ws (one session per connection, 256 sessions) and bulk (every session's next
event in one POST /v1/steps). `pip install py-spy`; `--out x.txt` writes collapsed stacks instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.cost import bulk_bodies, bulk_loop
from benchmarks.loadgen import LoadSpec, run_async, run_load
from benchmarks.models import find_artifact
from benchmarks.payloads import event_bodies, session_body
from benchmarks.setup_requests import create_sessions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the server's process id")
    p.add_argument("--task", choices=("lm", "sensor"), default="lm")
    p.add_argument("--transport", choices=("http", "ws", "bulk"), default="ws")
    p.add_argument("--sessions", type=int, default=256)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL: the Python work, without ONNX Runtime's calls "
        "(which release it) and without threads that wait (which py-spy may count as busy)",
    )
    args = p.parse_args(argv)
    art = find_artifact(args.models_dir, args.task)
    if art is None:
        raise SystemExit(f"no {args.task} model under {args.models_dir}")
    ids = run_async(create_sessions(args.port, session_body(art), args.sessions))
    spies: list[subprocess.Popen[bytes]] = []

    def phase(when: str) -> None:
        if when == "start":
            fmt = ["-f", "raw"] if args.out.suffix == ".txt" else []
            extra = ["--gil"] if args.gil else []
            command = ["py-spy", "record", "-p", str(args.pid), "-o", str(args.out), *fmt]
            command += ["-d", str(max(1, int(args.seconds) - 1)), "-r", "200", "--nonblocking", *extra]
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    bodies = event_bodies(art, 1)
    if args.transport == "bulk":
        run_async(bulk_loop(args.port, bulk_bodies(ids, bodies), False, 0.5, args.seconds, phase))
    else:
        spec = LoadSpec(sessions=len(ids), duration_s=args.seconds, warmup_s=0.5, transport=args.transport)
        run_async(run_load(args.port, ids, bodies, spec, on_phase=phase))
    for spy in spies:
        spy.wait()
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`rnnserve`: the command line (serve, models, train, export, bench).

    rnnserve serve [--host 127.0.0.1] [--port 8000] [--models-dir DIR] [--workers 1]
    rnnserve models [--models-dir DIR]
    rnnserve train lm|sensor [options]     (python -m training, needs the [train] extra)
    rnnserve export CHECKPOINT [options]   (python -m training export)
    rnnserve bench [--quick]

Flags override the matching RNNSERVE_* environment variables; `rnnserve serve --help` lists every
setting. `serve` shuts down gracefully on SIGTERM or Ctrl-C: it stops taking connections, finishes the
requests in flight, drains the batches, writes the session snapshot and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from service.settings import Settings

if TYPE_CHECKING:  # the server's imports load only when `serve` runs
    import uvicorn
    from fastapi import FastAPI

EXIT_USAGE = 2
# Subcommands that run in a child Python: `service/` never imports training/, benchmarks/ or torch.
# command -> (module, arguments put before the user's, packages it needs, the extra that brings them)
_DELEGATED: dict[str, tuple[str, list[str], tuple[str, ...], str]] = {
    "train": ("training", [], ("torch", "training"), "train"),
    "export": ("training", ["export"], ("torch", "training"), "train"),
    "bench": ("benchmarks", [], ("torch", "matplotlib", "benchmarks"), "bench"),
    "eval": ("evaluation", [], ("tqdm", "evaluation"), "train"),
}
_MISSING = (
    "rnnserve {command}: this install lacks {missing}; install them with: "
    "pip install 'rnnserve[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
)


def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    default: Any = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        return ",".join(map(str, default)) or '""'
    return '""' if default is None else str(default)


def settings_help() -> str:
    """Every setting with its environment variable, default and meaning, from Settings itself."""
    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["settings (environment variables; the flags above override their twins):"]
    for name, field in Settings.model_fields.items():
        lines.append(f"  {prefix}{name.upper():<28} default {_default_text(name)}")
        if field.description:
            lines.append(f"      {field.description}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnserve",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the HTTP/WebSocket/KServe server",
        description="Run the server (uvicorn); graceful shutdown on SIGTERM.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="interface to listen on (RNNSERVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port, 0 picks a free one (RNNSERVE_PORT, default 8000)")
    serve.add_argument(
        "--grpc-port",
        type=_grpc_port,
        help="KServe V2 / Triton gRPC port, 0 picks a free one, `off` disables gRPC "
        "(RNNSERVE_GRPC_PORT, default 8001)",
    )
    dir_help = "models directory (RNNSERVE_MODELS_DIR, default: the shipped models)"
    serve.add_argument("--models-dir", type=Path, help=dir_help)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default 1); more than one needs RNNSERVE_STORE=redis",
    )

    models = sub.add_parser(
        "models",
        help="list and verify the artifacts in a models directory",
        description="List every <name>/<version>/ artifact, verify its hashes, manifest "
        "and ONNX graph; exit 1 if any fails or none is found.",
    )
    models.add_argument("--models-dir", type=Path, help=dir_help)

    # listed here; main() hands their arguments, --help included, to python -m training / benchmarks
    sub.add_parser("train", help="train, export and verify a model: rnnserve train lm|sensor [options]")
    sub.add_parser("export", help="export a training checkpoint again: rnnserve export CHECKPOINT [options]")
    sub.add_parser("bench", help="the benchmark suite: rnnserve bench [--quick] [options]")
    sub.add_parser(
        "eval",
        help="score the served sensor detector: rnnserve eval nab --data DIR --results DIR | "
        "rnnserve eval synthetic",
    )
    return parser


def _grpc_port(value: str) -> str:
    """`--grpc-port`: a port number, or `off` (the settings' empty value: gRPC disabled)."""
    return "" if value.lower() == "off" else value


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        key: getattr(args, key)
        for key in ("host", "port", "models_dir", "grpc_port")
        if getattr(args, key, None) is not None
    }
    return Settings(**overrides)


# ---- serve ---------------------------------------------------------------------------------------


def _serve(settings: Settings, workers: int) -> int:
    import uvicorn

    from service.app import create_app
    from service.logs import configure_logging

    configure_logging(settings)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "ws_max_size": settings.max_body_bytes,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.shutdown_drain_s)),
    }
    if workers > 1:
        if settings.store == "memory":
            print(
                "rnnserve serve: --workers > 1 needs RNNSERVE_STORE=redis (the memory store keeps sessions "
                "inside one process: each worker would hold its own, and a session's requests would reach "
                "workers that do not know it; with redis every worker reads and writes the same sessions "
                "by check-and-set). See README, 'Many cores'.",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if settings.grpc_port is not None:
            print("rnnserve serve: gRPC serves with --workers 1 only; it is off", file=sys.stderr)
        os.environ.update(
            {
                "RNNSERVE_HOST": settings.host,
                "RNNSERVE_PORT": str(settings.port),
                "RNNSERVE_MODELS_DIR": str(settings.models_dir),
                "RNNSERVE_GRPC_PORT": "",
            }
        )
        _announce(settings.host, settings.port)
        uvicorn.run("service.app:create_app", factory=True, workers=workers, **common)
        return 0
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, **common))
    # uvicorn re-raises a caught SIGTERM once it has shut down; with this handler in place the signal
    # ends a graceful shutdown with exit status 0 instead of killing the process.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        return runner.run(_run_server(server, app))


async def _run_server(server: uvicorn.Server, app: FastAPI) -> int:
    """Run uvicorn; announce the URLs once bound; exit 1 if the models cannot load. A failed lifespan
    start ends in uvicorn's own SystemExit(3)."""
    failed = False

    async def watch() -> None:
        nonlocal failed
        while not server.started:
            await asyncio.sleep(0.02)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        _announce(host, port, app.state.grpc_port)
        loading: asyncio.Task[bool] = app.state.loading
        if not await loading:
            failed = True
            server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    return 1 if failed else 0


def _announce(host: str, port: int, grpc_port: int | None = None) -> None:
    name = f"[{host}]" if ":" in host else host
    base = f"http://{name}:{port}"
    links = f"API docs {base}/docs, metrics {base}/metrics, live demo {base}/demo"
    print(f"rnnserve listening on {base}  ({links})", flush=True)
    if grpc_port is not None:
        print(f"rnnserve gRPC (KServe V2) listening on {name}:{grpc_port}", flush=True)


# ---- models --------------------------------------------------------------------------------------


def _models(settings: Settings) -> int:
    from service.manifest import ArtifactError
    from service.registry import load_artifact

    root = settings.models_dir

    def subdirs(path: Path) -> list[Path]:
        if not path.is_dir():
            return []
        return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]

    dirs = sorted(version for name in subdirs(root) for version in subdirs(name))
    if not dirs:
        print(f"no artifacts under {root} (expected <name>/<version>/manifest.json)", file=sys.stderr)
        return 1
    rows = [("MODEL", "VERSION", "TASK", "CELL", "LAYERS", "HIDDEN", "STATUS")]
    failed = 0
    for path in dirs:
        try:
            model = load_artifact(path, settings)
        except ArtifactError as exc:
            failed += 1
            rows.append((path.parent.name, path.name, "?", "?", "?", "?", f"FAILED: {exc}"))
            continue
        arch = model.manifest.architecture
        rows.append(
            (model.name, model.version, model.task, arch.cell, str(arch.layers), str(arch.hidden), "ok")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"{len(dirs) - failed} of {len(dirs)} artifact(s) verified under {root}")
    return 1 if failed else 0


# ---- train / export / bench ----------------------------------------------------------------------


def missing_packages(command: str) -> list[str]:
    _, _, needs, _ = _DELEGATED[command]
    return [name for name in needs if importlib.util.find_spec(name) is None]


def _delegate(command: str, args: list[str]) -> int:
    module, prefix, _, extra = _DELEGATED[command]
    missing = missing_packages(command)
    if missing == ["torch"] and {"-h", "--help"} & set(args):
        missing = []  # the training command's options need no torch: its --help works without it
    if missing:
        print(_MISSING.format(command=command, missing=", ".join(missing), extra=extra), file=sys.stderr)
        return EXIT_USAGE
    try:
        return subprocess.call([sys.executable, "-m", module, *prefix, *args])
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:  # everything after the command, --help included, is theirs
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"rnnserve {args.command}: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "models":
        return _models(settings)
    if args.workers < 1:
        print("rnnserve serve: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    return _serve(settings, args.workers)

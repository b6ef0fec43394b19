"""PNG plots beside the JSON: throughput, latency, batch sizes, multi-event requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERIES = (
    ("batched", "server, batcher on"),
    ("unbatched", "server, max_batch_size=1"),
    ("baseline", "naive FastAPI + PyTorch baseline"),
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def write_plots(results: dict[str, Any], stem: Path) -> list[Path]:
    """Write `<stem>-*.png`; returns the files written (none when there is nothing to plot)."""
    plt = _pyplot()
    written: list[Path] = []
    loads = results.get("loads")
    title = f"{results['meta']['host']}, {results['meta']['date'][:10]}"

    def save(fig: Any, name: str) -> None:
        written.append(_save(fig, stem.parent / f"{stem.name}-{name}.png"))

    if isinstance(loads, list) and loads:
        sessions = [r["sessions"] for r in loads]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(
            sessions, [r["limit_events_per_s"] for r in loads], "k--", label="in-process ONNX Runtime limit"
        )
        for key, label in SERIES:
            ax.plot(sessions, [r[key]["events_per_s"] for r in loads], "o-", label=label)
        if any("batched_ws" in r for r in loads):
            ws = [(r["sessions"], r["batched_ws"]["events_per_s"]) for r in loads if "batched_ws" in r]
            ax.plot(*zip(*ws, strict=True), "s", label="server, batcher on, WebSocket")
        ax.set(
            xscale="log",
            xlabel="concurrent sessions (closed loop, 1 event/request)",
            ylabel="events/s",
            title=f"Throughput ({title})",
        )
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        save(fig, "throughput")

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (key, label) in enumerate(SERIES):
            for pct, style in (("p50", "o-"), ("p99", "x:")):
                values = [r[key]["latency_ms"].get(pct, float("nan")) for r in loads]
                ax.plot(sessions, values, style, color=f"C{i}", label=f"{label} {pct}")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrent sessions",
            ylabel="latency (ms)",
            title=f"Latency ({title})",
        )
        ax.legend(fontsize=7)
        save(fig, "latency")

        hists = [
            (r["sessions"], r["batched"]["server"].get("batch_size", {}).get("buckets", {})) for r in loads
        ]
        hists = [(n, h) for n, h in hists if h]
        if hists:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            edges = sorted({le for _, h in hists for le in h if le != "+Inf"}, key=float)
            width = 0.8 / len(hists)
            for i, (n, h) in enumerate(hists):
                total = max(sum(h.values()), 1)
                ax.bar(
                    [j + i * width for j in range(len(edges))],
                    [h.get(le, 0) / total for le in edges],
                    width=width,
                    label=f"{n} sessions",
                )
            ax.set_xticks(
                [j + 0.4 - width / 2 for j in range(len(edges))],
                [f"<={float(le):g}" for le in edges],
                rotation=45,
                fontsize=7,
            )
            ax.set(
                xlabel="sessions per ONNX Runtime call",
                ylabel="share of calls",
                title=f"Batch sizes, batcher on (from /metrics; {title})",
            )
            ax.legend(fontsize=8)
            save(fig, "batch-sizes")

    multi = results.get("multi_event")
    if isinstance(multi, list) and multi:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [str(m["events_per_request"]) for m in multi]
        ax.bar(labels, [m["run"]["events_per_s"] for m in multi], label="server, batcher on")
        ax.plot(
            labels,
            [m["limit_events_per_s"] for m in multi],
            "k_",
            markersize=30,
            mew=2,
            label="in-process limit, same call shape",
        )
        top = max(max(m["limit_events_per_s"], m["run"]["events_per_s"]) for m in multi)
        ax.set_ylim(0, 1.4 * top)  # room for the legend above the bars and marks
        ax.legend(fontsize=8, loc="upper right")
        ax.set(
            xlabel=f"events per request ({multi[0]['sessions']} sessions)",
            ylabel="events/s",
            title=f"Multi-event requests ({title})",
        )
        save(fig, "multi-event")
    return written


def write_gpu_plot(results: dict[str, Any], stem: Path) -> Path:
    """`<stem>.png`: events/s by sessions, host slab vs device-resident state (and the server if run)."""
    plt = _pyplot()
    points = results["in_process"]["points"]
    sessions = [p["sessions"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        sessions, [p["host_slab"]["events_per_s"] for p in points], "o-", label="host slab (2 copies/state)"
    )
    ax.plot(
        sessions, [p["device_resident"]["events_per_s"] for p in points], "s-", label="device-resident state"
    )
    if results.get("server"):
        ax.plot(
            [s["sessions"] for s in results["server"]],
            [s["run"]["events_per_s"] for s in results["server"]],
            "^-",
            label="HTTP server, batcher on",
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sessions (batch size)",
        ylabel="events/s",
        title=f"ONNX Runtime {','.join(results['providers'])} ({results['meta']['host']})",
    )
    ax.legend(fontsize=8)
    return _save(fig, stem.with_suffix(".png"))

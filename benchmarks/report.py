"""From raw results to the figures the issue asks for: ratios, targets, a printed table, the JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.cost import table_line
from benchmarks.rounds import spread

TARGET_LOAD = 256


def _ok(section: Any) -> bool:
    return (
        isinstance(section, (list, dict))
        and bool(section)
        and not (isinstance(section, dict) and ("error" in section or "skipped" in section))
    )


def _p50(run: dict[str, Any] | None) -> float | None:
    return run.get("latency_ms", {}).get("p50") if run else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def per_load(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in results["loads"] if _ok(results.get("loads")) else []:
        b, u, base = r["batched"], r["unbatched"], r["baseline"]
        server = b.get("server", {})
        rows.append(
            {
                "sessions": r["sessions"],
                "limit_events_per_s": r["limit_events_per_s"],
                "batched_events_per_s": b["events_per_s"],
                "unbatched_events_per_s": u["events_per_s"],
                "baseline_events_per_s": base["events_per_s"],
                "ws_events_per_s": r["batched_ws"]["events_per_s"] if "batched_ws" in r else None,
                "efficiency": _ratio(b["events_per_s"], r["limit_events_per_s"]),
                "batcher_gain": _ratio(b["events_per_s"], u["events_per_s"]),
                "baseline_advantage": _ratio(b["events_per_s"], base["events_per_s"]),
                "batched_p50_ms": _p50(b),
                "batched_p99_ms": b.get("latency_ms", {}).get("p99"),
                "unbatched_p50_ms": _p50(u),
                "baseline_p50_ms": _p50(base),
                "mean_batch": server.get("batch_size", {}).get("mean"),
                "inference_share": server.get("inference_share"),
                "server_cpu_share": server.get("cpu_share"),
                "client_cpu_share": b["client_cpu_share"],
                "errors": sum(sum(x["errors"].values()) for x in (b, u, base)),
            }
        )
    return rows


def _at(rows: list[dict[str, Any]], sessions: int) -> dict[str, Any] | None:
    """The row at `sessions`, or the largest load below it when that load was not run."""
    below = [r for r in rows if r["sessions"] <= sessions]
    return max(below, key=lambda r: r["sessions"]) if below else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    rows = per_load(results)
    limit = results["limit"]["lm"] if _ok(results.get("limit")) else {}
    one = _at(rows, 1)
    summary: dict[str, Any] = {"per_load": rows}
    low = results.get("low_load", {})
    if _ok(low):  # one session on each, taking turns request by request: the sharper measurement
        summary["low_load_overhead_ms"] = low["overhead_vs_in_process_ms"]
        summary["batcher_p50_added_ms"] = low["batcher_added_paired_median_ms"]
    elif one and limit:  # from the separate 1-session runs
        summary["low_load_overhead_ms"] = one["batched_p50_ms"] - limit["single_step_ms"]
        summary["batcher_p50_added_ms"] = one["batched_p50_ms"] - one["unbatched_p50_ms"]
    if _ok(results.get("multi_event")):
        base = results["multi_event"][0]["run"]["events_per_s"]
        summary["multi_event"] = [
            {
                "events_per_request": m["events_per_request"],
                "events_per_s": m["run"]["events_per_s"],
                "vs_one_per_request": _ratio(m["run"]["events_per_s"], base),
                "limit_events_per_s": m["limit_events_per_s"],
                "efficiency": _ratio(m["run"]["events_per_s"], m["limit_events_per_s"]),
            }
            for m in results["multi_event"]
        ]
    summary["targets"] = targets(results, rows, summary)
    return summary


def _target(name: str, goal: str, value: float | None, met: bool | None, note: str) -> dict[str, Any]:
    return {"name": name, "goal": goal, "value": value, "met": met, "note": note}


def targets(
    results: dict[str, Any], rows: list[dict[str, Any]], summary: dict[str, Any]
) -> list[dict[str, Any]]:
    out = []
    at = _at(rows, TARGET_LOAD)
    client = results.get("client", {}) if _ok(results.get("client")) else {}
    fastapi = client.get("fastapi_noop", {}).get("events_per_s")
    if at:
        where = f"at {at['sessions']} sessions"
        limits = []
        best_limit = results["limit"]["lm"]["best_events_per_s"] if _ok(results.get("limit")) else None
        if fastapi and best_limit:  # the client and limit sections run one after the other
            limits.append(
                f"a FastAPI no-op answers {fastapi:,.0f} req/s here ({fastapi / best_limit:.0%} of the limit)"
            )
        if at["inference_share"] is not None:
            limits.append(
                f"batches in flight {at['inference_share']:.0%} of the run, mean batch "
                f"{at['mean_batch'] or 0:.0f}, server {at['server_cpu_share']:.2f} cores, "
                f"client {at['client_cpu_share']:.2f} cores"
            )
        multi = max(summary.get("multi_event", []), key=lambda m: m["events_per_s"], default=None)
        if multi and multi["efficiency"] is not None:
            limits.append(
                f"{multi['events_per_request']} events/request reach {multi['efficiency']:.0%} of the limit "
                f"for that call shape"
            )
        if at["ws_events_per_s"] is not None:
            limits.append(f"WebSocket {at['ws_events_per_s'] / at['limit_events_per_s']:.0%}")
        out.append(
            _target(
                "server / in-process limit",
                ">= 0.60",
                at["efficiency"],
                at["efficiency"] >= 0.6 if at["efficiency"] is not None else None,
                f"{where}; " + "; ".join(limits),
            )
        )
        out.append(
            _target(
                "batcher gain (batched / max_batch_size=1)",
                ">= 4.0",
                at["batcher_gain"],
                at["batcher_gain"] >= 4 if at["batcher_gain"] is not None else None,
                f"{where}; mean batch {at['mean_batch'] or 0:.0f}",
            )
        )
    added = summary.get("batcher_p50_added_ms")
    low = results.get("low_load", {})
    how = "batched p50 minus max_batch_size=1 p50, separate 1-session runs"
    if _ok(low):
        how = (
            "median of paired differences, one session on each server taking turns in short blocks; "
            f"noise floor (two sessions of one server) {low['noise_floor_paired_median_ms']:+.3f} ms"
        )
    out.append(
        _target(
            "p50 added by the batcher at 1 session (ms)",
            "< 0.2",
            added,
            added < 0.2 if added is not None else None,
            how,
        )
    )
    out.extend(cost_targets(results["cost"] if _ok(results.get("cost")) else []))
    mem = results.get("memory", {})
    if _ok(mem):
        note = f"RSS growth per idle session at {mem['sessions']:,} sessions"
        if mem["sessions"] < 100_000:
            note += " (the target speaks of 100k: run the full suite)"
        out.append(
            _target(
                "memory per idle session / raw state bytes",
                "<= 1.5",
                mem["ratio_to_state_bytes"],
                mem["ratio_to_state_bytes"] <= 1.5,
                note,
            )
        )
    train = results.get("training", {})
    if _ok(train):
        out.append(
            _target(
                "training job / plain PyTorch TBPTT loop (events/s)",
                ">= 1.0",
                train["ratio"],
                train["ratio"] >= 1.0,
                f"batch {train['batch']}, bptt {train['bptt']}, {train['threads']} threads",
            )
        )
    else:
        out.append(
            _target(
                "training job / plain PyTorch TBPTT loop (events/s)",
                ">= 1.0",
                None,
                None,
                str(train.get("skipped") or train.get("error") or "not run"),
            )
        )
    return out


# (task, transport) -> (goal text, test) on the serving-cost rows (issue 11)
COST_TARGETS: dict[tuple[str, str], tuple[str, str, Any]] = {
    ("lm", "ws"): (
        "inference share, lm WebSocket, 256 sessions",
        ">= 0.6",
        lambda r: r["inference_share"] >= 0.6,
    ),
    ("lm", "http"): (
        "inference share, lm HTTP, 256 sessions",
        ">= 0.45",
        lambda r: r["inference_share"] >= 0.45,
    ),
    ("sensor", "ws"): (
        "server CPU us/event, sensor WebSocket, 256 sessions",
        "<= 60",
        lambda r: r["server_cpu_us_per_event"] <= 60,
    ),
    ("sensor", "bulk"): (
        "server CPU us/event, sensor bulk, 1000 sessions",
        "<= 10",
        lambda r: r["server_cpu_us_per_event"] <= 10,
    ),
    ("lm", "bulk"): (
        "inference share, lm bulk, 512 sessions",
        ">= 0.8",
        lambda r: r["inference_share"] >= 0.8,
    ),
}


def cost_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        goal = COST_TARGETS.get((r["task"], r["transport"]))
        if goal is None or not r["events"]:
            continue
        name, text, test = goal
        value = r["server_cpu_us_per_event"] if "us/event" in name else r["inference_share"]
        note = (
            f"{r['server_cpu_us_per_event']:.1f} us/event server, {r['ort_cpu_us_per_event']:.1f} ORT, "
            f"batch {r['mean_batch']:.0f}"
        )
        out.append(_target(name, text, value, bool(test(r)), note))
    return out


def _f(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def table(results: dict[str, Any]) -> str:
    meta, summary, models = results["meta"], results["summary"], results.get("models", {})
    lm = models.get("lm", {})
    cfg = results["config"]
    lines = [
        f"rnnserve benchmarks  {meta['date']}  {meta['host']} ({meta['cpu_count']} CPUs)  "
        f"{'quick' if cfg['quick'] else 'full'}, {meta.get('wall_s', 0):.0f} s",
        f"model {lm.get('name')}/{lm.get('version')}: {lm.get('cell')} "
        f"{lm.get('layers')}x{lm.get('hidden')}, "
        f"vocab {lm.get('vocab_size')}{' (STAND-IN, random weights)' if lm.get('standin') else ''}; "
        f"threads {cfg['threads']}, providers {','.join(cfg['providers'])}, top_k {cfg['top_k']}",
    ]
    client = results.get("client", {})
    if _ok(client):
        raw, hx = client["raw_noop"], client["raw_noop_httpx"]
        lines.append(
            f"client ({cfg['client_sessions']} sessions): raw no-op {raw['events_per_s']:,.0f} req/s at "
            f"{raw['client_cpu_us_per_request']:.0f} us CPU/request (httpx: {hx['events_per_s']:,.0f} req/s, "
            f"{hx['client_cpu_us_per_request']:.0f} us); "
            f"FastAPI no-op {client['fastapi_noop']['events_per_s']:,.0f} req/s HTTP, "
            f"{client['fastapi_noop_ws']['events_per_s']:,.0f} msg/s WebSocket"
        )
    limit = results.get("limit", {})
    if _ok(limit):
        lim = limit["lm"]
        lines.append(
            f"limit (ONNX Runtime in-process): {lim['best_events_per_s']:,.0f} events/s at batch "
            f"{lim['best_batch']}; one step at batch 1: {lim['single_step_ms']:.3f} ms"
        )
    rows = summary["per_load"]
    if rows:
        lines.append("")
        lines.append(
            f"{'sessions':>8} {'limit':>8} | {'batched':>8} {'eff':>5} {'p50ms':>7} {'p99ms':>7} "
            f"{'batch':>5} | {'mbs=1':>7} {'p50ms':>7} {'gain':>5} | {'baseline':>8} {'p50ms':>7} "
            f"{'adv':>5} | {'ws':>7}"
        )
        for r in rows:
            lines.append(
                f"{r['sessions']:>8} {_f(r['limit_events_per_s']):>8} | {_f(r['batched_events_per_s']):>8} "
                f"{_f(r['efficiency'], '.0%'):>5} {_f(r['batched_p50_ms'], '.2f'):>7} "
                f"{_f(r['batched_p99_ms'], '.2f'):>7} {_f(r['mean_batch'], '.0f'):>5} | "
                f"{_f(r['unbatched_events_per_s']):>7} {_f(r['unbatched_p50_ms'], '.2f'):>7} "
                f"{_f(r['batcher_gain'], '.1f'):>5} | {_f(r['baseline_events_per_s']):>8} "
                f"{_f(r['baseline_p50_ms'], '.2f'):>7} {_f(r['baseline_advantage'], '.1f'):>5} | "
                f"{_f(r['ws_events_per_s']):>7}"
            )
        lines.append(
            "(events/s; eff = batched / limit measured in the same round; gain = batched / mbs=1; "
            "adv = batched / baseline; batch = mean sessions per ONNX Runtime call)"
        )
    low = results.get("low_load", {})
    if _ok(low):
        lines.append(
            f"one session, servers taking turns in blocks ({low['samples']} requests each): p50 batched "
            f"{low['batched_p50_ms']:.3f} ms, max_batch_size=1 {low['unbatched_p50_ms']:.3f} ms, "
            f"in-process step {low['in_process_step_p50_ms']:.3f} ms; paired median difference "
            f"{low['batcher_added_paired_median_ms']:+.3f} ms (noise floor: two sessions of one server "
            f"{low['noise_floor_paired_median_ms']:+.3f} ms)"
        )
    if "low_load_overhead_ms" in summary:
        lines.append(
            f"low-load overhead: p50 at 1 session {summary['low_load_overhead_ms']:.2f} ms above the "
            f"in-process single step; the batcher adds {summary['batcher_p50_added_ms']:+.3f} ms (median)"
        )
    for m in summary.get("multi_event", []):
        lines.append(
            f"multi-event: {m['events_per_request']:>3} events/request: {m['events_per_s']:>9,.0f} "
            f"events/s ({_f(m['vs_one_per_request'], '.1f')}x one per request; "
            f"{_f(m['efficiency'], '.0%')} of the in-process limit for {m['events_per_request']}-event calls)"
        )
    if _ok(results.get("open_loop")):
        for o in results["open_loop"]:
            run, lat = o["run"], o["run"]["latency_ms"]
            offered = f"offered {o['offered_rps']:,.0f}/s" if o["mode"] == "open" else "closed loop"
            lines.append(
                f"open loop, {o['sessions']} sessions, {offered}: {run['events_per_s']:,.0f} events/s, "
                f"p50 {_f(lat.get('p50'), '.2f')} ms, p99 {_f(lat.get('p99'), '.2f')} ms"
            )
    if _ok(results.get("sensor")):
        sensor_limit = limit.get("sensor", {}).get("best_events_per_s") if _ok(limit) else None
        for s in results["sensor"]:
            run = s["run"]
            lines.append(
                f"sensor, {s['sessions']} sessions: {run['events_per_s']:,.0f} events/s "
                f"({_f(_ratio(run['events_per_s'], sensor_limit), '.1%')} of its limit "
                f"{_f(sensor_limit)}), p50 {_f(run['latency_ms'].get('p50'), '.2f')} ms"
            )
    if _ok(results.get("cost")):
        lines.append("")
        lines.append(
            "serving cost (server CPU per event from /proc; ORT: ONNX Runtime alone at the server's mean "
            "batch; share = ORT / server; each cell its median round: lm by share, sensor by CPU):"
        )
        lines.extend(table_line(r) + spread(r) for r in results["cost"])
    mem = results.get("memory", {})
    if _ok(mem):
        lines.append(
            f"memory: {mem['sessions']:,} idle sessions: {mem['rss_per_session_bytes']:,.0f} B RSS each "
            f"vs {mem['state_bytes_per_session']:,} B raw state ({mem['ratio_to_state_bytes']:.2f}x)"
        )
    train = results.get("training", {})
    if _ok(train):
        lines.append(
            f"training: job {train['job_events_per_s']:,.0f} events/s vs plain loop "
            f"{train['plain_events_per_s']:,.0f} ({train['ratio']:.2f}x)"
        )
    lines.append("")
    lines.append("targets:")
    for t in summary["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        lines.append(f"  [{mark}] {t['name']}: {_f(t['value'], '#.3g')} (goal {t['goal']}); {t['note']}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    if failed:
        lines.append(f"FAILED sections: {', '.join(failed)} (see the JSON)")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)

"""The memory store's snapshot file: numpy arrays plus a JSON header in one `.npz`, written atomically.

    header                 JSON: format, saved_at (wall), owners, partitions [{model, sha256, count, ...}]
    p<i>.state<k>          float32 [L, n, H]  state tensor k of partition i's n sessions
    p<i>.<column>          one entry per session: ids, seq, created, expires, owner, answer_seq, answer_fp,
                           answer_len (-1: none); p<i>.answers is every stored answer, concatenated
    gone.<column>          ended ids still answered with 410: ids, reason, owner, until (wall clock);
                           absent from files written before tombstones were kept

Written to a temporary file in the same directory, fsync'ed, then renamed over the target, so a crash
never leaves a half-written snapshot. Read back with allow_pickle=False: the file holds no code.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ServiceError
from service.store.base import key_to_id
from service.store.slab import NO_ANSWER

if TYPE_CHECKING:
    from service.registry import LoadedModel
    from service.store.memory import MemoryStore

log = logging.getLogger(__name__)

FORMAT = 1


def write_snapshot(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            payload: dict[str, Any] = {"header": np.array(json.dumps({"format": FORMAT, **header})), **arrays}
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_snapshot(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays); ValueError for a file that is not a snapshot of this format."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(str(arrays.pop("header")))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a session snapshot of format {FORMAT}")
    return header, arrays


def save_sessions(store: MemoryStore, path: Path) -> int:
    """Every live session of every partition, with its remaining TTL as a wall-clock expiry."""
    now = store.clock()
    header: dict[str, Any] = {
        "saved_at": store.wall_offset + now,
        "owners": store.owners,
        "partitions": [],
    }
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for i, p in enumerate(store.partitions):
        rows = p.live_rows()
        header["partitions"].append(
            {
                "model": p.key,
                "sha256": p.sha256,
                "count": len(rows),
                "layers": p.layers,
                "hidden": p.hidden,
                "states": p.state_count,
            }
        )
        for k, s in enumerate(p.gather(rows)):
            arrays[f"p{i}.state{k}"] = s
        arrays[f"p{i}.ids"] = np.array(
            [key_to_id(k) for k in (p.ids[r] for r in rows.tolist()) if k], dtype=np.str_
        )
        arrays[f"p{i}.seq"] = p.seq[rows]
        arrays[f"p{i}.created"] = p.created[rows]
        arrays[f"p{i}.expires"] = store.wall_offset + p.last_used[rows] + store.ttl
        arrays[f"p{i}.owner"] = p.owner[rows]
        arrays[f"p{i}.answer_seq"] = p.answer_seq[rows]
        arrays[f"p{i}.answer_fp"] = p.answer_fp[rows]
        answers = [p.answers.get(r) if p.answer_seq[r] != NO_ANSWER else None for r in rows.tolist()]
        arrays[f"p{i}.answer_len"] = np.array([-1 if a is None else len(a) for a in answers], np.int64)
        arrays[f"p{i}.answers"] = np.frombuffer(b"".join(a for a in answers if a), np.uint8)
        total += len(rows)
    arrays.update(_tombstone_arrays(store))
    write_snapshot(path, header, arrays)
    return total


def _tombstone_arrays(store: MemoryStore) -> dict[str, np.ndarray]:
    ids, reasons, owners, until = [], [], [], []
    for session_id, reason, owner, until_wall in store.tombstones():
        ids.append(session_id)
        reasons.append(reason)
        owners.append(owner)
        until.append(until_wall)
    return {
        "gone.ids": np.array(ids, dtype=np.str_),
        "gone.reason": np.array(reasons, dtype=np.str_),
        "gone.owner": np.array(owners, dtype=np.int64),  # index into the header's owners, like p<i>.owner
        "gone.until": np.array(until, dtype=np.float64),
    }


def _load_tombstones(store: MemoryStore, arrays: dict[str, np.ndarray], owners: list[str | None]) -> None:
    if "gone.ids" not in arrays:
        return
    for session_id, reason, owner, until in zip(
        arrays["gone.ids"].tolist(),
        arrays["gone.reason"].tolist(),
        arrays["gone.owner"].tolist(),
        arrays["gone.until"].tolist(),
        strict=True,
    ):
        store.remember_ended(session_id, reason, owners[owner], until)


def load_sessions(store: MemoryStore, path: Path, models: Sequence[LoadedModel]) -> int:
    """Restore what `save_sessions` wrote: sessions expired meanwhile are dropped, those of versions no
    longer served (or whose graph or state shape changed) are refused and logged."""
    header, arrays = read_snapshot(path)
    served = {m.key: m for m in models}
    now = store.clock()
    wall_now = store.wall_offset + now
    owners: list[str | None] = header["owners"]
    loaded = 0
    for i, meta in enumerate(header["partitions"]):
        model = served.get(meta["model"])
        if model is None or model.manifest.onnx.sha256 != meta["sha256"]:
            log.error(
                "snapshot %s: %d session(s) of %s refused: that model version is not loaded "
                "(or its graph changed)",
                path,
                meta["count"],
                meta["model"],
            )
            continue
        part = store.attach(model)
        p = store.partitions[part]
        if (p.state_count, p.layers, p.hidden) != (meta["states"], meta["layers"], meta["hidden"]):
            log.error("snapshot %s: sessions of %s refused: their state shape differs", path, p.key)
            continue
        states = [arrays[f"p{i}.state{k}"] for k in range(meta["states"])]
        ends = np.concatenate([[0], np.cumsum(np.maximum(arrays[f"p{i}.answer_len"], 0))])
        blob = arrays[f"p{i}.answers"].tobytes()
        for j, session_id in enumerate(arrays[f"p{i}.ids"].tolist()):
            remaining = float(arrays[f"p{i}.expires"][j]) - wall_now
            if remaining <= 0:
                continue
            try:
                record = store.create_now(
                    model.key,
                    owners[int(arrays[f"p{i}.owner"][j])],
                    session_id=session_id,
                    seq=int(arrays[f"p{i}.seq"][j]),
                    state=[s[:, j] for s in states],
                )
            except ServiceError as exc:
                log.error("snapshot %s: session %s not restored: %s", path, session_id, exc.message)
                continue
            p.last_used[record.row] = now - (store.ttl - remaining)
            p.created[record.row] = arrays[f"p{i}.created"][j]
            if arrays[f"p{i}.answer_len"][j] >= 0:
                p.answer_seq[record.row] = arrays[f"p{i}.answer_seq"][j]
                p.answer_fp[record.row] = arrays[f"p{i}.answer_fp"][j]
                p.answers[record.row] = blob[ends[j] : ends[j + 1]]
            loaded += 1
    _load_tombstones(store, arrays, owners)
    return loaded

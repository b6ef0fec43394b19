"""The memory store's snapshot file: numpy arrays plus a JSON header in one `.npz`, written atomically.

    header                 JSON: format, saved_at (wall), owners, partitions [{model, sha256, count, ...}]
    digest                 sha256 over the header and every array (name, dtype, shape, bytes)
    p<i>.state<k>          float32 [L, n, H]  state tensor k of partition i's n sessions
    p<i>.<column>          one entry per session: ids, seq, created, expires, owner, answer_seq, answer_fp,
                           answer_len (-1: none); p<i>.answers is every stored answer, concatenated
    gone.<column>          ended ids still answered with 410: keys, key_len, raw, reason, owner, until
                           (wall clock); see tombstone_arrays.py

Written to a temporary file in the same directory, fsync'ed, renamed over the target and the directory
fsync'ed, so that a crash (even of the machine) leaves either the old snapshot or the new one, never
half of one. A file that is torn or corrupt all the same (a disk error, a copy cut short) fails its
digest (and the zip's own CRCs) and is never loaded as good. Read back with allow_pickle=False: the file
holds no code.

The copy of the sessions is snapshot_capture.py's: `save_sessions` takes it in one step (at shutdown),
`save_sessions_async` in short steps between batches and writes the file in a thread (periodically).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib import format as fmt

from service.errors import ServiceError
from service.store import tombstone_arrays
from service.store.base import Saved
from service.store.heap import release_free_memory
from service.store.pieces import Pieces
from service.store.snapshot_capture import Capture, capture, capture_now, to_arrays

if TYPE_CHECKING:
    from service.registry import LoadedModel
    from service.store.memory import MemoryStore

log = logging.getLogger(__name__)

# 2 added the digest (format 1 files are read with the zip's CRCs alone); 3 the compact tombstones
FORMAT = 3
READABLE = (1, 2, 3)
TEMP_SUFFIX = ".tmp"


def _pieces(a: np.ndarray | Pieces) -> Pieces:
    if isinstance(a, Pieces):
        return a
    a = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
    return Pieces(a.dtype, a.shape, [a])


def _bytes(part: np.ndarray) -> memoryview:
    return part.reshape(-1).view(np.uint8).data  # a view: nothing copied


def _feed(h: hashlib._Hash, name: str, array: Pieces) -> None:
    h.update(f"\n{name} {array.dtype.str} {array.shape}\n".encode())
    for part in array.parts:
        h.update(_bytes(part))  # sha256 releases the GIL on large buffers


def _digest(header: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(arrays):
        _feed(h, name, _pieces(arrays[name]))
    return h.hexdigest()


def _member(zf: zipfile.ZipFile, name: str, array: Pieces) -> None:
    """One `.npy` member, as np.savez writes it, from the array's pieces."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        fmt.write_array_header_1_0(
            out, {"descr": fmt.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
        )
        for part in array.parts:
            out.write(_bytes(part))


def write_snapshot(path: Path, header: dict[str, Any], arrays: Mapping[str, np.ndarray | Pieces]) -> None:
    """The file as np.savez would write it (np.load reads it), streamed: the state tensors go to disk
    piece by piece, and the digest is taken in the same pass."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, **header})
    h = hashlib.sha256(text.encode())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                _member(zf, "header", _pieces(np.array(text)))
                for name in sorted(arrays):
                    array = _pieces(arrays[name])
                    _feed(h, name, array)
                    _member(zf, name, array)
                _member(zf, "digest", _pieces(np.array(h.hexdigest())))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> None:
    """Temporary files of writes that a crash cut short (never a complete snapshot: see above)."""
    for stale in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def read_snapshot(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays); ValueError for a file that is not an intact snapshot of this format."""
    try:
        # our own file object: np.load leaks the one it opens when the zip turns out torn
        with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError) as exc:  # torn, or not a zip of arrays
        raise ValueError(f"{path}: not a readable session snapshot ({exc})") from exc
    text, digest = str(arrays.pop("header", "")), str(arrays.pop("digest", ""))
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the snapshot header is not JSON") from exc
    if not isinstance(header, dict) or header.get("format") not in READABLE:
        raise ValueError(f"{path}: not a session snapshot of format {', '.join(map(str, READABLE))}")
    if header["format"] >= 2 and digest != _digest(text, arrays):
        raise ValueError(f"{path}: the snapshot's digest does not match its contents (corrupt)")
    return header, arrays


def _write(snapshot: Capture, path: Path) -> int:
    header, arrays = to_arrays(snapshot)
    write_snapshot(path, header, arrays)
    return sum(meta["count"] for meta in header["partitions"])


def save_sessions(store: MemoryStore, path: Path) -> int:
    """Every live session of every partition, with its remaining TTL as a wall-clock expiry, and the
    tombstones, copied in one step; returns the count of sessions."""
    return _write(capture_now(store), path)


async def save_sessions_async(store: MemoryStore, path: Path) -> Saved:
    """`save_sessions` without stalling the event loop: copied in short steps between batches, written
    in a thread."""
    snapshot = await capture(store)
    loop = {
        "stall_s": snapshot.stall_s,
        "loop_s": snapshot.loop_s,
        "loop_cpu_s": snapshot.loop_cpu_s,
        "stall_cpu_s": snapshot.stall_cpu_s,
    }
    t0 = time.perf_counter()
    count, cpu = await asyncio.to_thread(_write_timed, snapshot, path)
    saved = Saved(count, **loop, write_s=time.perf_counter() - t0, write_cpu_s=cpu)
    del snapshot  # the copy is garbage now, and the tombstone dict's old tables too (see heap.py)
    await asyncio.to_thread(release_free_memory)
    return saved


def _write_timed(snapshot: Capture, path: Path) -> tuple[int, float]:
    """`_write`, and the CPU time the writing thread spent on it."""
    t0 = time.thread_time()
    return _write(snapshot, path), time.thread_time() - t0


def _load_tombstones(store: MemoryStore, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    owners: list[str | None] = header["owners"]
    for session_id, reason, owner, until in tombstone_arrays.decode(header, arrays):
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
    _load_tombstones(store, header, arrays)
    return loaded

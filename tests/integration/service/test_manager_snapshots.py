"""Periodic snapshots through the facade: the file on disk at any moment (what a crash leaves) restores
the sessions as they were when it was taken; a corrupt file is set aside; a failing disk costs the
snapshots, never the service. (A real SIGKILL of a real server: tests/e2e/test_e2e_crash.py.)"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from manager_support import Reference, body, running, state_of

from service import schemas
from service.errors import SessionDeleted
from service.metrics import Metrics
from service.settings import Settings
from service.store.snapshot_file import read_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
memory_only = pytest.mark.parametrize("store_backend", ["memory"])

INTERVAL = 0.05


async def snapshot_after(path: Path, wall: float, timeout_s: float = 20.0) -> float:
    """Wait for a snapshot file taken after wall-clock time `wall`; its `saved_at`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file():
            saved_at = float(read_snapshot(path)[0]["saved_at"])
            if saved_at > wall:
                return saved_at
        await asyncio.sleep(INTERVAL)
    raise AssertionError(f"no snapshot taken after {wall} within {timeout_s}s")


@memory_only
async def test_the_file_a_crash_leaves_restores_the_sessions_of_its_moment(
    make_settings: Callable[..., Settings], references: dict[str, Reference], tmp_path: Path
) -> None:
    path, crashed = tmp_path / "var" / "sessions.snapshot", tmp_path / "crashed" / "sessions.snapshot"
    ref = references["sensor-lstm"]
    events = ref.events(np.random.default_rng(3), 5)
    metrics = Metrics()
    async with running(make_settings(snapshot_path=path, snapshot_interval_s=INTERVAL), metrics=metrics) as m:
        sid = (await m.create(schemas.CreateSession(model="sensor-lstm"), "key-1")).session_id
        ended = (await m.create(schemas.CreateSession(model="lm-gru"), "key-1")).session_id
        await m.step(sid, "key-1", body("sensor", events[:3], 0))
        await m.delete(ended, "key-1")
        await snapshot_after(path, time.time())
        crashed.parent.mkdir()
        shutil.copy(path, crashed)  # the file as a SIGKILL would leave it, taken while still serving
        await m.step(sid, "key-1", body("sensor", events[3:], 3))  # after it: lost by the "crash"
        # the file is in place before the snapshot task resumes on the loop to record its metrics
        deadline = time.monotonic() + 20
        while not metrics.snapshot_last_success._value.get() and time.monotonic() < deadline:
            await asyncio.sleep(INTERVAL)
        samples = metrics.render().decode()
    assert 'rnnserve_snapshot_seconds_count{phase="stall"}' in samples
    assert "rnnserve_snapshot_failures_total 0.0" in samples

    async with running(make_settings(snapshot_path=crashed, snapshot_interval_s=INTERVAL)) as m:
        assert crashed.is_file()  # kept: it is what was restored, until the next snapshot replaces it
        assert (await m.get(sid, "key-1")).seq == 3
        got = state_of((await m.export_state(sid, "key-1")).state, ref)
        assert np.allclose(got, np.stack([s[:, 0] for s in ref.run_chunks([events[:3]])]), atol=1e-5)
        with pytest.raises(SessionDeleted):
            await m.get(ended, "key-1")
        response = await m.step(sid, "key-1", body("sensor", events[3:], 3))  # the client goes on
        assert response.seq == 5


@memory_only
async def test_a_corrupt_snapshot_is_set_aside_and_the_next_one_is_good(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "sessions.snapshot"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    stale = tmp_path / ".sessions.snapshot.abc123.tmp"  # a write a crash cut short
    stale.write_bytes(b"half")
    async with running(make_settings(snapshot_path=path, snapshot_interval_s=INTERVAL)) as m:
        assert not stale.exists()
        assert path.with_name("sessions.snapshot.corrupt").read_bytes().startswith(b"PK")
        assert await m.store.live_sessions("lm-gru/1") == 0
        sid = (await m.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        await snapshot_after(path, time.time())
        ids = read_snapshot(path)[1]
        assert sid in {i for name, a in ids.items() if name.endswith(".ids") for i in a.tolist()}


@memory_only
async def test_snapshots_that_cannot_be_written_cost_the_snapshots_not_the_service(
    make_settings: Callable[..., Settings], references: dict[str, Reference], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the snapshot directory should be")
    metrics = Metrics()
    settings = make_settings(snapshot_path=blocker / "sessions.snapshot", snapshot_interval_s=INTERVAL)
    async with running(settings, metrics=metrics) as m:
        sid = (await m.create(schemas.CreateSession(model="lm-gru"), None)).session_id
        deadline = time.monotonic() + 20
        while metrics.snapshot_failures._value.get() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(INTERVAL)
        assert metrics.snapshot_failures._value.get() >= 2
        events = references["lm-gru"].events(np.random.default_rng(0), 2)
        assert (await m.step(sid, None, body("lm", events, 0))).seq == 2

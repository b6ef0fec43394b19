"""The session manager's background work: the memory store's snapshot file (restored at start,
rewritten every `snapshot_interval_s` and at stop) and the sweeper that expires idle sessions. A
persistent store (store=redis: Redis keeps the sessions) gets no snapshot file, only the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from service.errors import StoreUnavailable
from service.metrics import Metrics
from service.registry import LoadedModel
from service.settings import Settings
from service.store import SessionStore
from service.store.snapshot_file import remove_stale_temps

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self, settings: Settings, metrics: Metrics, store: SessionStore) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self._sweeper: asyncio.Task[None] | None = None
        self._snapshotter: asyncio.Task[None] | None = None
        self._stop_snapshots = asyncio.Event()
        self._started = False

    @property
    def _snapshot_path(self) -> Path | None:
        """The snapshot file, None when there is none to keep (not configured, or a persistent store)."""
        return None if self.store.persistent else self.settings.snapshot_path

    def restore(self, models: Sequence[LoadedModel]) -> None:
        """At start, once the store is open: reload the snapshot file, if there is one."""
        path = self._snapshot_path
        if path is not None:
            remove_stale_temps(path)
            if path.is_file():
                self._load_snapshot(path, models)

    def start(self) -> None:
        """Start the sweeper, and the periodic snapshots if `snapshot_interval_s` asks for them."""
        self._started = True
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_forever(), name="session-sweeper")
        path = self._snapshot_path
        if path is not None and self.settings.snapshot_interval_s > 0:
            self._snapshotter = loop.create_task(self._snapshot_forever(path), name="session-snapshots")

    async def stop(self) -> None:
        """Stop the sweeper and the periodic snapshots (a write under way finishes first)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._snapshotter is not None:  # a write under way finishes first, or it could land after ours
            self._stop_snapshots.set()
            await self._snapshotter

    def save_final(self) -> None:
        """At stop, once every batch has finished: write the snapshot file."""
        path = self._snapshot_path
        # a failed start must not overwrite a good snapshot
        if path is not None and self._started:
            try:
                count = self.store.save(path)
            except OSError:  # the shutdown goes on: the last periodic snapshot (if any) stays in place
                log.exception("session snapshot %s could not be written at shutdown", path)
            else:
                log.info("wrote %d session(s) to %s", count, path)

    def _load_snapshot(self, path: Path, models: Sequence[LoadedModel]) -> None:
        try:
            count = self.store.load(path, models)
        except OSError as exc:
            log.error("session snapshot %s not loaded: %s", path, exc)
            return
        except (ValueError, KeyError) as exc:
            corrupt = path.with_name(path.name + ".corrupt")
            path.replace(corrupt)  # kept for a look, out of the way of the next snapshot
            log.error("session snapshot %s not loaded: %s (moved to %s)", path, exc, corrupt)
            return
        if self.settings.snapshot_interval_s > 0:
            # the file is what was just restored; the next periodic snapshot replaces it
            log.info("restored %d session(s) from %s", count, path)
            return
        done = path.with_name(path.name + ".loaded")
        path.replace(done)  # a crash later must not bring these sessions back a second time
        log.info("restored %d session(s) from %s (moved to %s)", count, path, done)

    async def _snapshot_forever(self, path: Path) -> None:
        """Write the snapshot every `snapshot_interval_s` until stop (which writes the last one): what
        a crash loses is bounded by the interval plus one write."""
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_snapshots.wait(), self.settings.snapshot_interval_s)
            if self._stop_snapshots.is_set():
                return
            try:
                saved = await self.store.save_async(path)
            except Exception:  # disk full, permissions: keep serving, keep trying
                self.metrics.snapshot_failures.inc()
                if not failing:
                    log.exception("session snapshot %s failed (retrying every interval)", path)
                failing = True
                continue
            if failing:
                log.info("session snapshot %s written again", path)
            failing = False
            m = self.metrics
            m.snapshot_seconds.labels("loop").observe(saved.loop_s)
            m.snapshot_seconds.labels("stall").observe(saved.stall_s)
            m.snapshot_seconds.labels("write").observe(saved.write_s)
            m.snapshot_last_success.set(time.time())
            log.debug(
                "snapshot: %d session(s) to %s; longest stall %.1f ms, %.1f ms on the loop, %.0f ms writing",
                saved.count,
                path,
                1e3 * saved.stall_s,
                1e3 * saved.loop_s,
                1e3 * saved.write_s,
            )

    async def _sweep_forever(self) -> None:
        interval = min(max(self.settings.session_ttl_s / 10, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.sweep()
            except StoreUnavailable:
                pass  # the store logs the outage once; the next pass tries again
            except Exception:  # the sweeper must outlive a bad pass
                log.exception("session sweep failed")

"""Runtime model management: one mechanism behind the admin routes, Triton's repository API and the
directory watcher.

    load(name, version)      verify and open the artifact in a worker thread, then serve it
    set_default(name, v)     pin the version new sessions get when they name none (None: the highest)
    unload(name, version)    policy drain: new sessions cannot pick it, its sessions go on until they
                             end (deleted, expired), then it unloads; policy end: its sessions end at
                             once (410 `session_unloaded`) and it unloads
    scan()                   load every version directory not seen yet (the watcher polls it)

Operations take turns (one lock), so a watcher pass and an admin call never load the same version twice.
A session stays on the version it was created on: nothing here moves one. What a version's state
means: ready (takes new sessions), draining (serves its sessions only), unloaded (gone from this
process; its directory is skipped by the watcher until it is loaded again by name).

Per process: with several replicas each one manages its own models. The watcher gives them the same
versions when they share the models directory; pins and unloads are per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Literal

from service import schemas
from service.errors import ArtifactRefused, BadRequest, ModelNotFound
from service.manifest import ArtifactError
from service.registry import NAME_PATTERN, LoadedModel

if TYPE_CHECKING:
    from service.sessions import SessionManager

log = logging.getLogger(__name__)

Policy = Literal["drain", "end"]
# how often drains are checked for completion when the watcher is off
_DRAIN_CHECK_S = 5.0


def _check_names(*names: str) -> None:
    for name in names:
        if not NAME_PATTERN.match(name):
            raise BadRequest(
                f"{name!r} is not a model name or version: letters, digits and _ . - (not first)"
            )


class ModelControl:
    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.registry = manager.registry
        self.settings = manager.settings
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.publish()
        self._task = asyncio.get_running_loop().create_task(self._watch_forever(), name="model-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch_forever(self) -> None:
        interval = self.settings.watch_models_s or _DRAIN_CHECK_S
        while True:
            await asyncio.sleep(interval)
            try:
                if self.settings.watch_models_s > 0:
                    await self.scan()
                await self.finish_drains()
            except Exception:  # the watcher must outlive a bad pass (Redis away, a disk error)
                log.exception("model watcher pass failed")

    # ---- the operations ----------------------------------------------------------------------------

    async def load(self, name: str, version: str) -> schemas.ModelInfo:
        """Serve `name/version` from the models directory. A draining version goes back to ready; a
        loaded one is left as it is."""
        async with self._lock:
            model = await self._load(name, version)
            self.publish()
            return self._info(model)

    async def load_name(self, name: str) -> list[schemas.ModelInfo]:
        """Triton's load: every version of `name` in the models directory (unloaded ones included)."""
        _check_names(name)
        async with self._lock:
            root = self.settings.models_dir / name
            versions = []
            if root.is_dir():
                versions = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not versions:
                raise ModelNotFound(f"no model {name!r} in the models directory", model=name)
            models = [await self._load(name, version) for version in versions]
            self.publish()
            return [self._info(m) for m in models]

    async def _load(self, name: str, version: str) -> LoadedModel:
        _check_names(name, version)
        found = self.registry.find(f"{name}/{version}")
        if found is not None:
            self.registry.undrain(found)
            return found
        if not (self.settings.models_dir / name / version).is_dir():
            raise ModelNotFound(
                f"no directory {name}/{version} in the models directory", model=name, version=version
            )
        try:
            model = await asyncio.to_thread(self.registry.read, name, version)
        except ArtifactError as exc:
            raise ArtifactRefused(str(exc), model=name, version=version) from None
        self.registry.add(model)
        self.manager.versions.serve(model)
        return model

    async def set_default(self, name: str, version: str | None) -> schemas.ModelInfo:
        async with self._lock:
            self.registry.pin_default(name, version)
            self.publish()
            return self._info(self.registry.get(name))

    async def unload(self, name: str, version: str, policy: Policy | None = None) -> schemas.ModelInfo:
        async with self._lock:
            model = self.registry.get(name, version)
            info = await self._unload(model, policy or self.settings.unload_policy)
            self.publish()
            return info

    async def unload_name(self, name: str, policy: Policy | None = None) -> list[schemas.ModelInfo]:
        """Triton's unload: every loaded version of `name`."""
        async with self._lock:
            self.registry.get(name)  # ModelNotFound for a name not served
            models = [m for m in self.registry.all() if m.name == name]
            infos = [await self._unload(m, policy or self.settings.unload_policy) for m in models]
            self.publish()
            return infos

    async def _unload(self, model: LoadedModel, policy: Policy) -> schemas.ModelInfo:
        if policy == "end":
            self.registry.remove(model)
            ended = await self.manager.store.end_all(model.key, "unloaded")
            await self.manager.versions.unserve(model.key)
            log.info("unloaded model %s; %d session(s) ended", model.key, ended)
            return model.info(default=False, state="unloaded")
        self.registry.drain(model)
        if await self.manager.store.live_sessions(model.key) == 0:
            await self._finish(model)
            return model.info(default=False, state="unloaded")
        log.info("draining model %s: it unloads when its last session ends", model.key)
        return model.info(default=False, state="draining")

    async def _finish(self, model: LoadedModel) -> None:
        self.registry.remove(model)
        await self.manager.versions.unserve(model.key)
        log.info("unloaded model %s", model.key)

    async def finish_drains(self) -> int:
        """Unload the draining versions whose last session has ended; returns how many."""
        async with self._lock:
            done = 0
            for model in self.registry.draining_models():
                if await self.manager.store.live_sessions(model.key) == 0:
                    await self._finish(model)
                    done += 1
            if done:
                self.publish()
            return done

    async def scan(self) -> list[schemas.ModelInfo]:
        """Load the version directories not seen yet; a refused one is logged once per change of its
        files (a copy still going on is retried when it completes)."""
        async with self._lock:
            loaded: list[LoadedModel] = []
            for name, version in await asyncio.to_thread(self.registry.scan):
                try:
                    loaded.append(await self._load(name, version))
                except (ArtifactRefused, ModelNotFound) as exc:
                    log.warning("not loading %s/%s yet: %s", name, version, exc.message)
            if loaded:
                log.info("watcher loaded %s", ", ".join(m.key for m in loaded))
                self.publish()
            return [self._info(m) for m in loaded]

    # ---- what they report --------------------------------------------------------------------------

    def _info(self, model: LoadedModel) -> schemas.ModelInfo:
        found = self.registry.find(model.key)
        if found is None:
            return model.info(default=False, state="unloaded")
        draining = self.registry.draining(model.key)
        default = self.registry.default_version(model.name) == model.version
        return model.info(default=default, state="draining" if draining else "ready")

    def publish(self) -> None:
        """The `rnnserve_model_versions` gauge: one series per loaded version."""
        gauge = self.manager.metrics.model_versions
        gauge.clear()
        for info in self.registry.models().models:
            state = "default" if info.default else info.state
            gauge.labels(info.name, info.version, state).set(1)

    def index(self) -> list[schemas.RepositoryEntry]:
        """Triton's repository index: every version loaded or found in the models directory."""
        entries: dict[tuple[str, str], schemas.RepositoryEntry] = {}
        root = self.settings.models_dir
        if root.is_dir():
            for name_dir in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                for version_dir in (
                    p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                ):
                    key = f"{name_dir.name}/{version_dir.name}"
                    if self.registry.unloaded(key):
                        reason = "unloaded"
                    else:
                        reason = self.registry.errors.get(key, "not loaded yet")
                    entries[(name_dir.name, version_dir.name)] = schemas.RepositoryEntry(
                        name=name_dir.name, version=version_dir.name, state="UNAVAILABLE", reason=reason
                    )
        for model in self.registry.all():
            draining = self.registry.draining(model.key)
            entries[(model.name, model.version)] = schemas.RepositoryEntry(
                name=model.name,
                version=model.version,
                state="UNLOADING" if draining else "READY",
                reason="draining: serves its sessions until they end" if draining else "",
            )
        return [entries[k] for k in sorted(entries)]

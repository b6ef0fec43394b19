"""The model versions this process serves: per version, its store partition, predictor and batcher
(`stepping.Served`), started on first use and stopped when the version is unloaded.

With a shared store a session may have been created by another replica, on a version this one serves
but has not used yet (`for_record` starts it), or does not serve (refused, saying why).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from service.batcher import Batcher
from service.errors import ModelNotFound, SessionUnloaded
from service.metrics import Metrics
from service.predictors import make_predictor
from service.registry import LoadedModel, Registry
from service.runner import ModelRunner, StepJob, StepResult
from service.settings import Settings
from service.stepping import Served
from service.store import SessionRecord, SessionStore


class ServedVersions:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        registry: Registry,
        store: SessionStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.store = store
        self.clock = clock
        self._served: dict[str, Served] = {}

    def __iter__(self) -> Iterator[Served]:
        return iter(self._served.values())

    def get(self, model_key: str) -> Served | None:
        """The version `model_key` if it is served already (no loading, no error)."""
        return self._served.get(model_key)

    def serve(self, model: LoadedModel) -> Served:
        """The served version of `model`: its partition attached and its batcher started on first use."""
        served = self._served.get(model.key)
        if served is not None:
            return served
        part = self.store.attach(model)
        s = self.settings
        predictor = make_predictor(model, s, self.metrics)
        runner = ModelRunner(
            model, self.store, part, predictor.postprocess, getattr(predictor, "session_stats", None)
        )
        batcher: Batcher[StepJob, StepResult] = Batcher(
            runner,
            max_batch_size=s.max_batch_size,
            max_queue_delay_us=s.max_queue_delay_us,
            metrics=self.metrics,
            labels=(model.name, model.version),
            clock=self.clock,
            name=model.key,
            on_loop=runner.gil_bound,
        )
        batcher.start()
        m = self.metrics
        served = self._served[model.key] = Served(
            model=model,
            part=part,
            predictor=predictor,
            batcher=batcher,
            events=m.events.labels(model.name, model.version),
            replays=m.replays.labels(model.name),
            conflicts=m.seq_conflicts.labels(model.name),
        )
        return served

    async def unserve(self, key: str) -> None:
        """Stop serving a version: its batcher runs what it has accepted, then stops."""
        served = self._served.pop(key, None)
        if served is not None:
            await served.batcher.stop(self.settings.shutdown_drain_s)

    def serve_new(self, model: LoadedModel) -> Served:
        """The served version for a new session of `model`; refused while it is being unloaded."""
        if self.registry.draining(model.key):
            raise ModelNotFound(
                f"model {model.key} is being unloaded: it serves its sessions but takes no new ones",
                model=model.name,
                version=model.version,
            )
        return self.serve(model)

    def for_record(self, record: SessionRecord) -> Served:
        """The served version of a session, started if this process serves it but has not used it yet;
        SessionUnloaded for an unloaded version, ModelNotFound for one this server does not serve."""
        served = self._served.get(record.model_key)
        if served is None:
            name, _, version = record.model_key.partition("/")
            if self.registry.unloaded(record.model_key):
                raise SessionUnloaded(
                    f"session {record.session_id} was on {record.model_key}, which was unloaded",
                    session_id=record.session_id,
                    reason="unloaded",
                )
            try:
                served = self.serve(self.registry.get(name, version))
            except ModelNotFound as exc:
                raise ModelNotFound(
                    f"session {record.session_id} is on {record.model_key}, which this server does not serve",
                    session_id=record.session_id,
                    model=name,
                    version=version,
                ) from exc
        return served

"""Runtime model management on a running SessionManager: the watcher's scan, load, default, unload.

The models directory starts with `lm/1` (the tiny GRU lm) and gets `lm/2` (the tiny LSTM lm) while
sessions run; every output is checked against that version's own graph run directly (Reference), so a
session that silently moved to another version would fail.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from manager_support import Reference, body, check_outputs, running

from service import schemas
from service.errors import ModelNotFound, SessionUnloaded
from service.metrics import Metrics
from service.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

Publish = Callable[[Path, Path, str, str], Path]


@pytest.fixture
def models(tiny_models_dir: Path, tmp_path: Path, publish: Publish) -> Path:
    root = tmp_path / "models"
    publish(tiny_models_dir / "lm-gru" / "1", root, "lm", "1")
    return root


def versions(listing: schemas.ModelList) -> dict[str, tuple[bool, str]]:
    return {m.version: (m.default, m.state) for m in listing.models if m.name == "lm"}


def gauge(metrics: Metrics) -> dict[tuple[str, str], str]:
    found = {}
    for family in metrics.model_versions.collect():
        for sample in family.samples:
            found[(sample.labels["model"], sample.labels["version"])] = sample.labels["state"]
    return found


async def test_load_default_and_drain_while_sessions_run(
    models: Path,
    tiny_models_dir: Path,
    publish: Publish,
    make_settings: Callable[..., Settings],
    references: dict[str, Reference],
) -> None:
    v1, v2 = references["lm-gru"], references["lm-lstm"]
    rng = np.random.default_rng(5)
    events = v1.events(rng, 6)
    metrics = Metrics()
    async with running(make_settings(models_dir=models, watch_models_s=0), metrics=metrics) as manager:
        old = (await manager.create(schemas.CreateSession(model="lm"), None)).session_id
        first = await manager.step(old, None, body("lm", events[:3], seq=0))

        publish(tiny_models_dir / "lm-lstm" / "1", models, "lm", "2")
        assert [m.version for m in await manager.control.scan()] == ["2"]
        assert versions(manager.models()) == {"1": (False, "ready"), "2": (True, "ready")}
        assert gauge(metrics) == {("lm", "1"): "ready", ("lm", "2"): "default"}

        new = await manager.create(schemas.CreateSession(model="lm"), None)
        assert new.version == "2"
        out_new = await manager.step(new.session_id, None, body("lm", events))
        check_outputs(v2, events, out_new.outputs)

        await manager.control.set_default("lm", "1")
        pinned = await manager.create(schemas.CreateSession(model="lm"), None)
        assert pinned.version == "1"
        await manager.control.set_default("lm", None)
        assert versions(manager.models())["2"] == (True, "ready")

        # drain: the old session goes on, on its own version; nothing new lands on it
        info = await manager.control.unload("lm", "1", "drain")
        assert info.state == "draining"
        rest = await manager.step(old, None, body("lm", events[3:], seq=3))
        check_outputs(v1, events, first.outputs + rest.outputs)
        with pytest.raises(ModelNotFound, match="being unloaded"):
            await manager.create(schemas.CreateSession(model="lm", version="1"), None)
        assert versions(manager.models())["1"] == (False, "draining")
        assert gauge(metrics)[("lm", "1")] == "draining"
        # both sessions created on version 1 must end before it unloads
        assert await manager.control.finish_drains() == 0
        await manager.delete(old, None)
        assert await manager.control.finish_drains() == 0
        await manager.delete(pinned.session_id, None)
        assert await manager.control.finish_drains() == 1
        assert versions(manager.models()) == {"2": (True, "ready")}
        assert ("lm", "1") not in gauge(metrics)
        # unloaded on purpose: the watcher does not bring it back; an explicit load does
        assert await manager.control.scan() == []
        assert (await manager.control.load("lm", "1")).state == "ready"


@pytest.mark.parametrize("store_backend", ["memory"])
async def test_unload_with_end_answers_410(
    models: Path, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    async with running(make_settings(models_dir=models, watch_models_s=0)) as manager:
        sid = (await manager.create(schemas.CreateSession(model="lm"), None)).session_id
        await manager.step(sid, None, body("lm", ["w1"], seq=0))
        info = await manager.control.unload("lm", "1", "end")
        assert info.state == "unloaded"
        with pytest.raises(SessionUnloaded) as caught:
            await manager.step(sid, None, body("lm", ["w2"], seq=1))
        assert caught.value.status == 410 and caught.value.details["reason"] == "unloaded"
        assert manager.models().models == []


@pytest.mark.parametrize("store_backend", ["memory"])
async def test_half_written_artifact_waits_for_its_files(
    models: Path, tiny_models_dir: Path, make_settings: Callable[..., Settings]
) -> None:
    """A version copied in place (not renamed) is refused while its graph is short, not retried while
    its files stay the same, and loaded once the copy completes: the manifest's hash guards it."""
    source = tiny_models_dir / "lm-lstm" / "1"
    target = models / "lm" / "3"
    target.mkdir()
    manifest = (source / "manifest.json").read_text().replace('"name": "lm-lstm"', '"name": "lm"')
    (target / "manifest.json").write_text(manifest.replace('"version": "1"', '"version": "3"'))
    (target / "vocab.txt").write_bytes((source / "vocab.txt").read_bytes())
    graph = (source / "model.onnx").read_bytes()
    (target / "model.onnx").write_bytes(graph[: len(graph) // 2])
    async with running(make_settings(models_dir=models, watch_models_s=0)) as manager:
        assert "lm/3" in manager.registry.errors  # refused at start
        assert await manager.control.scan() == []
        assert manager.registry.scan() == []  # same files: not even tried again
        (target / "model.onnx").write_bytes(graph)
        assert [m.version for m in await manager.control.scan()] == ["3"]
        assert "lm/3" not in manager.registry.errors


@pytest.mark.parametrize("store_backend", ["redis"])
async def test_redis_replicas_each_manage_their_own_versions(
    models: Path, make_settings: Callable[..., Settings], references: dict[str, Reference]
) -> None:
    """Unloading on one replica ends nothing in Redis: that replica answers 410 for the version's
    sessions, the other one (still serving it) steps them on, from the same state."""
    settings = make_settings(models_dir=models, watch_models_s=0)
    events = references["lm-gru"].events(np.random.default_rng(1), 4)
    async with running(settings) as a, running(settings) as b:
        sid = (await a.create(schemas.CreateSession(model="lm"), None)).session_id
        first = await a.step(sid, None, body("lm", events[:2], seq=0))
        await a.control.unload("lm", "1", "end")
        with pytest.raises(SessionUnloaded):
            await a.step(sid, None, body("lm", events[2:], seq=2))
        rest = await b.step(sid, None, body("lm", events[2:], seq=2))
        check_outputs(references["lm-gru"], events, first.outputs + rest.outputs)

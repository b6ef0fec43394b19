"""Bulk ingest's array lane on the memory store (service/bulk_slab.py) where its rows change under it:
a session that ends while its batch runs, and a new session that takes its slab row meanwhile."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from manager_support import running

from service import schemas
from service.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.mark.parametrize("store_backend", ["memory"])
@pytest.mark.parametrize("model", ["sensor-gru", "lm-lstm"])
async def test_a_row_reused_while_its_batch_runs_is_not_written(
    make_settings: Callable[..., Settings], model: str
) -> None:
    """One session of a bulk request is deleted while the request's batch runs, and a new session
    takes its row: the new one is left as it was (seq 0, zero state), the deleted step answers 410 (deleted),
    and the other steps are applied and answer what the per-session route answers."""
    body: dict[str, Any] = (
        {"readings": [[20.5, 1001.0, 0.4]]} if model.startswith("sensor") else {"tokens": ["w1"]}
    )
    async with running(make_settings()) as manager:
        create = schemas.CreateSession(model=model)
        ids = [(await manager.create(create, None)).session_id for _ in range(4)]
        twins = [(await manager.create(create, None)).session_id for _ in range(3)]
        served = manager.served_now(f"{model}/1")
        assert served is not None
        run_prepared = served.batcher.run_prepared
        made: list[str] = []

        async def meanwhile(prepared: Any, jobs: int, events: int) -> Any:
            await manager.store.delete(ids[1], None)  # the turn keeps requests out, not expiry or eviction
            made.append((await manager.create(create, None)).session_id)  # the freed row, reused
            return await run_prepared(prepared, jobs, events)

        served.batcher.run_prepared = meanwhile  # type: ignore[method-assign]
        results = json.loads(
            await manager.steps_json(None, {"steps": [{"session_id": s, **body} for s in ids]})
        )
        served.batcher.run_prepared = run_prepared  # type: ignore[method-assign]
        fresh = await manager.export_state(made[0], None)
        zero = await manager.export_state((await manager.create(create, None)).session_id, None)
        assert (await manager.get(made[0], None)).seq == 0
        assert (fresh.state, fresh.extra) == (zero.state, zero.extra)
        answers = results["results"]
        assert answers[1]["error"]["code"] == "session_deleted" and answers[1]["session_id"] == ids[1]
        alone = [json.loads(await manager.step_json(s, None, body)) for s in twins]
        for answer, session_id, want in zip(
            [answers[0], *answers[2:]], [ids[0], *ids[2:]], alone, strict=True
        ):
            assert answer == {"session_id": session_id, **want}
            assert (await manager.get(session_id, None)).seq == 1


@pytest.mark.parametrize("store_backend", ["memory"])
@pytest.mark.parametrize("model", ["sensor-gru", "lm-lstm"])
async def test_bulk_answers_are_the_per_session_answers(
    make_settings: Callable[..., Settings], model: str
) -> None:
    """Rounds of one bulk request over sessions (with and without `seq`, timestamps, 1 or 3 events)
    and the same steps through the per-session route on twin sessions: the same answers, byte for
    byte once the session id is set aside; a replayed round answers the stored answers."""
    rng = random.Random(4)

    def step(n: int, seq: int | None) -> dict[str, Any]:
        count = 1 if n % 2 else 3
        body: dict[str, Any]
        if model.startswith("sensor"):
            readings = [[rng.gauss(20, 2), rng.gauss(1000, 5), rng.random()] for _ in range(count)]
            body = {"readings": readings}
            if n % 3 == 0:
                body["timestamps"] = [f"2024-05-0{1 + n % 5}T{(n + t) % 24:02d}:00:00" for t in range(count)]
        else:
            body = {"tokens": [f"w{rng.randrange(40)}" for _ in range(count)], "top_k": n % 4}
        return body if seq is None else {**body, "seq": seq}

    async with running(make_settings()) as manager:
        create = schemas.CreateSession(model=model)
        ids = [(await manager.create(create, None)).session_id for _ in range(6)]
        twins = [(await manager.create(create, None)).session_id for _ in range(6)]
        for _ in range(4):
            seqs = [(await manager.get(s, None)).seq for s in ids]
            bodies = [step(n, seqs[n] if n % 2 else None) for n in range(len(ids))]
            steps = [{"session_id": s, **b} for s, b in zip(ids, bodies, strict=True)]
            raw = await manager.steps_json(None, {"steps": steps})
            assert orjson.dumps(orjson.loads(raw)) == raw  # the pieces written as JSON are orjson's bytes
            bulk = json.loads(raw)["results"]
            again = [s for s in steps if "seq" in s]
            replayed = json.loads(await manager.steps_json(None, {"steps": again}))["results"]
            alone = [await manager.step_json(s, None, b) for s, b in zip(twins, bodies, strict=True)]
            for n, (got, want) in enumerate(zip(bulk, alone, strict=True)):
                assert got.pop("session_id") == ids[n]
                assert orjson.dumps(got) == want, n
            assert [r.pop("session_id") for r in replayed] == [s["session_id"] for s in again]
            assert replayed == [b for n, b in enumerate(bulk) if "seq" in steps[n]]

"""Bulk ingest's array lane on the memory store (service/bulk_slab.py) where its rows change under it:
a session that ends while its batch runs, and a new session that takes its slab row meanwhile."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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

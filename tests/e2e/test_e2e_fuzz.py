"""Schemathesis against the real server, from the server's own OpenAPI schema: no input answers 5xx,
and every answer is one the schema declares (status, content type, body).

Every case that names a session gets a fresh real one (of an lm or a sensor model, whichever the
body looks meant for), and every case that names a model gets a served one, so that the session and
inference routes are reached, not stopped at 404. Bounded for CI by the examples per operation.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from e2e_support import KEYS, MAX_BODY, MAX_EVENTS, ServerProcess, auth
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
LM, SENSOR = "lm-gru", "sensor-gru"
PER_ITEM_ERRORS = {"/v1/steps"}  # bulk: a bad step is answered in its own result, the body 200
# Bad data may be refused as too large (413) before it is parsed: the body limit is a rejection too, and
# every route that takes a body declares it. The rest is schemathesis' default set.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
NEGATIVE = {"negative_data_rejection": {"expected-statuses": REJECTIONS}}
CONFIG = SchemathesisConfig.from_dict({"checks": NEGATIVE})


@pytest.fixture(scope="module")
def fuzzed(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tiny_models_dir,
        tmp_path_factory.mktemp("fuzz"),
        api_keys=",".join(KEYS),
        max_events_per_request=str(MAX_EVENTS),
        max_body_bytes=str(MAX_BODY),
        max_generate_tokens="20",
    ).wait_ready()
    yield process
    assert process.stop() == 0, process.log()


def _model_for(body: Any) -> str:
    text = str(body)
    if "readings" in text:
        return SENSOR
    return LM if "tokens" in text or "text" in text else random.choice((LM, SENSOR))


def test_no_input_breaks_the_contract(fuzzed: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 10, [op.label for op in operations]
    with httpx.Client(base_url=fuzzed.url, headers=auth(), timeout=30) as http:
        for operation in operations:
            if os.environ.get("FUZZ_ONLY", "") not in operation.label:
                continue
            _fuzz(operation, GenerationMode.POSITIVE, fuzzed.url, http)
            with contextlib.suppress(Unsatisfiable):  # an operation without inputs has no bad ones
                _fuzz(operation, GenerationMode.NEGATIVE, fuzzed.url, http)


def _fuzz(operation: Any, mode: GenerationMode, url: str, http: httpx.Client) -> None:
    checks = CHECKS
    if operation.path in PER_ITEM_ERRORS:  # 200 with an error per bad item is the route's contract
        checks = [c for c in CHECKS if c is not negative_data_rejection]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        path = case.path_parameters if case.path_parameters is not None else {}
        model = _model_for(case.body)
        if "session_id" in path:
            created = http.post("/v1/sessions", json={"model": model})
            assert created.status_code == 201, created.text
            path["session_id"] = created.json()["session_id"]
        if "name" in path:
            path["name"] = model
            if "version" in path:
                path["version"] = "1"
        headers = dict(case.headers or {})
        headers.setdefault("Authorization", auth()["Authorization"])
        case.headers = headers
        case.call_and_validate(base_url=url, checks=checks)

    started = time.monotonic()
    run()
    print(f"{operation.label} {mode.value}: {time.monotonic() - started:.1f} s")

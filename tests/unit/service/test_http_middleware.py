"""The request envelope on a small real FastAPI app: ids, body limit, metrics labels, the last-resort 500."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from service.error_handlers import install_error_handlers
from service.errors import SessionExpired
from service.logs import JsonFormatter, _RequestIdFilter, request_id_var
from service.metrics import Metrics
from service.middleware import RequestMiddleware

pytestmark = pytest.mark.unit
LIMIT = 2048


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(metrics: Metrics) -> Iterator[Client]:
    app = FastAPI()

    @app.post("/items/{item_id}")
    async def echo(item_id: str, request: Request) -> dict[str, object]:
        return {"item": item_id, "bytes": len(await request.body()), "request_id": request.state.request_id}

    @app.get("/gone")
    async def gone() -> None:
        raise SessionExpired("session s was expired", session_id="s")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, metrics=metrics, max_body_bytes=LIMIT, routes=app.router.routes)
    yield Client(app)


class Client:
    """Requests through httpx's ASGI transport: the app in this process, no server, real HTTP semantics."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


def test_request_id_is_echoed_generated_and_given_to_handlers(client: Client) -> None:
    response = client.post("/items/1", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123" and response.json()["request_id"] == "abc-123"
    generated = client.post("/items/1", headers={"X-Request-ID": "spaces are not sane"})
    assert generated.headers["x-request-id"] == generated.json()["request_id"] != "spaces are not sane"


def test_bodies_up_to_the_limit_pass_larger_ones_are_413(client: Client) -> None:
    assert client.post("/items/1", content=b"x" * LIMIT).json()["bytes"] == LIMIT
    declared = client.post("/items/1", content=b"x" * (LIMIT + 1))
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(5):
            yield b"x" * 1000

    streamed = client.post("/items/1", content=chunks())
    assert streamed.status_code == 413 and streamed.json()["error"]["details"] == {"limit_bytes": LIMIT}


def test_metrics_use_route_templates(client: Client, metrics: Metrics) -> None:
    client.post("/items/one")
    client.post("/items/two")
    client.post("/items/3", content=b"x" * (LIMIT + 1))
    client.get("/nowhere/at/all")
    text = metrics.render().decode()
    assert 'rnnserve_requests_total{method="POST",route="/items/{item_id}",status="200"} 2.0' in text
    assert 'rnnserve_requests_total{method="POST",route="/items/{item_id}",status="413"} 1.0' in text
    assert 'rnnserve_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "one" not in text and "nowhere" not in text


def test_service_errors_and_unknown_routes_share_the_shape(client: Client) -> None:
    gone = client.get("/gone")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "session_expired"
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "/nowhere" in missing.json()["error"]["message"]


def test_unexpected_errors_are_logged_and_a_generic_500(
    client: Client, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rnnserve.errors"):
        response = client.get("/boom", headers={"X-Request-ID": "req-boom"})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": response.json()["error"]["message"],
        "details": {"request_id": "req-boom"},
    }
    assert "a bug" not in response.text  # no internals to the client
    record = next(r for r in caplog.records if r.name == "rnnserve.errors")
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    assert 'route="/boom",status="500"' in metrics.render().decode()


def test_json_log_lines_carry_extra_fields_and_the_request_id() -> None:
    token = request_id_var.set("req-9")
    try:
        record = logging.LogRecord("rnnserve.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
        record.status = 200
        _RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /x" and line["status"] == 200 and line["request_id"] == "req-9"
    assert line["level"] == "info" and line["logger"] == "rnnserve.access"

"""deploy/healthcheck.py, the image's HEALTHCHECK and compose's readiness probe, against a local server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from deploy_support import deploy_script

pytestmark = pytest.mark.unit


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def probe() -> Callable[[list[str]], int]:
    healthcheck = deploy_script("healthcheck")
    main: Callable[[list[str]], int] = healthcheck.main
    return main


def test_healthy_on_2xx(
    probe: Callable[[list[str]], int], port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RNNSERVE_PORT", str(port))
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # ignored: the probe never uses a proxy
    assert probe([]) == 0
    assert probe(["/healthz"]) == 0


def test_unhealthy_on_503_or_no_server(
    probe: Callable[[list[str]], int], port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RNNSERVE_PORT", str(port))
    assert probe(["/readyz"]) == 1
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("RNNSERVE_PORT", str(s.getsockname()[1]))
    assert probe([]) == 1

"""No-op servers that measure the load generator and the HTTP stack, not a model.

- `raw`: a bare asyncio protocol that answers every request with a canned JSON body; it costs a few
  microseconds per request, so its rate is close to what the client itself can drive on this machine.
- `fastapi`: the same routes as the service on FastAPI + uvicorn, doing nothing: the most any FastAPI
  server could do here, whatever its model.
- `asgi`: a bare ASGI app (no Starlette) on uvicorn with the service's own protocol settings, answering
  every request and WebSocket message with a canned answer (and `POST /v1/sessions` with a fresh id):
  what uvicorn, its HTTP parser, the WebSocket protocol and the event loop cost per message before
  any application code, the floor under the service's per-session routes (`benchmarks.cost --floor`).

    python -m benchmarks.noop_app --kind raw --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from typing import Any, cast

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

ANSWER = b'{"seq":1,"outputs":[{"token":"w1","token_id":3,"unknown":false,"logprob":-9.2,"next":[]}]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
) + ANSWER


class _NoopProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def _serve_raw(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_NoopProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/sessions/{session_id}/events")
    async def events(session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"seq": 1, "outputs": []}

    @app.websocket("/v1/sessions/{session_id}/stream")
    async def stream(websocket: WebSocket, session_id: str) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.receive_json()
                await websocket.send_json({"seq": 1, "outputs": []})
        except WebSocketDisconnect:
            return

    return app


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The `asgi` kind: the least an ASGI application can do per request and per message."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        created = scope["method"] == "POST" and scope["path"] == "/v1/sessions"
        body = b'{"session_id":"%s"}' % secrets.token_hex(16).encode() if created else ANSWER
        headers = [(b"content-type", b"application/json")]
        if scope["path"] == "/metrics":  # no histograms: an empty exposition
            body, headers = b"", [(b"content-type", b"text/plain; version=0.0.4")]
        await send({"type": "http.response.start", "status": 201 if created else 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        text = ANSWER.decode()
        while (await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": text})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=("raw", "fastapi", "asgi"), default="raw")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.kind in ("fastapi", "asgi"):
        import uvicorn

        app: Any = fastapi_app() if args.kind == "fastapi" else asgi_app
        # the service's own protocol settings (service.cli): no access log, no permessage-deflate, default
        # http/ws/loop
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            backlog=4096,
            access_log=False,
            ws_per_message_deflate=False,
        )
        return
    try:
        import uvloop

        uvloop.run(_serve_raw(args.port))
    except ImportError:
        asyncio.run(_serve_raw(args.port))


if __name__ == "__main__":
    main()

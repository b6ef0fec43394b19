"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for the load generator's hot path.

On 2 cores the client shares the CPU with the server it measures, so every microsecond it spends is
taken from the server. A general client (httpx) costs several times more CPU per request than this
one; the suite measures both against a no-op server and reports the figures (`client` section).
It speaks just enough HTTP/1.1 for a JSON API on loopback: one request at a time per connection,
`Content-Length` or chunked bodies, reconnect when the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib


class HttpError(Exception):
    """The connection failed or the server's answer was not HTTP/1.1 we understand."""


class Http1Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._host_header = f"Host: {host}:{port}\r\n".encode()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request and return (status, body); reconnects once if a kept-alive socket died."""
        for attempt in (0, 1):
            try:
                return await self._request(method, path, body)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self.close()
                if attempt:
                    raise HttpError(f"{method} {path}: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        reader, writer = await self._connect()
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._host_header
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        writer.write(head + b"\r\n" + (body or b""))
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        lines = status_and_headers.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise HttpError(f"bad status line {lines[0]!r}") from exc
        length, chunked, close = -1, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        if chunked:
            payload = await self._read_chunked(reader)
        elif length >= 0:
            payload = await reader.readexactly(length)
        else:
            payload, close = await reader.read(), True
        if close:
            await self.close()
        return status, payload

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

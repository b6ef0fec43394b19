"""Real redis-server processes for the store=redis tests (no Docker): start, kill, restart on one port.

`RedisServer` runs `redis-server` on a free loopback port, in-memory only by default (`--save ''
--appendonly no`) or with an append-only file fsync'ed on every write (`durable=True`), so that a
server killed with SIGKILL and started again on the same port and directory comes back with every
write it acknowledged. `CountingConnection` is a real redis-py connection that counts what it sends:
round trips, and which script each EVALSHA ran.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

REDIS_SERVER = shutil.which("redis-server")
NO_REDIS = "redis-server is not installed (apt-get install redis-server): the store=redis tests need it"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, workdir: Path, durable: bool = False) -> None:
        assert REDIS_SERVER is not None, NO_REDIS
        self.workdir = workdir
        self.durable = durable
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self) -> RedisServer:
        durable = ["--appendonly", "yes", "--appendfsync", "always"]
        persistence = durable if self.durable else ["--appendonly", "no"]
        assert REDIS_SERVER is not None
        with (self.workdir / "redis.log").open("ab") as log:
            argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    *persistence, "--dir", str(self.workdir), "--protected-mode", "no",
                    "--loglevel", "warning"]  # fmt: skip
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                return self
            except redis.exceptions.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{self.log()}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything beyond what it has fsync'ed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def log(self) -> str:
        return (self.workdir / "redis.log").read_text(errors="replace")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()
            client.config_resetstat()

    def evalsha_calls(self) -> int:
        with self.client() as client:
            stats: dict[str, Any] = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


class CountingConnection(aioredis.Connection):
    """Counts the requests it writes (one `send_packed_command` is one round trip, a pipeline too) by
    command name, and the scripts that EVALSHA runs by SHA1, across every connection of this class.
    `requests()` leaves out a new connection's handshake (HELLO, CLIENT SETINFO)."""

    commands: ClassVar[Counter[str]] = Counter()
    scripts: ClassVar[Counter[str]] = Counter()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | memoryview) else list(command)
        parts = bytes(chunks[0][:120]).split(b"\r\n") if chunks else []  # *N, $len, NAME, $len, arg
        name = parts[2].decode().upper() if len(parts) > 2 else "?"
        CountingConnection.commands[name] += 1
        if name == "EVALSHA":
            CountingConnection.scripts[parts[4].decode()] += 1
        await super().send_packed_command(command, check_health)

    @classmethod
    def requests(cls) -> int:
        return sum(n for name, n in cls.commands.items() if name not in ("HELLO", "CLIENT"))

    @classmethod
    def reset(cls) -> None:
        cls.commands, cls.scripts = Counter(), Counter()


def counting_client(url: str) -> aioredis.Redis:
    pool = aioredis.ConnectionPool.from_url(
        url,
        connection_class=CountingConnection,
        max_connections=64,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)

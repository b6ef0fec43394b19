"""rnnserve_client against a real server process: sessions, generate, the WebSocket stream, typed
errors, asyncio, a retry through a connection killed after the server answered (applied once, checked
against the reference), and a session that goes on across a server restart."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import KEYS, TOP_K, Reference, ServerProcess, StartServer, check, make_events, metric_samples

from rnnserve_client import AsyncClient, Client
from rnnserve_client import errors as e

pytestmark = pytest.mark.e2e


class DroppingProxy:
    """A TCP proxy in front of the server. With `drop` > 0 it forwards the request, waits for the
    server's answer to arrive, and resets the client's connection instead of passing the answer on:
    the request was applied, the client never hears so."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream = httpx.URL(upstream_url).port
        self.drop = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        except OSError:  # the server is down (restarting): close, as a dead server would
            client.close()
            return
        upstream.settimeout(None)
        self._open += [client, upstream]
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        try:
            while data := upstream.recv(65536):
                with self._lock:
                    dropping = self.drop > 0
                    if dropping:
                        self.drop -= 1
                        self.dropped += 1
                if dropping:  # the answer came: reset the client's connection instead
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            target.close()

    def close(self) -> None:
        self._listener.close()
        for s in self._open:
            s.close()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[DroppingProxy]:
    p = DroppingProxy(server.url)
    yield p
    p.close()


def replays(server: ServerProcess, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return metric_samples(text, "rnnserve_replays_total").get(f'{{model="{model}"}}', 0.0)


def test_session_step_generate_stream_and_errors(
    server: ServerProcess, references: dict[str, Reference]
) -> None:
    ref = references["lm-gru"]
    events = make_events(ref, random.Random(1), 9)
    with Client(server.url, KEYS[0]) as client:
        assert "lm-gru" in {m["name"] for m in client.models()}
        with client.session("lm-gru") as s:
            outputs = s.step(events[:2], top_k=TOP_K).outputs
            outputs += s.step(" ".join(events[2:4]), top_k=TOP_K).outputs  # text: the server splits it
            outputs += [out for r in s.stream([[t] for t in events[4:]], top_k=TOP_K) for out in r.outputs]
            check(ref, events, outputs)
            assert s.seq == len(events) == s.info().seq
            sample = s.generate(5, seed=3, temperature=0.5)
            assert s.seq == len(events) and len(sample.tokens) <= 5  # not committed
            assert s.generate(5, seed=3, temperature=0.5, commit=True).tokens == sample.tokens
            assert s.seq == len(events) + len(sample.tokens) == s.info().seq
            # a step from another client moves the session on: this one's seq conflicts
            other = client.session("", session_id=s.id)
            other.step(["w1"])
            with pytest.raises(e.SequenceConflict) as conflict:
                s.step(["w2"])  # (the same payload again would be a replay: answered, not applied)
            assert conflict.value.expected_seq == other.seq
            with pytest.raises(e.InvalidInput):
                s.step(events[:1] * 100)  # more events than the server takes in one request
            with pytest.raises(e.InvalidInput):
                s.generate(0)
        with pytest.raises(e.SessionDeleted):
            s.step(events[:1])
        with pytest.raises(e.SessionNotFound):
            client.session("lm-gru", session_id="0" * 32)
        with pytest.raises(e.ModelNotFound):
            client.session("no-such-model")
        sensor = client.session("sensor-gru")
        with pytest.raises(e.InvalidInput):
            sensor.step([[1.0, 2.0]])  # two features; the model takes three
        with pytest.raises(e.BadRequest):
            sensor.generate(3)  # an lm route
        sensor.delete()
    with Client(server.url, "wrong-key") as client, pytest.raises(e.Unauthorized):
        client.models()


def test_asyncio_client(server: ServerProcess, references: dict[str, Reference]) -> None:
    ref = references["sensor-lstm"]
    events = make_events(ref, random.Random(2), 6)

    async def run() -> list[dict[str, Any]]:
        async with AsyncClient(server.url, KEYS[1]) as client, await client.session("sensor-lstm") as s:
            outputs = (await s.step(events[:3])).outputs
            outputs += (await s.step(events[3])).outputs  # one reading as a flat list
            async for result in s.stream([events[4:]]):
                outputs += result.outputs
            assert s.seq == (await s.info()).seq == len(events)
            return outputs

    check(ref, events, asyncio.run(run()))


def test_retry_through_a_killed_connection_applies_once(
    server: ServerProcess, proxy: DroppingProxy, references: dict[str, Reference]
) -> None:
    ref = references["lm-lstm"]
    events = make_events(ref, random.Random(3), 8)
    before = replays(server, "lm-lstm")
    with Client(proxy.url, KEYS[0], retry_for_s=20) as client, client.session("lm-lstm") as s:
        outputs = s.step(events[:2], top_k=TOP_K).outputs
        proxy.drop = 1  # the server applies the next step; its answer never arrives
        outputs += s.step(events[2:5], top_k=TOP_K).outputs
        assert proxy.dropped == 1
        outputs += s.step(events[5:], top_k=TOP_K).outputs
        check(ref, events, outputs)  # as one uninterrupted run: nothing applied twice
        assert s.seq == s.info().seq == len(events)
    assert replays(server, "lm-lstm") == before + 1  # the retry was answered from the stored answer

    async def run_async() -> None:
        async with AsyncClient(proxy.url, KEYS[0], retry_for_s=20) as client:
            s = await client.session("lm-lstm")
            out = (await s.step(events[:4], top_k=TOP_K)).outputs
            proxy.drop = 1
            out += (await s.step(events[4:], top_k=TOP_K)).outputs
            check(ref, events, out)
            assert (await s.info()).seq == len(events)
            await s.delete()

    asyncio.run(run_async())
    assert proxy.dropped == 2 and replays(server, "lm-lstm") == before + 2


def test_a_session_goes_on_across_a_server_restart(
    start_server: StartServer, tmp_path: Path, references: dict[str, Reference]
) -> None:
    """SIGTERM writes the sessions to the snapshot; the next server reads them back. The client sees
    refused connections and 503s meanwhile, and retries until the session answers again."""
    workdir = tmp_path / "restarting"
    first = start_server(workdir=workdir)
    proxy = DroppingProxy(first.url)
    ref = references["lm-rnn"]
    events = make_events(ref, random.Random(4), 6)
    try:
        with Client(proxy.url, retry_for_s=120) as client:
            s = client.session("lm-rnn")
            outputs = s.step(events[:3], top_k=TOP_K).outputs
            assert first.stop() == 0
            second: list[ServerProcess] = []

            def restart() -> None:
                second.append(start_server(workdir=workdir, ready=False))
                proxy.upstream = httpx.URL(second[0].url).port

            thread = threading.Thread(target=restart)
            thread.start()
            try:
                outputs += s.step(events[3:], top_k=TOP_K).outputs  # retried until the new server answers
            finally:
                thread.join()
            check(ref, events, outputs)
            assert s.info().seq == len(events)
    finally:
        proxy.close()


def test_bulk_steps_and_their_retry(
    server: ServerProcess, proxy: DroppingProxy, references: dict[str, Reference]
) -> None:
    lm, sensor = references["lm-gru"], references["sensor-gru"]
    rng = random.Random(5)
    words, readings = make_events(lm, rng, 6), make_events(sensor, rng, 4)
    before = replays(server, "lm-gru")
    with Client(proxy.url, KEYS[0], retry_for_s=20) as client:
        a, b, gone = client.session("lm-gru"), client.session("sensor-gru"), client.session("lm-gru")
        gone.delete()
        first = client.steps(
            [
                (a, words[:2], {"top_k": TOP_K}),
                (b, readings[:2]),
                (a, words[2:3], {"top_k": TOP_K}),
                (gone, ["w1"]),
            ]
        )
        assert isinstance(first[3], e.SessionDeleted)
        proxy.drop = 1  # applied, answer lost: the whole bulk call is sent again, same seqs
        second = client.steps([(a, words[3:], {"top_k": TOP_K}), (b, readings[2:])])
        assert proxy.dropped == 1 and replays(server, "lm-gru") == before + 1
        results = [r for r in first[:3] + second if not isinstance(r, Exception)]
        assert len(results) == 5
        check(lm, words, results[0].outputs + results[2].outputs + results[3].outputs)
        check(sensor, readings, results[1].outputs + results[4].outputs)
        assert (a.seq, b.seq) == (a.info().seq, b.info().seq) == (len(words), len(readings))

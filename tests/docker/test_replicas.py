"""Profile `replicas`: two service replicas behind nginx share session state through Redis.

One client session's requests alternate between the replicas and the outputs equal the whole-sequence
reference; `docker kill` one replica mid-stream and the session goes on on the other, with no step lost
or applied twice (the client repeats a failed request with the same `seq`; exactly-once does the rest).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx
import pytest
from docker_support import (
    ComposeProject,
    Models,
    body,
    check_outputs,
    client,
    docker,
    new_session,
    redis_store_problem,
    sample_events,
    wait_for,
)
from e2e_support import Reference

pytestmark = [pytest.mark.docker, pytest.mark.slow]

_PROBLEM = redis_store_problem()
needs_redis_store = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")

RETRYABLE = {502, 503, 504}


def send(http: httpx.Client, session: str, task: str, seq: int, events: list[Any]) -> httpx.Response:
    """One step, repeated with the same `seq` and payload while the load balancer has no answer."""
    for _ in range(20):
        try:
            response = http.post(f"/v1/sessions/{session}/events", json=body(task, seq, events))
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if response.status_code not in RETRYABLE:
            assert response.status_code == 200, response.text
            assert response.json()["seq"] == seq + len(events)
            return response
        time.sleep(0.5)
    raise AssertionError(f"step seq={seq} got no answer through the load balancer")


def test_nginx_balances_the_two_replicas(stack: ComposeProject) -> None:
    replicas = {
        docker(
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            stack.container(service),
        ).stdout.strip()
        + ":8000"
        for service in ("rnnserve-a", "rnnserve-b")
    }
    with client(stack.url("RNNSERVE_LB_PORT")) as http:
        served_by = []
        for _ in range(6):
            response = http.get("/readyz")
            assert response.status_code == 200
            served_by.append(response.headers["X-Upstream-Addr"])
        assert http.get("/metrics").status_code == 404, "metrics are scraped per replica, not through nginx"
    assert set(served_by) == replicas
    assert all(a != b for a, b in itertools.pairwise(served_by)), served_by


def test_prometheus_finds_both_replicas(stack: ComposeProject) -> None:
    url = f"{stack.url('PROMETHEUS_PORT')}/api/v1/targets"

    def found() -> bool:
        targets = httpx.get(url, timeout=10, trust_env=False).json()["data"]["activeTargets"]
        up = [t for t in targets if t["labels"]["job"] == "rnnserve-replicas" and t["health"] == "up"]
        return len(up) == 2

    wait_for("Prometheus scrapes both replicas (DNS discovery)", found, 60, lambda: stack.logs("prometheus"))


@needs_redis_store
@pytest.mark.parametrize("task", ["lm", "sensor"])
def test_requests_alternate_between_replicas(stack: ComposeProject, models: Models, task: str) -> None:
    reference = Reference.load(models.artifact(task))
    events = sample_events(reference, 10, seed=2)
    outputs: list[dict[str, Any]] = []
    served_by = []
    with client(stack.url("RNNSERVE_LB_PORT")) as http:
        session = new_session(http, models.names[task])
        for seq, event in enumerate(events):
            response = send(http, session, task, seq, [event])
            served_by.append(response.headers["X-Upstream-Addr"])
            outputs += response.json()["outputs"]
    assert len(set(served_by)) == 2, served_by
    assert all(a != b for a, b in itertools.pairwise(served_by)), served_by
    check_outputs(reference, events, outputs)


KILL_AT, KILL_BY = 8, 24  # rounds: the kill starts, and has finished (waited for if need be)
AFTER_KILL = 6  # rounds stepped once the killed replica is known dead


@needs_redis_store
def test_a_killed_replica_loses_no_step(stack: ComposeProject, models: Models) -> None:
    """Steps go on while one replica is killed: none is lost or applied twice. The kill lands while
    requests are in flight, and the steps continue until AFTER_KILL rounds have run once it is done
    (`docker kill` can take longer than a few requests on a busy machine: from round KILL_BY on, the
    test waits for it)."""
    references = {task: Reference.load(models.artifact(task)) for task in ("lm", "sensor")}
    events = {task: sample_events(ref, KILL_BY + AFTER_KILL, seed=3) for task, ref in references.items()}
    outputs: dict[str, list[dict[str, Any]]] = {task: [] for task in references}
    victim = stack.container("rnnserve-a")
    killer = threading.Thread(target=docker, args=("kill", victim))
    after_kill: set[str] = set()
    rounds_after = 0
    with client(stack.url("RNNSERVE_LB_PORT")) as http:
        sessions = {task: new_session(http, models.names[task]) for task in references}
        seq = 0
        while rounds_after < AFTER_KILL:
            if seq == KILL_AT:
                killer.start()  # lands while the next requests are in flight
            if seq == KILL_BY:
                killer.join()
            dead = seq > KILL_AT and not killer.is_alive()  # known dead before this round was sent
            for task, session in sessions.items():
                response = send(http, session, task, seq, [events[task][seq]])
                outputs[task] += response.json()["outputs"]
                if dead:
                    after_kill.add(response.headers["X-Upstream-Addr"].split(", ")[-1])
            rounds_after += dead
            seq += 1
        killer.join()
        for session in sessions.values():
            assert http.get(f"/v1/sessions/{session}").json()["seq"] == seq
    assert len(after_kill) == 1, f"one replica serves once the other is dead: {after_kill}"
    for task in references:
        events[task] = events[task][:seq]
    for task, reference in references.items():
        check_outputs(reference, events[task], outputs[task])

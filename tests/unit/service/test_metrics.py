"""Metrics observed in bulk give what observing each value does: `observe_many`, `record_request`."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from service.metrics import Metrics, observe_many

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in histogram.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _pair() -> tuple[Histogram, Histogram]:
    return (
        Histogram("one_by_one", "reference", ["k"], buckets=BOUNDS, registry=CollectorRegistry()),
        Histogram("one_by_one", "bulk", ["k"], buckets=BOUNDS, registry=CollectorRegistry()),
    )


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.5],
        [0.001, 0.001, 0.01, 0.0100001, 5.0, 0.0, -1.0],  # on a bound, just above, beyond all, <= 0
        [i / 997 for i in range(997)],
        [math.nan, 0.2, 0.3, 0.4, 2.0],
    ],
)
def test_observe_many_equals_observing_each_value(values: list[float]) -> None:
    reference, bulk = _pair()
    child = reference.labels("a")
    for value in values:
        child.observe(value)
    observe_many(bulk.labels("a"), values)
    expected, got = _samples(reference), _samples(bulk)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


async def test_requests_answered_in_one_turn_are_counted_at_its_end() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.003, 0.003, 0.7):
        metrics.record_request("WS", "/r", 200, seconds)
    metrics.record_request("WS", "/r", 422, 0.001)
    counter, _ = metrics.request_children("WS", "/r", 200)
    assert counter._value.get() == 0  # not yet: in the next turn of the loop
    await asyncio.sleep(0)
    assert counter._value.get() == 4
    assert metrics.request_children("WS", "/r", 422)[0]._value.get() == 1
    text = metrics.render().decode()
    assert 'rnnserve_request_duration_seconds_bucket{le="0.005",method="WS",route="/r"} 4.0' in text
    assert 'rnnserve_request_duration_seconds_bucket{le="0.0005",method="WS",route="/r"} 1.0' in text
    assert 'rnnserve_request_duration_seconds_count{method="WS",route="/r"} 5.0' in text


async def test_render_counts_what_the_turn_has_not_yet() -> None:
    metrics = Metrics()
    metrics.record_request("POST", "/x", 200, 0.01)
    assert 'rnnserve_requests_total{method="POST",route="/x",status="200"} 1.0' in metrics.render().decode()
    await asyncio.sleep(0)  # the scheduled flush finds nothing left: counted once
    assert 'rnnserve_requests_total{method="POST",route="/x",status="200"} 1.0' in metrics.render().decode()


def test_without_an_event_loop_a_request_is_counted_at_once() -> None:
    metrics = Metrics()
    metrics.record_request("GRPC", "/g", 200, 0.01)
    assert metrics.request_children("GRPC", "/g", 200)[0]._value.get() == 1

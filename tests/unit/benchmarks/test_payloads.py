"""The load generator's bodies: sensor readings with and without a timestamp each, and the cells that
ask for them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import pytest

from benchmarks.cost import cells
from benchmarks.models import find_artifact
from benchmarks.payloads import POOL, event_bodies

pytestmark = pytest.mark.unit

MODELS = Path(__file__).resolve().parents[3] / "models"


@pytest.mark.parametrize("events", [1, 3])
def test_stamped_sensor_bodies_carry_one_iso_time_per_reading(events: int) -> None:
    art = find_artifact(MODELS, "sensor")
    assert art is not None
    plain = [json.loads(b) for b in event_bodies(art, events)]
    stamped = [json.loads(b) for b in event_bodies(art, events, timestamps=True)]
    assert len(stamped) == len(plain) == POOL
    assert all(set(body) == {"readings"} for body in plain)
    for body in stamped:
        assert (
            set(body) == {"readings", "timestamps"}
            and len(body["timestamps"]) == len(body["readings"]) == events
        )
        assert all(len(reading) == art.features for reading in body["readings"])
        hours = [
            dt.datetime.fromisoformat(t).hour for t in body["timestamps"]
        ]  # ISO 8601, as the service reads
        assert all(0 <= h < 24 for h in hours)
    assert len({t for body in stamped for t in body["timestamps"]}) > 100  # many moments, not one


def test_bulk_ts_is_a_sensor_cell() -> None:
    assert cells("sensor:bulk_ts:1000") == [("sensor", "bulk_ts", 1000)]
    with pytest.raises(argparse.ArgumentTypeError, match="sensor's"):
        cells("lm:bulk_ts:512")

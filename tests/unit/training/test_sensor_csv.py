"""Sensor CSV parsing: values, missing cells, labels -> events, and every refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.errors import DataError
from training.data.sensor_csv import read_sensor_csv
from training.data.synthetic import carry_forward

pytestmark = pytest.mark.unit

GOOD = """timestamp,temp,pressure,label
2024-01-01T00:00:00,21.0,1000,0
2024-01-01T00:10:00,,1001,0
2024-01-01T00:20:00,35.0,1002,spike
2024-01-01T00:30:00,21.5,1003,
2024-01-01T00:40:00,21.6,1010,shift
2024-01-01T00:50:00,21.7,1011,shift
"""


def test_values_missing_cells_and_labelled_events(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(GOOD, encoding="utf-8")
    s = read_sensor_csv(path)
    assert s.features == ("temp", "pressure")
    assert s.values.shape == (6, 2) and np.isnan(s.values[1, 0]) and s.values[2, 0] == 35.0
    assert [(e.kind, e.start, e.end) for e in s.events] == [("spike", 2, 3), ("shift", 4, 6)]
    assert (np.diff(s.timestamps.astype("int64")) == 600).all()


def test_carry_forward_fills_from_the_last_reading_and_zero_before_any() -> None:
    z = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [3.0, 4.0]])
    assert carry_forward(z).tolist() == [[0.0, 1.0], [2.0, 1.0], [2.0, 1.0], [3.0, 4.0]]


BAD = {
    "empty": ("", "empty"),
    "one column": ("timestamp\n1\n2\n3\n", "too few columns"),
    "text value": ("t,a\n1,2\n2,abc\n3,4\n", "'abc' is not a number"),
    "inf value": ("t,a\n1,2\n2,inf\n3,4\n", "not a finite number"),
    "short row": ("t,a,b\n1,2,3\n2,4\n3,4,5\n", "2 columns, the header has 3"),
    "empty column": ("t,a,b\n1,,3\n2,,4\n3,,5\n", "hold no reading"),
    "bad timestamp": ("t,a\nyesterday,2\n2,3\n3,4\n", "neither ISO 8601 nor a number"),
    "one row": ("t,a\n1,2\n", "need at least 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_csv_is_refused_with_the_place_and_reason(tmp_path: Path, case: str) -> None:
    text, message = BAD[case]
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_sensor_csv(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_sensor_csv(tmp_path / "nope.csv")


def test_missing_markers_and_out_of_order_timestamps_are_read_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "real.csv"
    # a repeated timestamp (a daylight-saving change) and one going back; NaN/NA/null are missing readings
    path.write_text("t,a,b\n1,2,NaN\n2,NA,5\n2,4,null\n1.5,5,6\n3,,7\n", encoding="utf-8")
    s = read_sensor_csv(path)
    assert np.isnan(s.values).sum() == 4 and s.values[:, 0].tolist()[3] == 5.0  # row order kept
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "1 repeated and 1 backward" in err and err.count("\n") == 1

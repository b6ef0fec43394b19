"""`service.jsonin.loads` reads every text as `json.loads` does: the same value (types included) or
the same exception."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.jsonin import loads

pytestmark = pytest.mark.unit

TEXTS = [
    '{"steps": [{"session_id": "ab", "readings": [[1.5, -2, 3e-5]]}]}',
    "123456789012345678901234567890",  # beyond 64 bits: an int, not orjson's float
    '{"seq": 18446744073709551616}',
    "[-9223372036854775809, 9223372036854775807]",
    '{"id": "1234567890123456789012"}',  # digits in a string
    "[\n123456789012345678901234567890]",  # after JSON's other whitespace
    '{"a":\t18446744073709551616}',
    "[1,\r\n99999999999999999999]",
    '["ab1234567890123456789012345678901234567890", 1]',  # a run after a letter: in a string
    '["ab' + "1" * 60 + '", 12345678901234567890123]',  # a long run in a string, then a number
    "[" + ",".join(["1" * 18] * 50) + "]",  # runs of 18: no number of 19 digits
    "1e400",
    "[-1e400, 1e-400, -0.0, -0]",
    "NaN",
    "[Infinity, -Infinity]",
    '"\\ud800"',
    '"\\u0000 \\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9"',
    '{"a": 1, "a": 2}',
    "  {}\n",
    "[1,]",
    "{'a': 1}",
    "01",
    "",
    "[" * 3000 + "]" * 3000,
    '"\x01"',
    "2.2250738585072011e-308",
    "0.1e1",
    "1" * 5000,
]


def outcome(read: Any, raw: str | bytes) -> tuple[str, Any]:
    try:
        value = read(raw)
    except Exception as exc:
        return "error", (type(exc), str(exc))
    return "value", (repr(value), _types(value))


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("text", TEXTS)
def test_reads_as_the_standard_parser(text: str) -> None:
    for raw in (text, text.encode("utf-8", "surrogatepass")):
        assert outcome(loads, raw) == outcome(json.loads, raw), raw[:80]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_reads_what_json_dumps_writes(value: Any) -> None:
    text = json.dumps(value)
    got = loads(text.encode())
    assert repr(got) == repr(json.loads(text)) and _types(got) == _types(value)
    assert not isinstance(got, float) or math.isfinite(got)

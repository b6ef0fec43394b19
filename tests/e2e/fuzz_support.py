"""Hypothesis strategies shared by the transport fuzz tests (WebSocket streams, gRPC).

A hostile input is built as a good request with exactly one thing made certainly wrong, so that the
test knows the answer it must get (the error codes it may carry) and that the session must not move;
frame-level garbage (not JSON, not an object, too deep, binary noise) is wrong whatever it holds.
Good requests are drawn too, and checked against the independent reference (e2e_support.Reference).

JSON is written by `dumps`, which also writes what Python's encoder cannot: `Raw` text is copied as it
is (an integer of 5000 digits, the `NaN` and `Infinity` tokens that Python's parser reads); a lone
surrogate goes as the escape `\\ud800`, as a hostile client would write it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from e2e_support import MAX_EVENTS, Reference
from hypothesis import strategies as st

BAD_REQUEST, INVALID, SEQ_CONFLICT = "bad_request", "invalid_input", "seq_conflict"
FIELD_ERRORS = frozenset({BAD_REQUEST, INVALID})  # a field nested too deep is a parse error (400)
OOV = "zzz"  # a word no tiny model knows: answered as <unk>, flagged, not an error


class Raw(str):
    """JSON text written as it is."""


def dumps(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)  # ASCII: a lone surrogate as its escape; NaN and Infinity as tokens


@dataclass(frozen=True)
class Bad:
    """A frame (or a step's body) that must be refused, with the error codes it may be refused with."""

    body: Any  # a dict to `dumps`, or a whole frame: str (text) or bytes (binary)
    codes: frozenset[str]

    def frame(self) -> str | bytes:
        return self.body if isinstance(self.body, str | bytes) else dumps(self.body)


# ---- hostile values ---------------------------------------------------------------------------------

_CONTROL = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
NOT_TEXT_CHAR = st.one_of(st.sampled_from(_CONTROL), st.integers(0xD800, 0xDFFF).map(chr))
# text with a lone surrogate or a control character somewhere in it
BAD_TEXT = st.builds(lambda a, c, b: a + c + b, st.text(max_size=4), NOT_TEXT_CHAR, st.text(max_size=4))
TOO_MANY_DIGITS = st.integers(4301, 6000).map(lambda n: Raw("9" * n))  # Python refuses to read these
NON_FINITE = st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e999")])
NEGATIVE = st.one_of(st.integers(max_value=-1, min_value=-(2**70)), st.just(-1))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # JSON floats: never an integer in strict mode
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), FLOATS, st.text(max_size=8), NON_FINITE)
CONTAINERS = st.one_of(
    st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2)
)
# within the parser's recursion limit, or far past it (never near it: the server's stack is deeper)
NESTED = st.one_of(st.integers(2, 200), st.integers(3000, 6000)).map(lambda n: Raw("[" * n + "]" * n))


def not_int() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), FLOATS, NON_FINITE, st.text(max_size=8), CONTAINERS, NESTED)


def not_bool() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.integers(), FLOATS, st.text(max_size=8), CONTAINERS)


def not_str(nested: bool = True) -> st.SearchStrategy[Any]:
    """Anything but a string; `nested` False: nothing nested deeper than the parser reads (a value that
    must fail one bulk step, not the whole message)."""
    values = [st.none(), st.booleans(), st.integers(), FLOATS, NON_FINITE, CONTAINERS]
    return st.one_of(*values, *([NESTED] if nested else []))


# ---- good events -------------------------------------------------------------------------------------


def lm_words(reference: Reference, max_size: int = 3) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from([*reference.vocab[2:], OOV]), min_size=1, max_size=max_size)


def _around(mean: float, std: float) -> st.SearchStrategy[float]:
    return st.floats(-4, 4).map(lambda z: mean + z * std)


def sensor_readings(reference: Reference, max_size: int = 3) -> st.SearchStrategy[list[list[float]]]:
    """Readings within a few standard deviations of the training data (an anomaly now and then)."""
    spec = reference.manifest.sensor
    assert spec is not None
    reading = st.tuples(*(_around(m, s) for m, s in zip(spec.mean, spec.std, strict=True)))
    return st.lists(reading.map(list), min_size=1, max_size=max_size)


def good_body(draw: st.DrawFn, reference: Reference, seq: int | None) -> tuple[dict[str, Any], list[Any]]:
    """(an events body, its events): lm tokens or text with any top_k and include_special; sensor
    readings, with timestamps or not. Without `seq` when seq is None."""
    body: dict[str, Any] = {} if seq is None else {"seq": seq}
    if reference.manifest.task == "lm":
        events: list[Any] = draw(lm_words(reference))
        if draw(st.booleans()):
            body["tokens"] = events
        else:
            body["text"] = " ".join(events)
        body["top_k"] = draw(st.integers(0, 20))
        body["include_special"] = draw(st.booleans())
    else:
        events = draw(sensor_readings(reference))
        body["readings"] = events
        if draw(st.booleans()):
            stamps = st.one_of(
                st.floats(0, 2e9), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8)
            )
            body["timestamps"] = draw(st.lists(stamps, min_size=len(events), max_size=len(events)))
    return body, events


def answer_options(body: dict[str, Any]) -> tuple[int, bool]:
    """(top_k, include_special) the reference needs for an lm body."""
    return int(body.get("top_k", 5)), bool(body.get("include_special", False))


# ---- certainly-bad bodies ----------------------------------------------------------------------------

# the fields of an events body, and a bulk step's session_id: any other key is an unknown field
KNOWN_FIELDS = frozenset(
    {"seq", "tokens", "text", "top_k", "include_special", "readings", "timestamps", "session_id"}
)


def _replace(body: dict[str, Any], field: str, value: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in drop}
    out[field] = value
    return out


@st.composite
def bad_body(draw: st.DrawFn, reference: Reference, seq: int) -> Bad:
    """A good body for a session at `seq` with one field made wrong (wrong type, bad text, huge or
    negative numbers, NaN, too many events, a future seq, unknown or missing fields)."""
    body, _ = good_body(draw, reference, seq)
    source = "tokens" if "tokens" in body else "text" if "text" in body else "readings"
    futures = st.integers(seq + 1, 2**70)
    choices: list[st.SearchStrategy[Bad]] = [
        futures.map(lambda s: Bad(_replace(body, "seq", s), frozenset({SEQ_CONFLICT}))),
        st.one_of(NEGATIVE, not_int().filter(lambda v: v is not None)).map(
            lambda v: Bad(_replace(body, "seq", v), FIELD_ERRORS)
        ),
        TOO_MANY_DIGITS.map(lambda v: Bad(_replace(body, "seq", v), frozenset({BAD_REQUEST}))),
        st.text(min_size=1, max_size=8)
        .filter(lambda k: k not in KNOWN_FIELDS)
        .flatmap(lambda k: SCALARS.map(lambda v: Bad(_replace(body, k, v), FIELD_ERRORS))),
        st.just(Bad({k: v for k, v in body.items() if k != source}, FIELD_ERRORS)),
    ]
    if reference.manifest.task == "lm":
        words = body.get("tokens") or body["text"].split()
        other = "text" if source == "tokens" else "tokens"
        choices += [
            not_int().map(lambda v: Bad(_replace(body, "top_k", v), FIELD_ERRORS)),
            NEGATIVE.map(lambda v: Bad(_replace(body, "top_k", v), FIELD_ERRORS)),
            not_bool().map(lambda v: Bad(_replace(body, "include_special", v), FIELD_ERRORS)),
            not_str().map(lambda v: Bad(_replace(body, "text", v, drop=("tokens",)), FIELD_ERRORS)),
            BAD_TEXT.map(
                lambda v: Bad(_replace(body, "text", f"{' '.join(words)} {v}", ("tokens",)), FIELD_ERRORS)
            ),
            st.one_of(
                not_str().filter(lambda v: not isinstance(v, list)),
                st.lists(not_str(), min_size=1, max_size=3),
            ).map(lambda v: Bad(_replace(body, "tokens", v, drop=("text",)), FIELD_ERRORS)),
            BAD_TEXT.map(lambda v: Bad(_replace(body, "tokens", [*words, v], drop=("text",)), FIELD_ERRORS)),
            st.integers(MAX_EVENTS + 1, 2 * MAX_EVENTS).map(
                lambda n: Bad(_replace(body, "tokens", words[:1] * n, drop=("text",)), FIELD_ERRORS)
            ),
            st.just(
                Bad(_replace(body, other, words if other == "tokens" else " ".join(words)), FIELD_ERRORS)
            ),
        ]
    else:
        choices += _bad_sensor_fields(body, reference)
    return draw(st.one_of(choices))


def _bad_sensor_fields(body: dict[str, Any], reference: Reference) -> list[st.SearchStrategy[Bad]]:
    readings: list[list[float]] = body["readings"]
    width = len(readings[0])
    spec = reference.manifest.sensor
    assert spec is not None
    # beyond float32 once normalized by the widest feature's std: refused as not finite in range
    huge = st.floats(min_value=3.5e38 * max(spec.std) + max(map(abs, spec.mean)), allow_infinity=False)
    out_of_range = st.one_of(NON_FINITE, huge, huge.map(lambda v: -v))

    def with_value(value: Any) -> list[list[Any]]:
        return [*readings[:-1], [value, *readings[-1][1:]]]

    def readings_bad(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Bad]:
        return values.map(lambda v: Bad(_replace(body, "readings", v, drop=("timestamps",)), FIELD_ERRORS))

    return [
        readings_bad(out_of_range.map(with_value)),
        readings_bad(
            st.one_of(st.none(), st.booleans(), st.text(max_size=8), CONTAINERS, NESTED).map(with_value)
        ),
        readings_bad(st.integers(0, 6).filter(lambda n: n != width).map(lambda n: [[1.0] * n])),
        readings_bad(st.one_of(SCALARS, st.lists(SCALARS, min_size=1, max_size=3))),
        readings_bad(st.integers(MAX_EVENTS + 1, 2 * MAX_EVENTS).map(lambda n: readings[:1] * n)),
        st.integers(0, 5)
        .filter(lambda n: n != len(readings))
        .map(lambda n: Bad(_replace(body, "timestamps", [1.0] * n), FIELD_ERRORS)),
        st.one_of(NON_FINITE, BAD_TEXT, st.none(), st.booleans(), CONTAINERS).map(
            lambda v: Bad(_replace(body, "timestamps", [v] * len(readings)), FIELD_ERRORS)
        ),
    ]


def _not_an_object(frame: str | bytes) -> bool:
    """Whether the server's parser (which reads a binary frame as UTF-8, -16 or -32 JSON) finds no object."""
    try:
        return not isinstance(json.loads(frame), dict)
    except (ValueError, RecursionError):
        return True


_GOOD_FRAME = '{"seq": 0, "tokens": ["w1"]}'
# Frames that are wrong whatever route they reach: not JSON, not an object, binary noise, too deep, cut
# short. Binary noise that happens to decode as an object (UTF-16 "{}") is an object without fields.
GARBAGE = st.one_of(
    st.text(max_size=30).filter(_not_an_object).map(lambda t: Bad(t, frozenset({BAD_REQUEST}))),
    st.binary(max_size=30).filter(_not_an_object).map(lambda b: Bad(b, frozenset({BAD_REQUEST}))),
    st.binary(max_size=30).map(lambda b: Bad(b"\xff\xff" + b, frozenset({BAD_REQUEST}))),  # never UTF-8
    st.one_of(SCALARS, st.lists(SCALARS, max_size=3), NESTED, TOO_MANY_DIGITS).map(
        lambda v: Bad(dumps(v), frozenset({BAD_REQUEST}))
    ),
    st.integers(1, len(_GOOD_FRAME) - 1).map(lambda n: Bad(_GOOD_FRAME[:n], frozenset({BAD_REQUEST}))),
)

"""The hot path's shortcuts against what they replace: the batched top-k against a full sort, the
plain-body decoding against the schema's (pydantic) decoding of the same bodies, and the answers
written as JSON from arrays against orjson's encoding of the objects they stand for."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from service.errors import ServiceError
from service.metrics import Metrics
from service.predictors import LmPredictor, SensorPredictor, jsonout, make_predictor
from service.predictors import lm as lm_module
from service.predictors import sensor as sensor_module
from service.predictors.base import Decoded, DecodedMany
from service.predictors.topk import top_k
from service.registry import Registry
from service.runner import StepResult
from service.settings import Settings
from service.stepping import answer_body, answers_json

pytestmark = pytest.mark.unit


def reference_top_k(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One full sort per row: most likely first, ties by the lower id."""
    vocab = log_probs.shape[-1]
    rows = log_probs.reshape(-1, vocab)
    ids = np.stack([np.lexsort((np.arange(vocab), -row))[:k] for row in rows])
    probs = np.exp(np.take_along_axis(rows, ids, axis=1).astype(np.float64))
    return ids.reshape(*log_probs.shape[:-1], k), probs.reshape(*log_probs.shape[:-1], k)


@pytest.mark.parametrize("vocab", [1, 7, 64, 130, 640, 1000, 10_000])
def test_top_k_equals_a_full_sort(vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    for trial in range(12):
        log_probs = rng.standard_normal((3, 2, vocab)).astype(np.float32)  # [B, T, V]
        if trial % 3 == 0:
            log_probs = np.round(log_probs, 1)  # many ties
        if trial % 4 == 0:
            log_probs[..., : vocab // 2] = -np.inf  # masked columns
        if trial % 6 == 1:
            log_probs[0, 0] = -0.0  # a row of ties between 0.0 and -0.0
            log_probs[0, 1, ::3] = 0.0
        if trial == 5:
            log_probs = log_probs.astype(np.float64)  # not the graphs' float32: the plain sort
        for k in sorted({1, 2, 5, vocab // 64, vocab // 64 + 1, vocab // 3, vocab, vocab + 2} - {0}):
            ids, probs = top_k(log_probs, k)
            want_ids, want_probs = reference_top_k(log_probs, min(k, vocab))
            assert np.array_equal(ids, want_ids), (trial, k)
            assert np.array_equal(probs, want_probs), (trial, k)
    assert top_k(np.zeros((2, 5), np.float32), 0)[0].shape == (2, 0)


def test_top_k_equals_a_full_sort_on_word_distributions() -> None:
    """Rows like a language model's: a few likely words, a long tail; the rows of a bulk batch."""
    rng = np.random.default_rng(11)
    log_probs = np.log(rng.dirichlet(np.full(10_000, 0.2), 96)).astype(np.float32)  # [N, V]
    log_probs[7, 4000:4010] = log_probs[7].max()  # ten ties for the first place
    for k in (1, 5, 7, 40):
        ids, probs = top_k(log_probs, k)
        want_ids, want_probs = reference_top_k(log_probs, k)
        assert np.array_equal(ids, want_ids) and np.array_equal(probs, want_probs), k


@pytest.fixture(scope="module")
def registry(tiny_models_dir: Path) -> Registry:
    registry = Registry(Settings(models_dir=tiny_models_dir, snapshot_path=None))
    registry.load_all()
    return registry


def same(a: Decoded, b: Decoded) -> bool:
    return (
        np.array_equal(a.x, b.x, equal_nan=True)  # a sensor reading without a timestamp: NaN hour
        and a.x.dtype == b.x.dtype
        and (a.seq, a.fingerprint, a.param) == (b.seq, b.fingerprint, b.param)
        and repr(a.context) == repr(b.context)
    )


def outcome(decode: Any, payload: Any) -> Decoded | tuple[str, int]:
    try:
        decoded: Decoded = decode(payload)
        return decoded
    except ServiceError as exc:
        return exc.code, exc.status


LM_BODIES: list[Any] = [
    {"tokens": ["w1", "W2", "nope"]},
    {"tokens": ["w1"], "seq": 3, "top_k": 2, "include_special": True},
    {"text": "w1 w2  w3", "top_k": 0},
    {"tokens": []},
    {"tokens": ["w1"], "top_k": "3"},  # the schema converts
    {"tokens": ["w1"], "seq": True},
    {"tokens": ["w1"], "include_special": 1},
    {"tokens": ["w1"], "text": "w1"},
    {"tokens": "w1"},
    {"tokens": [1]},
    {"tokens": ["w1"], "seq": -1},
    {"tokens": ["w1"], "extra": 1},
    {"tokens": None, "text": "w2"},
    [1, 2],
]
SENSOR_BODIES: list[Any] = [
    {"readings": [[1.0, 2.0, 3.0]]},
    {"readings": [[1, 2, 3.5]], "seq": 0, "timestamps": [17]},
    {"readings": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "timestamps": ["a", 2.5]},
    {"readings": [[1.0, "2", 3.0]]},
    {"readings": [[1.0, True, 3.0]]},
    {"readings": [[1.0, 2.0]]},
    {"readings": [[1.0, 2.0, 3.0]], "timestamps": [1, 2]},
    {"readings": [[1.0, 2.0, 3.0]], "timestamps": None},
    {"readings": [[10**20, 2.0, 3.0]]},
    {"readings": [[float("nan"), 2.0, 3.0]]},
    {"readings": []},
    {"readings": "x"},
]


@pytest.mark.parametrize(("model", "bodies"), [("lm-gru", LM_BODIES), ("sensor-rnn", SENSOR_BODIES)])
def test_plain_bodies_decode_as_the_schema_decodes_them(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, model: str, bodies: list[Any]
) -> None:
    predictor = make_predictor(registry.get(model), Settings(snapshot_path=None))
    assert isinstance(predictor, LmPredictor | SensorPredictor)
    fast = [outcome(predictor.decode, body) for body in bodies]
    module = lm_module if isinstance(predictor, LmPredictor) else sensor_module
    monkeypatch.setattr(module, "_plain_events", lambda payload: None)  # every body through the schema
    slow = [outcome(predictor.decode, body) for body in bodies]
    for body, a, b in zip(bodies, fast, slow, strict=True):
        assert same(a, b) if isinstance(a, Decoded) and isinstance(b, Decoded) else a == b, body


# bulk ingest: plain steps of several event counts, mixed with the odd ones `decode` must answer alone
MANY_LM: list[Any] = [
    *LM_BODIES,
    {"tokens": ["w3", "w1"], "seq": 0},
    {"text": "w2 zz", "top_k": 9},
    {"tokens": ["<unk>", "zz", "w2"]},  # the word <unk> itself is known
]
MANY_SENSOR: list[Any] = [
    *SENSOR_BODIES,
    {"readings": [[1e30, 2.0, 3.0]]},  # finite, but left to `decode`'s careful check
    {"readings": [[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], "seq": 4},
    {"readings": [[0.5, -1.0, 2.0]], "seq": 1, "timestamps": ["t"]},
    {"readings": [[1.0, 2.0, 3.0]] * 3, "timestamps": [1, 2.5, "x"]},
    {"readings": [[1.0, 2.0, 3.0]] * 3, "timestamps": ["2014-04-01 13:05:00", 1717171717.0, 7200]},
    # timestamps are checked a group (an event count) at a time: a bad one among good ones leaves only
    # its own step, each kind in a group of its own so that no check stands in for another
    {"readings": [[1.0, 2.0, 3.0]] * 2, "timestamps": ["2014-04-01 13:05:00", "2014-04-01 13:10:00"]},
    {"readings": [[1.0, 2.0, 3.0]] * 2, "timestamps": ["ok", "bell\x07"]},  # not text: refused
    {"readings": [[1.0, 2.0, 3.0]] * 4, "timestamps": ["a", "b", "c", "d"]},
    {"readings": [[1.0, 2.0, 3.0]] * 4, "timestamps": ["\ud800", "ok", "ok", "ok"]},  # a lone surrogate
    {"readings": [[1.0, 2.0, 3.0]] * 5, "timestamps": [1.5, 2.5, 3.5, 4.5, 5.5]},
    {"readings": [[1.0, 2.0, 3.0]] * 5, "timestamps": [1.5, 2.5, math.inf, 4.5, 5.5]},  # not finite
    {
        "readings": [[1.0, 2.0, 3.0]] * 6,
        "timestamps": ["2014-04-01 13:05:00", 7, 8.5, 9, "x", 10],
    },  # ints: floats
    {"readings": [[1.0, 2.0, 3.0]] * 7, "timestamps": [1, 2, 3, 4, 5, 6, 2**70]},  # beyond the ints it reads
    {"readings": [[1.0, 2.0, 3.0]] * 7, "timestamps": [1, 2, 3, 4, 5, 6, 7]},
    {"readings": [[1.0, 2.0, 3.0]] * 8, "timestamps": [True] * 8},  # not a number: refused
]


@pytest.mark.parametrize(("model", "bodies"), [("lm-gru", MANY_LM), ("sensor-rnn", MANY_SENSOR)])
@pytest.mark.parametrize("online", [False, True])
def test_decode_many_is_decode_of_each(
    registry: Registry, model: str, bodies: list[Any], online: bool
) -> None:
    """Every step decode_many groups is exactly what `decode` makes of it; the rest are left to
    `decode`; every plain step with events is grouped (none falls to the slow path unseen)."""
    predictor = make_predictor(registry.get(model), Settings(snapshot_path=None))
    assert isinstance(predictor, LmPredictor | SensorPredictor)
    if online and isinstance(predictor, SensorPredictor):
        predictor.online = True  # raw readings as the model input, normalised in the runner
    groups, rest = predictor.decode_many(bodies)
    grouped = {}
    for group in groups:
        assert len({len(group.index), len(group.x), len(group.seqs), len(group.contexts)}) == 1
        for j, n in enumerate(group.index):
            grouped[n] = Decoded(
                group.x[j], group.seqs[j], group.fingerprints[j], group.contexts[j], int(group.params[j])
            )
    assert sorted([*grouped, *rest]) == list(range(len(bodies))) and not set(grouped) & set(rest)
    for n, body in enumerate(bodies):
        alone = outcome(predictor.decode, body)
        if n in grouped:
            assert isinstance(alone, Decoded) and same(grouped[n], alone), body
        elif isinstance(alone, Decoded) and alone.events > 0:
            # only bodies the schema converts (not plain) or `decode`'s careful range check may be left
            assert module_of(predictor)._plain_events(body) is None or "1e+30" in repr(body), body


def module_of(predictor: LmPredictor | SensorPredictor) -> Any:
    return lm_module if isinstance(predictor, LmPredictor) else sensor_module


@pytest.mark.parametrize(("model", "bodies"), [("lm-gru", MANY_LM), ("sensor-rnn", MANY_SENSOR)])
def test_encode_many_json_is_encode_of_each(registry: Registry, model: str, bodies: list[Any]) -> None:
    """encode_many_json from a batch's arrays answers what `encode` answers from each step's rows (the
    same JSON bytes), for sessions that start with this step (seq 0) and sessions that do not."""
    predictor = make_predictor(registry.get(model), Settings(snapshot_path=None))
    assert isinstance(predictor, LmPredictor | SensorPredictor)
    rng = np.random.default_rng(5)
    groups, _ = predictor.decode_many(bodies)
    assert groups
    for group in groups:
        b, t = len(group.index), group.events
        if isinstance(predictor, SensorPredictor):
            f = group.x.shape[2] - 1  # x's last column is the hour of the day
            outputs = [rng.standard_normal((b, t, f)), rng.random((b, t, f))]
            outputs += [
                rng.standard_normal((b, t)),
                rng.random((b, t)),
                rng.random((b, t)),
                rng.random((b, t)),
                rng.random((b, t)),  # score, probability, likelihood, surprise, alarm
            ]
            outputs[3][0, 0] = np.nan  # a first reading's NaN answers null
        else:
            vocab = len(predictor.vocab)
            log_probs = np.log(rng.dirichlet(np.ones(vocab), (b, t))).astype(np.float32)
            log_probs[:, :, predictor.special_ids[0]] = 0.0  # <unk> first: left out unless asked for
            prior = log_probs[:, 0]
            outputs = predictor.postprocess([log_probs, prior], group.x, group.params)
        before = [int(v) for v in rng.integers(0, 3, b)]
        many = predictor.encode_many_json(group, outputs, before)
        after = [b + t for b in before]
        objects = each_encoded(predictor, group, outputs, before)
        alone = [answer_body(seq, o) for seq, o in zip(after, objects, strict=True)]
        assert answers_json(after, many) == alone


def each_encoded(
    predictor: LmPredictor | SensorPredictor, group: DecodedMany, outputs: list[np.ndarray], before: list[int]
) -> list[list[dict[str, Any]]]:
    """`encode` of each step of `group` alone, from its rows of the batch's arrays: the reference."""
    answers = []
    for j in range(len(group.index)):
        decoded = Decoded(group.x[j], group.seqs[j], group.fingerprints[j], group.contexts[j])
        result = StepResult([a[j] for a in outputs], before[j] + group.events, None)
        answers.append(predictor.encode(decoded, result, before[j]))
    return answers


# words the answer echoes as the request spelled them: JSON escapes, non-ASCII, the specials themselves
ODD_WORDS = ['say "hi"', "back\\slash", "caf\u00e9", "\U0001f600", "\u2028", "<unk>", "<eos>", "W3", ""]


def test_lm_encode_many_json_is_encode_in_orjson(registry: Registry) -> None:
    """The JSON lm bulk answers are built from (encode_many_json) is byte for byte orjson's encoding of
    what `encode` answers for each step: steps of 1 to 3 events, top_k 0 to past the vocabulary, with
    and without the specials, unknown and odd words, sessions at seq 0 and later, -inf and NaN
    log-probs."""
    predictor = make_predictor(registry.get("lm-gru"), Settings(snapshot_path=None, max_top_k=64))
    assert isinstance(predictor, LmPredictor)
    rng = np.random.default_rng(8)
    words = [*predictor.vocab, *ODD_WORDS]
    bodies = [
        {
            "tokens": [str(rng.choice(words)) for _ in range(1 + n % 3)],
            "top_k": int(rng.choice([0, 1, 2, 5, 9, 64])),
            "include_special": bool(n % 4 == 0),
        }
        for n in range(60)
    ]
    groups, rest = predictor.decode_many(bodies)
    assert len(groups) == 3 and not rest
    vocab = len(predictor.vocab)
    for group in groups:
        b, t = len(group.index), group.events
        log_probs = np.log(rng.dirichlet(np.ones(vocab), (b, t))).astype(np.float32)
        log_probs[:, :, predictor.special_ids[rng.integers(2)]] = 0.0
        log_probs[0, :, group.x[1, 0]] = -np.inf  # a word the model ruled out
        prior = log_probs[:, 0].copy()
        prior[2, group.x[2, 0]] = np.nan
        outputs = predictor.postprocess([log_probs, prior], group.x, group.params)
        before = [int(v) for v in rng.integers(0, 3, b)]
        objects = each_encoded(predictor, group, outputs, before)
        built = predictor.encode_many_json(group, outputs, before)
        assert built == [orjson.dumps(o) for o in objects]
        assert answers_json([7] * len(built), built) == [answer_body(7, o) for o in objects]


# timestamps as a request may give them: text (escapes, non-ASCII), seconds as floats and as ints
ODD_STAMPS: list[Any] = ["2014-04-01 13:05:00", 'say "hi"', "caf\u00e9", 1717171717.0, 7200, 0.1, -0.0]


def test_sensor_encode_many_json_is_encode_in_orjson(registry: Registry) -> None:
    """The JSON sensor answers are built from (encode_many_json) is byte for byte orjson's encoding of
    what `encode` answers for each step, and flags as many anomalies: steps of 1 to 3 readings, with
    and without timestamps, sessions at seq 0 and later, NaN, infinities and -0.0 among the values,
    probabilities around the red alert."""
    rng = np.random.default_rng(9)
    bodies = [
        {
            "readings": rng.standard_normal((1 + n % 3, 3)).tolist(),
            **({"timestamps": [ODD_STAMPS[(n + i) % 7] for i in range(1 + n % 3)]} if n % 2 else {}),
        }
        for n in range(45)
    ]
    counted = []
    for encode in ("each", "encode_many_json"):
        metrics = Metrics()
        predictor = make_predictor(registry.get("sensor-rnn"), Settings(snapshot_path=None), metrics)
        assert isinstance(predictor, SensorPredictor)
        groups, rest = predictor.decode_many(bodies)
        assert len(groups) == 3 and not rest
        rng = np.random.default_rng(10)
        answers = []
        for group in groups:
            b, t, f = len(group.index), group.events, group.x.shape[2] - 1
            outputs = [rng.standard_normal((b, t, f)) * 1e3, rng.random((b, t, f))]
            outputs += [rng.standard_normal((b, t)) for _ in range(5)]
            outputs[3] = rng.choice([0.0, 0.25, 0.5, 0.5000001, 0.75, 1.0], (b, t))  # probability
            for a in outputs:
                a.flat[rng.integers(a.size, size=3)] = rng.choice([np.nan, np.inf, -np.inf, -0.0, 1e-320], 3)
            before = [int(v) for v in rng.integers(0, 3, b)]
            if encode == "each":
                answers += [orjson.dumps(o) for o in each_encoded(predictor, group, outputs, before)]
            else:
                answers += predictor.encode_many_json(group, outputs, before)
        counted.append((answers, metrics.anomalies.labels("sensor-rnn", "1")._value.get()))
    (objects, flagged), (built, flagged_json) = counted
    assert built == objects
    assert flagged_json == flagged > 0


@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (4, 3), (3, 17), (0, 4)])
def test_rows_and_numbers_are_orjson_of_the_values(shape: tuple[int, int]) -> None:
    """`jsonout.rows` (a row's values as the inside of a JSON array) and `jsonout.numbers` (each value)
    against orjson's encoding of the same values as Python floats: float32 and float64, NaN and
    infinities (null), -0.0, subnormals, integers and large magnitudes."""
    rng = np.random.default_rng(shape[1])
    odd = [np.nan, np.inf, -np.inf, -0.0, 5e-324, 1e-320, 3.0, 1e22, -1.5e300, 0.1]
    base = rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 8, shape)
    base.flat[rng.integers(max(base.size, 1), size=min(base.size, 6))] = rng.choice(odd, 6)[: base.size]
    for dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):  # 1e300 as float32: inf
            values = base.astype(dtype)
        want_rows = [orjson.dumps(row)[1:-1] for row in values.tolist()]
        assert jsonout.rows(values) == want_rows
        assert jsonout.numbers(values) == [orjson.dumps(v) for v in values.reshape(-1).tolist()]

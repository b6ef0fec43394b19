"""Predictors: request decoding and output encoding for lm and sensor, and sampling."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import pytest

from service.errors import InvalidInput
from service.predictors import LmPredictor, SensorPredictor, make_predictor
from service.predictors.lm import sample
from service.registry import LoadedModel, Registry
from service.runner import StepResult
from service.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def registry(tiny_models_dir: Path) -> Registry:
    registry = Registry(Settings(models_dir=tiny_models_dir, snapshot_path=None))
    registry.load_all()
    return registry


class Limits(TypedDict, total=False):
    max_top_k: int
    max_events_per_request: int


def lm(registry: Registry, **limits: Unpack[Limits]) -> tuple[LmPredictor, LoadedModel]:
    model = registry.get("lm-gru")
    predictor = make_predictor(model, Settings(snapshot_path=None, **limits))
    assert isinstance(predictor, LmPredictor)
    return predictor, model


def sensor(registry: Registry) -> SensorPredictor:
    predictor = make_predictor(registry.get("sensor-rnn"), Settings(snapshot_path=None))
    assert isinstance(predictor, SensorPredictor)
    return predictor


def one_job(
    predictor: LmPredictor | SensorPredictor, outputs: list[np.ndarray], x: np.ndarray, param: int = 0
) -> StepResult:
    """Postprocess one job's graph outputs as a batch of one, and take its row, as the runner does."""
    derived = predictor.postprocess([a[None] for a in outputs], x[None], np.array([param]))
    return StepResult(outputs=[a[0] for a in derived], seq=len(x), state=None)


def test_lm_decodes_tokens_and_text_with_unknown_words(registry: Registry) -> None:
    predictor, _ = lm(registry)
    decoded = predictor.decode({"text": " w3 w10\tnope  <eos>", "seq": 4})
    assert decoded.x.dtype == np.int64 and decoded.x.tolist() == [5, 12, 0, 1]
    assert decoded.context.unknown.tolist() == [False, False, True, False]
    assert decoded.seq == 4 and decoded.events == 4
    same = predictor.decode({"tokens": ["w3", "w10", "nope", "<eos>"], "seq": 9})
    assert same.fingerprint == decoded.fingerprint  # the payload, not its seq
    assert (
        predictor.decode({"tokens": ["w3", "w10", "nope", "<eos>"], "top_k": 2}).fingerprint
        != decoded.fingerprint
    )


def _framed_digest(*parts: bytes) -> int:
    """The fingerprint's definition, written out: BLAKE2b-64 of one byte string in which each part
    follows its length (8 bytes, little endian)."""
    framed = b"".join(len(part).to_bytes(8, "little") + part for part in parts)
    return int.from_bytes(hashlib.blake2b(framed, digest_size=8).digest(), "little")


@pytest.mark.parametrize("special", [False, True])
def test_lm_fingerprints_are_the_ones_stored_answers_hold(registry: Registry, special: bool) -> None:
    """Snapshots and Redis keep each session's last answer with its payload's fingerprint, so a replay
    after an upgrade must fingerprint alike: the words joined by NUL, then "top_k:include_special"."""
    predictor, _ = lm(registry)
    body = {"tokens": ["w3", "nope", "w10"], "top_k": 3, "include_special": special, "seq": 0}
    want = _framed_digest("\x00".join(body["tokens"]).encode(), f"3:{int(special)}".encode())  # type: ignore[arg-type]
    assert predictor.decode(body).fingerprint == want
    groups, rest = predictor.decode_many([body])
    assert rest == [] and groups[0].fingerprints == [want]


def test_lm_caps_top_k_and_refuses_too_many_events(registry: Registry) -> None:
    predictor, _ = lm(registry, max_top_k=4, max_events_per_request=3)
    assert predictor.decode({"tokens": ["w1"], "top_k": 99}).context.top_k == 4
    with pytest.raises(InvalidInput, match="limit is 3"):
        predictor.decode({"tokens": ["w1"] * 4})


def test_lm_encode_logprob_of_the_word_that_came_and_top_k(registry: Registry) -> None:
    predictor, _ = lm(registry)
    vocab = 40
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, vocab))
    log_probs = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)  # [T, V]
    prior = log_probs[0][::-1].copy()  # [V]
    decoded = predictor.decode({"tokens": ["w1", "w2", "w3"], "top_k": 3, "include_special": True})
    assert decoded.param == 3
    result = one_job(predictor, [log_probs, prior], decoded.x, param=5)  # the batch asked up to 5
    fresh = predictor.encode(decoded, result, seq_before=0)
    assert fresh[0]["logprob"] is None
    assert fresh[1]["logprob"] == pytest.approx(float(log_probs[0, 4]))  # w2 is id 4, judged by event 0
    later = predictor.encode(decoded, result, seq_before=5)
    assert later[0]["logprob"] == pytest.approx(float(prior[3]))  # w1 is id 3, judged by the prior
    assert [o["token"] for o in later] == ["w1", "w2", "w3"] and later[2]["token_id"] == 5
    probs = [n["prob"] for n in later[2]["next"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 3
    assert probs[0] == pytest.approx(math.exp(float(log_probs[2].max())), rel=1e-6)
    assert later[2]["next"][0]["token"] == predictor.vocab[int(np.argmax(log_probs[2]))]
    single = predictor.decode({"tokens": ["w1"], "top_k": 0})
    assert predictor.encode(single, one_job(predictor, [log_probs[:1], prior], single.x), 1)[0]["next"] == []


def test_lm_suggestions_leave_out_unk_and_eos_unless_included(registry: Registry) -> None:
    """Reference: the full distribution ranked, the specials dropped, the first k kept."""
    predictor, _ = lm(registry)
    unk, eos = predictor.unk_id, predictor.eos_id
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 40))
    logits[0, [unk, eos]] = 9.0, 8.5  # both specials on top
    logits[1, eos] = 9.0  # one of them
    logits[2, unk] = -9.0  # neither in the top k
    log_probs = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)  # [T, V]
    tokens = ["w1", "<unk>", "w3", "<eos>"]
    for k in (1, 3, 38):
        clean = predictor.decode({"tokens": tokens, "top_k": k})
        raw = predictor.decode({"tokens": tokens, "top_k": k, "include_special": True})
        assert clean.fingerprint == raw.fingerprint == 0  # no seq: nothing to replay
        assert predictor.decode({"tokens": tokens, "top_k": k, "seq": 0}).fingerprint != (
            predictor.decode({"tokens": tokens, "top_k": k, "seq": 0, "include_special": True}).fingerprint
        )
        batch_k = max(clean.param, raw.param)  # both jobs in one batch
        got = predictor.encode(clean, one_job(predictor, [log_probs, log_probs[0]], clean.x, batch_k), 1)
        got_raw = predictor.encode(raw, one_job(predictor, [log_probs, log_probs[0]], raw.x, batch_k), 1)
        for t in range(4):
            ranked = np.argsort(-log_probs[t].astype(np.float64), kind="stable").tolist()
            want = [i for i in ranked if i not in (unk, eos)][:k]
            assert [n["token"] for n in got[t]["next"]] == [predictor.vocab[i] for i in want], (k, t)
            assert [n["prob"] for n in got[t]["next"]] == pytest.approx(np.exp(log_probs[t, want]).tolist())
            assert [n["token"] for n in got_raw[t]["next"]] == [predictor.vocab[i] for i in ranked[:k]]
        assert [n["token"] for n in got_raw[0]["next"][:2]] == ["<unk>", "<eos>"][:k]


def test_sampling_greedy_top_k_and_seeded() -> None:
    log_probs = np.log(np.array([0.1, 0.5, 0.3, 0.1], np.float32))
    assert sample(log_probs, 0.0, 0, np.random.default_rng()) == 1
    draws = {sample(log_probs, 1.0, 2, np.random.default_rng(s)) for s in range(200)}
    assert draws == {1, 2}  # top-2 only
    a = [sample(log_probs, 0.8, 0, np.random.default_rng(7)) for _ in range(5)]
    assert a == [sample(log_probs, 0.8, 0, np.random.default_rng(7)) for _ in range(5)]


def test_sensor_decodes_normalized_readings_and_refuses_bad_values(registry: Registry) -> None:
    predictor = sensor(registry)
    decoded = predictor.decode({"readings": [[25.0, 990.0, 0.6], [20, 1000, 0.5]], "timestamps": [1.5, "t"]})
    assert decoded.x.dtype == np.float32 and decoded.x.shape == (2, 4)  # + each reading's hour of the day
    np.testing.assert_allclose(decoded.x[0, :3], [1.0, -1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(decoded.x[:, 3], [0.0, np.nan])  # Unix 1.5 s: 00:00 UTC; "t": no hour
    assert predictor.decode({"readings": [[1e31, 0.0, 0.0]]}).x[0, 0] == pytest.approx(2e30)  # large, fine
    for readings, words in (
        ([[1.0, 2.0]], "has 2 values"),
        ([[1.0, math.nan, 0.0]], "pressure"),
        ([[1.0, 1.0, -math.inf]], "vibration"),
        ([[1e40, 1.0, 1.0]], "temperature"),
    ):
        with pytest.raises(InvalidInput, match=words):
            predictor.decode({"readings": readings})


def sensor_job(predictor: SensorPredictor, outputs: list[np.ndarray], x: np.ndarray, seen: int) -> StepResult:
    """One job through the session-statistics hooks, as the runner runs them, for a session that had
    seen `seen` readings (fresh statistics otherwise)."""
    hooks = predictor.session_stats
    stats = np.zeros((1, hooks.floats))
    stats[0, 0] = seen
    readings, hours = hooks.split(x[None])
    model_x, carry = hooks.before(readings, stats, hours)
    derived = hooks.after([a[None] for a in outputs], model_x, stats, carry)
    return StepResult(outputs=[a[0] for a in derived], seq=len(x), state=None)


def test_sensor_scores_against_the_prediction_one_step_before(registry: Registry) -> None:
    predictor = sensor(registry)
    decoded = predictor.decode({"readings": [[20, 1000, 0.5], [25, 1010, 0.4]]})
    mean = np.array([[0.5, -0.5, 0.0], [0.1, 0.2, 0.3]], np.float32)  # [T, F]
    log_var = np.array([[0.0, 0.2, -0.2], [0.0, 0.0, 0.0]], np.float32)
    prior_mean, prior_lv = np.zeros(3, np.float32), np.zeros(3, np.float32)
    outputs = [mean, log_var, prior_mean, prior_lv]
    out = predictor.encode(decoded, sensor_job(predictor, outputs, decoded.x, 0), seq_before=0)
    assert all(
        out[0][k] is None for k in ("score", "probability", "is_anomaly", "likelihood", "surprise", "alarm")
    )
    x1 = np.array([1.0, 1.0, -1.0])
    want = 0.5 * sum(
        math.log(2 * math.pi) + lv + (x - m) ** 2 / math.exp(lv)
        for x, m, lv in zip(x1, mean[0].tolist(), log_var[0].tolist(), strict=True)
    )
    assert out[1]["score"] == pytest.approx(want, rel=1e-6)
    z2 = [
        (x - m) ** 2 / math.exp(lv)
        for x, m, lv in zip(x1, mean[0].tolist(), log_var[0].tolist(), strict=True)
    ]
    assert out[1]["surprise"] == pytest.approx(sum(z2) / 3, rel=1e-6)
    # a fresh session is still learning its own score distribution (likelihood 0.5); meanwhile the
    # trained model's calibration speaks: probability is the larger of its logistic and the 0.5's
    assert out[1]["likelihood"] == 0.5
    cal = predictor.calibration
    logistic = 1 / (1 + math.exp(-(want - cal.center) / cal.scale))
    assert out[1]["probability"] == pytest.approx(max(logistic, math.log10(2) / (math.log10(2) + 5)))
    assert out[1]["is_anomaly"] is (logistic >= 0.5)
    assert out[0]["predicted_mean"] == pytest.approx([22.5, 995.0, 0.5])
    assert out[0]["predicted_std"] == pytest.approx([5.0, 10 * math.exp(0.1), 0.1 * math.exp(-0.1)], rel=1e-6)
    first = predictor.encode(decoded, sensor_job(predictor, outputs, decoded.x, 3), seq_before=3)[0]
    assert first["score"] == pytest.approx(0.5 * 3 * math.log(2 * math.pi), rel=1e-6)  # x0 = 0 vs N(0, 1)

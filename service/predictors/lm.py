"""Word-level language model: words in, next-word predictions out; and continuation sampling.

    {"tokens": [...]} | {"text": "..."}  -> ids int64 [T]  (unknown words -> <unk>, flagged, not an error)
    log_probs [T, V], log_probs_in [V]   -> per event: logprob of the word that came, top-k next words

The logprob of event t is what the model gave that word one step before: row t-1 of log_probs, and for
the first event of a request the prediction from the state the request started from (log_probs_in),
which is null only for a session that has consumed nothing (seq 0).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import orjson

from service import schemas
from service.errors import InvalidInput
from service.metrics import Metrics
from service.predictors.base import (
    Decoded,
    DecodedMany,
    check_event_count,
    fingerprint,
    validate,
)
from service.predictors.detok import detokenize
from service.predictors.jsonout import filled, numbers
from service.predictors.topk import top_k
from service.registry import LoadedModel
from service.runner import StepResult
from service.settings import Settings

# one ONNX Runtime step: (ids [1], state [L, H] per tensor) -> result with the new state
StepFn = Callable[[np.ndarray, list[np.ndarray]], Awaitable[StepResult]]


@dataclass(slots=True)
class LmContext:
    tokens: list[str]
    unknown: np.ndarray  # bool [T]
    top_k: int
    include_special: bool  # `<unk>` and `<eos>` may be suggested


class LmPredictor:
    task = "lm"

    def __init__(self, model: LoadedModel, settings: Settings, metrics: Metrics | None = None) -> None:
        spec = model.manifest.lm
        assert spec is not None and model.vocab is not None
        self.vocab = model.vocab
        self.index = model.vocab_index
        self.unk_id = self.index[spec.unk_token]
        self.eos_id = self.index[spec.eos_token]
        self.special_ids = (self.unk_id, self.eos_id)
        self.vocab_array = np.array(self.vocab, dtype=object)  # id -> word, for a whole batch at once
        self.vocab_json = np.array([orjson.dumps(w) for w in self.vocab], dtype=object)  # id -> its JSON
        self.pattern = re.compile(spec.tokenizer.pattern)
        self.lowercase = spec.tokenizer.lowercase
        self.settings = settings
        self.top_k_cap = min(settings.max_top_k, len(self.vocab))  # once: `_request` runs per step
        # top_k -> the candidates to ask the batch for when the specials are left out: as many more as
        # there are specials, so that k others remain after leaving them out (a look-up, per step)
        extra = len(self.special_ids)
        self.wanted_without_specials = [min(k + extra, len(self.vocab)) for k in range(self.top_k_cap + 1)]
        self.unknown_counter = metrics.unknown_tokens.labels(model.name, model.version) if metrics else None

    def tokenize(self, text: str) -> list[str]:
        return self.pattern.findall(text.lower() if self.lowercase else text)

    def decode(self, payload: dict[str, object]) -> Decoded:
        plain = _plain_events(payload)
        if plain is None:  # anything unusual: the schema decides, and words its error
            request = validate(schemas.LmEvents, payload)
            plain = request.seq, request.tokens, request.text, request.top_k, request.include_special
        tokens = self._tokens(plain)
        check_event_count(len(tokens), self.settings.max_events_per_request)
        get, unk = self.index.get, self.unk_id
        ids = np.fromiter((get(t, unk) for t in tokens), np.int64, len(tokens))  # [T]
        unknown = np.fromiter((t not in self.index for t in tokens), bool, len(tokens))
        self._count_unknown(unknown)
        fp, context, wanted = self._request(plain, tokens, unknown)
        return Decoded(x=ids, seq=plain[0], fingerprint=fp, context=context, param=wanted)

    def decode_many(self, payloads: Sequence[dict[str, Any]]) -> tuple[list[DecodedMany], list[int]]:
        """`decode` of many steps: the plain ones grouped by event count, each group's words looked up
        in one pass; the others (and steps with no word or too many) are left to `decode`."""
        limit = self.settings.max_events_per_request
        groups: dict[int, list[tuple[int, _Plain, list[str]]]] = {}
        rest: list[int] = []
        for n, payload in enumerate(payloads):
            plain = _plain_events(payload)
            tokens = [] if plain is None else self._tokens(plain)
            if plain is None or not 0 < len(tokens) <= limit:
                rest.append(n)
            else:
                groups.setdefault(len(tokens), []).append((n, plain, tokens))
        return [self._group(members) for members in groups.values()], rest

    def _group(self, members: list[tuple[int, _Plain, list[str]]]) -> DecodedMany:
        index, unk = self.index, self.unk_id
        words = [t for _, _, tokens in members for t in tokens]
        shape = (len(members), len(words) // len(members))
        ids = np.fromiter(map(index.get, words, repeat(unk)), np.int64, len(words)).reshape(shape)  # [B, T]
        unknown = ids == unk  # each word looked up as <unk> asked again: it may be the word `<unk>` itself
        for n in np.flatnonzero(unknown).tolist():
            unknown.flat[n] = words[n] not in index
        self._count_unknown(unknown)
        positions, plains, token_lists = zip(*members, strict=True)  # in C, not a comprehension per column
        requests = map(self._request, plains, token_lists, unknown)
        fps, contexts, wanted = zip(*requests, strict=True)
        return DecodedMany(
            list(positions),
            ids,
            [plain[0] for plain in plains],
            list(fps),
            list(contexts),
            np.array(wanted, np.int64),
        )

    def _tokens(self, plain: _Plain) -> list[str]:
        _, given, text, _, _ = plain
        if given is not None:
            return list(map(str.lower, given)) if self.lowercase else list(given)
        return self.tokenize(text or "")

    def _count_unknown(self, unknown: np.ndarray) -> None:
        if self.unknown_counter is not None and unknown.any():
            self.unknown_counter.inc(int(unknown.sum()))

    def _request(self, plain: _Plain, tokens: list[str], unknown: np.ndarray) -> tuple[int, LmContext, int]:
        """(payload fingerprint, context, candidates to ask the batch for) of one decoded request."""
        seq, _, _, top_k, special = plain
        if top_k > self.top_k_cap:  # not min(): this runs per step of a bulk request
            top_k = self.top_k_cap
        fp = 0
        if seq is not None:
            fp = fingerprint("\x00".join(tokens).encode(), b"%d:%d" % (top_k, special))
        wanted = top_k if special or top_k == 0 else self.wanted_without_specials[top_k]
        return fp, LmContext(tokens, unknown, top_k, special), wanted

    def postprocess(self, outputs: list[np.ndarray], x: np.ndarray, params: np.ndarray) -> list[np.ndarray]:
        """[log_probs [B, T, V], log_probs_in [B, V], came [B, T], top ids [B, T, k], top probs [B, T, k]].

        `came` is the logprob each event was given one step before it: by the prior for the first
        event, by the previous event's output after that; k is the largest top_k asked in the batch.
        """
        log_probs, log_probs_in = outputs
        came = np.empty(x.shape, np.float32)  # [B, T]
        came[:, 0] = np.take_along_axis(log_probs_in, x[:, :1], axis=1)[:, 0]
        if x.shape[1] > 1:
            came[:, 1:] = np.take_along_axis(log_probs[:, :-1], x[:, 1:, None], axis=2)[..., 0]
        top_ids, top_probs = top_k(log_probs, int(params.max(initial=0)))
        return [log_probs, log_probs_in, came, top_ids, top_probs]

    def encode(self, decoded: Decoded, result: StepResult, seq_before: int) -> list[dict[str, Any]]:
        _, _, came, top_ids, top_probs = result.outputs  # [T], [T, k'], [T, k'] with k' >= top_k
        context: LmContext = decoded.context
        words, probs = self._suggestions(top_ids[None], top_probs[None], [context])
        return self._outputs(context, decoded.x.tolist(), came.tolist(), words[0], probs[0], seq_before == 0)

    def encode_many_json(
        self, group: DecodedMany, outputs: list[np.ndarray], seq_before: list[int]
    ) -> list[bytes]:
        """`encode` of each step as JSON, its outputs list exactly as orjson writes it, from the
        batch's arrays: each value of an event's output a piece of JSON (numbers by one orjson pass
        per array, words from the vocabulary's JSON), the pieces in columns, each event written by one
        %-format over its row (zip: no list per row), with no dict per event and per suggestion and
        no list of floats (512 steps: ~2.5x less than a dict per event and orjson)."""
        _, _, came, top_ids, top_probs = outputs  # [B, T], [B, T, k'], [B, T, k']
        contexts, (steps, t) = group.contexts, came.shape
        top_ids, top_probs = self._ranked(top_ids, top_probs, contexts)
        ids = group.x.reshape(-1)  # [N = B * T], as are the columns below
        unknown = np.concatenate([c.unknown for c in contexts])
        tokens = self.vocab_json[ids]  # a known word is its vocabulary entry
        for n in np.flatnonzero(unknown).tolist():
            tokens[n] = orjson.dumps(contexts[n // t].tokens[n % t])
        logprob = np.fromiter(numbers(came), dtype=object, count=came.size)
        starts = [j * t for j, before in enumerate(seq_before) if before == 0]
        logprob[starts] = b"null"  # a session's first word: predicted by nothing
        head = (tokens, ids, np.where(unknown, b"true", b"false").astype(object), logprob)
        wanted = np.repeat(np.fromiter((c.top_k for c in contexts), np.intp, steps), t)  # [N]
        top_ids, top_probs = (a.reshape(steps * t, a.shape[-1]) for a in (top_ids, top_probs))  # [N, k']
        answers = np.empty(steps, dtype=object)  # [B]: each step's events, a JSON array
        for k in np.unique(wanted).tolist():
            at = np.flatnonzero(wanted == k)  # events of the steps asking for k, t per step in order
            columns = [column[at].tolist() for column in head]  # token, token_id, unknown, logprob
            words = self.vocab_json[top_ids[at, :k]].T.tolist()  # [k][n]
            probs = numbers(top_probs[at, :k])  # [n * k], by event
            for j in range(k):
                columns += [words[j], probs[j::k]]
            answers[at[::t] // t] = filled(_event_json(k), zip(*columns, strict=True), t)
        return answers.tolist()

    def _suggestions(
        self, top_ids: np.ndarray, top_probs: np.ndarray, contexts: Sequence[LmContext]
    ) -> tuple[list[Any], list[Any]]:
        """The candidates [B, T, k'] as nested lists of words and probabilities (`_ranked`). One pass
        over the batch's arrays, not a list per event."""
        top_ids, top_probs = self._ranked(top_ids, top_probs, contexts)
        return self.vocab_array[top_ids].tolist(), top_probs.tolist()

    def _ranked(
        self, top_ids: np.ndarray, top_probs: np.ndarray, contexts: Sequence[LmContext]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The candidates [B, T, k'], most likely first, with `<unk>` and `<eos>` moved behind the others
        in the rows whose request leaves them out (k' counts them in: the first top_k of such a row are
        the top_k others)."""
        leave_out = np.fromiter((not c.include_special for c in contexts), bool, len(contexts))
        special = ((top_ids == self.unk_id) | (top_ids == self.eos_id)) & leave_out[:, None, None]
        if special.any():
            order = np.argsort(special, axis=-1, kind="stable")  # the others keep their order
            top_ids = np.take_along_axis(top_ids, order, axis=-1)
            top_probs = np.take_along_axis(top_probs, order, axis=-1)
        return top_ids, top_probs

    def _outputs(
        self,
        ctx: LmContext,
        ids: list[int],
        came: list[float],
        word_rows: list[list[str]],
        prob_rows: list[list[float]],
        first: bool,
    ) -> list[dict[str, Any]]:
        """One step's outputs from its rows of the derived arrays (as lists); `first`: the step starts
        the session (its first word was predicted by nothing)."""
        logprob: list[float | None] = list(came)
        if first:
            logprob[0] = None
        k = ctx.top_k
        return [
            {
                "token": token,
                "token_id": token_id,
                "unknown": unk,
                "logprob": lp,
                "next": [{"token": w, "prob": p} for w, p in zip(words[:k], probs[:k], strict=True)],
            }
            for token, token_id, unk, lp, words, probs in zip(
                ctx.tokens, ids, ctx.unknown.tolist(), logprob, word_rows, prob_rows, strict=True
            )
        ]

    # ---- generation --------------------------------------------------------------------------------

    def check_generate(self, request: schemas.GenerateRequest) -> None:
        """InvalidInput for what the schema cannot check: the settings' limit on max_tokens."""
        if request.max_tokens > self.settings.max_generate_tokens:
            raise InvalidInput(
                f"max_tokens {request.max_tokens} is above the limit {self.settings.max_generate_tokens}",
                limit=self.settings.max_generate_tokens,
            )

    async def generate(
        self,
        request: schemas.GenerateRequest,
        state: list[np.ndarray],
        step: StepFn,
    ) -> tuple[list[int], list[np.ndarray]]:
        """Sample up to max_tokens ids from `state`; returns them and the state after consuming them.

        The first distribution is the prediction from the session's state (the graph's `log_probs_in`,
        one call with a placeholder id whose other outputs are discarded); each sampled id is then fed
        back, one call per token. `<eos>` ends generation when asked, and is neither returned nor fed.
        Without `include_special`, `<unk>` is never sampled, nor `<eos>` unless it ends generation.
        """
        self.check_generate(request)
        rng = np.random.default_rng(request.seed)
        banned: list[int] = []
        if not request.include_special:
            banned = [self.unk_id] if request.stop_at_eos else [self.unk_id, self.eos_id]
        first = await step(np.array([self.eos_id], np.int64), state)
        dist = first.outputs[1]  # log_probs_in [V]: the prediction from `state`
        generated: list[int] = []
        for _ in range(request.max_tokens):
            if banned:
                dist = dist.copy()
                dist[banned] = -np.inf
            token = sample(dist, request.temperature, request.top_k, rng)
            if request.stop_at_eos and token == self.eos_id:
                break
            result = await step(np.array([token], np.int64), state)
            assert result.state is not None
            state, dist = result.state, result.outputs[0][0]  # log_probs [T=1, V] -> [V]
            generated.append(token)
        return generated, state

    def join(self, ids: list[int]) -> tuple[list[str], str]:
        """The tokens as the model sees them, and as readable text."""
        tokens = [self.vocab[i] for i in ids]
        return tokens, detokenize(tokens, self.vocab[self.eos_id])


def _event_json(k: int) -> bytes:
    """The %-template of one event's output with k suggestions, as orjson writes `_outputs`'s dicts:
    token, token_id (%d), unknown, logprob, then each suggestion's token and prob (JSON pieces)."""
    suggestions = b",".join([b'{"token":%s,"prob":%s}'] * k)
    return b'{"token":%s,"token_id":%d,"unknown":%s,"logprob":%s,"next":[' + suggestions + b"]}"


_EVENTS_KEYS = frozenset(("seq", "tokens", "text", "top_k", "include_special"))
_Plain = tuple[int | None, list[str] | None, str | None, int, bool]


def _plain_events(payload: dict[str, object]) -> _Plain | None:
    """(seq, tokens, text, top_k, include_special) of a body that `schemas.LmEvents` takes as it is,
    without building the model; None for any other body (the schema then accepts it, converting, or
    refuses it)."""
    if (
        type(payload) is not dict
        or not payload.keys() <= _EVENTS_KEYS
        or ("tokens" in payload) == ("text" in payload)
    ):
        return None
    seq, top_k, special = payload.get("seq"), payload.get("top_k", 5), payload.get("include_special", False)
    if not (seq is None or (type(seq) is int and seq >= 0)) or not (type(top_k) is int and top_k >= 0):
        return None
    if type(special) is not bool:
        return None
    tokens, text = payload.get("tokens"), payload.get("text")
    if tokens is not None:
        if type(tokens) is not list:
            return None
        try:
            joined = " ".join(tokens)  # a word that is not a string (JSON: a number, null...) raises
        except TypeError:
            return None
        # text the answer cannot echo (lone surrogates, control characters): the schema words the 422
        return (seq, tokens, None, top_k, special) if schemas.is_text(joined) else None
    return (seq, None, text, top_k, special) if type(text) is str and schemas.is_text(text) else None


def sample(log_probs: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise sample from softmax(log_probs / temperature), restricted to
    the top_k most likely ids when top_k > 0."""
    if temperature == 0:
        return int(np.argmax(log_probs))
    # shifted before the division: a tiny temperature makes the others -inf, never inf - inf = NaN
    shifted = log_probs.astype(np.float64)
    shifted -= shifted.max()
    with np.errstate(over="ignore", divide="ignore"):
        logits = shifted / temperature  # <= 0, the most likely 0
    if 0 < top_k < len(logits):
        cut = np.partition(logits, len(logits) - top_k)[len(logits) - top_k]
        logits = np.where(logits >= cut, logits, -np.inf)
    weights = np.exp(logits)
    return int(rng.choice(len(weights), p=weights / weights.sum()))

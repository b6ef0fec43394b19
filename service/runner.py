"""The batcher's hooks for one model version: stack inputs, read states, run ONNX Runtime, write back.

Task-agnostic: it moves `x` and the state tensors; the predictor gives `x` meaning and derives what its
answers need from the graph's outputs, batched, in the predict call (`postprocess`: on the worker thread
for lm, so that the event loop is left with slicing rows and building the response; see service.batcher
for when calls run on the loop's thread).

    jobs (B of them, same T)    x [T] | [T, F] each, a session record each (or an explicit state)
      batch   -> store.gather: the sessions' states [L, B, H] in one read; jobs whose session moved on
                 (CONFLICT) or ended (GONE) since their lookup drop out here       (event loop, 1 read)
              -> x [B', T(, F)], state [L, B', H] of the jobs that run
      predict -> ONNX Runtime: task outputs ([B', T, ...] per event, [B', ...] prior) and new state
                 [L, B', H]; then postprocess(outputs, x, params) -> derived arrays [B', ...] (worker|loop)
      unbatch -> each job's `answer` hook builds its response (and the answer to store for replays);
                 store.commit: new state, seq += T and answers, check-and-set per session against the
                 incarnation and seq its lookup saw                                 (event loop, 1 write)
              -> one StepResult per job: APPLIED with the new seq, or CONFLICT / GONE (nothing written)

A job that brings its own state (generate without commit) runs from it and writes nothing back.

Session statistics (sensor, service.anomaly): a model's stored state is the graph's tensors followed by
`aux_states` extra tensors of the same shape that hold per-session statistics. They are never fed to the
graph: `stats.before` turns the readings into the model input (online normalisation), `stats.after`
derives the answers from the graph's outputs (instead of `postprocess`), and both update the statistics,
which are written back with the graph's new state, in the same check-and-set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.anomaly import SessionStats, pack, unpack
from service.batcher import Timed
from service.contract import TASK_OUTPUTS
from service.errors import StoreUnavailable
from service.registry import LoadedModel
from service.store.base import Gathered, SessionRecord, SessionStore, Status, StoredAnswer


@dataclass(slots=True)
class StepResult:
    outputs: list[np.ndarray]  # this job's row of each array postprocess derived
    seq: int  # APPLIED: the seq after the job; CONFLICT: the store's seq; otherwise -1
    state: list[np.ndarray] | None  # the new state [L, H] per tensor, for jobs that brought a state
    status: Status = Status.APPLIED  # for jobs that brought a state: ran, nothing written
    answer: StoredAnswer | None = None  # CONFLICT: the answer the store holds (a replay, maybe)
    error: Exception | None = None  # the job's `answer` hook raised: nothing was written
    response: Any = None  # what the job's `answer` hook built


# (this job's provisional result: outputs and the seq it will have) -> (response, answer to store)
AnswerHook = Callable[[StepResult], tuple[Any, StoredAnswer | None]]


@dataclass(slots=True)
class StepJob:
    """One request's events for one session. With `state` ([L, H] per tensor) the job runs from that
    state and writes nothing back (generate without commit); otherwise from its session's stored state,
    checked and set against `session` (the record its lookup returned)."""

    x: np.ndarray  # lm int64 [T]; sensor float32 [T, F]
    session: SessionRecord | None
    state: list[np.ndarray] | None = None
    param: int = 0  # a per-job parameter for the predictor's postprocess (lm: top_k)
    answer: AnswerHook | None = None  # builds the response before the write, so it is stored with it


@dataclass(slots=True)
class _Prepared:
    run: list[int]  # indices of the jobs that run (all of them, unless some dropped out at the read)
    x: np.ndarray
    params: np.ndarray
    state: list[np.ndarray]
    read: Gathered | None  # the store's read, indexed like the jobs with a session
    own: list[int]  # indices of the jobs with a session, in `read` order


# (graph outputs [B, ...] in TASK_OUTPUTS order, x [B, T, ...], params [B]) -> arrays [B, ...]
Postprocess = Callable[[list[np.ndarray], np.ndarray, np.ndarray], list[np.ndarray]]


class ModelRunner:
    def __init__(
        self,
        model: LoadedModel,
        store: SessionStore,
        part: int,
        postprocess: Postprocess | None = None,
        stats: SessionStats | None = None,
    ) -> None:
        self.model = model
        self.postprocess = postprocess
        self.stats = stats if model.aux_states else None
        self.store = store
        self.part = part
        self.state_inputs, state_outputs = model.state_names
        self.task_outputs = list(TASK_OUTPUTS[model.task])
        self.output_names = self.task_outputs + state_outputs

    async def batch(self, items: Sequence[StepJob]) -> _Prepared:
        own = [i for i, job in enumerate(items) if job.session is not None]
        records = [job.session for job in items if job.session is not None]
        read = await self.store.gather(self.part, records) if records else None
        if read is not None and len(own) == len(items) and read.all_ready:  # the common case
            x = np.stack([job.x for job in items])  # [B, T] | [B, T, F]
            params = np.fromiter((job.param for job in items), np.int64, len(items))
            return _Prepared(list(range(len(items))), x, params, read.state, read, own)
        ready = np.zeros(len(items), bool)
        slot = np.full(len(items), -1, np.intp)  # job index -> its index in `read`
        if read is not None:
            slot[own] = np.arange(len(own))
            ready[own] = read.status == Status.READY
        run = [i for i, job in enumerate(items) if ready[i] or job.session is None]
        layers, hidden = self.model.manifest.state_shape
        state = [np.empty((layers, len(run), hidden), np.float32) for _ in range(self.model.state_count)]
        for j, i in enumerate(run):
            given = items[i].state
            for k, tensor in enumerate(state):
                if given is not None:
                    tensor[:, j] = given[k]
                else:
                    assert read is not None
                    tensor[:, j] = read.state[k][:, slot[i]]
        x = np.stack([items[i].x for i in run]) if run else np.empty((0,))
        params = np.fromiter((items[i].param for i in run), np.int64, len(run))
        return _Prepared(run, x, params, state, read, own)

    @property
    def gil_bound(self) -> bool:
        """Whether a call is mostly work that holds the GIL, so that the batcher runs it on the loop's
        thread (service.batcher): a sensor model's statistics, ~10x its graph's time."""
        return self.stats is not None

    @staticmethod
    def prepared(x: np.ndarray, params: np.ndarray, state: list[np.ndarray]) -> _Prepared:
        """What `batch` gives for B jobs that all run, from arrays: x [B, T(, F)], params [B], the
        sessions' stored state [L, B, H] per tensor (bulk ingest reads the slab itself)."""
        return _Prepared(list(range(len(x))), x, params, state, None, [])

    def predict(self, prepared: _Prepared) -> Timed:
        """(derived arrays [B', ...], new state [L, B', H] per tensor), with the duration of the ONNX
        Runtime call alone; runs on the batcher's worker thread, or on the loop's where `gil_bound`."""
        if not prepared.run:
            return Timed(([], []), 0.0)
        graph_state = prepared.state[: len(self.state_inputs)]
        x = prepared.x
        if self.stats is not None:
            aux = prepared.state[len(self.state_inputs) :]
            stats = unpack(aux, self.stats.floats)  # [B', K] float64
            readings, hours = self.stats.split(x)
            x, carry = self.stats.before(readings, stats, hours)
        feed = {"x": x, **dict(zip(self.state_inputs, graph_state, strict=True))}
        started = time.perf_counter()
        output = self.model.run(feed, self.output_names)
        run_s = time.perf_counter() - started
        n_task = len(self.task_outputs)
        batch = len(prepared.run)
        if (
            len(output) != len(self.output_names)
            or any(a.shape[0] != batch for a in output[:n_task])
            or any(s.shape[1] != batch for s in output[n_task:])
        ):
            raise AssertionError(
                f"ONNX Runtime returned shapes {[a.shape for a in output]} for {batch} job(s)"
            )
        outs, new_state = output[:n_task], output[n_task:]
        if self.stats is not None:
            outs = self.stats.after(outs, x, stats, carry)
            new_state = [*new_state, *pack(stats, aux)]
        else:
            new_state = [*new_state, *prepared.state[len(self.state_inputs) :]]  # kept as they were
            if self.postprocess is not None:
                outs = self.postprocess(outs, prepared.x, prepared.params)
        return Timed((outs, new_state), run_s)

    async def unbatch(
        self, items: Sequence[StepJob], prepared: _Prepared, output: Any, keep: Sequence[bool]
    ) -> list[StepResult]:
        outs, new_state = output
        run = prepared.run
        if any(len(a) != len(run) for a in outs):
            raise AssertionError(f"postprocess returned {[a.shape for a in outs]} for {len(run)} job(s)")
        results: list[StepResult | None] = [None] * len(items)
        read = prepared.read
        if read is not None and len(run) < len(items):  # jobs that dropped out at the read
            for slot, i in enumerate(prepared.own):
                status = Status(int(read.status[slot]))
                if status != Status.READY:
                    seq = int(read.seqs[slot]) if status == Status.CONFLICT else -1
                    results[i] = StepResult([], seq, None, status)
        write: list[int] = []  # positions in `run` of the jobs to write back
        answers: list[StoredAnswer | None] = []
        events = int(prepared.x.shape[1]) if run else 0
        for j, i in enumerate(run):
            job = items[i]
            result = StepResult(
                outputs=[a[j] for a in outs],
                seq=-1,
                state=[s[:, j] for s in new_state] if job.state is not None else None,
            )
            results[i] = result
            if job.session is None or not keep[i]:
                continue
            result.seq = job.session.seq + events
            stored = None
            if job.answer is not None:
                try:
                    result.response, stored = job.answer(result)
                except Exception as exc:  # this job's answer failed: write nothing for it
                    result.error, result.seq = exc, -1
                    continue
            write.append(j)
            answers.append(stored)
        if write:
            if len(write) == len(run):
                state = new_state
            else:
                idx = np.asarray(write, np.intp)
                state = [s[:, idx] for s in new_state]
            records = [r for r in (items[run[j]].session for j in write) if r is not None]
            try:
                committed = await self.store.commit(self.part, records, state, events, answers)
            except StoreUnavailable as exc:
                exc.details["applied"] = "unknown"
                exc.message += (
                    "; the request may or may not have been applied: send it again with the same seq "
                    "and an applied request answers its stored response"
                )
                raise
            failed = [] if committed.all_applied else np.flatnonzero(committed.status).tolist()
            for n in failed:
                written = results[run[write[n]]]
                assert written is not None
                status = Status(int(committed.status[n]))
                written.status, written.answer = status, committed.answers.get(n)
                written.seq = int(committed.seqs[n]) if status == Status.CONFLICT else -1
                written.response = None
        return [r if r is not None else StepResult([], -1, None, Status.GONE) for r in results]

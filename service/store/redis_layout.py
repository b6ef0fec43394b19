"""How the Redis store lays sessions out in Redis, and the bytes its scripts take and give back.

Keys (prefix `rnnserve:`; scripts in redis_scripts.py, round trips in redis_store.py):

    s:<id>      hash, expires after session_ttl_s idle (PEXPIRE restarted on every use)
                  m model "name/version"   o owner ("-": none)   i incarnation (random, per create)
                  q seq   c created ms   u last used ms   x state: float32 [S, L, H] little-endian bytes
                  a seq of the stored answer (-1: none)   f its payload fingerprint   r its response
                  t token of the last applied write
    g:<id>      tombstone "reason\\nowner": 410 with the reason for gone_retention_s. While a session
                lives it holds "expired" with a TTL gone_retention_s longer than the session's, so a
                session that Redis expires leaves its tombstone behind; delete and evict overwrite it.
    z:<model>   sorted set of a model version's live ids by last use: capacity (ZCARD, after dropping
                ids whose hash expired) and the LRU victim for capacity_policy=evict.

A batch's states travel as one string of B sessions' [S, L, H] blocks (GATHER's reply, COMMIT's
argument); the batcher works on per-tensor [L, B, H] arrays, so `Partition` converts between the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import SessionGone, SessionNotFound, session_gone
from service.store.base import Committed, Gathered, SessionRecord, Status, StoredAnswer

PREFIX = "rnnserve:"
_STATUS = np.zeros(256, np.int8)  # a script's status character -> Status
_STATUS[ord("c")], _STATUS[ord("g")] = Status.CONFLICT, Status.GONE
_RS, _US = "\x1e", "\x1f"  # LOOKUP's separators: between lookups, between the fields of one


class Keys:
    """The key names of one deployment (every replica of it uses the same prefix). The scripts that
    only learn a session's id or model from Redis build its keys from the `s`, `g`, `z` prefixes."""

    __slots__ = ("g", "prefix", "s", "z")

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.s, self.g, self.z = f"{prefix}s:", f"{prefix}g:", f"{prefix}z:"

    def session(self, session_id: str) -> str:
        return self.s + session_id

    def tomb(self, session_id: str) -> str:
        return self.g + session_id


def owner_code(owner: str | None) -> str:
    """The hash's `o` field: "-" for no owner (auth off), "=" + the owner otherwise."""
    return "-" if owner is None else "=" + owner


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Partition:
    """A served model version: its name, its state's shape and its z: key."""

    key: str
    name: str
    version: str
    state_count: int
    layers: int
    hidden: int
    zkey: str

    @property
    def nbytes(self) -> int:
        return 4 * self.state_count * self.layers * self.hidden

    def state_bytes(self, state: Sequence[np.ndarray] | None) -> bytes:
        """One session's state tensors [L, H] as the hash's `x` field (zeros for None)."""
        if state is None:
            return bytes(self.nbytes)
        blob = np.ascontiguousarray(np.stack(list(state)), dtype="<f4").tobytes()  # [S, L, H]
        if len(blob) != self.nbytes:
            raise ValueError(f"state of {len(blob)} bytes for {self.key}, which needs {self.nbytes}")
        return blob

    def state_tensors(self, blob: bytes) -> list[np.ndarray]:
        """The hash's `x` field as the session's state tensors [L, H] (copies)."""
        flat = np.frombuffer(blob, "<f4").reshape(self.state_count, self.layers, self.hidden)
        return [np.array(s, np.float32) for s in flat]

    def batch_tensors(self, blob: bytes, n: int) -> list[np.ndarray]:
        """n sessions' `x` fields, concatenated, as per-tensor [L, B, H] arrays (C-contiguous)."""
        flat = np.frombuffer(blob, "<f4").reshape(n, self.state_count, self.layers, self.hidden)
        # [B, S, L, H] -> per tensor [L, B, H]
        return [
            np.ascontiguousarray(flat[:, k].transpose(1, 0, 2), np.float32) for k in range(self.state_count)
        ]

    @staticmethod
    def batch_bytes(state: Sequence[np.ndarray]) -> bytes:
        """Per-tensor [L, B, H] arrays as B sessions' `x` fields, concatenated."""
        # [L, B, H] per tensor -> [B, S, L, H]: each session's bytes in a row
        return np.ascontiguousarray(np.stack(list(state)).transpose(2, 0, 1, 3), "<f4").tobytes()


def decode_record(
    session_id: str, fields: Sequence[Any], parts: Mapping[str, int], ttl_ms: int
) -> SessionRecord:
    """A script's {m, i, q, c, u} as a record (`parts`: model key -> partition index)."""
    model_key = text(fields[0])
    last_used_ms = int(fields[4])
    return SessionRecord(
        session_id=session_id,
        model_key=model_key,
        part=parts.get(model_key, -1),
        row=-1,
        gen=int(fields[1]),
        seq=int(fields[2]),
        created_at=int(fields[3]) / 1000,
        last_used_at=last_used_ms / 1000,
        expires_at=(last_used_ms + ttl_ms) / 1000,
    )


def refusal(session_id: str, reply: Sequence[Any]) -> SessionNotFound | SessionGone:
    """What a script's {'gone', reason} / {'none'} means."""
    if text(reply[0]) == "gone":
        return session_gone(session_id, text(reply[1]))
    return SessionNotFound(f"no session {session_id}", session_id=session_id)


def split_lookups(reply: Any, count: int) -> list[list[str]]:
    """LOOKUP's one string back: per lookup its fields ("ok", m, i, q, c, u | "gone", reason | "none")."""
    answers = text(reply).split(_RS)
    if len(answers) != count:
        raise AssertionError(f"{len(answers)} answers to {count} lookups")
    return [answer.split(_US) for answer in answers]


def decode_gather(part: Partition, reply: Sequence[Any], n: int) -> Gathered:
    """GATHER's {status, seqs, states} for n sessions."""
    status, seqs, blob = reply
    if len(status) != n or len(blob) != n * part.nbytes:
        raise AssertionError(f"the batch read returned {len(blob)} state bytes for {n} session(s)")
    all_ready = status.count(b".") == n
    return Gathered(
        part.batch_tensors(blob, n),
        _STATUS[np.frombuffer(status, np.uint8)],
        np.array(seqs.split(), np.int64),
        all_ready,
    )


def commit_meta(
    records: Sequence[SessionRecord], events: int, token: str, answers: Sequence[StoredAnswer | None]
) -> tuple[str, bytes]:
    """COMMIT's per-session "incarnation expected new token answer-seq fingerprint answer-length"
    line, and the answers' responses concatenated."""
    meta = " ".join(
        f"{r.gen} {r.seq} {r.seq + events} {token} -1 0 0"
        if a is None
        else f"{r.gen} {r.seq} {r.seq + events} {token} {a.seq} {a.fingerprint} {len(a.response)}"
        for r, a in zip(records, answers, strict=True)
    )
    return meta, b"".join(a.response for a in answers if a is not None)


def decode_commit(reply: Sequence[Any], n: int) -> Committed:
    """COMMIT's {status, seqs, then per conflict: index, answer seq, fingerprint, response}."""
    status = _STATUS[np.frombuffer(reply[0], np.uint8)]
    if len(status) != n:
        raise AssertionError(f"the batch write answered for {len(status)} of {n} session(s)")
    committed = Committed(status, np.array(reply[1].split(), np.int64), reply[0].count(b".") == n)
    for k in range(2, len(reply), 4):
        index, seq, fp, response = reply[k : k + 4]
        if int(seq) >= 0 and response:
            committed.answers[int(index) - 1] = StoredAnswer(int(seq), int(fp), bytes(response))
    return committed

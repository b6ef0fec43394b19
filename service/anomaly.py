"""Per-session sensor statistics: online normalisation and the anomaly likelihood of the stream's scores.

Why: a model's raw score (NLL of a reading under its prediction) depends on the stream's noise and on how
well the model fits it, so no single threshold works across streams, and a logistic fitted per model
saturates. Numenta's anomaly likelihood (Ahmad et al. 2017, used by HTM on NAB) judges a score against the
distribution of the same stream's recent scores instead: a short-term average of the raw scores is
compared with the long-term mean and variance of that average, and the Gaussian tail says how unusual the
present is for this stream. Differences from nupic's `AnomalyLikelihood`, each to keep the state small:

- the long-term mean/variance are running moments (exact averages over the first MEMORY values, then
  exponentially weighted with weight 1/MEMORY) instead of moments re-estimated over a window of 8640 kept
  scores; the short-term average is over the last WINDOW scores, kept in a ring;
- the first LEARN scored readings (the model settling into the stream) stay out of the long-term moments,
  and the likelihood is reported as 0.5 until WARMUP scored readings (nupic: learningPeriod and
  estimationSamples);
- the raw score is the standardised squared prediction error z^2 (mean over features, capped at CAP)
  rather than HTM's fraction of unpredicted columns: a reading the model predicted well scores ~1.

Range novelty (HTM's "spatial anomaly" in Numenta's NAB detector): a reading outside the range of
every reading the stream has shown is news however well a model of the stream's dynamics predicts it,
and a likelihood of averaged surprises is slow to say so. Its excess d (how far outside [min, max] the
reading lies, in units of that range, max over features) counts as a = RED * d / TOL on the same
-log10 scale as the likelihood's tail, so d = TOL (HTM's 5% tolerance) is the red alert and larger
excesses rank higher; `probability` takes the larger of the two. It too waits for WARMUP readings.

Daily profile: many streams repeat a daily pattern (load, traffic, temperature), and a reading that is
ordinary for the stream can be wrong for its hour (a missing daily peak, a flat stretch where the
pattern moves, a day that runs low). A next-reading model sees no further back than its state carries,
so each session also keeps, for each hour of the day (from the readings' timestamps, service.daytime),
running moments of its readings (exact over the first BIN_MEMORY readings of that hour, then weighted
1/BIN_MEMORY), and scores each reading by its squared deviation from its hour's mean (in units of that
hour's std, floored at FLOOR of the stream's overall scale, capped at CAP, mean over features) once its
hour has MIN_COUNT readings. Those daily surprises get a likelihood of their own (the same rules as the
model's), whose -log10 tail is a third piece of evidence for `probability`. Readings without a
timestamp stay out of it.

Alarm (CAD OSE's rest period, Smirnov 2016, second on NAB's scoreboard): an anomalous stretch keeps
`probability` high for many readings, and an operator wants one page per episode, not one per reading.
`alarm` is `probability` except during the REST readings after a reading whose alarm was raised
(probability >= 0.5, the red alert), when it is 0: the first red reading of an episode is reported, the
episode's next REST readings are not, and a stretch still red after them is reported again. One
exception, escalation: the red alert raises an episode's page on its first red reading, often weak
evidence (a just past RED), and the episode's strongest evidence tends to come a few readings later;
a rest that swallowed it would report the episode at its weakest. So a resting reading whose evidence
a reaches ESCALATE times that of the episode's last page (its tail the square of that page's, for
ESCALATE = 2) is reported too, and sets the bar for the next escalation; the rest runs on from the
raise. Two floats per session: the readings of rest left, and the evidence the next escalation needs
(0: none, so a session saved before either existed starts calm).

Training's calibration: a model trained on this sensor's own history (fixed normalisation) has a
calibration of its raw score from training, whose evidence is RED * exp((score - center) / scale) (it
makes `probability` the manifest's logistic, 0.5 at training's threshold). Where training chose that
threshold on labelled anomalies of this sensor, it knows what an anomaly scores, which the stream's own
statistics cannot learn (they learn from a stream that may be full of anomalies, and a capped,
averaged surprise hides a spike's size): it alone decides `probability`. A threshold set at a quantile
of unlabelled validation scores is only a guess: it speaks for the session while the likelihoods and
the range wait for WARMUP readings, beside them. A fleet model (online) knows nothing of a new
stream's scores: its sessions only learn.

Online normalisation (fleet models, manifest `normalization: "online"`): reading t enters the model as
`(r_t - m_{t-1}) / s_{t-1}`, with m, s the running mean and std of readings 0..t-1 (same running-moment
rule, each reading winsorised at +-CLIP s, floor on s), clipped to +-CLIP: the model sees each stream
on its own scale, learnt only from the
stream's past. Fixed normalisation uses the manifest's mean/std, as before.

Everything a session needs lives in one float32 vector per session (`StatsLayout`), which the runner
stores as extra state tensors beside the graph's own [L, N, H] tensors (`pack`/`unpack`), so snapshots,
restores, the SIGTERM file, the Redis store and exactly-once replays carry it with no extra code.

    index  0          n: readings seen
           1 .. F     running mean of each feature (online normalisation)
           F+1 .. 2F  running variance of each feature
           2F+1       m: scored readings
           2F+2, +3   long-term mean and variance of the short-term average
           2F+4 ..    ring of the last WINDOW raw scores (slot m % WINDOW)
           R = 2F+4+WINDOW  readings in the range (0: none yet; a session saved before the range
                      existed starts its range afresh)
           R+1 .. R+F      lowest reading of each feature (reading units)
           R+F+1 .. R+2F   highest reading of each feature
           D = R+2F+1       readings seen in each hour of the day (HOURS values)
           D+HOURS ..       running mean of each hour and feature ([HOURS, F], hour-major)
           D+HOURS+HOURS*F  running variance of each hour and feature
           D+HOURS+2HOURS*F the daily surprises' likelihood: scored count, long-term mean and variance,
                            ring of the last WINDOW (as at 2F+1)
           A = D+HOURS+2HOURS*F+3+WINDOW  readings of the alarm's rest period left
           A+1              the evidence an escalation needs during that rest (0: none)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.daytime import HOURS

WINDOW = 10  # short-term average of raw scores (nupic's averagingWindow)
MEMORY = 8640  # running moments: exact means up to this many values, then weight 1/MEMORY (nupic's window)
WARMUP = 250  # scored readings before the likelihood leaves 0.5 (below NAB's smallest probation)
LEARN = 125  # scored readings left out of the long-term moments (nupic's learningPeriod)
CAP = 100.0  # cap on a feature's z^2 (10 std): one wild reading must not blow up the long-term variance
VAR_FLOOR = (
    0.01  # floor on the variance of the short-term average (z^2 units; nupic floors at 3e-4 of [0, 1])
)
CLIP = 10.0  # online-normalised model inputs are clipped to +-CLIP
SCALE_FLOOR = 1e-3  # relative floor on a feature's running std: a constant stream still has a scale
BIN_MEMORY = 30  # readings of one hour of the day in its running moments (2.5 days of 5-minute readings)
FLOOR = 0.1  # an hour's std is at least this share of the stream's overall scale (a perfect repeat too)
MIN_COUNT = 3  # readings an hour needs before its readings are scored against it
TOL = 0.05  # range novelty at the red alert: 5% of the seen range outside it (HTM's spatialTolerance)
A_NOVEL_MAX = 1e6  # cap on range novelty's and calibration's a: probability stays below 1 in float64
RED = 5.0  # -log10 of the tail at which probability = 0.5 (nupic's red alert: likelihood 0.99999)
ALERT = 0.5  # probability at the red alert (a = RED): is_anomaly, and an alarm is raised
REST = 30  # readings after a raised alarm that raise none (CAD OSE's restPeriod)
ESCALATE = 2.0  # during a rest, evidence this many times the last page's pages again (its tail squared)
_LOG10 = math.log(10.0)
_LOG_2PI = math.log(2 * math.pi)


def stats_floats(features: int) -> int:
    """float values of one session's statistics for a model of `features` features (layout above)."""
    return 4 * features + 5 + WINDOW + HOURS * (1 + 2 * features) + 3 + WINDOW + 2


def aux_tensors(floats: int, layers: int, hidden: int) -> int:
    """How many extra [L, N, H] state tensors hold `floats` values per session."""
    return -(-floats // (layers * hidden))


def unpack(aux: list[np.ndarray], floats: int) -> np.ndarray:
    """Extra state tensors [L, B, H] -> the sessions' stats [B, floats] float64: each tensor's values
    cast straight into their columns (one pass over the state, no float32 copy of the whole)."""
    layers, b, hidden = aux[0].shape
    per = layers * hidden
    stats = np.empty((b, floats))
    for i, tensor in enumerate(aux):
        start, width = i * per, min(per, floats - i * per)
        sessions = tensor[0] if layers == 1 else tensor.transpose(1, 0, 2).reshape(b, per)  # [B, L*H]
        stats[:, start : start + width] = sessions[:, :width]
    return stats


def pack(stats: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """The sessions' stats [B, K] -> float32 tensors shaped like `like` ([L, B, H] each), zero padded:
    each tensor written from its columns, as `unpack` reads them."""
    b, k = stats.shape
    layers, _, hidden = like[0].shape
    per = layers * hidden
    tensors = []
    for i in range(len(like)):
        start, width = i * per, min(per, k - i * per)
        tensor = np.empty((layers, b, hidden), np.float32)
        if layers == 1:
            tensor[0, :, :width] = stats[:, start : start + width]
            tensor[0, :, width:] = 0.0
        else:
            sessions = np.zeros((b, per), np.float32)
            sessions[:, :width] = stats[:, start : start + width]
            tensor.transpose(1, 0, 2)[...] = sessions.reshape(b, layers, hidden)
        tensors.append(tensor)
    return tensors


def update_moments(
    mean: np.ndarray, var: np.ndarray, count: np.ndarray, value: np.ndarray, memory: int = MEMORY
) -> None:
    """Running moments, in place: exact mean and (population) variance of the first `memory` values, then
    exponentially weighted with weight 1/memory. `count`: values already in, broadcastable to `mean`."""
    w = 1.0 / np.minimum(count + 1.0, memory)
    delta = value - mean
    mean += w * delta
    var *= 1.0 - w
    var += (1.0 - w) * w * delta * delta


def _erfc(x: np.ndarray) -> np.ndarray:
    """math.erfc of each value of a 1-d float64 array (the C library's, value for value)."""
    return np.fromiter(map(math.erfc, x.tolist()), np.float64, len(x))


def log10_tail(z: np.ndarray) -> np.ndarray:
    """log10 P(Z >= z) for a standard normal Z [N], without underflow for large z."""
    z = np.asarray(z, np.float64)
    small = z < 8.0
    if small.all():  # the common case: the same operations on the same values, without the masks
        out: np.ndarray = np.log10(0.5 * _erfc(z / math.sqrt(2.0)))
        return out
    out = np.empty_like(z)
    out[small] = np.log10(0.5 * _erfc(z[small] / math.sqrt(2.0)))
    big = z[~small]  # Mills ratio: Q(z) ~ phi(z) / z * (1 - 1/z^2), within 0.1% from z = 8
    out[~small] = (
        -0.5 * big * big - np.log(big * math.sqrt(2 * math.pi)) + np.log1p(-1.0 / (big * big))
    ) / _LOG10
    return out


def probability_from_tail(log10_q: np.ndarray) -> np.ndarray:
    """a / (a + RED) with a = -log10(tail): 0.5 at nupic's red threshold, never exactly 1."""
    a: np.ndarray = np.maximum(-log10_q, 0.0)
    return a / (a + RED)


@dataclass(slots=True)
class Carry:
    """What `before` hands `after` for one batch."""

    seen: np.ndarray  # [B] readings each session had seen before this request
    centre: np.ndarray  # [B, T+1, F] what reading t was centred by (t = T: the next one)
    scale: np.ndarray  # [B, T+1, F]
    novelty: np.ndarray  # [B, T] range novelty of each reading, on the -log10 tail scale
    daily: np.ndarray  # [B, T] -log10 tail of the daily surprises' likelihood (0: none)


class SessionStats:
    """The runner's hooks for a sensor model's per-session statistics (see the module docs); `stats` is
    [B, floats] float64, updated in place."""

    def __init__(
        self,
        features: int,
        online: bool,
        mean: np.ndarray,
        std: np.ndarray,
        calibration: tuple[float, float] | None = None,
        labelled: bool = False,
    ) -> None:
        self.features = features
        self.calibration = calibration  # (center, scale) of the raw score: training's evidence
        self.labelled = labelled and calibration is not None  # chosen on labelled anomalies: it decides
        self.floats = stats_floats(features)
        self.online = online
        self.mu = np.asarray(mean, np.float64)  # [F] fixed normalisation
        self.sigma = np.asarray(std, np.float64)
        self.range_at = 2 * features + 4 + WINDOW  # layout above
        self.daily_at = self.range_at + 1 + 2 * features
        self.daily_track_at = self.daily_at + HOURS * (1 + 2 * features)
        self.rest_at = self.daily_track_at + 3 + WINDOW

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's x [B, T, F + 1] -> (readings [B, T, F], each reading's hour of the day [B, T])."""
        return x[..., : self.features], x[..., self.features].astype(np.float64)

    def before(
        self, readings: np.ndarray, stats: np.ndarray, hours: np.ndarray | None = None
    ) -> tuple[np.ndarray, Carry]:
        """Readings [B, T, F] (raw if online, normalised by the manifest otherwise) and their hours of the
        day [B, T] (NaN: unknown; None: all unknown) -> model input x [B, T, F] float32; counts the
        readings and updates the running moments, the range and the daily profile."""
        b, steps, f = readings.shape
        seen = stats[:, 0].copy()
        stats[:, 0] += steps
        hours = np.full((b, steps), np.nan) if hours is None else hours
        if not self.online:
            centre = np.broadcast_to(self.mu, (b, steps + 1, f))
            scale = np.broadcast_to(self.sigma, centre.shape)
            values = readings * self.sigma + self.mu
            novelty, daily = self._novelty(values, stats), self._daily(values, hours, scale, stats)
            return readings.astype(np.float32), Carry(seen, centre, scale, novelty, daily)
        mean, var = stats[:, 1 : 1 + f], stats[:, 1 + f : 1 + 2 * f]
        centre, scale = np.empty((b, steps + 1, f)), np.empty((b, steps + 1, f))
        n = seen[:, None]  # [B, 1]
        for t in range(steps):
            first = seen + t == 0
            mean[first] = readings[first, t]  # nothing seen: the first reading is its own centre
            centre[:, t], scale[:, t] = mean, self._scale(mean, var)
            # the reading as the model sees it (clipped to +-CLIP scales) enters the moments
            tamed = np.clip(readings[:, t], mean - CLIP * scale[:, t], mean + CLIP * scale[:, t])
            update_moments(mean, var, n + t, np.where(first[:, None], readings[:, t], tamed))
        centre[:, steps], scale[:, steps] = mean, self._scale(mean, var)
        x = np.clip((readings - centre[:, :steps]) / scale[:, :steps], -CLIP, CLIP)
        stats[:, 1 : 1 + f], stats[:, 1 + f : 1 + 2 * f] = mean, var
        novelty, daily = self._novelty(readings, stats), self._daily(readings, hours, scale, stats)
        return x.astype(np.float32), Carry(seen, centre, scale, novelty, daily)

    def _novelty(self, values: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Readings [B, T, F] in reading units -> each one's range novelty a [B, T] against the range of
        the readings before it (0 until WARMUP readings are in); the range is updated in place."""
        b, steps, f = values.shape
        r = self.range_at
        count, low, high = stats[:, r], stats[:, r + 1 : r + 1 + f], stats[:, r + 1 + f : r + 1 + 2 * f]
        novelty = np.zeros((b, steps))
        for t in range(steps):
            value = values[:, t]
            fresh = count == 0
            low[fresh], high[fresh] = value[fresh], value[fresh]
            # the same floor as a scale's: a stream that has been constant still has a width
            width = np.maximum(high - low, SCALE_FLOOR * np.maximum(np.abs(low), np.abs(high)) + 1e-9)
            excess = np.maximum(np.maximum(value - high, low - value), 0.0) / width  # [B, F]
            ready = count >= WARMUP
            novelty[ready, t] = np.minimum(RED * excess[ready].max(axis=1) / TOL, A_NOVEL_MAX)
            np.minimum(low, value, out=low)
            np.maximum(high, value, out=high)
            count += 1
        return novelty

    def _daily(
        self, values: np.ndarray, hours: np.ndarray, scale: np.ndarray, stats: np.ndarray
    ) -> np.ndarray:
        """Readings [B, T, F] in reading units, their hours [B, T] and the stream's overall scale [B, T(+1),
        F] -> the -log10 tail [B, T] of each reading's daily-surprise likelihood (0 where it has none);
        the hours' moments and the likelihood are updated in place."""
        b, steps, f = values.shape
        d = self.daily_at
        counts = stats[:, d : d + HOURS]  # views: written back in place
        means = stats[:, d + HOURS : d + HOURS * (1 + f)]
        variances = stats[:, d + HOURS * (1 + f) : d + HOURS * (1 + 2 * f)]
        surprise = np.full((b, steps), np.nan)
        for t in range(steps):
            known = np.flatnonzero(~np.isnan(hours[:, t]))
            if not known.size:
                continue
            hour = hours[known, t].astype(np.intp)
            cols = hour[:, None] * f + np.arange(f)  # [b', F] this hour's columns
            value, count = values[known, t], counts[known, hour]
            mean, var = means[known[:, None], cols], variances[known[:, None], cols]
            sd = np.maximum(np.sqrt(np.maximum(var, 0.0)), FLOOR * scale[known, t])
            sd = np.maximum(sd, SCALE_FLOOR * np.abs(mean) + 1e-9)
            z2 = np.minimum((value - mean) ** 2 / (sd * sd), CAP).mean(axis=1)
            scored = count >= MIN_COUNT
            surprise[known[scored], t] = z2[scored]
            first = count == 0
            mean[first] = value[first]
            update_moments(mean, var, count[:, None], value, memory=BIN_MEMORY)
            means[known[:, None], cols], variances[known[:, None], cols] = mean, var
            counts[known, hour] = count + 1
        k = self.daily_track_at
        tail = self._track(surprise, stats[:, k : k + 3 + WINDOW])
        return np.where(np.isnan(tail), 0.0, -tail)

    @staticmethod
    def _scale(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        scale: np.ndarray = np.maximum(np.sqrt(np.maximum(var, 0.0)), SCALE_FLOOR * np.abs(mean) + 1e-9)
        return scale

    def after(
        self, outputs: list[np.ndarray], x: np.ndarray, stats: np.ndarray, carry: Carry
    ) -> list[np.ndarray]:
        """Graph outputs (mean, log_var [B, T, F], mean_in, log_var_in [B, F]; model space) and the model
        input x -> [predicted mean [B, T, F], predicted std [B, T, F], score, probability, likelihood,
        surprise, alarm [B, T]] in reading units; NaN where a reading had no prediction (a session's
        first)."""
        mean, log_var, mean_in, log_var_in = (a.astype(np.float64) for a in outputs)
        prev_mean = np.concatenate([mean_in[:, None], mean[:, :-1]], axis=1)  # [B, T, F]
        prev_lv = np.concatenate([log_var_in[:, None], log_var[:, :-1]], axis=1)
        z2 = (x - prev_mean) ** 2 / np.exp(prev_lv)
        score = 0.5 * np.sum(_LOG_2PI + prev_lv + z2, axis=2)  # [B, T] Gaussian NLL, as the manifest says
        surprise = np.minimum(z2, CAP).mean(axis=2)
        none = (carry.seen[:, None] + np.arange(x.shape[1])) == 0
        for a in (score, surprise):
            a[none] = np.nan
        k = 2 * self.features + 1
        log10_q = self._track(surprise, stats[:, k : k + 3 + WINDOW])
        likelihood = 1.0 - 10.0**log10_q
        if self.labelled:  # training's threshold, chosen on this sensor's labelled anomalies, decides
            a = np.where(np.isnan(log10_q), np.nan, self._calibrated(score, carry.seen))
        else:  # whichever is the strongest evidence: the likelihood, the range novelty, the daily profile
            evidence = np.maximum(carry.novelty, carry.daily)
            if self.calibration is not None:
                evidence = np.maximum(evidence, self._calibrated(score, carry.seen))
            a = np.maximum(-log10_q, evidence)
        a = np.maximum(a, 0.0)  # the evidence on the -log10 tail scale (NaN: nothing predicted)
        probability = probability_from_tail(-a)
        centre, scale = carry.centre[:, 1:], carry.scale[:, 1:]
        return [
            mean * scale + centre,
            np.exp(0.5 * log_var) * scale,
            score,
            probability,
            likelihood,
            surprise,
            self._alarm(probability, a, stats[:, self.rest_at : self.rest_at + 2]),
        ]

    @staticmethod
    def _alarm(probability: np.ndarray, a: np.ndarray, block: np.ndarray) -> np.ndarray:
        """`probability` [B, T] and its evidence `a` [B, T] -> the alarm [B, T]: 0 during the REST readings
        after a raised alarm, but for escalations (module docs); `block` [B, 2] (readings of rest left,
        the evidence the next escalation needs; a view) is updated in place."""
        alarm = probability.copy()
        rest, bar = block[:, 0], block[:, 1]
        for t in range(probability.shape[1]):
            # NaN (nothing predicted: a session's first reading, never resting) raises nothing
            resting = rest > 0
            escalated = resting & (bar > 0) & (a[:, t] >= bar)
            alarm[resting & ~escalated, t] = 0.0
            raised = ~resting & (probability[:, t] >= ALERT)
            paged = raised | escalated
            # the bar as it is stored (float32 state): a request's split changes no comparison
            bar[paged] = (ESCALATE * a[paged, t]).astype(np.float32)
            rest[:] = np.where(raised, REST, np.maximum(rest - 1, 0))
        return alarm

    def _calibrated(self, score: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Training's calibration's evidence [B, T] (module docs): RED * exp((score - center) / scale),
        during the likelihood's warm-up only unless the threshold was chosen on labelled anomalies."""
        assert self.calibration is not None
        center, scale = self.calibration
        u = np.minimum((np.nan_to_num(score, nan=-np.inf) - center) / scale, math.log(A_NOVEL_MAX / RED))
        evidence: np.ndarray = RED * np.exp(u)
        if self.labelled:
            return evidence
        warming = (seen[:, None] + np.arange(score.shape[1]) - 1) < WARMUP  # scored readings before each
        return np.where(warming, evidence, 0.0)

    @staticmethod
    def _track(surprise: np.ndarray, block: np.ndarray) -> np.ndarray:
        """log10(1 - likelihood) [B, T] of each reading's short-term average surprise (NaN where a reading
        has no surprise: it leaves the track as it was); `block` [B, 3 + WINDOW] (scored count, long-term
        mean and variance, ring) is updated in place."""
        b, steps = surprise.shape
        m = block[:, 0]  # views: updated in place
        long_mean, long_var = block[:, 1], block[:, 2]
        ring = block[:, 3 : 3 + WINDOW]
        rows = np.arange(b)
        log10_q = np.full((b, steps), math.log10(0.5))
        for t in range(steps):
            live = ~np.isnan(surprise[:, t])  # e.g. a session's first reading: nothing predicted it
            slot = (m % WINDOW).astype(np.intp)
            ring[rows[live], slot[live]] = surprise[live, t]
            average = ring.sum(axis=1) / np.clip(m + 1, 1, WINDOW)
            ready = live & (m >= WARMUP)
            if ready.any():
                z = (average[ready] - long_mean[ready]) / np.sqrt(np.maximum(long_var[ready], VAR_FLOOR))
                log10_q[ready, t] = log10_tail(z)
            learn = live & (m >= LEARN)  # the model's first surprises (it is settling in) are left out
            lm, lv = long_mean[learn], long_var[learn]
            update_moments(lm, lv, m[learn] - LEARN, average[learn])
            long_mean[learn], long_var[learn] = lm, lv
            m[live] += 1
            log10_q[~live, t] = np.nan
        return log10_q

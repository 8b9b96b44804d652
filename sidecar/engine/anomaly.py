"""Anomaly scores for many series at once: how surprising each new sample is for *its* series.

The score of a sample is ``1 - p``, where ``p`` estimates how often this series has
behaved at least this unusually: 0.999 reads "about one sample in a thousand of this
series looks like this". All work is O(1) per sample (plus a fixed 25-bin histogram per
feature) and vectorised across series; memory is fixed, about 2.2 kB per series.

1. **Robust baseline.** A Huber-clipped exponentially weighted mean and mean absolute
   deviation over about ``baseline_samples`` samples (one outlier moves it by at most
   ``clip`` scales, so a spike cannot drag the baseline with it). The scale never falls
   below ``scale_floor`` times the series' typical magnitude: a near-constant series
   would otherwise call every tiny wobble infinitely surprising.
2. **Features**, each a non-negative surprise measured in baseline scales: the value
   itself (spikes, dips), the mean of the last ``short_samples`` samples (a shift in
   level), the log-ratio of their spread to the baseline's (a change in variance), how
   far the value goes beyond the most extreme values seen (a new high or low; the
   extremes relax toward the baseline over ten histogram memories, so this remembers
   weeks, not hours), and the mean of the last ``long_samples`` samples (a
   change too small to stand out in the short mean that lasts for hours, such as a
   quiet morning after a holiday). With ``use_forecast`` the engine's one-step forecast
   error is a sixth feature.
3. **Calibration per series.** Each feature's own history is kept in a decayed histogram
   (memory about ``memory_samples``), so ``p`` is an empirical tail probability: a noisy
   or spiky series learns that big surprises are normal *for it*. Beyond what the series
   has shown, a heavy (power-law) tail with the weight of ``prior_weight`` samples takes
   over, so a value far outside anything seen still scores near 1. The smallest ``p`` of
   the features, times their number (Bonferroni), is the sample's ``p``.
4. **What recurs daily is normal** and 5. **context: what this time of day should look like**
   (``timeofday.py``). Per time-of-day bin (``daily_bins``, an hour by default) the bank keeps the
   deviation that bin has reached on every recent day (a nightly backup, a morning batch), learnt
   over ``daily_days`` days; the value feature is looked up with the scale raised so that the
   recurring deviation counts as ``daily_scales`` scales, i.e. as ordinary (only the lookup changes:
   the histogram still learns the plain feature). It also learns the deviation from the baseline
   each bin usually shows (the cycle's shape, scaled by the amplitude its weekday usually shows)
   and its spread over about as many days: two
   features score one sample's distance from that expectation and the mean distance over the last
   ``short_samples`` (a flat or late day is a run of small misses), calibrated like the others.
   A **count series** (one that has shown only non-negative integers: events per interval) also has
   bursts that recur at random hours, a few a day; the largest miss of the context that every recent
   day has reached excuses the value and its distance from the context the same way, at any hour, so
   a burst as large as a usual day's counts as ``daily_scales`` scales, while a burst far beyond it,
   a new extreme, a dip or a stop still scores.
6. **One alert per incident.** After a score reaches ``alert_level``, for
   ``quiet_samples`` samples only a sample more surprising than the incident's peak keeps
   its score, and not within the first ``short_samples`` (the smoothed features are still
   absorbing the same change); the others are halved. Repeats of an alert already raised
   are noise to an on-call engineer, and the next genuinely worse moment still comes through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from .models_base import grown_capacity
from .timeofday import MAD_TO_SD as _MAD_TO_SD
from .timeofday import TimeOfDay

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
_A = TypeVar("_A", NDArray[np.float64], NDArray[np.int64])

# Bin lower edges of the per-feature histograms, in baseline scales: half a scale wide where
# typical surprises live, logarithmic out to 10^4 for the rare ones.
_N_LIN = 9
EDGES = np.concatenate([np.linspace(0.0, 4.0, _N_LIN), np.geomspace(5.0, 1e4, 16)])
_NB = EDGES.size
_WIDTH = np.append(np.diff(EDGES), np.inf)
_LIN_STEP = float(EDGES[1] - EDGES[0])
_LOG_RATIO = float(np.log(EDGES[-1] / EDGES[_N_LIN]) / (_NB - 1 - _N_LIN))
_FEATURES = ("value", "level", "spread", "extreme", "long level", "context value", "context level", "forecast")
#: lazy-decay growth factor at which a series' histograms are rescaled: the histograms are float32 (half the
#: detector's bytes), whose largest value is 3.4e38; a cell holds at most about memory_samples times this
_RENORM = 1e30
_MAX_SURPRISE = 1e5
# the remembered highs and lows relax over this many histogram memories: weeks where "how often" looks back days
_EXTREME_MEMORIES = 10.0
_P_FLOOR = 1e-12

_SCALARS = ("loc", "dev", "absm", "ms", "ml", "vs", "env_hi", "env_lo", "grow", "quiet", "peak", "uncounted")
# series per block of an update: the temporaries of a block stay in cache and are reused by the allocator
# instead of being mapped afresh every tick
_CHUNK = 4096
_FEW = 1024  # histograms below which one cumulative sum is cheaper than a pass per bin


@dataclass(frozen=True, slots=True)
class Scores:
    """One update's scores per sample, both in [0, 1] (0 while a series warms up)."""

    score: F64      # the anomaly score: 1 - p, with one alert per incident
    surprise: F64   # 1 - p as is: how unusual this sample is for its series


class AnomalyBank:
    """Anomaly state for a growing set of series, updated one sample per series per call.

    Parameters (defaults chosen by the protocol of ``benchmarks/detection.py --protocol``: leave
    one category out on NAB's realAWSCloudwatch and realKnownCause series, and a synthetic suite of
    other kinds, because a choice that only fits the shared files does not hold on unseen ones;
    halving or doubling any one of them moves the shared score by at most about eight points (the
    baseline's memory matters most; most move it by less than three), see
    ``benchmarks/results/detection.md``): memories are counted in samples, so at a 15 s
    scrape ``baseline_samples=288`` is 72 minutes and at NAB's 5 minutes a day.

    - ``baseline_samples``: memory of the robust baseline (level and scale).
    - ``short_samples``: the recent window compared with it (level, spread), and the time an
      alert's own evidence takes to settle.
    - ``long_samples``: the longer recent window of the slow level-shift feature.
    - ``memory_samples``: how far back "how often is this series this surprising" looks.
    - ``prior_weight``: weight (in samples) of the heavy tail assumed beyond what the series
      has shown.
    - ``scale_floor``: changes smaller than this fraction of the series' typical magnitude
      are never surprising.
    - ``alert_level``, ``quiet_samples``: what counts as an alert, and how long an incident
      lasts for the one-alert-per-incident rule.
    - ``use_forecast``: add the forecaster's one-step error as a feature (off by default:
      it adds false alarms on NAB, see the benchmark).
    - ``daily_bins``, ``daily_days``, ``daily_scales``: the time-of-day memories
      (``daily_bins=0`` turns them off): bins per day, the days a new habit or a new shape of
      the day takes to be learnt, and how many scales a deviation that recurs daily is worth.
    - ``contextual``: score the distance from each time of day's expected shape (the
      contextual features); off, the detector is the one before them.
    - ``weekdays``: scale each time of day's expected shape by the amplitude its weekday usually
      shows (a quiet Sunday is not a flat day); off, one shape serves every day.
    - ``bursts``: excuse a count series' bursts as large as every recent day has shown, at any hour
      (needs ``contextual``); off, only what recurs at the same hour is excused.

    Scores are conservative: on the NAB series 0.12% of samples score 0.99 or more and
    0.03% score 0.999 or more.

    >>> bank = AnomalyBank()
    >>> idx = bank.add(2)
    >>> nan = np.full(2, np.nan)
    >>> s = bank.update(idx, np.array([0.0, 0.0]), np.array([1.0, 5.0]), nan, nan, nan, nan)
    >>> s.shape
    (2,)
    """

    def __init__(self, *, capacity: int = 16, baseline_samples: float = 288.0, short_samples: float = 12.0,
                 long_samples: float = 96.0, memory_samples: float = 2000.0, prior_weight: float = 20.0,
                 scale_floor: float = 0.05, clip: float = 3.0, warmup: int = 12, alert_level: float = 0.99,
                 quiet_samples: int = 400, use_forecast: bool = False, daily_bins: int = 24, daily_days: float = 7.0,
                 daily_scales: float = 3.0, glitch_scales: float = 1e4, contextual: bool = True,
                 weekdays: bool = True, bursts: bool = True) -> None:
        self._cap = max(int(capacity), 1)
        self._glitch = glitch_scales
        self._n = 0
        self._a_base = 1.0 / baseline_samples
        self._a_short = 1.0 / short_samples
        self._keep = 1.0 - 1.0 / memory_samples
        self._prior = prior_weight
        self._floor = scale_floor
        self._clip = clip
        self._warmup = warmup
        self._alert = alert_level
        self._quiet = quiet_samples
        self._refractory = short_samples
        self._a_env = 1.0 / (_EXTREME_MEMORIES * memory_samples)
        self._a_long = 1.0 / long_samples
        self._tod = TimeOfDay(capacity=self._cap, bins=daily_bins, days=daily_days, contextual=contextual,
                              short_samples=short_samples, clip=clip, weekdays=weekdays)
        self._ctx = self._tod.contextual
        self._nf = 5 + 2 * self._ctx + use_forecast
        self._fc = use_forecast
        self._day_scales = daily_scales
        self._bursts = bursts and self._ctx
        # the level feature's mean of ``short_samples`` has a spread sqrt((2 - a) / a) times smaller
        self._level_gain = float(np.sqrt(2.0 / self._a_short - 1.0) / 2.0)
        self._long_gain = float(np.sqrt(2.0 / self._a_long - 1.0) / 2.0)
        self._f: dict[str, F64] = {k: np.zeros(self._cap) for k in _SCALARS}
        self._i: dict[str, I64] = {"count": np.zeros(self._cap, dtype=np.int64)}
        # each feature's decayed histogram, every entry times the series' lazy-decay factor "grow"
        self._hist = np.zeros((self._cap, self._nf, _NB), np.float32)
        self._tot = np.zeros((self._cap, self._nf))

    @property
    def size(self) -> int:
        return self._n

    def add(self, n: int) -> I64:
        """Slots for ``n`` new series; capacity grows by `GROWTH` so adding one at a time stays cheap."""
        if n < 0:
            raise ValueError("n must be >= 0")
        need = self._n + n
        if need > self._cap:
            cap = grown_capacity(self._cap, need)
            self._f = {k: _grown(v, self._n, cap) for k, v in self._f.items()}
            self._i = {k: _grown(v, self._n, cap) for k, v in self._i.items()}
            hist = np.zeros((cap, self._nf, _NB), np.float32)
            hist[: self._n] = self._hist[: self._n]
            tot = np.zeros((cap, self._nf))
            tot[: self._n] = self._tot[: self._n]
            self._tod.grow(self._n, cap)
            self._hist, self._tot, self._cap = hist, tot, cap
        idx = np.arange(self._n, need, dtype=np.int64)
        self._n = need
        self.reset(idx)
        return idx

    def reset(self, idx: I64) -> None:
        """Forget everything about these series (e.g. a metric was redefined)."""
        idx = np.asarray(idx, dtype=np.int64)
        for v in self._f.values():
            v[idx] = 0.0
        self._f["grow"][idx] = 1.0
        self._i["count"][idx] = 0
        self._hist[idx] = 0.0
        self._tot[idx] = 0.0
        self._tod.reset(idx)

    def update(self, idx: I64, t: F64, y: F64, expected: F64, lower: F64, upper: F64,
               scale: F64, learn: F64 | None = None) -> F64:
        """Score one new sample per listed series and learn from it; returns scores in [0, 1]
        (`Scores.score` of `score_and_learn`)."""
        return self.score_and_learn(idx, t, y, expected, lower, upper, scale, learn).score

    def score_and_learn(self, idx: I64, t: F64, y: F64, expected: F64, lower: F64, upper: F64,
                        scale: F64, learn: F64 | None = None) -> Scores:
        """Score one new sample per listed series and learn from it.

        ``Scores.score`` is the anomaly score (one alert per incident applied); ``Scores.surprise`` is
        the same ``1 - p`` before that rule, for a caller that asks "is this sample surprising?" of every
        sample of a lasting change (the divergence of a learned expectation: halving every sample after
        the first would close it after one sample).

        ``t`` (Unix seconds) only places the sample in its day, for the daily habits; every
        other memory is counted in samples, so the score means the same at any scrape
        interval. ``lower``/``upper`` are not used: the forecaster's ``scale`` already says
        how large its errors usually are. ``learn`` is the forecaster's value with a lone glitch
        held back; where ``y`` is also more than ``glitch_scales`` of this bank's scales away, the
        memories learn that instead: one absurd sample, 1e9 in a series near 50, otherwise raised
        the typical magnitude, the smoothed levels and the daily habits so far that nothing scored
        for days. The score always uses ``y``.
        """
        idx = np.asarray(idx, dtype=np.int64)
        x = np.asarray(y, dtype=np.float64)
        if idx.size > _CHUNK:  # series never interact: a cache-sized block at a time is the same, and faster
            out, raw = np.empty(idx.size), np.empty(idx.size)
            for a in range(0, idx.size, _CHUNK):
                c = slice(a, a + _CHUNK)
                part = self.score_and_learn(idx[c], np.asarray(t)[c], x[c], np.asarray(expected)[c],
                                            np.asarray(lower)[c], np.asarray(upper)[c], np.asarray(scale)[c],
                                            None if learn is None else np.asarray(learn)[c])
                out[c], raw[c] = part.score, part.surprise
            return Scores(out, raw)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self._n):
            raise IndexError(f"series index out of range 0..{self._n - 1}")
        finite = np.isfinite(x)
        if not finite.all():  # callers send finite values; a stray NaN must not poison a series' state
            out, raw = np.zeros(idx.size), np.zeros(idx.size)
            keep = np.flatnonzero(finite)
            part = self.score_and_learn(idx[keep], np.asarray(t)[keep], x[keep], np.asarray(expected)[keep],
                                        np.asarray(lower)[keep], np.asarray(upper)[keep], np.asarray(scale)[keep],
                                        None if learn is None else np.asarray(learn)[keep])
            out[keep], raw[keep] = part.score, part.surprise
            return Scores(out, raw)
        f = self._f
        cnt = self._i["count"][idx]
        first = cnt == 0
        loc = np.where(first, x, f["loc"][idx])
        ms = np.where(first, x, f["ms"][idx])
        ml = np.where(first, x, f["ml"][idx])
        absm = np.where(first, np.abs(x), f["absm"][idx])
        dev, vs = f["dev"][idx], f["vs"][idx]

        floor = 1e-12 + self._floor * absm
        sig = np.maximum(_MAD_TO_SD * dev, floor)
        err = x - loc
        if learn is None:
            xs = x
        else:   # only an absurd glitch: on NAB, holding back lesser ones (bursts in flat series) cost 1.8 points
            lv = np.asarray(learn, dtype=np.float64)
            xs = np.where(np.isfinite(lv) & (np.abs(err) > self._glitch * sig), lv, x)
        ms_new = ms + self._a_short * (xs - ms)
        vs_new = vs + self._a_short * (np.abs(xs - ms) - vs)
        ml_new = ml + self._a_long * (xs - ml)

        feats = np.empty((idx.size, self._nf))
        ae = np.abs(err)
        feats[:, 0] = ae / sig
        feats[:, 1] = np.abs(ms_new - loc) / sig * self._level_gain
        feats[:, 2] = 2.0 * np.abs(np.log((_MAD_TO_SD * vs_new + floor) / sig))
        hi = np.where(first, x, f["env_hi"][idx])
        lo = np.where(first, x, f["env_lo"][idx])
        feats[:, 3] = np.maximum(np.maximum(x - hi, lo - x), 0.0) / sig
        feats[:, 4] = np.abs(ml_new - loc) / sig * self._long_gain
        if self._fc:
            e = np.asarray(expected, dtype=np.float64)
            s = np.asarray(scale, dtype=np.float64)
            ok = np.isfinite(e) & np.isfinite(s)
            fc = np.abs(x - np.where(ok, e, x)) / np.maximum(np.where(ok, s, 1.0), floor)
            feats[:, self._nf - 1] = np.where(ok, fc, 0.0)
        tt = np.asarray(t, dtype=np.float64)
        timed = np.isfinite(tt)
        cells = self._tod.cells(idx, np.where(timed, tt, 0.0), timed)
        if cells is not None and self._ctx:
            feats[:, 5], feats[:, 6], ctx_ready, ctx_sig, learn_ctx = self._tod.context(
                idx, tt, timed, cells[:, 1], x - loc, xs - loc, floor, cnt)
        np.minimum(feats, EDGES[-1], out=feats)

        # tail probability of each feature under its own (decayed) history, with a power-law prior
        rows = _rows(idx)
        hist, tot, grow = self._hist[rows], self._tot[idx], f["grow"][idx]
        b_learn = _bin(feats)
        if cells is not None:  # look the value up with the daily habit excused, learn it plain
            habit = self._tod.habit(cells, timed) / self._day_scales
            if self._bursts:  # a count series' bursts at any hour, as large as every recent day has shown
                burst = np.where(f["uncounted"][idx] == 0.0, self._tod.miss_habit(idx), 0.0)
                habit = np.maximum(habit, burst / self._day_scales)
            feats[:, 0] = np.minimum(ae / np.maximum(sig, habit), EDGES[-1])
            b = b_learn.copy()
            b[:, 0] = _bin(feats[:, 0])
            if self._ctx:  # the same excuse for the distance from this hour's expectation
                feats[:, 5] = np.minimum(feats[:, 5] * ctx_sig / np.maximum(ctx_sig, habit), EDGES[-1])
                b[:, 5] = _bin(feats[:, 5])
        else:
            b = b_learn
        frac = np.clip((feats - EDGES[b]) / _WIDTH[b], 0.0, 1.0)
        flat = hist.reshape(-1)
        start = np.arange(b.size).reshape(b.shape) * _NB  # bin 0 of each (sample, feature)
        below = _mass_below(flat, start.reshape(-1), b.reshape(-1)).reshape(b.shape)
        mass = (tot - below - frac * flat[start + b]) / grow[:, None]
        v1 = 1.0 + feats
        prior = self._prior / (v1 * v1)
        p = np.maximum((mass + prior) / (tot / grow[:, None] + self._prior), _P_FLOOR)
        p_min = np.minimum(p.min(axis=1) * self._nf, 1.0)

        # then add this sample to the histograms: decay is lazy, every new sample weighs 1/keep
        # times the one before, and a series is rescaled when the weights grow too large
        warm = cnt >= self._warmup
        if warm.any():
            w = np.flatnonzero(warm)
            g = grow[w] / self._keep
            grow[w] = g
            cell = (idx[w, None] * self._nf + np.arange(self._nf)) * _NB + b_learn[w]
            gw = np.repeat(g[:, None], self._nf, axis=1)
            if cells is not None and self._ctx:  # a context that cannot speak yet teaches its histograms nothing
                gw[:, 5:7] *= ctx_ready[w, None]
            self._hist.reshape(-1)[cell] += gw  # one cell per (series, feature): no collisions
            tot[w] += gw
            big = np.flatnonzero(grow > _RENORM)
            if big.size:
                self._hist[idx[big]] /= grow[big, None, None]
                tot[big] /= grow[big, None]
                grow[big] = 1.0
            self._tot[idx] = tot
            f["grow"][idx] = grow

        # learn the baseline from the clipped error (unclipped for the first two samples)
        ee = np.where(cnt >= 2, np.clip(err, -self._clip * sig, self._clip * sig), err)
        a = np.maximum(self._a_base, 1.0 / (cnt + 1.0))
        f["loc"][idx] = loc + a * ee
        f["dev"][idx] = dev + a * (np.abs(ee) - dev)
        f["absm"][idx] = absm + a * (np.abs(xs) - absm)
        # the extremes relax toward the baseline over ten histogram memories
        f["env_hi"][idx] = np.maximum(xs, loc + (hi - loc) * (1.0 - self._a_env))
        f["env_lo"][idx] = np.minimum(xs, loc + (lo - loc) * (1.0 - self._a_env))
        f["ms"][idx] = ms_new
        f["ml"][idx] = ml_new
        f["vs"][idx] = vs_new
        self._i["count"][idx] = cnt + 1
        # a series is a count (events per interval) while it has shown only non-negative integers
        f["uncounted"][idx] = np.where((x < 0.0) | (x != np.round(x)), 1.0, f["uncounted"][idx])
        if cells is not None and self._ctx:
            learn_ctx()
        if cells is not None:
            self._tod.remember(cells, timed, np.abs(xs - loc))

        score = np.where(warm, 1.0 - p_min, 0.0)
        return Scores(self._one_alert_per_incident(idx, score), np.clip(score, 0.0, 1.0))

    def _one_alert_per_incident(self, idx: I64, score: F64) -> F64:
        f = self._f
        quiet, peak = f["quiet"][idx], f["peak"][idx]
        inside = quiet > 0
        # the smoothed features take ``short_samples`` to absorb a change: rising scores that soon
        # after the alert are the same evidence, not a worse moment
        settled = self._quiet - quiet > self._refractory
        record = inside & settled & (score > peak)
        out = np.where(inside & ~record, 0.5 * score, score)
        start = ~inside & (score >= self._alert)
        f["peak"][idx] = np.where(record | start, score, peak)
        f["quiet"][idx] = np.where(start, float(self._quiet), np.maximum(quiet - 1.0, 0.0))
        return np.clip(out, 0.0, 1.0)

    def state_dict(self, *, copy: bool = True) -> dict[str, np.ndarray]:
        """Every per-series array, copied, or as views with ``copy=False`` (a caller taking a few rows)."""
        n = self._n
        out: dict[str, np.ndarray] = {k: v[:n] for k, v in self._f.items()}
        out["count"] = self._i["count"][:n]
        out["hist"] = self._hist[:n]
        out["tot"] = self._tot[:n]
        out.update(self._tod.state_dict(n, copy=False))
        return {k: v.copy() for k, v in out.items()} if copy else out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        state = renormed(state)
        n = len(state["count"])
        hist = np.asarray(state["hist"], dtype=np.float32)
        if hist.shape != (n, self._nf, _NB):
            raise ValueError(f"histogram state has shape {hist.shape}, this bank needs {(n, self._nf, _NB)}")
        self._cap = max(n, 1)
        self._n = n
        self._tod.load_state_dict(state, n, self._cap)
        # a state saved before the count flag reads as counts until a series shows a fraction or a sign
        self._f = {k: _grown(np.asarray(state[k], dtype=np.float64) if k in state else np.zeros(n), n, self._cap)
                   for k in _SCALARS}
        self._i = {"count": _grown(np.asarray(state["count"], dtype=np.int64), n, self._cap)}
        self._hist = np.zeros((self._cap, self._nf, _NB), np.float32)
        self._hist[:n] = hist
        self._tot = np.zeros((self._cap, self._nf))
        self._tot[:n] = np.asarray(state["tot"], dtype=np.float64)


def renormed(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Saved detector rows with every histogram rescaled whose lazy-decay factor is past `_RENORM`: rows saved
    while the histograms were float64 (rescaled only at 1e150) would overflow float32. The rescale is the one
    an update does (a factor common to a row's cells, its totals and ``grow``): the probabilities stay."""
    out = dict(state)
    if not {"hist", "tot", "grow"} <= set(state):
        return out
    grow = np.asarray(state["grow"], np.float64)
    big = grow > _RENORM
    if not big.any():
        return out
    hist = np.array(state["hist"], np.float64)
    tot = np.array(state["tot"], np.float64)
    hist[big] /= grow[big, None, None]
    tot[big] /= grow[big, None]
    out["hist"], out["tot"], out["grow"] = hist, tot, np.where(big, 1.0, grow)
    return out


def _bin(v: F64) -> I64:
    """Histogram bin of each value (``EDGES[b] <= v < EDGES[b + 1]``), computed, not searched."""
    lin = np.minimum(v / _LIN_STEP, _N_LIN - 1)
    log = _N_LIN + np.log(np.maximum(v, EDGES[_N_LIN]) / EDGES[_N_LIN]) / _LOG_RATIO
    b = np.where(v < EDGES[_N_LIN], lin, log).astype(np.int64)
    return np.clip(b, 0, _NB - 1)


def _mass_below(flat: NDArray[np.float32], start: I64, b: I64) -> F64:
    """Mass of each histogram (bins ``flat[start:start + NB]``) in the bins below ``b``: one pass per bin,
    each over only the histograms whose ``b`` is still above it, so the usual small surprises cost little.
    A few histograms are summed whole at once instead (the same sums, in the same order, fewer calls)."""
    if b.size <= _FEW:
        cum = np.cumsum(flat[start[:, None] + np.arange(_NB)], axis=1, dtype=np.float64)   # as the passes add
        return np.where(b > 0, cum[np.arange(b.size), np.maximum(b - 1, 0)], 0.0)
    acc = np.zeros(b.size)
    live = np.flatnonzero(b > 0)
    j = 0
    while live.size:
        acc[live] += flat[start[live] + j]
        j += 1
        live = live[b[live] > j]
    return acc


def _rows(idx: I64) -> slice | I64:
    """A slice when the series are one ascending run (the common full tick): views, no copies."""
    if idx.size and idx[-1] - idx[0] + 1 == idx.size and (idx.size == 1 or bool(np.all(np.diff(idx) == 1))):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _grown(v: _A, n: int, cap: int) -> _A:
    out = np.zeros(cap, dtype=v.dtype)
    out[:n] = v[:n]
    return out

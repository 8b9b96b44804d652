"""`ForecastBank`: many series, several models, chosen per series and horizon by a running backtest.

Why a bank: the service forecasts tens of thousands of series every tick, so all state
lives in arrays with one row per series slot and every step is a vectorised numpy
operation over the series of a call.

How a forecast is made, per series and horizon h:
  * every model predicts from the series' last sample (`models.py`);
  * each prediction is also filed as *pending* with its target time t + h; when a sample
    arrives at the target, every model's pending prediction is scored (a running,
    out-of-sample backtest inside the bank), and an exponentially forgetting mean
    absolute error per model and horizon is kept;
  * the three models with the smallest recent error at that exact horizon are averaged,
    weighted by how close each one's error is to the best one's (or the model forced by the
    caller is used alone); models without a finite prediction are left out, and "last" is
    the fallback when none qualifies;
  * the interval is the chosen forecast plus online quantiles (`level` centred) of the
    bank's own recent out-of-sample errors at that horizon, times a width calibrated on the
    measured hit rate (`intervals.py`); a horizon not yet scored borrows a shorter one's;
  * `confidence` is the measured hit rate of the intervals at that horizon, with the weight
    of two pseudo-forecasts at 0.5 (one hit, one miss): 0.5 before any was scored, never the
    nominal `level` without evidence.

The running backtest is `scoring.py`, the one-step expectation and glitch hold `onestep.py`, the
level-shift state `shifts.py` and `regime.py`; this module combines them per series slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.combine import LAST, MIN_SCORED, choose, combine
from sidecar.engine.intervals import blend, confidence, interval_offsets
from sidecar.engine.models import F64, I64, Field, Model, Now, Slots, Step, build_models
from sidecar.engine.models_base import grown_capacity
from sidecar.engine.onestep import Expectation, expect, hold_glitches
from sidecar.engine.regime import (
    BACKTESTED,
    COLD,
    COLD_REACH,
    COLD_TREND_SHARE,
    SHIFT,
    SHIFT_TREND_REACH,
    SHIFT_Z,
    domain_of,
    floor_interval,
    shift_trend,
    still_shifted,
)
from sidecar.engine.scoring import BF16_NAN, WINDOW, RunningBacktest, pack_saved
from sidecar.engine.shifts import follow_shift
from sidecar.errors import InputError

__all__ = ["HORIZON_AXIS", "MIN_SCORED", "Expectation", "Forecast", "ForecastBank", "model_names"]

_GAP_FACTOR = 4.0  # an interval this many times the usual one is a gap
_DT_RATE = 0.05  # forgetting of the sampling-interval estimate
_MAX_QUEUE = 4096  # pending forecasts per horizon: the ring's head and count are int16
#: Series updated together: a tick over more is done in blocks of this many, so the update's temporary arrays
#: (every model's forecasts and pending scores, the bucket closes' season medians: up to 12 KB a series) stay a
#: fixed size that the C allocator reuses, instead of growing with the fleet (memory_breakdown.py). 4,096: blocks
#: of 2,048 cost 7-10 % more CPU a tick at 40,000 series, 8,192 no less than 4,096 (engine_tick-blocks.md).
_BLOCK = 4096


#: Core fields with a horizon axis, and where it is after the row axis (saved rows are remapped by horizon
#: when a twin's horizons change, so the other horizons and every model keep what they learnt)
HORIZON_AXIS = {"fmean": 1, "flo": 1, "fhi": 1, "fmodel": 1, "mae": 2, "cnt": 2, "fcnt": 1, "fmae": 1, "qlo": 1,
                "qhi": 1, "hit": 1, "wmul": 1, "ewin": 1, "epos": 1, "qwlo": 1, "qwhi": 1, "ptgt": 1, "py": 1,
                "ppred": 1, "plo": 1, "phi": 1, "pexp": 1, "phead": 1, "pcnt": 1, "plast": 1, "shold": 1, "freg": 1}
#: Per-series fields with a model axis, and where it is (rows first): a saved state remaps them by model name.
#: `ppred` has one column more, after the models: the bank's own combined forecast.
MODEL_AXIS = {"pred1": 1, "mae1": 1, "cnt1": 1, "mae": 1, "cnt": 1, "ppred": 3}


@dataclass(frozen=True, slots=True)
class Forecast:
    """Forecasts of k series at the bank's H horizons, made from each series' last sample."""

    horizons_s: np.ndarray  # (H,) float64 seconds
    mean: np.ndarray  # (k, H) point forecast (median-like: MAE is the score), NaN when not warm
    lower: np.ndarray  # (k, H) lower bound of the `level` interval
    upper: np.ndarray  # (k, H)
    confidence: np.ndarray  # (k, H) estimated probability that the actual lands in [lower, upper]
    model: np.ndarray  # (k, H) int8 index into ForecastBank.model_names of the model with the most weight
    slope_per_s: np.ndarray  # (k,) current trend estimate, units per second
    regime: np.ndarray | None = None  # (k, H) int8 code of `regime.REGIMES`: what the forecast rests on


def model_names() -> tuple[str, ...]:
    """The models a bank chooses among, in its order (``--model`` accepts each): read from the model families
    at a capacity of one slot, so listing them costs a fraction of a millisecond and forecasts nothing."""
    return tuple(n for f in build_models(1) for n in f.names)


class ForecastBank:
    """Forecasts for many series at fixed horizons, with intervals and a confidence.

    >>> bank = ForecastBank([300.0, 900.0])
    >>> idx = bank.add(2)
    >>> for k in range(30):
    ...     _ = bank.update(idx, np.full(2, 60.0 * k), np.array([1.0, 2.0 * k]))
    >>> fc = bank.forecast(idx)
    >>> fc.mean.shape
    (2, 2)
    """

    def __init__(self, horizons_s: Sequence[float], *, level: float = 0.9, model: str = "auto",
                 capacity: int = 16, queue: int = 12) -> None:
        h = np.asarray(horizons_s, dtype=np.float64).reshape(-1)
        if h.size == 0 or not np.all(np.isfinite(h)) or np.any(h <= 0):
            raise InputError(f"horizons must be positive seconds, got {list(horizons_s)!r}")
        if not 0.0 < level < 1.0:
            raise InputError(f"level must be in (0, 1), got {level!r}")
        if not 0 < int(queue) <= _MAX_QUEUE:
            raise InputError(f"queue must be in 1..{_MAX_QUEUE}, got {queue!r}")
        self.horizons_s = h
        self.level = float(level)
        self.queue = int(queue)
        cap = max(int(capacity), 1)
        self.families: list[Model] = build_models(cap)
        self.model_names: tuple[str, ...] = tuple(n for f in self.families for n in f.names)
        if model != "auto" and model not in self.model_names:
            names = ", ".join(self.model_names)
            raise InputError(f"unknown model {model!r}; choose 'auto' or one of {names}")
        self.model_choice = model
        self._forced = -1 if model == "auto" else self.model_names.index(model)
        self._last = self.model_names.index("last")
        if self._last != LAST:
            raise AssertionError("'last' must be model 0: it is the fallback argmin lands on")
        self._lin_idx = self.model_names.index("linear")
        self._order = np.argsort(h, kind="stable")
        self._size = 0
        M, H, Q = len(self.model_names), h.size, self.queue
        f32 = np.float32
        self.core = Slots({
            "n": Field((), np.int64, 0),
            "t": Field((), np.float64, np.nan),
            "y": Field((), np.float64, np.nan),
            "dt": Field((), np.float64, np.nan),
            # latest forecasts, made at the end of each update
            "pred1": Field((M,), np.float64, np.nan),  # every model, one sampling interval ahead
            "held": Field((), np.int8, 0),  # the last sample was held back as a glitch: +1 above, -1 below
            "fmean": Field((H,), np.float64, np.nan),
            "flo": Field((H,), np.float64, np.nan),
            "fhi": Field((H,), np.float64, np.nan),
            "fmodel": Field((H,), np.int8, 0),
            "slope": Field((), np.float64, 0.0),
            # one-step backtest: every sample scores the forecasts made one interval before
            "mae1": Field((M,), np.float64, np.nan),
            "cnt1": Field((M,), np.uint16, 0),       # scored counts, saturating (`scoring.count_up`)
            "c1": Field((), np.float64, 0.0),
            "scale1": Field((), np.float64, np.nan),
            "q1lo": Field((), np.float64, np.nan),
            "q1hi": Field((), np.float64, np.nan),
            "q1tail": Field((), np.float64, np.nan),
            # per-horizon backtest
            "mae": Field((M, H), np.float64, np.nan),
            "cnt": Field((M, H), np.uint16, 0),
            "fcnt": Field((H,), np.float64, 0.0),
            "fmae": Field((H,), np.float64, np.nan),
            "qlo": Field((H,), np.float64, np.nan),
            "qhi": Field((H,), np.float64, np.nan),
            "hit": Field((H,), np.float64, np.nan),
            "wmul": Field((H,), np.float32, 1.0, optional=True),
            # the last scored errors, a ring, as bfloat16 codes (`scoring.to_bf16`)
            "ewin": Field((H, WINDOW), np.uint16, BF16_NAN, optional=True),
            "epos": Field((H,), np.int16, 0, optional=True),
            "qwlo": Field((H,), f32, np.nan, optional=True),         # their conformal bounds
            "qwhi": Field((H,), f32, np.nan, optional=True),
            # pending forecasts: a ring of Q per horizon, stored relative to the value at issue; the predictions
            # packed (`scoring.pack`: float16 times 2^pexp, one exponent per entry)
            "ptgt": Field((H, Q), np.float64, np.nan),
            "py": Field((H, Q), np.float64, np.nan),
            "ppred": Field((H, Q, M + 1), np.float16, np.nan),
            "plo": Field((H, Q), f32, np.nan),
            "phi": Field((H, Q), f32, np.nan),
            "pexp": Field((H, Q), np.int8, 0, optional=True),
            "phead": Field((H,), np.int16, 0),   # places in a ring of Q: int16 (head + count < 2 Q)
            "pcnt": Field((H,), np.int16, 0),
            "plast": Field((H,), np.float64, -np.inf),
            # what a forecast may claim (regime.py): its domain, a level shift under way, its regime
            "dlo": Field((), np.float64, -np.inf, optional=True),
            "dhi": Field((), np.float64, np.inf, optional=True),
            "ymin": Field((), np.float64, np.inf, optional=True),
            "ymax": Field((), np.float64, -np.inf, optional=True),
            "srun": Field((), np.int8, 0, optional=True),
            "srlen": Field((), np.int16, 0, optional=True),          # samples the run has lasted, slides included
            "srby": Field((), np.float32, np.nan, optional=True),    # how far its first sample had to be
            "srlo2": Field((), np.float32, np.nan, optional=True),   # its samples' range after the first `need`,
            "srhi2": Field((), np.float32, np.nan, optional=True),   # less `sbase`
            "ssum": Field((), np.float64, 0.0, optional=True),
            "sbase": Field((), np.float64, np.nan, optional=True),
            "srlo": Field((), np.float64, np.nan, optional=True),
            "srhi": Field((), np.float64, np.nan, optional=True),
            "sdev": Field((), np.float64, np.nan, optional=True),
            "sfrom": Field((), np.float64, np.nan, optional=True),   # the level the active shift left
            "srev": Field((), np.float64, 0.0, optional=True),       # recent shifts that came back (decaying)
            "st0": Field((), np.float64, np.nan, optional=True),
            "slev": Field((), np.float64, np.nan, optional=True),
            "sn": Field((), np.float64, 0.0, optional=True),
            "sjump": Field((), np.float64, np.nan, optional=True),
            # least-squares sums of the samples since the shift (x: seconds since it, y: from its first sample
            # `sy0`), for its trend
            "sy0": Field((), np.float64, 0.0, optional=True),
            "sk": Field((), np.float64, 0.0, optional=True),           # the sum of the weights
            "skn": Field((), np.float32, 0.0, optional=True),          # the count of samples
            "sx": Field((), np.float64, 0.0, optional=True),
            "sxx": Field((), np.float64, 0.0, optional=True),
            "sy": Field((), np.float64, 0.0, optional=True),
            "sxy": Field((), np.float64, 0.0, optional=True),
            "syy": Field((), np.float64, 0.0, optional=True),
            "shold": Field((H,), np.bool_, False, optional=True),
            "freg": Field((H,), np.int8, COLD, optional=True),
        }, cap)
        self.backtest = RunningBacktest(self.core, h, self.queue, M, self.level, adaptive=self._forced < 0)

    # ------------------------------------------------------------------ slots
    @property
    def size(self) -> int:
        """Number of series slots allocated (the valid indices are 0..size-1)."""
        return self._size

    def add(self, n: int) -> I64:
        """Allocate n empty series; arrays grow by `GROWTH` so adding is amortised O(1)."""
        if n < 0:
            raise InputError(f"cannot add {n} series")
        new = np.arange(self._size, self._size + n, dtype=np.int64)
        need = self._size + n
        if need > self.core.capacity:
            cap = grown_capacity(self.core.capacity, need)
            self.core.grow(cap)
            for f in self.families:
                f.slots.grow(cap)
        self._size = need
        return new

    def reset(self, idx: NDArray[np.integer] | Sequence[int]) -> None:
        """Forget everything about these slots so they can be reused for other series."""
        i = self._check_idx(idx)
        self.core.reset(i)
        for f in self.families:
            f.slots.reset(i)

    def set_domain(self, idx: NDArray[np.integer] | Sequence[int], low: NDArray[np.floating] | Sequence[float],
                   high: NDArray[np.floating] | Sequence[float]) -> None:
        """The values these series can take (-inf/inf: unbounded); forecasts and bounds stay inside."""
        i = self._check_idx(idx)
        lo = np.broadcast_to(np.asarray(low, dtype=np.float64), i.shape)
        hi = np.broadcast_to(np.asarray(high, dtype=np.float64), i.shape)
        if np.any(np.isnan(lo) | np.isnan(hi) | (lo >= hi)):
            raise InputError("set_domain: each low must be below its high (no NaN)")
        self.core["dlo"][i] = lo
        self.core["dhi"][i] = hi

    def _check_idx(self, idx: NDArray[np.integer] | Sequence[int] | None) -> I64:
        if idx is None:
            return np.arange(self._size, dtype=np.int64)
        i = np.asarray(idx, dtype=np.int64).reshape(-1)
        if i.size and (i.min() < 0 or i.max() >= self._size):
            raise InputError(f"series index out of range 0..{self._size - 1}")
        return i

    # ----------------------------------------------------------------- update
    def update(self, idx: NDArray[np.integer] | Sequence[int], t: NDArray[np.floating] | Sequence[float],
               y: NDArray[np.floating] | Sequence[float]) -> Expectation:
        """Absorb one sample per listed series; return what was expected for it beforehand.

        The caller guarantees finite `y`, unique `idx` and `t` strictly after the series'
        previous sample (repeats and backward timestamps are dropped before the bank).
        """
        i = self._check_idx(idx)
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if not (t.size == y.size == i.size):
            raise InputError(f"update: {i.size} indices, {t.size} times, {y.size} values")
        c = self.core
        if np.any((c["n"][i] > 0) & ~(t > c["t"][i])):
            raise InputError("update: timestamps must increase per series")
        if i.size <= _BLOCK:
            return self._update(i, t, y)
        parts = [self._update(i[j:j + _BLOCK], t[j:j + _BLOCK], y[j:j + _BLOCK]) for j in range(0, i.size, _BLOCK)]
        return Expectation(*(np.concatenate([getattr(p, f) for p in parts])
                             for f in ("expected", "lower", "upper", "scale", "tail", "learned")))

    def _update(self, i: I64, t: F64, y: F64) -> Expectation:
        """`update` for one block of series: every step below is row-wise, so blocks give the same numbers."""
        c = self.core
        n_prev = c["n"][i]
        t_prev = c["t"][i]
        y_prev = c["y"][i]
        dt_prev = c["dt"][i]
        seen = n_prev > 0
        gap_dt = t - t_prev
        gap = seen & np.isfinite(dt_prev) & (gap_dt > _GAP_FACTOR * dt_prev)

        exp = expect(c, i, y, seen, y_prev, gap_dt, dt_prev, gap, self._choose, self.level)
        if self._forced < 0:        # a forced model is a baseline (last value, predict_linear): kept pure
            follow_shift(c, i, t, y, exp, seen & ~gap)
        c["ymin"][i] = np.fmin(c["ymin"][i], y)
        c["ymax"][i] = np.fmax(c["ymax"][i], y)
        self.backtest.score_due(i, t, y, dt_prev)
        if self._forced < 0:        # a forced model is a baseline (last value, predict_linear): kept pure
            y = hold_glitches(c, i, y, exp, gap)
        exp = Expectation(exp.expected, exp.lower, exp.upper, exp.scale, exp.tail, y)

        # sampling interval: first interval, then a forgetting mean that ignores gaps
        second = n_prev == 1
        steady = (n_prev > 1) & ~gap
        dt = dt_prev.copy()
        dt[second] = gap_dt[second]
        if steady.any():
            d0 = dt_prev[steady]
            dt[steady] = d0 + _DT_RATE * (np.clip(gap_dt[steady], 0.5 * d0, 2.0 * d0) - d0)
        c["dt"][i] = dt
        step = Step(idx=i, t=t, y=y, t_prev=t_prev, y_prev=y_prev, n_prev=n_prev, dt=dt, gap=gap)
        for f in self.families:
            f.update(step)
        c["n"][i] = n_prev + 1
        c["t"][i] = t
        c["y"][i] = y

        pred_h = self._refresh(i)
        self.backtest.issue(i, t, pred_h)
        return exp

    def _predict_all(self, now: Now, h_s: F64) -> F64:
        """(k, M, H) predictions of every model; NaN where a model has none or misbehaves."""
        k = now.idx.size
        out = np.empty((k, len(self.model_names), h_s.shape[1]))
        j = 0
        for f in self.families:
            v = len(f.names)
            p = f.predict(now, h_s)
            if not f.bounded:
                # a forecast a million times further from the last value than the value itself is a blow-up
                with np.errstate(invalid="ignore"):
                    bad = ~(np.abs(p - now.y[:, None, None]) <= 1e6 * (np.abs(now.y) + 1.0)[:, None, None])
                if bad.any():
                    p = np.where(bad, np.nan, p)
            out[:, j:j + v] = p
            j += v
        return out

    def _choose(self, mae: F64, cnt: NDArray[np.uint16], pred: F64) -> NDArray[np.int64]:
        """The forced model where it has a forecast, else "last"; unforced, `combine.choose`."""
        if self._forced >= 0:
            forced: NDArray[np.int64] = np.where(np.isfinite(pred[:, self._forced]), self._forced, self._last)
            return forced
        return choose(mae, cnt, pred)

    # --------------------------------------------------------------- forecasts
    def _refresh(self, i: I64) -> F64:
        """Recompute the forecasts of these series from their current state; returns every model's (k, M, H)."""
        c = self.core
        now = self._now(i)
        k, H = i.size, self.horizons_s.size
        dt = now.dt
        step1 = np.where(np.isfinite(dt), dt, self.horizons_s[0])
        hs = np.empty((k, H + 1))
        hs[:, 0] = step1
        hs[:, 1:] = self.horizons_s[None, :]
        preds = self._predict_all(now, hs)  # (k, M, H+1)
        c["pred1"][i] = preds[:, :, 0]
        ph = preds[:, :, 1:]
        if self._forced >= 0:
            choice = self._choose(c["mae"][i], c["cnt"][i], ph)
            mean = ph[np.arange(k)[:, None], choice, np.arange(H)[None, :]]
            borrowed = one_step = np.zeros((k, H), bool)
        else:
            mean, choice, borrowed, one_step = combine(c["mae"][i], c["cnt"][i], ph, c["mae1"][i], c["cnt1"][i],
                                                       self._order)
        mean = np.where(np.isfinite(mean), mean, now.y[:, None])
        if one_step.any() and self._forced < 0:
            # a trend read off one-step errors alone reaches at most COLD_REACH times the data seen so far
            seen_s = np.maximum(now.n - 1, 0) * np.where(np.isfinite(dt), dt, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                reach = np.clip(COLD_REACH * seen_s[:, None] / hs[:, 1:], 0.0, 1.0)
            mean = np.where(one_step, now.y[:, None] + reach * (mean - now.y[:, None]), mean)
        w = c["wmul"][i].astype(np.float64) if self._forced < 0 else np.ones((k, H))
        qlo, qhi = blend(c["qlo"][i], c["qhi"][i], c["qwlo"][i], c["qwhi"][i], c["fcnt"][i])
        lo, hi = interval_offsets(qlo * w, qhi * w, c["q1lo"][i], c["q1hi"][i], hs[:, 1:], dt,
                                  c["fcnt"][i], self.horizons_s)
        cold = borrowed | ~np.isfinite(c["qlo"][i])     # models or interval not from this horizon's own scores
        held = np.zeros(mean.shape, bool)
        if self._forced < 0:        # a baseline is scored as it is: no regimes or interval floors
            # a trend read off the first minutes is uncertain in proportion to how far it is extrapolated: the
            # interval reaches back to the last value (the trend stopping now) and half as far beyond
            if cold.any():
                d = np.where(cold, mean - now.y[:, None], 0.0)
                back, ahead = COLD_TREND_SHARE * np.abs(d), 0.5 * COLD_TREND_SHARE * np.abs(d)
                lo = lo - np.where(d > 0, back, ahead)
                hi = hi + np.where(d > 0, ahead, back)
            lo, hi = self._reach_pending_run(i, mean, lo, hi)
            mean, held, trend_from = self._shift_regime(i, now, mean)
            if held.any():
                spread = np.where(held, SHIFT_Z * c["sdev"][i][:, None], 0.0)
                spread = np.where(np.isfinite(spread), spread, 0.0)
                lo, hi = lo - spread, hi + spread
                # a trend since the shift may stop now: the interval reaches back to the level now, half beyond
                d = np.where(held & np.isfinite(trend_from)[:, None], mean - trend_from[:, None], 0.0)
                lo = lo - np.where(d > 0, d, 0.5 * -d)
                hi = hi + np.where(d > 0, 0.5 * d, -d)
            lo, hi = floor_interval(lo, hi, self._order)
        # every forecast, the baselines' too, stays inside the metric's domain
        dlo, dhi = domain_of(c["dlo"][i], c["dhi"][i], c["ymin"][i])
        dlo, dhi = dlo[:, None], dhi[:, None]
        c["fmean"][i] = np.minimum(np.maximum(mean, dlo), dhi)
        c["flo"][i] = np.minimum(np.maximum(mean + np.minimum(lo, 0.0), dlo), dhi)
        c["fhi"][i] = np.minimum(np.maximum(mean + np.maximum(hi, 0.0), dlo), dhi)
        c["freg"][i] = np.where(held, SHIFT, np.where(cold, COLD, BACKTESTED)).astype(np.int8)
        c["fmodel"][i] = choice
        # the slope of the baseline line, read off its own forecasts (no second fit)
        lin = preds[:, self._lin_idx, :]
        span = hs[:, -1] - hs[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(span > 0, (lin[:, -1] - lin[:, 0]) / np.where(span > 0, span, 1.0), 0.0)
        c["slope"][i] = np.where(np.isfinite(slope), slope, 0.0)
        return ph

    def _reach_pending_run(self, i: I64, mean: F64, lo: F64, hi: F64) -> tuple[F64, F64]:
        """Interval offsets that reach the samples of a run still pending (`regime.py`): far from what was
        expected, too few yet to be a shift. Until the run either ends or becomes a shift, nothing says
        whether it is a glitch or a new level, so the interval spans both; the point forecast stays with
        the models (a cache flush's first sample must not read `100 [100-100]` beside a value of 5)."""
        run = self.core["srun"][i]
        if not run.any():
            return lo, hi
        below, above = (run < 0)[:, None], (run > 0)[:, None]
        with np.errstate(invalid="ignore"):
            lo = np.where(below, np.fmin(lo, self.core["srlo"][i][:, None] - mean), lo)
            hi = np.where(above, np.fmax(hi, self.core["srhi"][i][:, None] - mean), hi)
        return lo, hi

    def pending_run(self, idx: NDArray[np.integer] | Sequence[int] | None = None) -> NDArray[np.int8]:
        """Signed count of the latest samples far from their expectation that are not (yet) a level shift:
        negative below, positive above, 0 for none."""
        i = self._check_idx(idx)
        out: NDArray[np.int8] = self.core["srun"][i].astype(np.int8)
        return out

    def _shift_regime(self, i: I64, now: Now, mean: F64) -> tuple[F64, NDArray[np.bool_], F64]:
        """The forecasts with every horizon still in a level shift's regime set to the new level (or its
        trend's line, `regime.shift_trend`); also the level now where a trend is forecast (NaN elsewhere)."""
        c = self.core
        st0 = c["st0"][i]
        active = np.isfinite(st0)
        if not active.any():
            return mean, np.zeros(mean.shape, bool), np.full(i.size, np.nan)
        since = now.t - st0
        level_now, slope = shift_trend(c["sk"][i], c["sx"][i], c["sxx"][i], c["sy"][i], c["sxy"][i], c["syy"][i],
                                       since, c["skn"][i].astype(np.float64))
        level_now = np.where(active, level_now + c["sy0"][i], np.nan)
        reach = np.minimum(self.horizons_s[None, :], SHIFT_TREND_REACH * np.maximum(since, 0.0)[:, None])
        # a line no further than the series has ever been: a sawtooth's refill stops where its flushes come
        line = np.clip(level_now[:, None] + slope[:, None] * reach, c["ymin"][i][:, None], c["ymax"][i][:, None])
        target = np.where(np.isfinite(level_now)[:, None], line, c["slev"][i][:, None])
        held = still_shifted(c["shold"][i] & active[:, None], mean, target, c["sjump"][i], c["scale1"][i],
                             since, self.horizons_s)
        c["shold"][i] = held
        over = active & ~held.any(axis=1)
        if over.any():
            c["st0"][i[over]] = np.nan
            c["slev"][i[over]] = np.nan
        out: F64 = np.where(held, target, mean)
        return out, held, level_now

    def _now(self, i: I64) -> Now:
        c = self.core
        return Now(idx=i, t=c["t"][i], y=c["y"][i], n=c["n"][i], dt=c["dt"][i])

    def forecast(self, idx: NDArray[np.integer] | Sequence[int] | None = None) -> Forecast:
        """Forecasts from each series' last sample (a pure read of the state; None = every slot)."""
        i = self._check_idx(idx)
        c = self.core
        conf = confidence(c["hit"][i], c["fcnt"][i])
        lo, hi = c["flo"][i], c["fhi"][i]
        conf = np.where(np.isfinite(lo) & np.isfinite(hi), conf, 0.0)
        return Forecast(
            horizons_s=self.horizons_s.copy(),
            mean=c["fmean"][i],
            lower=lo,
            upper=hi,
            confidence=np.clip(conf, 0.0, 1.0),
            model=c["fmodel"][i].astype(np.int8),
            slope_per_s=c["slope"][i],
            regime=c["freg"][i].astype(np.int8),
        )

    def predict_models(self, idx: NDArray[np.integer] | Sequence[int] | None = None) -> F64:
        """Every model's forecast (k, M, H) from each series' last sample, NaN where a model has none.

        A pure read, for backtests and diagnostics (which model would have said what).
        """
        i = self._check_idx(idx)
        now = self._now(i)
        hs = np.broadcast_to(self.horizons_s[None, :], (i.size, self.horizons_s.size)).copy()
        return self._predict_all(now, hs)

    # ------------------------------------------------------------ persistence
    def state_dict(self, *, copy: bool = True) -> dict[str, np.ndarray]:
        """Every array needed to restore the bank (plus its configuration, checked on load); views of the
        per-series arrays with ``copy=False``."""
        out: dict[str, np.ndarray] = {
            "size": np.array(self._size, dtype=np.int64),
            "horizons_s": self.horizons_s.copy(),
            "level": np.array(self.level),
            "queue": np.array(self.queue, dtype=np.int64),
            "model_names": np.array(self.model_names),
        }
        out.update(self.core.dump("core.", self._size, copy=copy))
        for j, f in enumerate(self.families):
            out.update(f.slots.dump(f"m{j}.", self._size, copy=copy))
        return out

    def upgrade_saved(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A saved state, or saved rows, in this version's layout: the core's packed pending predictions and
        error window and the scored counts (`scoring.pack_saved`)."""
        return pack_saved(state)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a bank saved by `state_dict` (same horizons, level, queue and models); a state saved before
        the pending forecasts were packed is packed on the way in."""
        try:
            state = self.upgrade_saved(state)
            size = int(state["size"])
            same = (np.array_equal(np.asarray(state["horizons_s"], dtype=np.float64), self.horizons_s)
                    and float(state["level"]) == self.level and int(state["queue"]) == self.queue
                    and tuple(str(s) for s in np.asarray(state["model_names"]).tolist()) == self.model_names)
            if not same:
                raise InputError("saved forecast state has other horizons, level, queue or models")
            self.core.load("core.", state, size)
            for j, f in enumerate(self.families):
                f.slots.load(f"m{j}.", state, size)
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"invalid forecast state: {e}") from e
        self._size = size

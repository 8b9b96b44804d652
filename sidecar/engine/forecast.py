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
    bank's own recent out-of-sample errors at that horizon, tracked in O(1) per score
    (quantile tracking, as in conformal PID control), so coverage holds without any
    distribution assumption; until a horizon has been scored, the wider of the one-step
    interval times sqrt(steps) and the longest scored shorter horizon's, scaled by the
    horizon ratio;
  * `confidence` is the measured hit rate of the intervals at that horizon, with the weight
    of two pseudo-forecasts at 0.5 (one hit, one miss): 0.5 before any was scored, never the
    nominal `level` without evidence.

Pending predictions are kept in a small ring per series and horizon (`queue` entries,
issued at most every h/queue seconds), which bounds memory whatever the sampling rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.models import F64, I64, Field, Model, Now, Slots, Step, build_models
from sidecar.engine.regime import (
    BACKTESTED,
    COLD,
    COLD_MIN_SCORED,
    COLD_REACH,
    COLD_TREND_SHARE,
    SHIFT,
    SHIFT_CONSISTENT,
    SHIFT_PRIOR,
    SHIFT_RUN,
    SHIFT_SCALES,
    SHIFT_TAILS,
    SHIFT_Z,
    domain_of,
    floor_interval,
    follow_level,
    shift_run_needed,
    still_shifted,
    track_shift,
)
from sidecar.errors import InputError

_GAP_FACTOR = 4.0  # an interval this many times the usual one is a gap
_DT_RATE = 0.05  # forgetting of the sampling-interval estimate
_ERR_RATE = 0.007  # forgetting of the running backtest errors (about the last 150 scored forecasts)
_SCALE_RATE = 0.05  # forgetting of the one-step error scale
_Q_RATE = 0.3  # step of the quantile trackers, in units of the recent absolute error
_HIT_RATE = 0.02  # forgetting of the interval hit rate
_TAIL_LEVEL = 0.99  # the one-step error size tracked as a series' yardstick of an unusual move ...
_TAIL_STEP = 0.5  # ... in log steps: x1.64 when an error exceeds it, x0.995 (half-life 139 samples) when not
_CONF_PRIOR = 2.0  # pseudo-counts of the uninformed prior (one hit, one miss) of `confidence`
_CONF_PRIOR_RATE = 0.5  # what `confidence` is before any forecast at a horizon was scored: no evidence either way
_MIN_SCORED = 5  # scores a model needs at a horizon before it can be chosen
_TOP = 3  # forecasts averaged per series and horizon
_TEMP = 0.05  # how fast a model's weight falls with its recent error relative to the best one's
_GLITCH = 50.0  # one-step error scales beyond which a lone sample is a glitch the models do not learn as is
_ERR_CAP = 50.0  # an error counts at most this many times the bank's recent error at that horizon (one bad
#                  sample, say 1e9 in a series near 50, otherwise blew the intervals up for days)


#: Core fields with a horizon axis, and where it is after the row axis (saved rows are remapped by horizon
#: when a twin's horizons change, so the other horizons and every model keep what they learnt)
HORIZON_AXIS = {"fmean": 1, "flo": 1, "fhi": 1, "fmodel": 1, "mae": 2, "cnt": 2, "fcnt": 1, "fmae": 1, "qlo": 1,
                "qhi": 1, "hit": 1, "ptgt": 1, "py": 1, "ppred": 1, "plo": 1, "phi": 1, "phead": 1, "pcnt": 1,
                "plast": 1, "shold": 1, "freg": 1}


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


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the bank expected for the samples just absorbed, from data strictly before them."""

    expected: np.ndarray  # (k,) NaN when there was no expectation yet
    lower: np.ndarray  # (k,) interval at `level`
    upper: np.ndarray
    scale: np.ndarray  # (k,) robust scale of recent one-step errors (>0, NaN if unknown)
    tail: np.ndarray  # (k,) the 99th percentile of recent |one-step errors| (>0, NaN until one was not 0)
    learned: np.ndarray | None = None  # (k,) the value the models learned: the sample, or a lone glitch held back


def _cap(ref: NDArray[np.float64], level: NDArray[np.float64]) -> NDArray[np.float64]:
    """Largest error an update may count, from a running error scale (none while the scale is unknown).

    Winsorising keeps one absurd sample from owning the error memories that pick models and size
    intervals; a real change still gets through, growing them by up to (_ERR_CAP - 1) x rate a sample.
    The scale counts as at least a thousandth of the level before the sample (never the sample's own,
    which may be the absurd one): on a near-exact fit the scale is rounding, and a cap that small would
    make every model's error equal."""
    with np.errstate(invalid="ignore"):
        r = np.maximum(ref, 1e-3 * np.abs(level))
        return np.where(np.isfinite(r) & (r > 0), _ERR_CAP * r, np.inf)


def _ewm_rate(count: NDArray[np.float64], floor: float) -> NDArray[np.float64]:
    """Running mean for the first 1/floor observations, exponential forgetting after."""
    return np.maximum(1.0 / np.maximum(count, 1.0), floor)


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
        if self._last != 0:
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
            "cnt1": Field((M,), f32, 0.0),
            "c1": Field((), np.float64, 0.0),
            "scale1": Field((), np.float64, np.nan),
            "q1lo": Field((), np.float64, np.nan),
            "q1hi": Field((), np.float64, np.nan),
            "q1tail": Field((), np.float64, np.nan),
            # per-horizon backtest
            "mae": Field((M, H), np.float64, np.nan),
            "cnt": Field((M, H), f32, 0.0),
            "fcnt": Field((H,), np.float64, 0.0),
            "fmae": Field((H,), np.float64, np.nan),
            "qlo": Field((H,), np.float64, np.nan),
            "qhi": Field((H,), np.float64, np.nan),
            "hit": Field((H,), np.float64, np.nan),
            # pending forecasts: a ring of Q per horizon, stored relative to the value at issue
            "ptgt": Field((H, Q), np.float64, np.nan),
            "py": Field((H, Q), np.float64, np.nan),
            "ppred": Field((H, Q, M + 1), f32, np.nan),
            "plo": Field((H, Q), f32, np.nan),
            "phi": Field((H, Q), f32, np.nan),
            "phead": Field((H,), np.int64, 0),
            "pcnt": Field((H,), np.int64, 0),
            "plast": Field((H,), np.float64, -np.inf),
            # what a forecast may claim (regime.py): its domain, a level shift under way, its regime
            "dlo": Field((), np.float64, -np.inf, optional=True),
            "dhi": Field((), np.float64, np.inf, optional=True),
            "ymin": Field((), np.float64, np.inf, optional=True),
            "srun": Field((), np.int8, 0, optional=True),
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
            "shold": Field((H,), np.bool_, False, optional=True),
            "freg": Field((H,), np.int8, COLD, optional=True),
        }, cap)

    # ------------------------------------------------------------------ slots
    @property
    def size(self) -> int:
        """Number of series slots allocated (the valid indices are 0..size-1)."""
        return self._size

    def add(self, n: int) -> I64:
        """Allocate n empty series; arrays grow by doubling so adding is amortised O(1)."""
        if n < 0:
            raise InputError(f"cannot add {n} series")
        new = np.arange(self._size, self._size + n, dtype=np.int64)
        need = self._size + n
        if need > self.core.capacity:
            cap = max(need, 2 * self.core.capacity)
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
        n_prev = c["n"][i]
        t_prev = c["t"][i]
        y_prev = c["y"][i]
        dt_prev = c["dt"][i]
        seen = n_prev > 0
        if np.any(seen & ~(t > t_prev)):
            raise InputError("update: timestamps must increase per series")
        gap_dt = t - t_prev
        gap = seen & np.isfinite(dt_prev) & (gap_dt > _GAP_FACTOR * dt_prev)

        exp = self._expect(i, y, seen, y_prev, gap_dt, dt_prev, gap)
        if self._forced < 0:        # a forced model is a baseline (last value, predict_linear): kept pure
            self._track_shift(i, t, y, exp, seen & ~gap)
        c["ymin"][i] = np.fmin(c["ymin"][i], y)
        self._score_pending(i, t, y, dt_prev)
        y = self._hold_glitches(i, y, exp, gap)
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
        self._issue_pending(i, t, pred_h)
        return exp

    def _track_shift(self, i: I64, t: F64, y: F64, exp: Expectation, ok: NDArray[np.bool_]) -> None:
        """Follow the level shift detector (`regime.py`) with one raw sample per series.

        Only series in a shift, in a run of far samples, or far from their expectation now can change state:
        the others (nearly all of them, nearly always) cost three array operations."""
        c = self.core
        with np.errstate(invalid="ignore"):
            far = ok & (np.abs(y - exp.expected) > np.fmax(SHIFT_SCALES * exp.scale, SHIFT_TAILS * exp.tail))
        w = far | np.isfinite(c["st0"][i]) | (c["srun"][i] != 0)
        if not w.any():
            return
        if not w.all():
            i, t, y, ok = i[w], t[w], y[w], ok[w]
            exp = Expectation(exp.expected[w], exp.lower[w], exp.upper[w], exp.scale[w], exp.tail[w])
        active = np.isfinite(c["st0"][i])
        slev = c["slev"][i]
        # while a shift is active the samples are judged against the new level, so a second change is seen
        ref = np.where(active, slev, exp.expected)
        with np.errstate(invalid="ignore"):
            lower = ref + (exp.lower - exp.expected)
            upper = ref + (exp.upper - exp.expected)
        up = track_shift(c["srun"][i], c["ssum"][i], c["srlo"][i], c["srhi"][i], c["sbase"][i], y, ref, lower,
                         upper, exp.scale, exp.tail, ok & np.isfinite(ref), shift_run_needed(c["srev"][i]))
        c["srun"][i], c["ssum"][i], c["sbase"][i] = up.run, up.run_sum, up.base
        c["srlo"][i], c["srhi"][i] = up.run_lo, up.run_hi
        lev, dev, cnt = follow_level(slev, c["sdev"][i], c["sn"][i], y)
        go_on = active & ~up.started
        c["slev"][i] = np.where(up.started, up.level, np.where(go_on, lev, np.nan))
        c["sn"][i] = np.where(up.started, float(SHIFT_RUN), np.where(go_on, cnt, 0.0))
        if up.started.any():
            s = i[up.started]
            jump = (up.level - ref)[up.started]
            # a shift back to where the active one started undoes it: the series' changes are brief, and the
            # next must last longer to count; a shift elsewhere is evidence of lasting changes
            back = active[up.started] & (np.abs(up.level[up.started] - c["sfrom"][s])
                                         < SHIFT_CONSISTENT * np.abs(c["sjump"][s]))
            c["srev"][s] = np.where(back, c["srev"][s] + 1.0, 0.5 * c["srev"][s])
            c["sfrom"][s] = ref[up.started]
            c["st0"][s] = t[up.started]
            c["sjump"][s] = jump
            c["sdev"][s] = np.fmax(SHIFT_PRIOR * np.abs(jump), exp.scale[up.started])
            c["shold"][s] = True
        if go_on.any():
            c["sdev"][i[go_on]] = dev[go_on]

    def _hold_glitches(self, i: I64, y: F64, exp: Expectation, gap: NDArray[np.bool_]) -> F64:
        """The value the models learn from: a lone sample absurdly far from what was expected (more than
        _GLITCH one-step error scales) is replaced by the expectation, so one bad scrape (1e9 in a series
        near 50) cannot poison the levels, trends and profiles for days (pulled in only to 50 scales, it
        still came back a day later through the daily profile). A second such sample on the same side is
        a real change and goes through. Scores, anomaly detection and history see the raw value."""
        if self._forced >= 0:       # a forced model is a baseline (last value, predict_linear): kept pure
            return y
        c = self.core
        e, sc = exp.expected, exp.scale
        with np.errstate(invalid="ignore"):
            dev = y - e
            # a scale below a thousandth of the level is rounding on a near-exact fit, not precision
            sc = np.maximum(sc, 1e-3 * np.abs(e))
            far = ~gap & np.isfinite(sc) & np.isfinite(dev) & (np.abs(dev) > _GLITCH * sc)
        if not far.any() and not c["held"][i].any():
            return y
        side = np.sign(np.where(np.isfinite(dev), dev, 0.0)).astype(np.int8)
        state = c["held"][i]
        hold = far & (state != side) & (state != 2 * side)
        # lone far sample: held (state = side); the next far one on that side: a change, accepted (2 * side),
        # and so are the ones after it until a sample is near the expectation again (state 0)
        c["held"][i] = np.where(hold, side, np.where(far & (state != 0), 2 * side, 0)).astype(np.int8)
        out: F64 = np.where(hold, e, y)
        return out

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

    def _choose(self, mae: F64, cnt: NDArray[np.float32], pred: F64) -> NDArray[np.int64]:
        """Per (series, horizon): the model with the smallest recent error among those with a forecast.

        `mae`, `cnt`, `pred` are (k, M, ...); models scored fewer than _MIN_SCORED times are not
        trusted yet, and "last" is the fallback when none qualifies (it is model 0, which argmin
        returns when every score is infinite, so no second pass is needed).
        """
        if self._forced >= 0:
            forced: NDArray[np.int64] = np.where(np.isfinite(pred[:, self._forced]), self._forced, self._last)
            return forced
        # a model scored _MIN_SCORED times has a finite error: only the prediction needs checking
        score = np.where((cnt >= _MIN_SCORED) & (pred == pred), mae, np.inf)
        best: NDArray[np.int64] = np.argmin(score, axis=1)
        return best

    def _combine(self, mae: F64, cnt: NDArray[np.float32], pred: F64, mae1: F64 | None = None,
                 cnt1: NDArray[np.float32] | None = None
                 ) -> tuple[F64, NDArray[np.int64], NDArray[np.bool_], NDArray[np.bool_]]:
        """(k, H) forecast, the model with the most weight, where the choice was borrowed (the horizon has no
        scores of its own) and where it rests on one-step scores alone, from every model's (k, M, H)
        predictions.

        Choosing the single model with the smallest recent error throws away the runners-up, whose
        errors are often as small and partly independent; averaging the best _TOP with weights
        exp(-(mae/best - 1)/_TEMP) keeps the choice sharp when one model is clearly better and
        averages when several are close (checked on half the NAB files, confirmed on the other half).
        A forced model is used alone. A horizon no model has been scored at yet is combined by the
        scores of the longest shorter horizon that has been, else by the one-step scores (`mae1`,
        `cnt1`): the models that follow the series are the best evidence there is, and "last" for every
        unscored horizon hides a climb toward a limit for an hour.
        """
        k, H = pred.shape[0], pred.shape[2]
        one_step = np.zeros((k, H), bool)
        borrowed = np.zeros((k, H), bool)
        if self._forced >= 0:
            forced = self._choose(mae, cnt, pred)
            return pred[np.arange(k)[:, None], forced, np.arange(H)[None, :]], forced, borrowed, one_step
        ok: NDArray[np.bool_] = np.asarray(pred == pred)
        score = np.where((cnt >= _MIN_SCORED) & ok, mae, np.inf)
        if mae1 is not None and cnt1 is not None:
            scored: NDArray[np.bool_] = np.asarray(np.isfinite(score).any(axis=1))   # (k, H)
            borrowed = ~scored
            if not scored.all():
                borrow = np.where((cnt1 >= COLD_MIN_SCORED), mae1, np.inf)   # (k, M): one step, then ...
                from_one = np.ones(k, bool)
                for j in self._order.tolist():                               # ... the longest scored shorter one
                    cold = ~scored[:, j]
                    if cold.any():
                        score[:, :, j] = np.where(cold[:, None] & ok[:, :, j], borrow, score[:, :, j])
                        one_step[:, j] = cold & from_one
                    if scored[:, j].any():
                        borrow = np.where(scored[:, j, None],
                                          np.where(np.isfinite(mae[:, :, j]), mae[:, :, j], np.inf), borrow)
                        from_one &= cold
        top = np.argpartition(score, _TOP - 1, axis=1)[:, :_TOP]  # (k, TOP, H), in no particular order
        rows, cols = np.arange(k)[:, None, None], np.arange(H)[None, None, :]
        s_top, p_top = score[rows, top, cols], pred[rows, top, cols]
        best = s_top.min(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            w = np.exp((1.0 - s_top / np.maximum(best, 1e-300)) / _TEMP)
        w = np.where(np.isfinite(s_top), w, 0.0)
        wsum = w.sum(axis=1)
        mean = np.where(wsum > 0, (w * np.where(w > 0, p_top, 0.0)).sum(axis=1) / np.where(wsum > 0, wsum, 1.0),
                        pred[:, self._last])
        choice: NDArray[np.int64] = np.where(wsum > 0, top[rows[:, 0], np.argmax(w, axis=1), cols[:, 0]], self._last)
        return mean, choice, borrowed, one_step

    def _expect(self, i: I64, y: F64, seen: NDArray[np.bool_], y_prev: F64, gap_dt: F64, dt_prev: F64,
                gap: NDArray[np.bool_]) -> Expectation:
        """The forecast made one interval before each sample, then scored against it."""
        c = self.core
        k = i.size
        nan = np.full(k, np.nan)
        if not seen.any():
            return Expectation(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy())
        pred1 = c["pred1"][i]  # (k, M)
        mae1, cnt1 = c["mae1"][i], c["cnt1"][i]
        choice = self._choose(mae1, cnt1, pred1)
        e_hat = pred1[np.arange(k), choice]
        e_hat = np.where(np.isfinite(e_hat), e_hat, y_prev)
        # after a gap the one-interval forecast is stale: the level before the gap, a wider interval
        widen = np.where(gap, np.sqrt(gap_dt / np.where(np.isfinite(dt_prev), dt_prev, 1.0)), 1.0)
        e_hat = np.where(gap, y_prev, e_hat)
        q1lo, q1hi, sc, tl = c["q1lo"][i], c["q1hi"][i], c["scale1"][i], c["q1tail"][i]
        expected = np.where(seen, e_hat, np.nan)
        lower = expected + np.minimum(q1lo, 0.0) * widen
        upper = expected + np.maximum(q1hi, 0.0) * widen
        scale = np.where(seen & (sc > 0), sc, np.nan)
        tail = np.where(seen & (tl > 0), tl * widen, np.nan)

        ok = seen & ~gap
        if ok.any():
            o = np.flatnonzero(ok)
            oi = i[o]
            yo = y[o]
            err_m = np.abs(yo[:, None] - pred1[o])
            fin = np.isfinite(err_m)
            err_m = np.minimum(err_m, _cap(sc[o], y_prev[o])[:, None])
            cn = cnt1[o] + fin
            r = _ewm_rate(cn, _ERR_RATE)
            m0 = mae1[o]
            c["mae1"][oi] = np.where(fin, np.where(np.isfinite(m0), m0 + r * (err_m - m0), err_m), m0)
            c["cnt1"][oi] = cn
            e = yo - e_hat[o]
            ae = np.abs(e)
            c1 = c["c1"][oi] + 1.0
            c["c1"][oi] = c1
            sc0 = sc[o]
            fresh = ~np.isfinite(sc0)
            rs = _ewm_rate(c1, _SCALE_RATE)
            # spikes may raise the scale only gradually: it is what detectors divide by
            # (a scale of exactly 0, after errors of 0 on a series that started flat, is no cap: capped at 0 x 5
            # the scale could never grow again)
            capped = np.minimum(ae, 5.0 * np.where(fresh | (sc0 <= 0), ae, sc0))
            sc1 = np.where(fresh, ae, sc0 + rs * (capped - sc0))
            c["scale1"][oi] = sc1
            lo, hi = self._track_quantiles(q1lo[o], q1hi[o], e, sc1, c1)
            c["q1lo"][oi] = lo
            c["q1hi"][oi] = hi
            c["q1tail"][oi] = self._track_tail(tl[o], ae)
        return Expectation(expected, lower, upper, scale, tail)

    @staticmethod
    def _track_tail(tail: F64, ae: F64) -> F64:
        """One step of tracking the _TAIL_LEVEL quantile of |one-step errors|, in log space.

        A yardstick for "how unusual is this move for this series" that a gauge of a few integers cannot
        shrink to nothing: its 90 % interval lies in the gap between 0 and 1 when most errors are 0, while 1 %
        of its moves are a whole unit. Multiplicative steps settle within a few exceedances from any start
        (the first error that is not 0), and one huge error raises it only 1.64 times."""
        fresh = ~(tail > 0)
        with np.errstate(invalid="ignore", over="ignore"):
            step = np.exp(_TAIL_STEP * (np.where(ae > tail, 1.0, 0.0) - (1.0 - _TAIL_LEVEL)))
            out: F64 = np.where(fresh, np.where(ae > 0, ae, np.nan), tail * step)
        return out

    def _track_quantiles(self, lo: F64, hi: F64, e: F64, scale: F64, count: F64) -> tuple[F64, F64]:
        """One step of online quantile tracking of the errors at (1-level)/2 and (1+level)/2.

        At equilibrium the fraction of errors above `hi` is (1-level)/2 whatever their
        distribution.  The step is proportional to the recent error scale (so it is unit
        free) and larger at the start so the bounds settle quickly.
        """
        tail = (1.0 - self.level) / 2.0
        fresh = ~np.isfinite(lo)
        z = 2.0 * np.abs(e)
        lo = np.where(fresh, -z, lo)
        hi = np.where(fresh, z, hi)
        eta = np.where(np.isfinite(scale), scale, np.abs(e)) * _ewm_rate(count, _Q_RATE)
        hi = hi + eta * (np.where(e > hi, 1.0, 0.0) - tail)
        lo = lo - eta * (np.where(e < lo, 1.0, 0.0) - tail)
        return lo, hi

    # ---------------------------------------------------------- running backtest
    def _score_pending(self, i: I64, t: F64, y: F64, dt_prev: F64) -> None:
        """Score the pending forecasts whose target time has come (or drop the ones a gap skipped)."""
        c = self.core
        H, Q = self.horizons_s.size, self.queue
        M = len(self.model_names)
        tol = np.where(np.isfinite(dt_prev), 0.5 * dt_prev, 0.0)[:, None]
        hh = np.arange(H)[None, :]
        for _ in range(Q):
            pc = c["pcnt"][i]
            if not pc.any():
                return
            head = c["phead"][i]
            tgt = c["ptgt"][i[:, None], hh, head]
            due = (pc > 0) & (tgt <= t[:, None] + tol)
            if not due.any():
                return
            hit_now = due & (np.abs(t[:, None] - tgt) < np.maximum(tol, 1e-9))
            if hit_now.any():
                r, hcol = np.nonzero(hit_now)
                self._score(i[r], hcol, head[r, hcol], y[r], M)
            r, hcol = np.nonzero(due)
            si = i[r]
            c["phead"][si, hcol] = (head[r, hcol] + 1) % Q
            c["pcnt"][si, hcol] = pc[r, hcol] - 1

    def _score(self, si: I64, hcol: I64, q: I64, actual: F64, M: int) -> None:
        c = self.core
        preds = c["py"][si, hcol, q][:, None] + c["ppred"][si, hcol, q].astype(np.float64)  # (n, M+1)
        err = np.abs(actual[:, None] - preds[:, :M])
        fin = np.isfinite(err)
        err = np.minimum(err, _cap(c["fmae"][si, hcol], c["py"][si, hcol, q])[:, None])
        cnt = c["cnt"][si, :, hcol] + fin
        rate = _ewm_rate(cnt, _ERR_RATE)
        m0 = c["mae"][si, :, hcol]
        c["mae"][si, :, hcol] = np.where(fin, np.where(np.isfinite(m0), m0 + rate * (err - m0), err), m0)
        c["cnt"][si, :, hcol] = cnt
        e = actual - preds[:, M]
        if not np.isfinite(e).any():
            return
        ok = np.isfinite(e)
        si, hcol, q, e, actual = si[ok], hcol[ok], q[ok], e[ok], actual[ok]
        fc = c["fcnt"][si, hcol] + 1.0
        c["fcnt"][si, hcol] = fc
        fr = _ewm_rate(fc, _ERR_RATE)
        f0 = c["fmae"][si, hcol]
        ae = np.minimum(np.abs(e), _cap(f0, c["py"][si, hcol, q]))
        f1 = np.where(np.isfinite(f0), f0 + fr * (ae - f0), ae)
        c["fmae"][si, hcol] = f1
        lo, hi = self._track_quantiles(c["qlo"][si, hcol], c["qhi"][si, hcol], e, f1, fc)
        c["qlo"][si, hcol] = lo
        c["qhi"][si, hcol] = hi
        base = c["py"][si, hcol, q]
        plo = base + c["plo"][si, hcol, q]
        phi = base + c["phi"][si, hcol, q]
        known = np.isfinite(plo) & np.isfinite(phi)
        if known.any():
            inside = ((actual >= plo) & (actual <= phi)).astype(np.float64)
            h0 = c["hit"][si, hcol]
            hr = _ewm_rate(fc, _HIT_RATE)
            c["hit"][si, hcol] = np.where(known, np.where(np.isfinite(h0), h0 + hr * (inside - h0), inside), h0)

    def _score_horizons(self, dt: F64) -> F64:
        """(k, H) horizon used for scoring: at least one sampling interval, else nothing ever matches."""
        d = np.where(np.isfinite(dt), dt, 0.0)
        return np.maximum(self.horizons_s[None, :], d[:, None])

    def _issue_pending(self, i: I64, t: F64, pred_h: F64) -> None:
        c = self.core
        Q = self.queue
        dt = c["dt"][i]
        hs = self._score_horizons(dt)
        pc = c["pcnt"][i]
        due = np.isfinite(dt)[:, None] & (pc < Q) & (t[:, None] - c["plast"][i] >= hs / Q - 1e-9)
        if not due.any():
            return
        r, hcol = np.nonzero(due)
        si = i[r]
        slot = (c["phead"][si, hcol] + pc[r, hcol]) % Q
        base = c["y"][si]
        c["ptgt"][si, hcol, slot] = t[r] + hs[r, hcol]
        c["py"][si, hcol, slot] = base
        c["ppred"][si, hcol, slot, :-1] = pred_h[r, :, hcol] - base[:, None]
        c["ppred"][si, hcol, slot, -1] = c["fmean"][si, hcol] - base
        c["plo"][si, hcol, slot] = c["flo"][si, hcol] - base
        c["phi"][si, hcol, slot] = c["fhi"][si, hcol] - base
        c["pcnt"][si, hcol] = pc[r, hcol] + 1
        c["plast"][si, hcol] = t[r]

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
        mean, choice, borrowed, one_step = self._combine(c["mae"][i], c["cnt"][i], ph, c["mae1"][i], c["cnt1"][i])
        mean = np.where(np.isfinite(mean), mean, now.y[:, None])
        if one_step.any() and self._forced < 0:
            # a trend read off one-step errors alone reaches at most COLD_REACH times the data seen so far
            seen_s = np.maximum(now.n - 1, 0) * np.where(np.isfinite(dt), dt, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                reach = np.clip(COLD_REACH * seen_s[:, None] / hs[:, 1:], 0.0, 1.0)
            mean = np.where(one_step, now.y[:, None] + reach * (mean - now.y[:, None]), mean)
        lo, hi = self._interval(c["qlo"][i], c["qhi"][i], c["q1lo"][i], c["q1hi"][i], hs[:, 1:], dt)
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
            mean, held = self._shift_regime(i, now, mean)
            if held.any():
                spread = np.where(held, SHIFT_Z * c["sdev"][i][:, None], 0.0)
                spread = np.where(np.isfinite(spread), spread, 0.0)
                lo, hi = lo - spread, hi + spread
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

    def _shift_regime(self, i: I64, now: Now, mean: F64) -> tuple[F64, NDArray[np.bool_]]:
        """The forecasts with every horizon still in a level shift's regime set to the new level."""
        c = self.core
        st0 = c["st0"][i]
        active = np.isfinite(st0)
        if not active.any():
            return mean, np.zeros(mean.shape, bool)
        held = still_shifted(c["shold"][i] & active[:, None], mean, c["slev"][i], c["sjump"][i], c["scale1"][i],
                             now.t - st0, self.horizons_s)
        c["shold"][i] = held
        over = active & ~held.any(axis=1)
        if over.any():
            c["st0"][i[over]] = np.nan
            c["slev"][i[over]] = np.nan
        out: F64 = np.where(held, c["slev"][i][:, None], mean)
        return out, held

    def _interval(self, qlo: F64, qhi: F64, q1lo: F64, q1hi: F64, hs: F64, dt: F64) -> tuple[F64, F64]:
        """(k, H) error quantiles the interval adds to the forecast: each horizon's own once it has been scored.

        Before that, the wider of two guesses: the one-step interval widened with the square root of the steps
        (right for noise, far too narrow for a smooth or trending series, whose one-step errors are tiny: a
        sine sampled every second had 15-minute bounds that held 42 % of the time), and the interval of the
        longest shorter horizon already scored, widened in proportion to the horizon (an error that grows
        with a missed trend grows that fast)."""
        steps = np.sqrt(np.maximum(hs / np.where(np.isfinite(dt) & (dt > 0), dt, np.inf)[:, None], 1.0))
        lo1, hi1 = q1lo[:, None] * steps, q1hi[:, None] * steps
        borrow_lo, borrow_hi = np.full(qlo.shape, np.nan), np.full(qhi.shape, np.nan)
        k = qlo.shape[0]
        last_lo, last_hi, last_h = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
        for j in np.argsort(self.horizons_s, kind="stable").tolist():
            grow = hs[:, j] / last_h
            borrow_lo[:, j], borrow_hi[:, j] = last_lo * grow, last_hi * grow
            scored = np.isfinite(qlo[:, j]) & np.isfinite(qhi[:, j])
            last_lo = np.where(scored, qlo[:, j], last_lo)
            last_hi = np.where(scored, qhi[:, j], last_hi)
            last_h = np.where(scored, hs[:, j], last_h)
        unscored = ~np.isfinite(qlo)
        lo = np.where(unscored, np.fmin(lo1, borrow_lo), qlo)
        hi = np.where(unscored, np.fmax(hi1, borrow_hi), qhi)
        return lo, hi

    def _now(self, i: I64) -> Now:
        c = self.core
        return Now(idx=i, t=c["t"][i], y=c["y"][i], n=c["n"][i], dt=c["dt"][i])

    def forecast(self, idx: NDArray[np.integer] | Sequence[int] | None = None) -> Forecast:
        """Forecasts from each series' last sample (a pure read of the state; None = every slot)."""
        i = self._check_idx(idx)
        c = self.core
        hit = c["hit"][i]
        seen = np.where(np.isfinite(hit), np.minimum(c["fcnt"][i], 1.0 / _HIT_RATE), 0.0)
        rate = np.where(np.isfinite(hit), hit, _CONF_PRIOR_RATE)
        conf = (seen * rate + _CONF_PRIOR * _CONF_PRIOR_RATE) / (seen + _CONF_PRIOR)
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

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a bank saved by `state_dict` (same horizons, level, queue and models)."""
        try:
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

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
  * the model with the smallest recent error at that exact horizon is chosen (or the one
    forced by the caller); a model whose prediction is not finite falls back to "last";
  * the interval is the chosen forecast plus online quantiles (`level` centred) of the
    bank's own recent out-of-sample errors at that horizon, tracked in O(1) per score
    (quantile tracking, as in conformal PID control), so coverage holds without any
    distribution assumption; `confidence` is the recent hit rate of those intervals,
    shrunk toward `level` while few have been scored.

Pending predictions are kept in a small ring per series and horizon (`queue` entries,
issued at most every h/queue seconds), which bounds memory whatever the sampling rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.models import F64, I64, Field, LinearRegression, Model, Now, Slots, Step, build_models
from sidecar.errors import InputError

_GAP_FACTOR = 4.0  # an interval this many times the usual one is a gap
_DT_RATE = 0.05  # forgetting of the sampling-interval estimate
_ERR_RATE = 0.03  # forgetting of the running backtest errors (about 1/33 of the scored forecasts)
_SCALE_RATE = 0.05  # forgetting of the one-step error scale
_Q_RATE = 0.05  # step of the quantile trackers, in units of the recent absolute error
_HIT_RATE = 0.02  # forgetting of the interval hit rate
_CONF_PRIOR = 20.0  # pseudo-count pulling `confidence` toward `level`
_MIN_SCORED = 3  # scores a model needs at a horizon before it can be chosen


@dataclass(frozen=True, slots=True)
class Forecast:
    """Forecasts of k series at the bank's H horizons, made from each series' last sample."""

    horizons_s: np.ndarray  # (H,) float64 seconds
    mean: np.ndarray  # (k, H) point forecast (median-like: MAE is the score), NaN when not warm
    lower: np.ndarray  # (k, H) lower bound of the `level` interval
    upper: np.ndarray  # (k, H)
    confidence: np.ndarray  # (k, H) estimated probability that the actual lands in [lower, upper]
    model: np.ndarray  # (k, H) int8 index into ForecastBank.model_names of the model chosen
    slope_per_s: np.ndarray  # (k,) current trend estimate, units per second


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the bank expected for the samples just absorbed, from data strictly before them."""

    expected: np.ndarray  # (k,) NaN when there was no expectation yet
    lower: np.ndarray  # (k,) interval at `level`
    upper: np.ndarray
    scale: np.ndarray  # (k,) robust scale of recent one-step errors (>0, NaN if unknown)


def _ewm_rate(count: NDArray[np.float64], floor: float) -> NDArray[np.float64]:
    """Running mean for the first 1/floor observations, exponential forgetting after."""
    return np.maximum(1.0 / np.maximum(count, 1.0), floor)


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
                 capacity: int = 16, queue: int = 8) -> None:
        h = np.asarray(horizons_s, dtype=np.float64).reshape(-1)
        if h.size == 0 or not np.all(np.isfinite(h)) or np.any(h <= 0):
            raise InputError(f"horizons must be positive seconds, got {list(horizons_s)!r}")
        if not 0.0 < level < 1.0:
            raise InputError(f"level must be in (0, 1), got {level!r}")
        self.horizons_s = h
        self.level = float(level)
        self.queue = int(queue)
        cap = max(int(capacity), 1)
        self.models: list[Model] = build_models(cap)
        self.model_names: tuple[str, ...] = tuple(m.name for m in self.models)
        if model != "auto" and model not in self.model_names:
            names = ", ".join(self.model_names)
            raise InputError(f"unknown model {model!r}; choose 'auto' or one of {names}")
        self.model_choice = model
        self._forced = -1 if model == "auto" else self.model_names.index(model)
        self._last = self.model_names.index("last")
        self._linear = next(m for m in self.models if isinstance(m, LinearRegression))
        self._size = 0
        M, H, Q = len(self.models), h.size, self.queue
        self.core = Slots({
            "n": Field((), np.int64, 0),
            "t": Field((), np.float64, np.nan),
            "y": Field((), np.float64, np.nan),
            "dt": Field((), np.float64, np.nan),
            # cache of the latest forecasts (made at the end of each update)
            "pred": Field((M, H), np.float64, np.nan),
            "fmean": Field((H,), np.float64, np.nan),
            "flo": Field((H,), np.float64, np.nan),
            "fhi": Field((H,), np.float64, np.nan),
            "fmodel": Field((H,), np.int8, 0),
            "slope": Field((), np.float64, 0.0),
            # one-step backtest (every sample scores the previous forecast)
            "mae1": Field((M,), np.float64, np.nan),
            "cnt1": Field((), np.float64, 0.0),
            "scale1": Field((), np.float64, np.nan),
            "q1lo": Field((), np.float64, np.nan),
            "q1hi": Field((), np.float64, np.nan),
            # per-horizon backtest
            "mae": Field((M, H), np.float64, np.nan),
            "cnt": Field((H,), np.float64, 0.0),
            "fmae": Field((H,), np.float64, np.nan),
            "qlo": Field((H,), np.float64, np.nan),
            "qhi": Field((H,), np.float64, np.nan),
            "hit": Field((H,), np.float64, np.nan),
            # pending forecasts, a ring of Q per horizon
            "ptgt": Field((H, Q), np.float64, np.nan),
            "ppred": Field((H, Q, M + 1), np.float64, np.nan),
            "plo": Field((H, Q), np.float64, np.nan),
            "phi": Field((H, Q), np.float64, np.nan),
            "phead": Field((H,), np.int64, 0),
            "pcnt": Field((H,), np.int64, 0),
            "plast": Field((H,), np.float64, -np.inf),
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
            for m in self.models:
                m.slots.grow(cap)
        self._size = need
        return new

    def reset(self, idx: NDArray[np.integer] | Sequence[int]) -> None:
        """Forget everything about these slots so they can be reused for other series."""
        i = self._check_idx(idx)
        self.core.reset(i)
        for m in self.models:
            m.slots.reset(i)

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

        exp = self._expect(i, t, y, n_prev, t_prev, y_prev, dt_prev, gap)
        self._score_pending(i, t, y, dt_prev)

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
        for m in self.models:
            m.update(step)
        c["n"][i] = n_prev + 1
        c["t"][i] = t
        c["y"][i] = y

        self._refresh(i)
        self._issue_pending(i, t)
        return exp

    def _now(self, i: I64) -> Now:
        c = self.core
        return Now(idx=i, t=c["t"][i], y=c["y"][i], n=c["n"][i], dt=c["dt"][i])

    def _predict_all(self, now: Now, h_s: F64) -> F64:
        """(k, M, H) predictions of every model; non-finite ones replaced by the last value."""
        out = np.empty((now.idx.size, len(self.models), h_s.shape[1]))
        with np.errstate(all="ignore"):
            for j, m in enumerate(self.models):
                out[:, j, :] = m.predict(now, h_s)
        bad = ~np.isfinite(out)
        if bad.any():
            out = np.where(bad, now.y[:, None, None], out)
        return out

    def _choose(self, mae: F64, cnt: F64 | None) -> NDArray[np.int8]:
        """Index of the model with the smallest recent error along axis 1 (k, M, ...) -> (k, ...)."""
        if self._forced >= 0:
            return np.full((mae.shape[0], *mae.shape[2:]), self._forced, dtype=np.int8)
        score = np.where(np.isfinite(mae), mae, np.inf)
        best: NDArray[np.int8] = np.argmin(score, axis=1).astype(np.int8)
        none = ~np.isfinite(np.min(score, axis=1))
        if cnt is not None:
            none |= cnt < _MIN_SCORED
        best[none] = self._last
        return best

    def _expect(self, i: I64, t: F64, y: F64, n_prev: I64, t_prev: F64, y_prev: F64, dt_prev: F64,
                gap: NDArray[np.bool_]) -> Expectation:
        """Predict the incoming samples from the state before them, then score that one-step forecast."""
        c = self.core
        k = i.size
        expected = np.full(k, np.nan)
        lower = np.full(k, np.nan)
        upper = np.full(k, np.nan)
        scale = np.full(k, np.nan)
        seen = n_prev > 0
        if not seen.any():
            return Expectation(expected, lower, upper, scale)
        s = np.flatnonzero(seen)
        si = i[s]
        now = Now(idx=si, t=t_prev[s], y=y_prev[s], n=n_prev[s], dt=dt_prev[s])
        h = np.minimum(t[s] - t_prev[s], float(self.horizons_s.max()))[:, None]
        preds = self._predict_all(now, h)[:, :, 0]  # (k', M)
        mae1 = c["mae1"][si]
        cnt1 = c["cnt1"][si]
        choice = self._choose(mae1[:, :, None], cnt1[:, None])[:, 0]
        e_hat = preds[np.arange(s.size), choice]
        q1lo, q1hi, sc = c["q1lo"][si], c["q1hi"][si], c["scale1"][si]
        expected[s] = e_hat
        lower[s] = e_hat + q1lo
        upper[s] = e_hat + q1hi
        scale[s] = sc

        # score the one-step forecasts (not across gaps: those are long-horizon guesses)
        ok = ~gap[s]
        if ok.any():
            o = s[ok]
            oi = i[o]
            yo = y[o]
            err_m = np.abs(yo[:, None] - preds[ok])
            cn = cnt1[ok] + 1.0
            r = _ewm_rate(cn, _ERR_RATE)[:, None]
            m0 = mae1[ok]
            c["mae1"][oi] = np.where(np.isfinite(m0), m0 + r * (err_m - m0), err_m)
            c["cnt1"][oi] = cn
            e = yo - e_hat[ok]
            ae = np.abs(e)
            sc0 = sc[ok]
            fresh = ~np.isfinite(sc0)
            rs = _ewm_rate(cn, _SCALE_RATE)
            capped = np.minimum(ae, 5.0 * np.where(fresh, ae, sc0))
            sc1 = np.where(fresh, ae, sc0 + rs * (capped - sc0))
            c["scale1"][oi] = sc1
            lo, hi = self._track_quantiles(q1lo[ok], q1hi[ok], e, sc1, cn)
            c["q1lo"][oi] = lo
            c["q1hi"][oi] = hi
        return Expectation(expected, lower, upper, scale)

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
        M = len(self.models)
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
                si = i[r]
                q = head[r, hcol]
                preds = c["ppred"][si, hcol, q]  # (n, M+1)
                actual = y[r]
                err = np.abs(actual[:, None] - preds[:, :M])
                cnt = c["cnt"][si, hcol] + 1.0
                rate = _ewm_rate(cnt, _ERR_RATE)
                m0 = c["mae"][si, :, hcol]
                c["mae"][si, :, hcol] = np.where(np.isfinite(m0), m0 + rate[:, None] * (err - m0), err)
                c["cnt"][si, hcol] = cnt
                e = actual - preds[:, M]
                ae = np.abs(e)
                f0 = c["fmae"][si, hcol]
                f1 = np.where(np.isfinite(f0), f0 + rate * (ae - f0), ae)
                c["fmae"][si, hcol] = f1
                lo, hi = self._track_quantiles(c["qlo"][si, hcol], c["qhi"][si, hcol], e, f1, cnt)
                c["qlo"][si, hcol] = lo
                c["qhi"][si, hcol] = hi
                plo, phi = c["plo"][si, hcol, q], c["phi"][si, hcol, q]
                known = np.isfinite(plo)
                if known.any():
                    inside = ((actual >= plo) & (actual <= phi)).astype(np.float64)
                    h0 = c["hit"][si, hcol]
                    hr = _ewm_rate(cnt, _HIT_RATE)
                    c["hit"][si, hcol] = np.where(known, np.where(np.isfinite(h0), h0 + hr * (inside - h0),
                                                                  inside), h0)
            r, hcol = np.nonzero(due)
            si = i[r]
            c["phead"][si, hcol] = (head[r, hcol] + 1) % Q
            c["pcnt"][si, hcol] = pc[r, hcol] - 1

    def _score_horizons(self, dt: F64) -> F64:
        """(k, H) horizon used for scoring: at least one sampling interval, else nothing ever matches."""
        d = np.where(np.isfinite(dt), dt, 0.0)
        return np.maximum(self.horizons_s[None, :], d[:, None])

    def _issue_pending(self, i: I64, t: F64) -> None:
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
        c["ptgt"][si, hcol, slot] = t[r] + hs[r, hcol]
        c["ppred"][si, hcol, slot, :-1] = c["pred"][si, :, hcol]
        c["ppred"][si, hcol, slot, -1] = c["fmean"][si, hcol]
        c["plo"][si, hcol, slot] = c["flo"][si, hcol]
        c["phi"][si, hcol, slot] = c["fhi"][si, hcol]
        c["pcnt"][si, hcol] = pc[r, hcol] + 1
        c["plast"][si, hcol] = t[r]

    # --------------------------------------------------------------- forecasts
    def _refresh(self, i: I64) -> None:
        """Recompute the cached forecasts of these series from their current state."""
        c = self.core
        now = self._now(i)
        k, H = i.size, self.horizons_s.size
        hs = np.broadcast_to(self.horizons_s[None, :], (k, H))
        preds = self._predict_all(now, hs)  # (k, M, H)
        c["pred"][i] = preds
        choice = self._choose(c["mae"][i], c["cnt"][i])
        mean = np.take_along_axis(preds, choice[:, None, :].astype(np.int64), axis=1)[:, 0, :]
        qlo, qhi = c["qlo"][i], c["qhi"][i]
        # before a horizon has been scored: widen the one-step interval with the square root of the steps
        dt = now.dt
        steps = np.sqrt(np.maximum(hs / np.where(np.isfinite(dt) & (dt > 0), dt, np.inf)[:, None], 1.0))
        lo1, hi1 = c["q1lo"][i][:, None] * steps, c["q1hi"][i][:, None] * steps
        unscored = ~np.isfinite(qlo)
        lo = np.where(unscored, lo1, qlo)
        hi = np.where(unscored, hi1, qhi)
        c["fmean"][i] = mean
        c["flo"][i] = mean + np.minimum(lo, 0.0)
        c["fhi"][i] = mean + np.maximum(hi, 0.0)
        c["fmodel"][i] = choice
        c["slope"][i] = self._linear.slope(now)

    def forecast(self, idx: NDArray[np.integer] | Sequence[int] | None = None) -> Forecast:
        """Forecasts from each series' last sample (a pure read of the state; None = every slot)."""
        i = self._check_idx(idx)
        c = self.core
        hit = c["hit"][i]
        cnt = c["cnt"][i]
        seen = np.minimum(cnt, 1.0 / _HIT_RATE)
        rate = np.where(np.isfinite(hit), hit, self.level)
        conf = (seen * rate + _CONF_PRIOR * self.level) / (seen + _CONF_PRIOR)
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
        )

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, np.ndarray]:
        """Every array needed to restore the bank (plus its configuration, checked on load)."""
        out: dict[str, np.ndarray] = {
            "size": np.array(self._size, dtype=np.int64),
            "horizons_s": self.horizons_s.copy(),
            "level": np.array(self.level),
            "queue": np.array(self.queue, dtype=np.int64),
            "model_names": np.array(self.model_names),
        }
        out.update(self.core.dump("core.", self._size))
        for m in self.models:
            out.update(m.slots.dump(f"m.{m.name}.", self._size))
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
            for m in self.models:
                m.slots.load(f"m.{m.name}.", state, size)
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"invalid forecast state: {e}") from e
        self._size = size

"""The forecast bank's intervals: error quantiles tracked online, widened where evidence is thin, and
calibrated on the bank's own measured hit rate.

Three layers, each vectorised over series and horizons and run only when a forecast is scored:

* **error quantiles** (`track_quantiles`, `blend`): the (1-level)/2 and (1+level)/2 quantiles of a horizon's
  out-of-sample errors, followed as in conformal PID control, averaged with the split-conformal bounds of the
  last 64 scored errors (`scoring.py`), so an interval needs no distribution;
* **adaptive width** (`adapt_width`): a multiplier per series and horizon, raised after an issued interval
  missed and lowered after it held, so the *measured* share of actuals inside converges to `level` (adaptive
  conformal inference, Gibbs and Candès 2021, applied to the width). The quantiles alone miss that target
  when errors are autocorrelated, when floors and domains clip the interval, or after the noise changes;
  on NAB it narrows the intervals by 5-25 % at the same coverage, and brings the first two hours of a twin
  closer to the nominal rate (``benchmarks/young_calibration.py``);
* **thin evidence** (`interval_offsets`): a horizon not scored yet borrows the interval of the longest
  shorter horizon that has been, widened with the square root of the horizon ratio, or, with none, the
  one-step interval widened with the square root of the steps; a horizon scored fewer than `YOUNG_SCORES`
  times keeps at least that borrowed width, since a handful of errors says little about its 5 % tails.

`confidence` reports the measured hit rate with the weight of two pseudo-forecasts at one half: never the
nominal level without evidence.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.models_base import F64

Q_RATE = 0.3  # step of the quantile trackers, in units of the recent absolute error
TAIL_LEVEL = 0.99  # the one-step error size tracked as a series' yardstick of an unusual move ...
TAIL_STEP = 0.5  # ... in log steps: x1.64 when an error exceeds it, x0.995 (half-life 139 samples) when not
HIT_RATE = 0.02  # forgetting of the interval hit rate
WIDTH_STEP = 0.1  # log step of the adaptive width: x1.09 after a miss, x0.99 after a hit (at level 0.9)
WIDTH_RANGE = (0.25, 4.0)  # how far the adaptive width may move the tracked quantiles
TRACK_TRUST = 150.0  # scores after which the quantile tracker has its full half of the blend (its memory)
YOUNG_SCORES = 10.0  # scores below which a horizon's own quantiles are not trusted to be wide enough
CONF_PRIOR = 2.0  # pseudo-counts of the uninformed prior (one hit, one miss) of `confidence`
CONF_PRIOR_RATE = 0.5  # what `confidence` is before any forecast at a horizon was scored: no evidence either way


def ewm_rate(count: NDArray[np.floating] | NDArray[np.unsignedinteger], floor: float) -> F64:
    """Running mean for the first 1/floor observations, exponential forgetting after."""
    out: F64 = np.maximum(1.0 / np.maximum(count, 1.0), floor)
    return out


def track_quantiles(lo: F64, hi: F64, e: F64, scale: F64, count: F64, level: float) -> tuple[F64, F64]:
    """One step of online quantile tracking of the errors at (1-level)/2 and (1+level)/2.

    At equilibrium the fraction of errors above `hi` is (1-level)/2 whatever their distribution. The step is
    proportional to the recent error scale (so it is unit free) and larger at the start so the bounds settle
    quickly."""
    tail = (1.0 - level) / 2.0
    fresh = ~np.isfinite(lo)
    z = 2.0 * np.abs(e)
    lo = np.where(fresh, -z, lo)
    hi = np.where(fresh, z, hi)
    eta = np.where(np.isfinite(scale), scale, np.abs(e)) * ewm_rate(count, Q_RATE)
    hi = hi + eta * (np.where(e > hi, 1.0, 0.0) - tail)
    lo = lo - eta * (np.where(e < lo, 1.0, 0.0) - tail)
    return lo, hi


def track_tail(tail: F64, ae: F64) -> F64:
    """One step of tracking the TAIL_LEVEL quantile of |one-step errors|, in log space.

    A yardstick for "how unusual is this move for this series" that a gauge of a few integers cannot shrink to
    nothing: its 90 % interval lies in the gap between 0 and 1 when most errors are 0, while 1 % of its moves
    are a whole unit. Multiplicative steps settle within a few exceedances from any start (the first error that
    is not 0), and one huge error raises it only 1.64 times."""
    fresh = ~(tail > 0)
    with np.errstate(invalid="ignore", over="ignore"):
        step = np.exp(TAIL_STEP * (np.where(ae > tail, 1.0, 0.0) - (1.0 - TAIL_LEVEL)))
        out: F64 = np.where(fresh, np.where(ae > 0, ae, np.nan), tail * step)
    return out


def blend(qlo: F64, qhi: F64, qwlo: NDArray[np.floating], qwhi: NDArray[np.floating],
          fcnt: NDArray[np.floating] | None = None) -> tuple[F64, F64]:
    """The mean of the tracked quantiles and the recent window's conformal bounds, where the window has them.

    Two estimates of the same bounds with opposite faults: the tracker remembers about the last 150 scores
    and, at the 95th percentile, moves down 19 times slower than up (one burst leaves it wide for hours);
    the last 64 errors follow a change at once but, in runs of correlated errors, see fewer independent
    ones than they count. Their mean keeps NAB's coverage at 0.914-0.919 and brings a twin's first two hours
    nearer the goal than either alone (`benchmarks/young_calibration.py`).

    With `fcnt` (scores so far) the tracker's share grows from 0 to its half over its first TRACK_TRUST scores:
    it starts at twice the first error, which at a long horizon is a forecast made in the twin's first minutes,
    and comes down by 1.5 % of the error scale a score, so for its first hours it is its starting point, not
    an estimate (a live twin's 15- and 30-minute intervals covered 96-98 % of outcomes). The window's bounds
    are exact split-conformal quantiles from their first WINDOW_MIN errors."""
    wlo, whi = np.asarray(qwlo, dtype=np.float64), np.asarray(qwhi, dtype=np.float64)
    wt = 0.5 if fcnt is None else 0.5 * np.minimum(np.asarray(fcnt, dtype=np.float64) / TRACK_TRUST, 1.0)
    lo: F64 = np.where(np.isfinite(wlo) & np.isfinite(qlo), wt * qlo + (1 - wt) * wlo, qlo)
    hi: F64 = np.where(np.isfinite(whi) & np.isfinite(qhi), wt * qhi + (1 - wt) * whi, qhi)
    return lo, hi


def adapt_width(width: NDArray[np.floating], inside: F64, level: float) -> F64:
    """The width multiplier after one issued interval was scored (`inside` 1 held, 0 missed).

    The log step is WIDTH_STEP x (miss - (1 - level)): it stands still exactly when a share 1 - level of
    intervals miss, whatever the errors' distribution or dependence."""
    w = np.asarray(width, dtype=np.float64)
    out: F64 = np.clip(w * np.exp(WIDTH_STEP * ((1.0 - inside) - (1.0 - level))), *WIDTH_RANGE)
    return out


def interval_offsets(qlo: F64, qhi: F64, q1lo: F64, q1hi: F64, hs: F64, dt: F64, fcnt: F64,
                     horizons_s: F64) -> tuple[F64, F64]:
    """(k, H) error quantiles an interval adds to its forecast: each horizon's own once it is well scored.

    `qlo`/`qhi` are the tracked quantiles already times their adaptive width. A horizon without scores
    borrows from the longest shorter horizon that has some, grown with the square root of the horizon ratio
    (as a random walk's errors grow; linear growth, right only for a missed trend, turns one burst into a
    5-minute bound of hundreds for a service at 7 req/s, and covers the young windows of
    `young_calibration.py` no better: 0.27 against 0.34 of them in the goal at 60 minutes), else widens the
    one-step interval with the square root of the steps. A young horizon keeps at least the borrow."""
    steps = np.sqrt(np.maximum(hs / np.where(np.isfinite(dt) & (dt > 0), dt, np.inf)[:, None], 1.0))
    lo1, hi1 = q1lo[:, None] * steps, q1hi[:, None] * steps
    borrow_lo, borrow_hi = np.full(qlo.shape, np.nan), np.full(qhi.shape, np.nan)
    k = qlo.shape[0]
    last_lo, last_hi, last_h = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
    for j in np.argsort(horizons_s, kind="stable").tolist():
        grow = np.sqrt(hs[:, j] / last_h)
        borrow_lo[:, j], borrow_hi[:, j] = last_lo * grow, last_hi * grow
        scored = np.isfinite(qlo[:, j]) & np.isfinite(qhi[:, j])
        last_lo = np.where(scored, qlo[:, j], last_lo)
        last_hi = np.where(scored, qhi[:, j], last_hi)
        last_h = np.where(scored, hs[:, j], last_h)
    borrowed = np.isfinite(borrow_lo) & np.isfinite(borrow_hi)
    unscored = ~np.isfinite(qlo)
    young = ~unscored & borrowed & (fcnt < YOUNG_SCORES)
    ylo, yhi = np.fmin(qlo, borrow_lo), np.fmax(qhi, borrow_hi)
    lo = np.where(unscored, np.where(borrowed, borrow_lo, lo1), np.where(young, ylo, qlo))
    hi = np.where(unscored, np.where(borrowed, borrow_hi, hi1), np.where(young, yhi, qhi))
    return lo, hi


def confidence(hit: F64, fcnt: F64) -> F64:
    """The estimated probability that an actual lands inside its interval, from the measured hit rate."""
    seen = np.where(np.isfinite(hit), np.minimum(fcnt, 1.0 / HIT_RATE), 0.0)
    rate = np.where(np.isfinite(hit), hit, CONF_PRIOR_RATE)
    out: F64 = (seen * rate + CONF_PRIOR * CONF_PRIOR_RATE) / (seen + CONF_PRIOR)
    return out

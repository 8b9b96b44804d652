"""The bank's one-step view of each series: what it expected for the sample that just arrived, how far off
that was, and whether the sample is a lone glitch the models should not learn.

The forecast made one sampling interval before each sample is scored against it as the sample arrives: the
models' one-step errors choose the model that sets the expectation, and the combined error feeds a robust
scale, tracked 90 % quantiles and a 99 % tail. Divergence, anomaly scoring and the level-shift detector
all measure a sample against this expectation, and a horizon not scored yet borrows these errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.intervals import ewm_rate, track_quantiles, track_tail
from sidecar.engine.models_base import F64, I64, Slots
from sidecar.engine.scoring import ERR_RATE, cap_error, count_up

SCALE_RATE = 0.05  # forgetting of the one-step error scale
GLITCH = 50.0  # one-step error scales beyond which a lone sample is a glitch the models do not learn as is

#: picks, per series, the model with the smallest recent one-step error among those with a forecast
Choose = Callable[[F64, NDArray[np.uint16], F64], NDArray[np.int64]]


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the bank expected for the samples just absorbed, from data strictly before them."""

    expected: np.ndarray  # (k,) NaN when there was no expectation yet
    lower: np.ndarray  # (k,) interval at `level`
    upper: np.ndarray
    scale: np.ndarray  # (k,) robust scale of recent one-step errors (>0, NaN if unknown)
    tail: np.ndarray  # (k,) the 99th percentile of recent |one-step errors| (>0, NaN until one was not 0)
    learned: np.ndarray | None = None  # (k,) the value the models learned: the sample, or a lone glitch held back


def expect(core: Slots, i: I64, y: F64, seen: NDArray[np.bool_], y_prev: F64, gap_dt: F64, dt_prev: F64,
           gap: NDArray[np.bool_], choose: Choose, level: float) -> Expectation:
    """The forecast made one interval before each sample, then scored against it."""
    c = core
    k = i.size
    nan = np.full(k, np.nan)
    if not seen.any():
        return Expectation(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy())
    pred1 = c["pred1"][i]  # (k, M)
    mae1, cnt1 = c["mae1"][i], c["cnt1"][i]
    choice = choose(mae1, cnt1, pred1)
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
        err_m = np.minimum(err_m, cap_error(sc[o], y_prev[o])[:, None])
        cn = count_up(cnt1[o], fin)
        r = ewm_rate(cn, ERR_RATE)
        m0 = mae1[o]
        c["mae1"][oi] = np.where(fin, np.where(np.isfinite(m0), m0 + r * (err_m - m0), err_m), m0)
        c["cnt1"][oi] = cn
        e = yo - e_hat[o]
        ae = np.abs(e)
        c1 = c["c1"][oi] + 1.0
        c["c1"][oi] = c1
        sc0 = sc[o]
        fresh = ~np.isfinite(sc0)
        rs = ewm_rate(c1, SCALE_RATE)
        # spikes may raise the scale only gradually: it is what detectors divide by
        # (a scale of exactly 0, after errors of 0 on a series that started flat, is no cap: capped at 0 x 5
        # the scale could never grow again)
        capped = np.minimum(ae, 5.0 * np.where(fresh | (sc0 <= 0), ae, sc0))
        sc1 = np.where(fresh, ae, sc0 + rs * (capped - sc0))
        c["scale1"][oi] = sc1
        lo, hi = track_quantiles(q1lo[o], q1hi[o], e, sc1, c1, level)
        c["q1lo"][oi] = lo
        c["q1hi"][oi] = hi
        c["q1tail"][oi] = track_tail(tl[o], ae)
    return Expectation(expected, lower, upper, scale, tail)


def hold_glitches(core: Slots, i: I64, y: F64, exp: Expectation, gap: NDArray[np.bool_]) -> F64:
    """The value the models learn from: a lone sample absurdly far from what was expected (more than
    GLITCH one-step error scales) is replaced by the expectation, so one bad scrape (1e9 in a series
    near 50) cannot poison the levels, trends and profiles for days (pulled in only to 50 scales, it
    still came back a day later through the daily profile). A second such sample on the same side is
    a real change and goes through. Scores, anomaly detection and history see the raw value."""
    c = core
    e, sc = exp.expected, exp.scale
    with np.errstate(invalid="ignore"):
        dev = y - e
        # a scale below a thousandth of the level is rounding on a near-exact fit, not precision
        sc = np.maximum(sc, 1e-3 * np.abs(e))
        far = ~gap & np.isfinite(sc) & np.isfinite(dev) & (np.abs(dev) > GLITCH * sc)
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

"""What a forecast may claim: its regime, its domain and its smallest honest interval.

The bank chooses models by how they did at each horizon (its running backtest). Two moments
have no such evidence, and a forecast made as if they had is the kind an on-call engineer stops
trusting:

* **Cold start** — a horizon nobody has scored yet. The longest shorter horizon that has been
  scored, or else the one-step backtest (scored from the second sample on), already says which
  models follow the series, so they forecast every unscored horizon (a steady climb toward a limit
  gets a time to limit within minutes, not after the first scored hour). On one-step evidence alone
  a trend is extrapolated at most `COLD_REACH` times the span of data seen (what follows a series
  one step ahead may be a fast wave, not a trend), only after `COLD_MIN_SCORED` one-step scores (five
  samples of a rising edge are a blip, not a trend), and the interval reaches back by the whole move
  the forecast predicts, so the last value — the trend stopping now — stays inside it, and half as
  far beyond.
* **Level shift** — a sudden lasting change (a cache flush, a host gone idle, a step in load).
  Models with memory (medians, seasonal profiles) keep forecasting the old level for as long as
  their memory, and their backtest scores are as slow to notice. A run of `SHIFT_RUN` samples
  beyond the one-step interval on the same side, each `SHIFT_SCALES` error scales away, is a
  shift: from then on every horizon forecasts the new level (a running mean of the samples since
  the shift, or, once the samples since show a clear trend — a cache refilling after its flush — the
  line through them, extrapolated no further ahead than the time since the shift and never past the
  highest or lowest value the series has shown) until the bank's
  own forecast at that horizon has come back to it, or for a day.

Whatever the regime, a forecast stays inside its metric's domain (a percentage in 0-100, a
fraction in 0-1, a metric that has never been negative not below 0) and its interval is never
narrower than a share of any shorter horizon's (`floor_interval`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
B = NDArray[np.bool_]

#: Regime codes of a forecast, per series and horizon (`REGIMES[code]` is what the API says).
BACKTESTED, COLD, SHIFT = 0, 1, 2
REGIMES = ("backtested", "cold_start", "level_shift")

SHIFT_RUN_MAX = 30       # the longest run a shift may need on a series whose changes keep coming back
SHIFT_RUN = 3            # consecutive samples beyond the one-step interval, on one side, make a shift ...
SHIFT_SCALES = 4.0       # ... each at least this many one-step error scales from what was expected
SHIFT_TAILS = 1.0        # ... and beyond its largest usual move (99th percentile): a bursty series' bursts are no shift
SHIFT_CONSISTENT = 0.5   # ... and agree with each other: their spread is below this share of the jump ...
SHIFT_LASTING = 0.75     # ... or, once the run has lasted twice its need, the spread of its later samples is below this
#                          share: a noisy drop seen through a rate window (100, 63, 45, 37, 53, 57 %) starts with a ramp
SHIFT_RAMP_DT = 120.0    # ... where samples come every 2 minutes or faster: a rate window of minutes blurs a step into
#                          a ramp of several samples; at 5 minutes a step is a step (on NAB's 5-minute series the rule
#                          cost 0.007 MASE at 15 and 30 minutes)
SHIFT_RATE = 0.3         # the post-shift level: the mean of the first samples, then a running mean this fast
SHIFT_MAX_S = 86400.0    # a shift regime ends after a day at the latest (the daily profiles have relearnt)
SHIFT_CAUGHT_UP = 0.1    # a horizon leaves the shift regime once the bank is within this share of the jump
SHIFT_PRIOR = 0.1        # the new level's spread starts at this share of the jump (is it lasting? unknown yet)
SHIFT_Z = 2.0            # a shift-held interval spans at least this many mean absolute deviations of the new level
SHIFT_TREND_MIN = 4      # samples since a shift before the new level may carry a trend ...
SHIFT_TREND_RECENT = 2.0 # ... fitted with the k-th sample since weighing k^2: a refill that slows (the demo's: fast
#                          for 30 s, then slower) is forecast from its recent slope
SHIFT_TREND_T = 5.0      # ... and only a clear one: its least-squares slope this many standard errors from 0 ...
SHIFT_TREND_REACH = 1.0  # ... extrapolated no further ahead than the time it has been watched (a refill slows down:
#                          the demo's cache refills at 48 %/min for 30 s, then 14 %/min; 8x gave a 55 s time to limit
#                          where 3.5 minutes came)
COLD_MIN_SCORED = 12     # one-step scores a model needs before it forecasts an unscored horizon (a trend, not a blip)
COLD_REACH = 8.0         # a trend known only from one-step errors is extrapolated at most this many times the data span
COLD_TREND_SHARE = 1.0   # an unscored horizon's interval reaches back by the move it forecasts ("it stops now" stays
#                          inside) and beyond by half of it
SHORTER_SHARE = 0.25     # an interval spans at least this share of every shorter horizon's, each side


@dataclass(frozen=True, slots=True)
class RunState:
    """Per series, the run of far samples the shift detector is following (`track_shift`)."""

    run: NDArray[np.int8]       # signed count of consecutive far samples (+ above, - below), at most the need
    total: F64                  # sum of the samples the run counts
    lo: F64                     # smallest and largest sample of the whole run
    hi: F64
    base: F64                   # the level the run is far from (what was expected at its first sample)
    length: NDArray[np.int16]   # samples the run has lasted, those it slid past included
    far_by: F64                 # how far from `base` a sample had to be at the run's first sample
    late_lo: F64                # smallest and largest sample after the run's first `need` (its settled part)
    late_hi: F64

    @classmethod
    def empty(cls, n: int) -> RunState:
        nan = np.full(n, np.nan)
        return cls(np.zeros(n, np.int8), np.zeros(n), nan, nan.copy(), nan.copy(), np.zeros(n, np.int16),
                   nan.copy(), nan.copy(), nan.copy())


@dataclass(frozen=True, slots=True)
class ShiftUpdate:
    """Per series, after one sample: the new run state and where a shift starts now."""

    state: RunState
    started: B              # a shift is declared at this sample
    level: F64              # the mean of the run that made it (NaN elsewhere)


def track_shift(st: RunState, y: F64, reference: F64, lower: F64, upper: F64, scale: F64, tail: F64, ok: B,
                need: F64 | None = None, ramped: B | None = None) -> ShiftUpdate:
    """One step of the shift detector, vectorised over the series of a call.

    `reference` is what the sample was expected to be (the post-shift level while a shift is active),
    `lower`/`upper` the one-step interval around it, `scale` the one-step error scale; `ok` is False
    where nothing is known yet or the sample follows a gap (the run restarts). A run is judged against
    the level at its first sample (`base`), not against each new expectation: a fast one-step model
    that follows the new level after one sample must not hide the change from the slow horizons, nor may
    the error scale the run's own samples inflate: its later samples need be no further from `base` than
    its first had to be (`far_by`). The run's samples must agree with each other (spread below
    `SHIFT_CONSISTENT` of the jump): a burst of wild values (1e7, 7e6, 1e8 in a series near 3e5) is an
    anomaly, not a new level to forecast. A run that disagrees with itself slides on; once it has lasted
    twice its need, its settled part (the samples after its first `need`) may spread up to `SHIFT_LASTING`
    of the jump: a drop seen through a rate window starts with a ramp whose extremes the whole run keeps.
    `far_by` and the settled part apply only where `ramped` (series sampled every `SHIFT_RAMP_DT` or faster,
    default all). `need` (per series, default SHIFT_RUN) is how long a run must be (`shift_run_needed`)."""
    ramp_ok = np.ones(y.shape, bool) if ramped is None else np.asarray(ramped, bool)
    run, base = st.run, st.base
    with np.errstate(invalid="ignore"):
        margin = np.fmax(SHIFT_SCALES * np.where(np.isfinite(scale) & (scale > 0), scale, np.inf),
                         SHIFT_TAILS * tail)
        need_up = np.fmax(margin, np.fmax(upper - reference, 0.0))
        need_lo = np.fmax(margin, np.fmax(reference - lower, 0.0))
        in_run = run != 0
        held = in_run & np.isfinite(st.far_by) & ramp_ok
        ref = np.where(in_run & np.isfinite(base), base, reference)
        above = ok & (y - ref > np.where(held, np.fmin(need_up, st.far_by), need_up))
        below = ok & (ref - y > np.where(held, np.fmin(need_lo, st.far_by), need_lo))
    side = above.astype(np.int8) - below.astype(np.int8)
    same = in_run & (side != 0) & (np.sign(run) == side)
    fresh = ~same & (side != 0)
    if (in_run & ~same & (side != 0)).any():
        # the run broke the other way: judged afresh against what is expected now
        with np.errstate(invalid="ignore"):
            a2 = ok & (y - reference > need_up)
            b2 = ok & (reference - y > need_lo)
        side = np.where(in_run & ~same, a2.astype(np.int8) - b2.astype(np.int8), side).astype(np.int8)
        fresh = ~same & (side != 0)
    needed = np.broadcast_to(np.asarray(SHIFT_RUN if need is None else need, np.float64), y.shape)
    new_run = np.where(same, run + side, side).astype(np.int8)
    new_sum = np.where(same, st.total + y, np.where(fresh, y, 0.0))
    new_lo = np.where(same, np.fmin(st.lo, y), np.where(fresh, y, np.nan))
    new_hi = np.where(same, np.fmax(st.hi, y), np.where(fresh, y, np.nan))
    new_base = np.where(same, base, np.where(fresh, reference, np.nan))
    new_by = np.where(same, st.far_by, np.where(fresh, np.where(side > 0, need_up, need_lo), np.nan))
    new_len = np.where(same, np.minimum(st.length.astype(np.int32) + 1, 2 * SHIFT_RUN_MAX),
                       np.where(fresh, 1, 0)).astype(np.int16)
    late = same & (new_len > needed)
    late_lo = np.where(late, np.fmin(st.late_lo, y), np.nan)
    late_hi = np.where(late, np.fmax(st.late_hi, y), np.nan)
    full = np.abs(new_run) >= needed
    mean = new_sum / np.maximum(np.abs(new_run), 1)
    with np.errstate(invalid="ignore"):
        jump = np.abs(mean - new_base)
        settled = ramp_ok & (new_len >= 2 * needed) & (late_hi - late_lo <= SHIFT_LASTING * jump)
        started = full & ((new_hi - new_lo <= SHIFT_CONSISTENT * jump) | settled)
    # a full run that disagrees with itself slides on: its oldest sample is forgotten (approximately)
    slide = full & ~started
    new_run = np.where(started, 0, np.where(slide, new_run - np.sign(new_run), new_run)).astype(np.int8)
    new_sum = np.where(started, 0.0, np.where(slide, mean * np.abs(new_run), new_sum))
    gone = np.where(started, np.nan, 1.0)
    out = RunState(run=new_run, total=new_sum, lo=new_lo * gone, hi=new_hi * gone, base=new_base * gone,
                   length=np.where(started, 0, new_len).astype(np.int16), far_by=new_by * gone,
                   late_lo=late_lo * gone, late_hi=late_hi * gone)
    return ShiftUpdate(state=out, started=started, level=np.where(started, mean, np.nan))


def shift_run_needed(reverts: F64) -> F64:
    """Samples a run needs to be a shift: SHIFT_RUN, and SHIFT_RUN more for each recent shift of the series that
    came back to where it started (a spike every five minutes is a pattern, not a new level each time)."""
    out: F64 = np.minimum(SHIFT_RUN * (1.0 + np.where(np.isfinite(reverts), reverts, 0.0)), SHIFT_RUN_MAX)
    return out


def follow_level(level: F64, spread: F64, count: F64, y: F64) -> tuple[F64, F64, F64]:
    """The post-shift level and mean absolute deviation after one more sample (a plain mean of the first
    1/SHIFT_RATE samples, then forgetting at SHIFT_RATE)."""
    c = count + 1.0
    rate = np.maximum(1.0 / c, SHIFT_RATE)
    known = np.isfinite(level)
    new_level = np.where(known, level + rate * (y - level), y)
    dev = np.abs(y - np.where(known, level, y))
    new_spread = np.where(np.isfinite(spread), spread + rate * (dev - spread), dev)
    return new_level, new_spread, c


def shift_trend(k: F64, sx: F64, sxx: F64, sy: F64, sxy: F64, syy: F64, x_now: F64,
                count: F64 | None = None) -> tuple[F64, F64]:
    """The new level now and its slope per second, from the (weighted) least-squares line through the samples
    since a shift (sums of x = seconds since it, y, x^2, xy, y^2 and of the weights, `k`; y best taken from the
    first sample, so the squares keep the noise's digits, and the level is then on that scale). The slope is 0
    unless there are `SHIFT_TREND_MIN` samples (`count`, default `k`) and it stands `SHIFT_TREND_T` standard
    errors from 0 (with `k` as the sample count: weights below 1 make it larger, so the test errs to no trend):
    a cache refilling after its flush is a climb to forecast, a noisy new plateau is not. NaN level where no
    clear trend is known."""
    with np.errstate(invalid="ignore", divide="ignore"):
        kk = np.maximum(k, 1.0)
        sxx_c = sxx - sx * sx / kk
        b = np.where(sxx_c > 0, (sxy - sx * sy / kk) / np.where(sxx_c > 0, sxx_c, 1.0), 0.0)
        a = sy / kk - b * sx / kk
        rss = np.maximum(syy - a * sy - b * sxy, 0.0)
        se = np.sqrt(rss / np.maximum(k - 2.0, 1.0) / np.where(sxx_c > 0, sxx_c, np.inf))
        n = k if count is None else np.where(count > 0, count, k)       # a state saved without the count: k
        clear = (n >= SHIFT_TREND_MIN) & (np.abs(b) >= SHIFT_TREND_T * se) & np.isfinite(b)
        slope: F64 = np.where(clear, b, 0.0)
        level: F64 = np.where(clear, a + b * x_now, np.nan)
    return level, slope


def still_shifted(active: B, bank_mean: F64, level: F64, jump: F64, scale: F64, since_s: F64, horizons_s: F64) -> B:
    """(k, H): which horizons keep forecasting the post-shift level.

    A horizon leaves once the bank's own forecast there is back within `SHIFT_CAUGHT_UP` of the jump
    (or `SHIFT_SCALES` error scales) of the new level and the forecasts made since the shift have begun
    to be scored there (a horizon's worth of time): its models have learnt the change. After
    `SHIFT_MAX_S` every horizon leaves: a day of data has reached every profile. `level` is (k,) or, with a
    trend since the shift, (k, H): the regime's forecast at each horizon."""
    lev = level[:, None] if level.ndim == 1 else level
    with np.errstate(invalid="ignore"):
        tol = np.fmax(SHIFT_CAUGHT_UP * np.abs(jump), SHIFT_SCALES * np.where(np.isfinite(scale), scale, 0.0))
        caught = (np.abs(bank_mean - lev) <= tol[:, None]) & (since_s[:, None] >= horizons_s[None, :])
        young = since_s < SHIFT_MAX_S
    out: B = active & ~caught & young[:, None]
    return out


def floor_interval(lo: F64, hi: F64, order: NDArray[np.intp]) -> tuple[F64, F64]:
    """(k, H) error quantiles that no shorter horizon contradicts: each side spans at least
    `SHORTER_SHARE` of the widest shorter horizon's (`order` sorts the horizons). Errors do not always
    grow with the horizon (a forecast one step after a spike errs more than one a day ahead), so the
    floor is a share, not the whole; but a 5-minute interval of ±0.1 beside a one-minute one of ±12
    is a claim no forecaster can make. The one-step interval and a share of the mean error were
    tried as floors too: on the NAB series they covered 94 % of outcomes for a nominal 90 %, since
    a series that is exact most of the time justifies a bound on the point forecast."""
    hi_out, lo_out = hi.copy(), lo.copy()
    run_hi = np.full(hi.shape[0], np.nan)
    run_lo = np.full(lo.shape[0], np.nan)
    for j in order.tolist():            # a handful of horizons: columns in order, each a running max/min
        run_hi = np.fmax(run_hi, hi[:, j])
        run_lo = np.fmin(run_lo, lo[:, j])
        hi_out[:, j] = np.fmax(hi[:, j], SHORTER_SHARE * run_hi)
        lo_out[:, j] = np.fmin(lo[:, j], SHORTER_SHARE * run_lo)
    known = np.isfinite(lo) & np.isfinite(hi)             # no interval yet stays none
    return np.where(known, lo_out, np.nan), np.where(known, hi_out, np.nan)


def domain_of(low: F64, high: F64, ymin: F64) -> tuple[F64, F64]:
    """The domain a forecast is clipped to: the metric's own, and not below 0 for a series never negative."""
    lo = np.where(ymin >= 0, np.fmax(low, 0.0), low)
    return lo, high

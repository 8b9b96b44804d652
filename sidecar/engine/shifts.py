"""The bank's level-shift state, followed sample by sample: the detector's run (`regime.track_shift`), the new
level and its spread while a shift lasts, and the memory of shifts that came back.

A forecast after a sudden lasting change of level must follow it at every horizon within a few samples,
not wait for an hour of scores at the new level: while a shift is active, `regime.still_shifted` holds the
horizons it still governs at the new level (the bank's `SHIFT` regime).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.models_base import F64, I64, Slots
from sidecar.engine.onestep import Expectation
from sidecar.engine.regime import (
    SHIFT_CONSISTENT,
    SHIFT_PRIOR,
    SHIFT_RAMP_DT,
    SHIFT_RUN,
    SHIFT_SCALES,
    SHIFT_TAILS,
    SHIFT_TREND_RECENT,
    RunState,
    follow_level,
    shift_run_needed,
    track_shift,
)


def follow_shift(core: Slots, i: I64, t: F64, y: F64, exp: Expectation, ok: NDArray[np.bool_]) -> None:
    """Follow the level shift detector (`regime.py`) with one raw sample per series.

    Only series in a shift, in a run of far samples, or far from their expectation now can change state:
    the others (nearly all of them, nearly always) cost three array operations."""
    c = core
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
    # the settled part's range is kept as float32 offsets from the run's base (a level near 1e12 rounds to 65536
    # in float32; a distance from it keeps its digits)
    base = c["sbase"][i]
    run = RunState(c["srun"][i], c["ssum"][i], c["srlo"][i], c["srhi"][i], base, c["srlen"][i],
                   c["srby"][i].astype(np.float64), base + c["srlo2"][i], base + c["srhi2"][i])
    dt = c["dt"][i]
    up = track_shift(run, y, ref, lower, upper, exp.scale, exp.tail, ok & np.isfinite(ref),
                     shift_run_needed(c["srev"][i]), ramped=np.isfinite(dt) & (dt <= SHIFT_RAMP_DT))
    st = up.state
    c["srun"][i], c["ssum"][i], c["srlo"][i], c["srhi"][i], c["sbase"][i] = st.run, st.total, st.lo, st.hi, st.base
    c["srlen"][i], c["srby"][i] = st.length, st.far_by
    c["srlo2"][i], c["srhi2"][i] = st.late_lo - st.base, st.late_hi - st.base
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
    # the least-squares sums of the samples since the shift (its first one, at x = 0, included), each sample taken
    # from the first one: raw squares of a series near 1e12 leave no digits for a noise of 1, and half of such
    # plateaus read as "clear" trends. The k-th sample since weighs k^SHIFT_TREND_RECENT (the older sums shrink by
    # ((k-1)/k)^SHIFT_TREND_RECENT), so the line bends with a refill that slows down
    fresh = up.started
    more = go_on & np.isfinite(y)
    if fresh.any() or more.any():
        c["sy0"][i] = np.where(fresh, y, c["sy0"][i])
        x = np.where(fresh, 0.0, t - c["st0"][i])
        yy = np.where(np.isfinite(y), y - c["sy0"][i], 0.0)
        # samples in the sums, this one included (a state saved before the count: its unweighted sums' `sk`)
        seen = c["skn"][i].astype(np.float64)
        k = np.where(seen > 0, seen, c["sk"][i]) + 1.0
        keep = ((k - 1.0) / k) ** SHIFT_TREND_RECENT
        c["skn"][i] = np.where(fresh, 1.0, np.where(more, k, c["skn"][i]))
        for name, v in (("sk", 1.0), ("sx", x), ("sxx", x * x), ("sy", yy), ("sxy", x * yy), ("syy", yy * yy)):
            add = np.broadcast_to(np.asarray(v, np.float64), x.shape)
            c[name][i] = np.where(fresh, add, np.where(more, keep * c[name][i] + add, c[name][i]))

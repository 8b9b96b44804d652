"""A twin's samples read for the capacity fit: the level now, series aligned in time, the load it held.

Series come from separate queries and need not share their sample times; the fit pairs every request-rate
sample with the nearest sample of each other metric.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .metrics import F64

#: Samples at the end of a series that define "now" (median, robust to one odd scrape).
NOW_SAMPLES = 5


def now_level(values: F64) -> float:
    """A series' level now: the median of its last `NOW_SAMPLES` samples."""
    return float(np.median(values[-NOW_SAMPLES:]))


def nearest(ref_t: F64, t: F64) -> NDArray[np.int64]:
    """Per reference time, the index of another series' nearest sample within ~1.5 steps, else −1."""
    out = np.full(ref_t.shape, -1, dtype=np.int64)
    if t.size == 0 or ref_t.size == 0:
        return out
    step = float(np.median(np.diff(ref_t))) if ref_t.size > 1 else 60.0
    tol = max(1.0, 1.5 * step)
    idx = np.clip(np.searchsorted(t, ref_t), 1, max(t.size - 1, 1))
    left = np.clip(idx - 1, 0, t.size - 1)
    right = np.clip(idx, 0, t.size - 1)
    pick = np.where(np.abs(t[left] - ref_t) <= np.abs(t[right] - ref_t), left, right)
    ok = np.abs(t[pick] - ref_t) <= tol
    out[ok] = pick[ok]
    return out


def align(ref_t: F64, t: F64, v: F64) -> F64:
    """Values of another series at the reference times (nearest sample within ~1.5 steps), else NaN."""
    pick = nearest(ref_t, t)
    out = np.full(ref_t.shape, np.nan)
    out[pick >= 0] = v[pick[pick >= 0]]
    return out


def sustained_peak(rate: F64, window: int) -> float:
    """The highest rate held for ``window`` consecutive samples (the largest of the rolling minima).

    Throughput a service kept up for that long is throughput it served: its capacity is at least that.
    """
    x = np.asarray(rate, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0
    if x.size < window:
        return float(np.min(x))
    return float(np.max(np.lib.stride_tricks.sliding_window_view(x, window).min(axis=1)))

"""The interval layers of the forecast bank: adaptive width, thin evidence, confidence."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.forecast import ForecastBank
from sidecar.engine.intervals import (
    TRACK_TRUST,
    WIDTH_RANGE,
    YOUNG_SCORES,
    adapt_width,
    blend,
    confidence,
    interval_offsets,
)

T0 = 1_700_000_000.0


def test_the_adaptive_width_stands_still_when_the_miss_rate_is_the_nominal_one() -> None:
    w = np.ones(1)
    for inside in [0.0] + [1.0] * 9:             # one miss in ten, at level 0.9
        w = adapt_width(w, np.array([inside]), 0.9)
    assert abs(w[0] - 1.0) < 1e-12
    for inside in [0.0] * 3 + [1.0] * 7:         # three in ten: wider
        w = adapt_width(w, np.array([inside]), 0.9)
    assert w[0] > 1.2


def test_the_adaptive_width_grows_while_intervals_miss_and_stays_in_its_range() -> None:
    w = np.ones(1)
    widths = []
    for _ in range(200):
        w = adapt_width(w, np.zeros(1), 0.9)
        widths.append(w[0])
    assert widths[9] > 2.0                       # ten misses in a row more than double it
    assert widths[-1] == WIDTH_RANGE[1]
    for _ in range(2000):
        w = adapt_width(w, np.ones(1), 0.9)
    assert w[0] == WIDTH_RANGE[0]


def test_an_unscored_horizon_borrows_the_longest_scored_shorter_one_grown_with_the_root_of_the_horizon() -> None:
    h = np.array([300.0, 900.0, 3600.0])
    qlo = np.array([[-1.0, -2.0, np.nan]])
    qhi = np.array([[1.0, 2.0, np.nan]])
    lo, hi = interval_offsets(qlo, qhi, np.array([-0.1]), np.array([0.1]), h[None, :], np.array([15.0]),
                              np.array([[50.0, 50.0, 0.0]]), h)
    assert lo[0, 2] == -2.0 * 2 and hi[0, 2] == 2.0 * 2          # from 15 min, times sqrt(60/15)
    assert lo[0, 1] == -2.0 and hi[0, 1] == 2.0                   # a well scored horizon keeps its own


def test_a_young_horizon_is_at_least_as_wide_as_the_borrow() -> None:
    h = np.array([300.0, 900.0])
    qlo, qhi = np.array([[-1.0, -0.5]]), np.array([[1.0, 0.5]])
    young = np.array([[50.0, YOUNG_SCORES - 1]])
    lo, hi = interval_offsets(qlo, qhi, np.array([-0.1]), np.array([0.1]), h[None, :], np.array([60.0]), young, h)
    assert lo[0, 1] == pytest.approx(-3.0 ** 0.5) and hi[0, 1] == pytest.approx(3.0 ** 0.5)
    grown = np.array([[50.0, YOUNG_SCORES]])
    lo, hi = interval_offsets(qlo, qhi, np.array([-0.1]), np.array([0.1]), h[None, :], np.array([60.0]), grown, h)
    assert lo[0, 1] == -0.5 and hi[0, 1] == 0.5


def test_confidence_without_evidence_is_one_half_and_follows_the_hit_rate_with_it() -> None:
    c = confidence(np.array([np.nan, 0.9, 0.9]), np.array([0.0, 2.0, 500.0]))
    assert c[0] == 0.5
    assert 0.5 < c[1] < c[2] < 0.9


def test_autocorrelated_errors_are_covered_at_the_nominal_rate() -> None:
    """AR(1) noise: the errors of a 1-hour forecast come in long runs, which quantile tracking alone follows
    late; the width calibrated on measured hits brings the share held to the nominal 0.9."""
    rng = np.random.default_rng(4)
    n = 6000
    y = np.empty(n)
    y[0] = 0.0
    for k in range(1, n):
        y[k] = 0.97 * y[k - 1] + rng.normal()
    bank = ForecastBank([3600.0])
    idx = bank.add(1)
    lo, hi = np.full(n, np.nan), np.full(n, np.nan)
    for k in range(n):
        bank.update(idx, np.array([T0 + 300.0 * k]), y[k:k + 1] + 100.0)
        fc = bank.forecast(idx)
        lo[k], hi[k] = fc.lower[0, 0], fc.upper[0, 0]
    a = y[1000 + 12:] + 100.0
    inside = (a >= lo[1000:-12]) & (a <= hi[1000:-12])
    assert 0.86 <= inside.mean() <= 0.94


def test_the_error_window_gives_split_conformal_order_statistics_of_the_last_64() -> None:
    bank = ForecastBank([300.0])
    bank.add(1)
    rt, c = bank.backtest, bank.core
    one, col = np.array([0]), np.array([0])
    for k in range(4):
        lo, hi = rt._window(one, col, np.array([float(k)]))
        assert np.isnan(lo[0]) and np.isnan(hi[0])                  # fewer than WINDOW_MIN errors: no bounds
    for k in range(4, 200):
        lo, hi = rt._window(one, col, np.array([float(k)]))
    # the last 64 errors are 136..199: order statistics floor(65 x 0.05) = 3 and ceil(65 x 0.95) = 62
    assert lo[0] == 138.0 and hi[0] == 197.0
    assert int(c["epos"][0, 0]) < np.iinfo(np.int16).max


def test_blend_averages_the_tracker_with_the_window_where_the_window_has_bounds() -> None:
    lo, hi = blend(np.array([[-4.0, -4.0]]), np.array([[4.0, 4.0]]), np.array([[-2.0, np.nan]]),
                   np.array([[2.0, np.nan]]))
    assert lo.tolist() == [[-3.0, -4.0]] and hi.tolist() == [[3.0, 4.0]]


def test_a_young_tracker_leaves_the_blend_to_the_window_until_it_has_its_memory() -> None:
    """The tracker starts at twice the first error and comes down slowly: with few scores its share is small."""
    args = (np.array([[-40.0, -40.0, -40.0]]), np.array([[40.0, 40.0, 40.0]]), np.array([[-2.0, -2.0, -2.0]]),
            np.array([[2.0, 2.0, 2.0]]))
    lo, hi = blend(*args, np.array([[0.0, 0.5 * TRACK_TRUST, 2.0 * TRACK_TRUST]]))
    assert hi.tolist() == [[2.0, 0.25 * 40.0 + 0.75 * 2.0, 21.0]] and lo.tolist() == [[-2.0, -11.5, -21.0]]


def test_bounds_narrow_again_soon_after_a_burst() -> None:
    """One burst of tenfold noise: the tracker alone keeps the bounds wide for hours; with the window they are
    back near the quiet width within a few windows."""
    rng = np.random.default_rng(7)
    y = 50.0 + np.r_[rng.normal(size=800), 10.0 * rng.normal(size=40), rng.normal(size=600)]
    bank = ForecastBank([300.0])
    idx = bank.add(1)
    width = []
    for k in range(y.size):
        bank.update(idx, np.array([T0 + 300.0 * k]), y[k:k + 1])
        fc = bank.forecast(idx)
        width.append(float(fc.upper[0, 0] - fc.lower[0, 0]))
    quiet = np.median(width[600:800])
    assert np.median(width[920:970]) < 1.4 * quiet        # the tracker alone: 1.76 x

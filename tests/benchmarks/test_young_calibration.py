"""benchmarks/young_calibration.py: the live case's geometry replayed on NAB windows, and its oracle ceiling."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.bench import load_benchmark

yc = load_benchmark("young_calibration")


def _noise_windows(k: int) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    t = 1_700_000_000.0 + 300.0 * np.arange(yc.ROWS)
    return [("synthetic", f"w{i}", t.copy(), 50.0 + rng.normal(size=yc.ROWS)) for i in range(k)]


def test_the_nab_windows_have_the_live_geometry() -> None:
    if not yc.DATA.is_dir():
        pytest.skip(f"the NAB corpus is not at {yc.DATA} (../shared beside the project)")
    wins = yc.windows(1)
    assert len(wins) >= 20 and all(w[2].size == w[3].size == yc.ROWS for w in wins)


def test_a_replay_scores_forecasts_made_after_the_first_quarter_of_each_window() -> None:
    res = yc.replay(_noise_windows(12))
    rows = yc.score(res, np.ones(12, bool))
    assert [r["horizon"] for r in rows] == list(yc.NAMES)
    five = rows[0]
    assert five["scored"] == 12 * (yc.ROWS - yc.WARM - yc.STEPS[0])
    assert 0.85 <= five["coverage"] <= 0.95             # white noise: the intervals hold their 90 %
    assert 0.0 <= five["in_goal"] <= 1.0 and five["mase"] < 1.0


def test_the_oracle_ceiling_falls_with_the_horizon_for_persistent_series_only() -> None:
    ceiling = yc.oracle(n=400, consistent_n=200)
    walk, noise = ceiling["random walk"]["in_goal"], ceiling["white noise"]["in_goal"]
    assert walk[0] > walk[-1] + 0.3                  # few independent errors per window at 60 minutes
    assert min(noise) > 0.85                         # independent errors: nearly every window is in the goal


def test_the_coverage_interval_holds_the_true_share_in_most_windows_of_a_perfect_forecaster() -> None:
    """The reading `twin-sidecar backtest` gives beside a coverage is itself calibrated: on series whose true
    90 % interval is known, it holds 0.9 in at least ~85 % of the two-hour windows at every horizon."""
    ceiling = yc.oracle(n=200, consistent_n=200)
    for kind, shares in ceiling.items():
        assert min(shares["interval_holds_0.9"]) >= 0.8, (kind, shares)
        assert min(shares["consistent"]) >= min(shares["in_goal"])

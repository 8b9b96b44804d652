"""benchmarks/young_calibration.py: the live case's geometry replayed on NAB windows, and its oracle ceiling."""

from __future__ import annotations

import numpy as np
from helpers.bench import load_benchmark

yc = load_benchmark("young_calibration")


def test_windows_have_the_live_geometry_and_replay_to_calibrated_short_intervals() -> None:
    wins = yc.windows(1)
    assert len(wins) >= 20 and all(w[2].size == w[3].size == yc.ROWS for w in wins)
    res = yc.replay(wins)
    rows = yc.score(res, np.ones(len(wins), bool))
    assert [r["horizon"] for r in rows] == list(yc.NAMES)
    five = rows[0]
    assert five["scored"] > 20 * (yc.ROWS - yc.WARM - yc.STEPS[0]) // 2
    assert 0.85 <= five["coverage"] <= 0.95
    assert 0.0 <= five["in_goal"] <= 1.0 and five["mase"] < 1.0


def test_the_oracle_ceiling_falls_with_the_horizon_for_persistent_series_only() -> None:
    ceiling = yc.oracle(n=400)
    walk, noise = ceiling["random walk"], ceiling["white noise"]
    assert walk[0] > walk[-1] + 0.3                  # few independent errors per window at 60 minutes
    assert min(noise) > 0.85                         # independent errors: nearly every window is in the goal

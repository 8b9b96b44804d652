"""The health formula and drift, vectorised over twins."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.health import (
    CRITICAL_BELOW,
    WARNING_BELOW,
    drift_flags,
    format_score,
    health_band,
    health_scores,
    series_penalty,
)


def test_penalties_and_scores() -> None:
    last = np.array([50.0, 95.0, 85.5, 10.0, 10.0])
    limit = np.array([95.0, 95.0, 95.0, np.nan, 100.0])
    sev = np.array([0, 0, 0, 4, 2])
    pen = series_penalty(last, limit, sev)
    assert pen.tolist() == pytest.approx([0.0, 25.0, 25 * (0.9 - 0.8) / 0.2, 20.0, 5.0])
    twin = np.array([0, 0, 1, 1, -1])                   # the last series belongs to no twin
    h = health_scores(pen, twin, 3)
    assert h.tolist() == pytest.approx([75.0, 100 - 12.5 - 20.0, 100.0])
    assert health_band(np.array([100.0, 69.9, 50.0, 49.9])).tolist() == [0, 1, 1, 2]
    assert health_scores(np.array([80.0, 80.0]), np.array([0, 0]), 1).tolist() == [0.0]   # clipped


def test_drift_is_a_run_not_a_sample() -> None:
    run = np.array([3, 4, 0, 10])
    twin = np.array([0, 1, 2, -1])
    assert drift_flags(run, twin, 3, drift_samples=4).tolist() == [False, True, False]


def test_exactly_50_is_a_warning_and_exactly_70_is_healthy() -> None:
    assert (WARNING_BELOW, CRITICAL_BELOW) == (70.0, 50.0)
    scores = np.array([70.0, 69.99, 50.0, 49.99, 0.0])
    assert health_band(scores).tolist() == [0, 1, 1, 2, 2]


def test_penalties_adding_up_to_50_give_50_not_a_hair_below() -> None:
    """CPU at 95.75 % and memory at 96.25 % of their limits (23.4375 + 26.5625 = 50 points, less 10 for a
    high divergence) add up, in floating point, to 49.99999999999999: a critical score every display shows as
    50. Kept to two decimals it is 50, a warning, as it reads."""
    pen = series_penalty(np.array([95.75, 96.25]), np.array([100.0, 100.0]), np.array([3, 0]))
    assert float(100.0 - pen.sum()) < 50.0                       # the floating-point sum, unrounded
    (score,) = health_scores(pen, np.array([0, 0]), 1)
    assert score == 50.0 and health_band(np.array([score])).tolist() == [1]
    pen70 = series_penalty(np.array([90.0, 94.0]), np.array([100.0, 100.0]), np.array([0, 0]))
    (score70,) = health_scores(pen70, np.array([0, 0]), 1)
    assert score70 == 70.0 and health_band(np.array([score70])).tolist() == [0]


@pytest.mark.parametrize(("score", "text"), [(50.0, "50"), (49.99, "49.99"), (49.6, "49.6"), (67.5, "67.5"),
                                             (70.0, "70"), (0.0, "0"), (100.0, "100")])
def test_a_score_reads_exactly_never_rounded_across_a_bound(score: float, text: str) -> None:
    assert format_score(score) == text

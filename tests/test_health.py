"""The health formula and drift, vectorised over twins."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.health import drift_flags, health_band, health_scores, series_penalty


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

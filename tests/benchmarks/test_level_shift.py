"""Helpers of benchmarks/level_shift.py: when a forecast has followed a level shift, what a false time to limit is."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.bench import load_benchmark

ls = load_benchmark("level_shift")


def test_samples_to_follow_needs_the_first_sample_within_and_the_next_ten() -> None:
    assert ls.samples_to_follow(np.zeros(11), 1.0) == 1
    assert ls.samples_to_follow(np.zeros(10), 1.0) is None                 # too short to stay for 10 more
    err = np.array([5.0, 0.5, 5.0] + [0.5] * 11 + [5.0])
    assert ls.samples_to_follow(err, 1.0) == 4                              # the brief dip at k = 2 does not count
    assert ls.samples_to_follow(err, 1.0, stay=0) == 2
    assert ls.samples_to_follow(np.full(30, 2.0), 1.0) is None
    assert ls.samples_to_follow(np.array([np.nan] + [0.0] * 11), 1.0) == 2  # no forecast is not a close one
    assert ls.samples_to_follow(np.array([1.0] * 11), 1.0) == 1             # the tolerance is inclusive


def test_false_eta_counts_only_when_value_and_short_forecast_are_below_half_the_limit() -> None:
    eta = np.array([60.0, 60.0, 60.0, np.nan, 60.0])
    value = np.array([10.0, 60.0, 10.0, 10.0, 10.0])
    fc = np.array([10.0, 10.0, 60.0, 10.0, np.nan])                         # NaN: no forecast yet, the value counts
    assert ls.false_eta(eta, value, fc, 100.0) == 2


@pytest.mark.parametrize("wave", [0.0, 0.05])
def test_level_steps_once_at_the_end_of_the_warm_up(wave: float) -> None:
    case = ls.Case("x", "cpu_usage", 55.0, 7.0, 15.0)
    step_at = ls.T0 + case.warmup_s
    t = np.array([ls.T0, step_at - 15.0, step_at, step_at + 3600.0])
    y = ls.level(case, t, wave)
    assert y[0] == pytest.approx(55.0)
    assert y[1] == pytest.approx(55.0, rel=wave + 1e-12) and y[2:] == pytest.approx([7.0, 7.0], rel=wave + 1e-12)
    assert {c.dt_s for c in ls.CASES} == {15.0, 300.0} and len(ls.CASES) == 14

"""Divergence percent, severity bands, gates and eligibility."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.diverge import DivergenceDetector, divergence_floor
from sidecar.engine.records import Severity


def test_severity_bands_against_a_manual_expectation() -> None:
    d = DivergenceDetector()
    actual = np.array([45.0, 55.0, 65.0, 80.0, 90.0, 30.0])
    exp = np.full(6, 50.0)
    r = d.compute(actual, exp, exp - 1, exp + 1, np.ones(6, bool), np.full(6, 20.0))
    assert r.percent.tolist() == pytest.approx([10, 10, 30, 60, 80, 40])
    assert r.severity.tolist() == [0, 0, 2, 3, 4, 2]
    assert r.ratio[5] == pytest.approx(-0.4)


def test_learned_expectation_needs_the_sample_outside_its_interval() -> None:
    d = DivergenceDetector()
    actual = np.array([80.0, 80.0, 1.0, np.nan])
    exp = np.array([50.0, 50.0, np.nan, 50.0])
    r = d.compute(actual, exp, np.array([30.0, 45.0, np.nan, 40.0]), np.array([90.0, 55.0, np.nan, 60.0]),
                  np.zeros(4, bool), np.full(4, 20.0))
    assert r.diverging.tolist() == [False, True, False, False]     # inside the interval: noise


def test_zero_expected_gives_a_large_finite_divergence() -> None:
    d = DivergenceDetector()
    r = d.compute(np.array([0.01]), np.array([0.0]), np.array([0.0]), np.array([0.0]), np.ones(1, bool),
                  np.array([100.0]))
    assert np.isfinite(r.percent[0]) and r.severity[0] == 4


def test_eligibility_and_alert_record() -> None:
    d = DivergenceDetector()
    assert d.auto_correct_eligible("cpu_usage", 40.0, manual=False)
    assert not d.auto_correct_eligible("cpu_usage", 60.0, manual=True)
    assert d.auto_correct_eligible("memory_usage", 20.0, manual=True)
    assert not d.auto_correct_eligible("memory_usage", 20.0, manual=False)
    assert not d.auto_correct_eligible("request_latency_ms", 1.0, manual=True)
    assert not d.auto_correct_eligible("error_rate", 1.0, manual=True)
    assert d.severity_of(76) is Severity.CRITICAL and d.severity_of(25) is Severity.LOW
    a = d.alert(alert_id="div_1", twin_id="t", metric="cpu_usage", expected=45.0, actual=90.0, percent=100.0,
                severity_code=4, manual=True, at=0.0)
    assert a.to_dict()["recommended_correction"] == "Scale horizontally or investigate CPU-intensive processes"
    assert a.component == "cpu" and a.severity == "critical" and a.auto_correct_eligible is False


def test_an_expectation_of_zero_is_judged_on_the_series_noise_and_its_limit() -> None:
    """A sparse rate learnt at 0 once read 0.32 and was reported 32 billion percent off (critical)."""
    d = DivergenceDetector()
    actual = np.array([0.32, 0.0004, 0.05, 0.32])
    expected = np.zeros(4)
    floor = divergence_floor(np.array([0.15, 0.0005, np.nan, np.nan]), np.array([np.nan, np.nan, 0.02, np.nan]))
    assert floor.tolist() == pytest.approx([0.6, 0.002, 0.0004, 0.0])
    r = d.compute(actual, expected, expected - 1, expected + 1, np.ones(4, bool), np.full(4, 100.0), floor)
    assert r.percent[:3].tolist() == pytest.approx([0.32 / 0.6 * 100, 0.0004 / 0.002 * 100, 0.05 / 0.0004 * 100])
    assert r.severity[:3].tolist() == [0, 0, 4]          # noise-sized: nothing; 2.5 times the limit: critical
    assert r.percent[3] == pytest.approx(0.32 / 1e-9 * 100)   # nothing known: the old, finite floor


def test_the_floor_never_shrinks_a_divergence_from_a_large_expectation() -> None:
    d = DivergenceDetector()
    floor = divergence_floor(np.array([0.5]), np.array([95.0]))      # 2.0 (4 x 0.5)
    r = d.compute(np.array([80.0]), np.array([50.0]), np.array([49.0]), np.array([51.0]), np.ones(1, bool),
                  np.array([20.0]), floor)
    assert r.percent[0] == pytest.approx(60.0) and r.severity[0] == 3

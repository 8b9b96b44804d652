"""Breach time, trend and risk words, exceedance probability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sidecar.engine.predict import (
    breach_eta,
    exceed_probability,
    risk_text,
    trend_text,
)
from sidecar.units import horizon_words

H = np.array([300.0, 900.0, 1800.0, 3600.0])


def test_breach_eta_interpolates_the_first_crossing() -> None:
    last = np.array([50.0, 96.0, 50.0, 50.0, 50.0])
    mean = np.array([
        [60.0, 80.0, 100.0, 120.0],      # crosses 95 between 15 and 30 min
        [96.0, 96.0, 96.0, 96.0],        # already over
        [50.0, 50.0, 50.0, 50.0],        # never
        [np.nan, np.nan, np.nan, np.nan],
        [60.0, 80.0, 100.0, 120.0],      # no limit
    ])
    limit = np.array([95.0, 95.0, 95.0, 95.0, np.nan])
    eta = breach_eta(last, mean, H, limit)
    assert eta[0] == pytest.approx(900 + (95 - 80) / (100 - 80) * 900)
    assert eta[1] == 0.0
    assert math.isnan(eta[2]) and math.isnan(eta[3]) and math.isnan(eta[4])


def test_words() -> None:
    assert trend_text("cpu_usage", 0.75 / 60, 60.0) == "CPU increasing by 0.75 percentage points per minute"
    assert trend_text("request_latency_ms", -8.2 / 60, 400.0) == "Latency decreasing by 8.2ms per minute"
    assert trend_text("cpu_usage", 0.0001 / 60, 60.0) is None          # not worth saying
    assert trend_text("error_rate", 0.001 / 60, 0.01) == "Error rate increasing by 0.1 percentage points per minute"
    assert risk_text("cpu_usage", 95.0, 1800.0) == "CPU may reach 95% in 30 minutes"
    assert risk_text("request_latency_ms", 1000.0, 3600.0) == "Latency may exceed 1000ms in 60 minutes"
    assert risk_text("cpu_usage", 95.0, 61.0) == "CPU may reach 95% in 2 minutes"
    assert risk_text("cpu_usage", 95.0, 0.0) == "CPU is at or above 95% now"
    assert risk_text("queue_depth", 500.0, 60.0) == "queue_depth may exceed 500 in 1 minute"
    assert horizon_words(300) == "5 minutes" and horizon_words(90) == "90 seconds"


def test_exceed_probability_reads_the_interval_as_normal() -> None:
    mean = np.array([90.0, 95.0, 100.0, 50.0])
    half = 1.6448536269514722 * 5.0
    p = exceed_probability(mean, mean - half, mean + half, np.array([95.0, 95.0, 95.0, np.nan]))
    assert p[0] == pytest.approx(0.1587, abs=1e-3)    # one sigma below
    assert p[1] == pytest.approx(0.5)
    assert p[2] == pytest.approx(0.8413, abs=1e-3)
    assert math.isnan(p[3])

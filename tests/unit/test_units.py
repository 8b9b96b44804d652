"""Durations are parsed, formatted, labelled and worded in one module, and every caller uses it."""

from __future__ import annotations

import pytest

from sidecar import units
from sidecar.alerts import render_rules
from sidecar.backtest import BacktestReport, HorizonReport, format_report
from sidecar.config import parse_config
from sidecar.engine.predict import risk_text


@pytest.mark.parametrize("seconds", [0.5, 1, 15, 90, 300, 900, 3600, 5400, 86400, 90000, 604800, 1.5])
def test_a_formatted_duration_parses_back_to_the_same_seconds(seconds: float) -> None:
    assert units.parse_duration(units.format_duration(seconds)) == seconds


def test_format_duration_is_the_shortest_exact_form_and_zero_is_prometheus_zero() -> None:
    assert [units.format_duration(s) for s in (300, 900, 3600, 90, 0.5)] == ["5m", "15m", "1h", "90s", "500ms"]
    assert [units.format_duration(s) for s in (86400, 604800, 5400)] == ["1d", "1w", "90m"]
    assert units.format_duration(0) == "0s"   # an alert rule's `for: 0s`


def test_the_horizon_label_keeps_minutes_past_an_hour() -> None:
    """Dashboards match ``horizon="60m"`` as text: the label is not the shortest duration form."""
    assert units.horizon_label(3600) == "60m" and units.format_duration(3600) == "1h"


def test_words() -> None:
    assert [units.horizon_words(s) for s in (60, 300, 90)] == ["1 minute", "5 minutes", "90 seconds"]
    assert risk_text("cpu_usage", 95.0, 61.0) == "CPU may reach 95% in 2 minutes"   # the engine's sentences


def test_alert_rules_and_the_backtest_report_write_durations_as_the_rules_do() -> None:
    cfg = parse_config("interval: 90s\ntwins:\n  - name: a\n    metrics: {cpu_usage: 'up'}\n")
    (group,) = render_rules(cfg)["groups"]
    assert {r["for"] for r in group["rules"]} <= {"1m", "2m", "5m", "6m"}
    report = HorizonReport(horizon_s=86400.0, scored=0, mae=0, mae_last=0, mae_linear=0, mase_last=0, mase_linear=0,
                           coverage=0, coverage_low=0, coverage_high=0, independent=0, mean_width=0,
                           mean_confidence=0)
    text = format_report(BacktestReport(samples=1, dropped=0, median_interval_s=15.0, level=0.9,
                                        horizons=[report]))
    assert "too little data for 1d" in text

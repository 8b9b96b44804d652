"""Limits in the rules: a core metric's limit must be one a sample can be under (above 0, a share at most its
whole), refused at load with file:line: key; a custom metric's only needs to be finite (it may be negative)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.config import parse_config
from sidecar.engine.expected import check_limit_value
from sidecar.errors import ConfigError, InputError, LimitError


def rules(limits: str, metrics: str = "{cpu_usage: up, memory_usage: up, request_latency_ms: up, "
                                     "error_rate: up, temperature_c: up, zero: up}") -> str:
    return f"twins:\n  - name: a\n    metrics: {metrics}\n    limits:\n      {limits}\n"


@pytest.mark.parametrize(("limit", "why"), [
    ("cpu_usage: -5", "expected a number > 0, got -5"),
    ("cpu_usage: 0", "expected a number > 0, got 0"),
    ("memory_usage: 0.0", "expected a number > 0"),
    ("request_latency_ms: -100", "expected a number > 0"),
    ("request_latency_ms: 0", "expected a number > 0"),
    ("error_rate: 0", "expected a number > 0"),
    ("error_rate: -0.01", "expected a number > 0"),
    ("cpu_usage: 150", "expected a number <= 100, got 150: cpu_usage is a percentage"),
    ("memory_usage: 100.5", "expected a number <= 100"),
    ("error_rate: 5", "expected a number <= 1, got 5: error_rate is a fraction of the requests (0.05 is 5%)"),
    ("cpu_usage: .inf", "expected a number"),
    ("temperature_c: .nan", "expected a number"),
    ("zero: .inf", "expected a number"),
])
def test_a_limit_no_sample_can_be_under_is_refused_at_its_line(limit: str, why: str) -> None:
    key = limit.split(":")[0]
    with pytest.raises(ConfigError) as info:
        parse_config(rules(limit), path="rules.yaml", env={})
    err = info.value
    assert (err.path, err.line, err.key) == ("rules.yaml", 5, f"twins[0].limits.{key}"), str(err)
    assert why in err.detail
    assert str(err).startswith(f"rules.yaml:5: twins[0].limits.{key}: ")


def test_a_design_era_name_follows_the_rules_of_the_metric_it_stands_for() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(rules("latency_ms: 0", metrics="{latency_ms: up}"), path="rules.yaml", env={})
    assert info.value.key == "twins[0].limits.latency_ms" and "request_latency_ms limit" in info.value.detail


def test_limits_that_can_be_met_load() -> None:
    cfg = parse_config(rules("{cpu_usage: 100, memory_usage: 0.5, request_latency_ms: 5000, error_rate: 1, "
                             "temperature_c: -20, zero: 0}"), path="rules.yaml", env={})
    assert dict(cfg.twins[0].limits) == {"cpu_usage": 100.0, "memory_usage": 0.5, "request_latency_ms": 5000.0,
                                         "error_rate": 1.0, "temperature_c": -20.0, "zero": 0.0}


def test_check_config_refuses_the_reviewers_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`limits: {cpu_usage: -5, zero: 0}` passed check-config; then time-to-breach was 0 forever ("CPU is at or
    above -5% now") while health said 100, and TwinBreachSoon fired forever."""
    p = tmp_path / "rules.yaml"
    p.write_text("prometheus: {url: 'http://127.0.0.1:9'}\ntwins:\n  - name: a\n"
                 "    metrics: {cpu_usage: up, zero: up}\n    limits: {cpu_usage: -5, zero: 0}\n")
    assert main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:5: twins[0].limits.cpu_usage: expected a number > 0, got -5" in err
    p.write_text(p.read_text().replace("cpu_usage: -5", "cpu_usage: 95"))
    assert main(["check-config", str(p)]) == 0                  # the custom metric's 0 is a fine limit


@pytest.mark.parametrize(("key", "value"), [
    ("cpu_usage", -5), ("cpu_usage", 0), ("memory_usage", 120.0), ("error_rate", 2), ("request_latency_ms", 0),
    ("cpu_usage", float("nan")), ("cpu_usage", True), ("cpu_usage", "95"), ("temperature_c", float("inf")),
    ("temperature_c", 10**400),
])
def test_check_limit_value_refuses_with_the_metric_and_value(key: str, value: Any) -> None:
    with pytest.raises(LimitError) as info:
        check_limit_value(key, value)
    assert isinstance(info.value, InputError)
    assert info.value.field == key and info.value.value is value and info.value.detail in str(info.value)


@pytest.mark.parametrize(("key", "value"), [
    ("cpu_usage", 95), ("memory_usage", 100.0), ("error_rate", 0.05), ("request_latency_ms", 1e6),
    ("temperature_c", -40.0), ("queue_depth", 0),
])
def test_check_limit_value_accepts(key: str, value: float) -> None:
    assert check_limit_value(key, value) == float(value)

"""Auto-correction decisions: only small, safe ones are applied; every attempt is recorded."""

from __future__ import annotations

from sidecar.engine.correct import AutoCorrector
from sidecar.engine.diverge import DivergenceDetector


def _alert(metric: str, expected: float, actual: float, manual: bool = True):  # type: ignore[no-untyped-def]
    pct = abs(actual - expected) / expected * 100
    return DivergenceDetector().alert(alert_id="div_x", twin_id="t", metric=metric, expected=expected,
                                      actual=actual, percent=pct, severity_code=1, manual=manual, at=0.0)


def test_memory_small_divergence_updates_the_expected_state() -> None:
    d = AutoCorrector().decide(_alert("memory_usage", 60.0, 72.5), correction_id="c1", enabled=True, at=0.0)
    assert d.record.applied and d.new_expected == 72.5
    assert d.record.details == "Updated expected memory from 60.0% to 72.5%"
    assert d.record.action == "update_expected_state"


def test_cpu_is_a_recommendation_never_applied() -> None:
    d = AutoCorrector().decide(_alert("cpu_usage", 50.0, 65.0), correction_id="c2", enabled=True, at=0.0)
    assert d.record.action == "recommend_scaling" and not d.record.applied and d.new_expected is None
    big = AutoCorrector().decide(_alert("cpu_usage", 50.0, 90.0), correction_id="c3", enabled=True, at=0.0)
    assert not big.record.applied and "not a small divergence" in big.record.reason


def test_latency_errors_and_disabled_twins_need_a_human() -> None:
    for metric in ("request_latency_ms", "error_rate"):
        d = AutoCorrector().decide(_alert(metric, 100.0, 110.0), correction_id="c", enabled=True, at=0.0)
        assert d.record.action == "manual_investigation" and not d.record.applied
        assert "never auto-corrected" in d.record.reason
    off = AutoCorrector().decide(_alert("memory_usage", 60.0, 62.0), correction_id="c", enabled=False, at=0.0)
    assert not off.record.applied and off.new_expected is None and "disabled" in off.record.reason

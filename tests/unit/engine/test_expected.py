"""The engine itself refuses the expected states the API and the rules file refuse (library users included)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sidecar.engine.core import Engine
from sidecar.engine.records import StateHistoryEntry
from sidecar.engine.twin import TwinEngine
from sidecar.errors import ExpectedStateError, InputError, UnknownTwinError

T0 = 1_700_000_000.0


def synced_engine() -> Engine:
    eng = Engine()
    eng.create_twin("svc", at=T0)
    eng.sync("svc", {"cpu_usage": 40.0, "request_latency_ms": 120.0, "queue_depth": 3.0}, at=T0 + 1)
    return eng


@pytest.mark.parametrize(("expected", "field", "needle"), [
    ({"nope_metric": 5.0}, "nope_metric",
     "not one of this twin's metrics (expected one of: cpu_usage, queue_depth, request_latency_ms)"),
    ({"nope_metric": None}, "nope_metric", "not one of this twin's metrics"),
    ({"memory_usage": 50.0}, "memory_usage", "not one of this twin's metrics"),   # a core metric it lacks
    ({"cpu_usage": -5}, "cpu_usage", "expected a number >= 0 (cpu_usage cannot be negative), got -5"),
    ({"latency_ms": -1.5}, "latency_ms",
     "expected a number >= 0 (request_latency_ms cannot be negative), got -1.5"),
    ({"cpu_usage": math.nan}, "cpu_usage", "expected a finite number or null, got a number"),
    ({"cpu_usage": -math.inf}, "cpu_usage", "expected a finite number or null, got a number"),
    ({"cpu_usage": "high"}, "cpu_usage", "expected a finite number or null, got a string"),
    ({"cpu_usage": True}, "cpu_usage", "expected a finite number or null, got a boolean"),
    ({"cpu_usage": 50.0, "typo_usage": 1.0}, "typo_usage", "not one of this twin's metrics"),
])
def test_set_expected_state_refuses_what_the_api_refuses(expected: dict[str, Any], field: str,
                                                         needle: str) -> None:
    eng = synced_engine()
    n = len(eng.get("svc").state_history)
    with pytest.raises(ExpectedStateError) as info:
        eng.set_expected_state("svc", expected, at=T0 + 2)
    exc = info.value
    assert isinstance(exc, InputError)                           # the family library callers already catch
    assert exc.field == field and needle in exc.detail
    assert repr(field) in str(exc) and repr(expected[field]) in str(exc)   # names the metric and the value
    assert eng.get("svc").expected_state is None                 # nothing applied
    assert len(eng.get("svc").state_history) == n                # and no snapshot taken


def test_value_rules_come_before_metric_membership_whatever_the_order() -> None:
    eng = synced_engine()
    with pytest.raises(ExpectedStateError) as info:
        eng.set_expected_state("svc", {"typo": 1.0, "cpu_usage": -5.0}, at=T0 + 2)
    assert info.value.field == "cpu_usage"


def test_an_empty_metric_name_is_refused_as_a_name() -> None:
    eng = synced_engine()
    with pytest.raises(ExpectedStateError) as info:
        eng.set_expected_state("svc", {"": 1.0}, at=T0 + 2)
    assert info.value.field is None and "metric name" in str(info.value)


def test_set_expected_state_still_takes_aliases_custom_negatives_and_clears() -> None:
    eng = synced_engine()
    eng.set_expected_state("svc", {"cpu_usage": 50, "latency_ms": 200.0, "queue_depth": -2.0}, at=T0 + 2)
    assert eng.get("svc").expected_state == {"cpu_usage": 50.0, "request_latency_ms": 200.0, "queue_depth": -2.0}
    eng.set_expected_state("svc", {"queue_depth": None, "latency": None}, at=T0 + 3)
    assert eng.get("svc").expected_state == {"cpu_usage": 50.0}
    eng.set_expected_state("svc", {}, at=T0 + 4)                 # nothing to change: only a snapshot
    assert eng.get("svc").expected_state == {"cpu_usage": 50.0}


def test_null_may_clear_a_key_set_before_its_series_went() -> None:
    eng = Engine()
    eng.create_twin("svc", at=T0, expected={"memory_usage": 60.0})   # set at creation, never seen since
    eng.sync("svc", {"cpu_usage": 40.0}, at=T0 + 1)
    with pytest.raises(ExpectedStateError, match="not one of this twin's metrics"):
        eng.set_expected_state("svc", {"memory_usage": 61.0}, at=T0 + 2)
    eng.set_expected_state("svc", {"memory_usage": None}, at=T0 + 2)
    assert eng.get("svc").expected_state is None


def test_before_the_first_sync_a_twin_has_no_metrics_yet() -> None:
    eng = Engine()
    eng.create_twin("svc", at=T0)
    with pytest.raises(ExpectedStateError, match=r"expected one of: none yet"):
        eng.set_expected_state("svc", {"cpu_usage": 50.0}, at=T0 + 1)


@pytest.mark.parametrize(("expected", "needle"), [
    ({"cpu_usage": -5.0}, "cpu_usage cannot be negative"),
    ({"error_rate": math.inf}, "finite number"),
    ({"cpu_usage": None}, "expected a finite number, got null"),
])
def test_create_twin_refuses_the_same_values(expected: dict[str, Any], needle: str) -> None:
    eng = Engine()
    with pytest.raises(ExpectedStateError, match=needle):
        eng.create_twin("svc", at=T0, expected=expected)
    with pytest.raises(UnknownTwinError):                       # nothing half-created
        eng.get("svc")


def test_create_twin_takes_any_metric_name_its_rules_named() -> None:
    """At creation the twin has no series yet: the names are the caller's (the rules file checked them)."""
    eng = Engine()
    tw = eng.create_twin("svc", at=T0, expected={"latency_ms": 100, "queue_depth": -1.0})
    assert tw.expected_state == {"request_latency_ms": 100.0, "queue_depth": -1.0}


async def test_twin_engine_facade_refuses_the_same() -> None:
    eng = TwinEngine(clock=lambda: T0 + 5)
    twin = await eng.create_twin("svc")
    await eng.sync_twin(twin.twin_id, {"cpu_usage": 40.0}, at=T0 + 1)
    with pytest.raises(ExpectedStateError, match=r"'cpu_usage' = -1\.0: expected a number >= 0"):
        await eng.set_expected_state(twin.twin_id, {"cpu_usage": -1.0})
    with pytest.raises(ExpectedStateError, match=r"'mem' = 3\.0: not one of this twin's metrics"):
        await eng.set_expected_state(twin.twin_id, {"mem": 3.0})
    ok = await eng.set_expected_state(twin.twin_id, {"cpu": 50.0})
    assert ok["expected_state"] == {"cpu_usage": 50.0}


def test_merge_stored_takes_back_a_stored_expected_state_without_its_series() -> None:
    """Taking back the engine's own stored state is not a caller's request: no metric-name check there."""
    eng = Engine()
    tw = eng.create_twin("svc", at=T0)
    definition = {**tw.definition(), "expected_state": {"memory_usage": 70.0}}
    assert eng.merge_stored(definition, at=T0 + 1)
    assert eng.get("svc").expected_state == {"memory_usage": 70.0}
    last: StateHistoryEntry = eng.get("svc").state_history[-1]
    assert "restored from the store" in last.change_reason


def test_the_engine_refuses_a_limit_every_sample_would_breach() -> None:
    """The rules file refuses these (config); a library caller of the engine gets the same rule."""
    from sidecar.errors import LimitError

    eng = Engine()
    with pytest.raises(LimitError, match="'cpu_usage' = -5"):
        eng.create_twin("a", at=0.0, limits={"cpu_usage": -5})
    with pytest.raises(LimitError, match="'memory_usage' = 150"):
        eng.create_twin("a", at=0.0, limits={"memory_usage": 150})
    eng.create_twin("a", at=0.0, limits={"cpu_usage": 90, "temperature": -10})   # a custom metric may be < 0
    with pytest.raises(LimitError, match="'error_rate' = 0"):
        eng.configure("a", at=1.0, limits={"error_rate": 0})
    assert eng.status("a")["limits"] == {"cpu_usage": 90.0, "temperature": -10.0}


def test_merge_stored_is_per_key_after_a_partial_change_during_the_outage() -> None:
    """PUT {"cpu_usage": 77.5} while the store was down replaced the stored {cpu_usage, load1} at the merge:
    load1 was lost. A key changed since the start keeps its newer value, every other key comes back."""
    eng = synced_engine()
    tw = eng.get("svc")
    stored = {**tw.definition(), "expected_state": {"cpu_usage": 60.0, "request_latency_ms": 150.0}}
    eng.set_expected_state("svc", {"cpu_usage": 77.5}, at=T0 + 2)
    assert eng.merge_stored(stored, at=T0 + 3)
    assert eng.get("svc").expected_state == {"cpu_usage": 77.5, "request_latency_ms": 150.0}
    # the merge itself is no change of the caller's: a second merge (a retried read) gives the same
    assert not eng.merge_stored(stored, at=T0 + 4)
    assert eng.get("svc").expected_state == {"cpu_usage": 77.5, "request_latency_ms": 150.0}


def test_merge_stored_keeps_a_key_cleared_during_the_outage_cleared() -> None:
    eng = synced_engine()
    stored = {**eng.get("svc").definition(), "expected_state": {"cpu_usage": 60.0, "request_latency_ms": 150.0}}
    eng.set_expected_state("svc", {"cpu_usage": 55.0}, at=T0 + 2)
    eng.set_expected_state("svc", {"cpu_usage": None}, at=T0 + 3)
    assert eng.merge_stored(stored, at=T0 + 4)
    assert eng.get("svc").expected_state == {"request_latency_ms": 150.0}


def test_merge_stored_after_a_rollback_keeps_the_rolled_back_state_whole() -> None:
    eng = synced_engine()
    stored = {**eng.get("svc").definition(), "expected_state": {"cpu_usage": 60.0, "request_latency_ms": 150.0}}
    snap = eng.set_expected_state("svc", {"queue_depth": 4.0}, at=T0 + 2)
    eng.rollback("svc", snap, at=T0 + 3)
    assert not eng.merge_stored(stored, at=T0 + 4)
    assert eng.get("svc").expected_state is None


def test_merge_stored_with_nothing_changed_takes_the_stored_state_whole() -> None:
    eng = Engine()
    tw = eng.create_twin("svc", at=T0, expected={"cpu_usage": 50.0})
    stored = {**tw.definition(), "expected_state": {"cpu_usage": 65.0, "memory_usage": 70.0}}
    assert eng.merge_stored(stored, at=T0 + 1)
    assert eng.get("svc").expected_state == {"cpu_usage": 65.0, "memory_usage": 70.0}

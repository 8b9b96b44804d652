"""Records: checksums catch any change; design aliases map to metric names."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.engine.records import StateHistoryEntry, SystemMetrics, canonical_metric


def test_snapshot_is_detached_and_verifiable() -> None:
    state = {"expected_state": {"cpu_usage": 50.0}}
    e = StateHistoryEntry.create(snapshot_id="snap_1", twin_id="t", timestamp=1.5, state_snapshot=state,
                                 metrics={"cpu_usage": 40.0, "bad": float("nan")}, health_score=90.0,
                                 change_reason="test")
    state["expected_state"]["cpu_usage"] = 99.0                   # the caller's dict is not the snapshot's
    assert e.state_snapshot["expected_state"]["cpu_usage"] == 50.0
    assert e.verify() and "bad" not in e.metrics
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.health_score = 1.0  # type: ignore[misc]
    tampered = dataclasses.replace(e, change_reason="edited")
    assert not tampered.verify()
    assert e.to_dict()["timestamp"] == "1970-01-01T00:00:01.500000Z"


def test_system_metrics_round_trip_and_aliases() -> None:
    m = SystemMetrics.from_dict({"cpu_usage": 1, "latency_ms": 20, "queue_depth": 3})
    assert m.request_latency_ms == 20.0 and m.custom == {"queue_depth": 3.0}
    assert m.as_dict() == {"cpu_usage": 1.0, "request_latency_ms": 20.0, "queue_depth": 3.0}
    assert canonical_metric("memory") == "memory_usage" and canonical_metric("x") == "x"

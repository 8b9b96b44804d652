"""Events: bounded, queryable by twin, type and time, newest first."""

from __future__ import annotations

from sidecar.engine.monitor import Monitor
from sidecar.engine.records import EventType


def test_query_and_bound() -> None:
    m = Monitor(capacity=3)
    m.emit("a", EventType.HEALTH_WARNING, "warning", "w", 10.0)
    m.emit("b", EventType.DRIFT_DETECTED, "warning", "d", 20.0)
    m.emit("a", EventType.HEALTH_CRITICAL, "critical", "c", 30.0)
    m.emit("a", EventType.HEALTH_RECOVERED, "info", "r", 40.0)       # pushes the first one out
    assert [e.message for e in m.query()] == ["r", "c", "d"]
    assert [e.message for e in m.query(twin="a")] == ["r", "c"]
    assert [e.message for e in m.query(type="drift_detected")] == ["d"]
    assert [e.message for e in m.query(since=25.0)] == ["r", "c"]
    assert [e.message for e in m.query(limit=1)] == ["r"]
    assert len(m.take_pending()) == 4 and m.take_pending() == []
    assert m.query()[0].to_dict()["timestamp"] == "1970-01-01T00:00:40Z"

"""The async facade, walked through the old design's own sequence."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from sidecar.engine.core import Engine
from sidecar.engine.history import MemoryHistoryStore
from sidecar.engine.records import SystemMetrics, SystemType
from sidecar.engine.twin import SYNC_IN_PROGRESS, TwinEngine
from sidecar.engine.view import Outbox
from sidecar.errors import CorruptSnapshotError, UnknownSnapshotError, UnknownTwinError


def clock_from(start: float = 1_700_000_000.0, step: float = 15.0):  # type: ignore[no-untyped-def]
    c = itertools.count()
    return lambda: start + step * next(c)


async def test_design_sequence() -> None:
    eng = TwinEngine(clock=clock_from())
    await eng.initialize()
    twin = await eng.create_twin("production_api", SystemType.API_GATEWAY, {"version": "2.5.0"}, 60)
    assert twin.twin_id.startswith("twin_") and twin.state_history, "creation is snapshotted"

    first = await eng.sync_twin(twin.twin_id, SystemMetrics(cpu_usage=65.0, memory_usage=72.0,
                                                            request_latency_ms=145.0, error_rate=0.005))
    assert first["synced"] and first["accepted"] == 4
    assert first["health_score"] == pytest.approx(100.0)
    assert first["drift_detected"] is False
    assert first["state_predictions"] == 4
    assert first["divergence_alerts"] == []

    for i in range(15):
        r = await eng.sync_twin(twin.twin_id, SystemMetrics(cpu_usage=65.0 + i, memory_usage=72.0,
                                                            request_latency_ms=145.0 + 2 * i, error_rate=0.005))
        assert r["synced"]
    status = eng.get_twin_status(twin.twin_id)
    assert status["metrics_count"] == 16
    assert len(status["state_predictions"]) == 4
    assert status["drift_detected"] is False

    res = await eng.set_expected_state(twin.twin_id, {"cpu_usage": 50.0, "memory_usage": 60.0,
                                                      "latency_ms": 120.0, "error_rate": 0.001})
    assert res["expected_state"]["request_latency_ms"] == 120.0   # design alias accepted
    r = await eng.sync_twin(twin.twin_id, SystemMetrics(cpu_usage=90.0, memory_usage=72.5,
                                                        request_latency_ms=300.0, error_rate=0.01))
    alerts = {a["component"]: a for a in r["divergence_alerts"]}
    assert alerts["cpu"]["severity"] == "critical"            # 80 % over 50
    assert alerts["cpu"]["divergence_percent"] == pytest.approx(80.0)
    assert alerts["latency"]["severity"] == "critical"        # 150 %
    assert alerts["error_rate"]["severity"] == "critical"     # 900 %
    assert alerts["memory"]["severity"] == "low"              # 20.8 % > 15 % threshold
    assert alerts["memory"]["auto_correct_eligible"] is True
    assert alerts["latency"]["auto_correct_eligible"] is False
    # the memory correction was applied: expected memory moved to what is used
    assert eng.get_twin_status(twin.twin_id)["expected_state"]["memory_usage"] == pytest.approx(72.5)
    applied = [c for c in r["corrections"] if c["applied"]]
    assert [c["action"] for c in applied] == ["update_expected_state"]

    snaps = twin.state_history
    rb = await eng.rollback_to_snapshot(twin.twin_id, snaps[0].snapshot_id)
    assert rb["success"] is True
    assert eng.get_twin_status(twin.twin_id)["expected_state"] is None   # the state at creation


async def test_no_sync_reenters() -> None:
    """A second sync of the same twin while one is running is refused, not queued."""

    class SlowStore(MemoryHistoryStore):
        async def write(self, outbox: Outbox) -> None:
            await asyncio.sleep(0.05)
            await super().write(outbox)

    eng = TwinEngine(store=SlowStore(), clock=clock_from())
    twin = await eng.create_twin("svc")
    a, b = await asyncio.gather(eng.sync_twin(twin.twin_id, {"cpu_usage": 10.0}),
                                eng.sync_twin(twin.twin_id, {"cpu_usage": 11.0}))
    assert a["synced"] is True
    assert b == {"error": SYNC_IN_PROGRESS, "twin_id": twin.twin_id, "synced": False}
    # the lock is released afterwards
    c = await eng.sync_twin(twin.twin_id, {"cpu_usage": 12.0})
    assert c["synced"] is True
    assert eng.get_twin_status(twin.twin_id)["metrics_count"] == 2


async def test_simulated_output_is_never_ingested() -> None:
    eng = TwinEngine(clock=clock_from())
    twin = await eng.create_twin("svc")
    for source in ("simulation", "internal"):
        r = await eng.sync_twin(twin.twin_id, {"cpu_usage": 99.0}, source=source)
        assert r["synced"] is False and "not an observation" in r["error"]
    st = eng.get_twin_status(twin.twin_id)
    assert st["metrics_count"] == 0 and st["refused_syncs"] == 2 and st["current_metrics"] == {}
    ok = await eng.sync_twin(twin.twin_id, {"cpu_usage": 40.0}, source="state_sync")
    assert ok["synced"] is True


async def test_rollback_from_store_and_corruption() -> None:
    store = MemoryHistoryStore()
    eng = TwinEngine(Engine(), store=store, clock=clock_from())
    twin = await eng.create_twin("svc")
    first = twin.state_history[0].snapshot_id
    await eng.sync_twin(twin.twin_id, {"cpu_usage": 40.0})   # expected values are for metrics the twin has
    for i in range(120):                      # push the first snapshot out of memory
        await eng.set_expected_state(twin.twin_id, {"cpu_usage": float(i + 1)})
    assert all(s.snapshot_id != first for s in twin.state_history)
    assert len(twin.state_history) == 100
    rb = await eng.rollback_to_snapshot(twin.twin_id, first)
    assert rb["success"] and eng.get_twin_status("svc")["expected_state"] is None
    hist = await eng.history("svc", limit=150)
    # created + 120 changes + the rollback itself; newest first, the store behind memory
    assert len(hist) == 122 and hist[-1].snapshot_id == first
    assert [h.timestamp for h in hist] == sorted((h.timestamp for h in hist), reverse=True)

    with pytest.raises(UnknownSnapshotError):
        await eng.rollback_to_snapshot(twin.twin_id, "snap_nope")
    with pytest.raises(UnknownTwinError):
        await eng.rollback_to_snapshot("nope", first)

    # a tampered snapshot is refused as a rollback target
    entry = twin.state_history[-1]
    object.__setattr__(entry, "health_score", 1.0)
    with pytest.raises(CorruptSnapshotError):
        await eng.rollback_to_snapshot(twin.twin_id, entry.snapshot_id)

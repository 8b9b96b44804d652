"""The engine's batch path and per-twin rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sidecar.engine.core import Engine, stable_twin_id
from sidecar.engine.records import EventType
from sidecar.engine.settings import EngineSettings
from sidecar.errors import InputError, UnknownTwinError

T0 = 1_700_000_000.0


def steady(eng: Engine, name: str, n: int, cpu: float = 40.0, start: float = T0, step: float = 15.0,
           noise: float = 0.5, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    t = start
    for i in range(n):
        t = start + i * step
        eng.sync(name, {"cpu_usage": cpu + noise * rng.standard_normal(), "memory_usage": 50.0}, at=t)
    return t


def test_bad_values_have_defined_behaviour() -> None:
    eng = Engine()
    eng.create_twin("svc", at=T0)
    slots = eng.series_for("svc", ["cpu_usage", "memory_usage", "request_latency_ms", "custom_temp"])
    r = eng.ingest(slots, np.array([np.nan, np.inf, -5.0, -3.0]), at=T0 + 1)
    assert (r.accepted, r.dropped_nonfinite, r.dropped_invalid) == (1, 2, 1)   # negative custom is fine
    assert eng.status("svc")["current_metrics"] == {"custom_temp": -3.0}
    r = eng.ingest(slots[:1], np.array([10.0]), at=T0 + 2)
    assert r.accepted == 1
    r = eng.ingest(slots[:1], np.array([11.0]), at=T0 + 2)                  # repeated timestamp
    assert (r.accepted, r.dropped_stale) == (0, 1)
    r = eng.ingest(slots[:1], np.array([12.0]), at=T0 + 1)                  # backward timestamp
    assert (r.accepted, r.dropped_stale) == (0, 1)
    assert eng.status("svc")["current_metrics"]["cpu_usage"] == 10.0       # nothing stored was lost
    # the same slot twice in one call: the last one wins
    r = eng.ingest(np.r_[slots[0], slots[0]], np.array([20.0, 21.0]), at=T0 + 3)
    assert r.accepted == 1 and eng.status("svc")["current_metrics"]["cpu_usage"] == 21.0
    with pytest.raises(InputError, match="series but"):
        eng.ingest(slots, np.array([1.0]), at=T0 + 4)
    with pytest.raises(InputError, match="unknown or retired"):
        eng.ingest(np.array([999]), np.array([1.0]), at=T0 + 4)
    # missing metrics: a sync with only some metrics leaves the others as they were
    eng.sync("svc", {"memory_usage": 30.0}, at=T0 + 5)
    assert eng.status("svc")["current_metrics"]["cpu_usage"] == 21.0
    with pytest.raises(InputError):
        eng.set_expected_state("svc", {"cpu_usage": float("nan")}, at=T0 + 6)
    with pytest.raises(InputError):
        eng.set_expected_state("svc", {"cpu_usage": "high"}, at=T0 + 6)  # type: ignore[dict-item]
    with pytest.raises(UnknownTwinError):
        eng.sync("nope", {"cpu_usage": 1.0}, at=T0)


def test_twin_ids_are_stable_and_names_unique() -> None:
    eng = Engine()
    t = eng.create_twin("checkout", at=T0)
    assert t.twin_id == stable_twin_id("checkout") == Engine().create_twin("checkout", at=T0).twin_id
    assert eng.get("checkout") is eng.get(t.twin_id)
    with pytest.raises(InputError, match="already exists"):
        eng.create_twin("checkout", at=T0)
    with pytest.raises(InputError, match="system_type"):
        eng.create_twin("other", at=T0, system_type="mainframe")


def test_learned_expectation_flags_a_jump_but_not_noise() -> None:
    eng = Engine()
    eng.create_twin("svc", at=T0)
    t = steady(eng, "svc", 300)
    st = eng.status("svc")
    assert st["metrics"]["cpu_usage"]["expected_source"] == "learned"
    assert st["divergence_alerts"] == []
    assert st["metrics"]["cpu_usage"]["expected"] == pytest.approx(40.0, abs=2.0)
    r = eng.sync("svc", {"cpu_usage": 90.0, "memory_usage": 50.0}, at=t + 15)
    [alert] = r["divergence_alerts"]
    assert alert["metric"] == "cpu_usage" and alert["severity"] == "critical"
    assert alert["expected_source"] == "learned"
    assert eng.status("svc")["metrics"]["cpu_usage"]["anomaly_score"] > 0.9


def test_drift_needs_a_sustained_divergence_and_emits_events() -> None:
    eng = Engine(EngineSettings(drift_samples=4))
    eng.create_twin("svc", at=T0, expected={"cpu_usage": 40.0})
    t = T0
    for i in range(3):
        t = T0 + 15 * (i + 1)
        eng.sync("svc", {"cpu_usage": 70.0}, at=t)
    assert eng.get("svc").drift_detected is False                 # three diverging samples: not yet
    eng.sync("svc", {"cpu_usage": 70.0}, at=t + 15)
    assert eng.get("svc").drift_detected is True
    assert [e.type for e in eng.events(twin="svc", type="drift_detected")] == [EventType.DRIFT_DETECTED]
    eng.sync("svc", {"cpu_usage": 41.0}, at=t + 30)
    assert eng.get("svc").drift_detected is False
    assert eng.events(type="drift_cleared")
    # one alert per episode: the id stays while the divergence lasts
    eng.create_twin("b", at=T0, expected={"cpu_usage": 40.0}, auto_correction=False)
    ids = {eng.sync("b", {"cpu_usage": 90.0}, at=T0 + 15 * k)["divergence_alerts"][0]["alert_id"]
           for k in range(1, 5)}
    assert len(ids) == 1
    corr = eng.get("b").corrections
    assert len(corr) == 1 and not corr[0].applied and "disabled" in corr[0].reason


def test_health_events_and_scores() -> None:
    eng = Engine()
    eng.create_twin("svc", at=T0, limits={"cpu_usage": 100.0, "memory_usage": 100.0})
    eng.sync("svc", {"cpu_usage": 10.0, "memory_usage": 10.0}, at=T0 + 1)
    assert eng.get("svc").health_score == 100.0
    eng.set_expected_state("svc", {"cpu_usage": 10.0, "memory_usage": 10.0}, at=T0 + 2)
    # both at their limit (2 × 25) and both critically divergent (2 × 20): 100 - 90
    eng.sync("svc", {"cpu_usage": 100.0, "memory_usage": 100.0}, at=T0 + 3)
    assert eng.get("svc").health_score == pytest.approx(10.0)
    kinds = [e.type for e in eng.events(twin="svc")]
    assert EventType.HEALTH_CRITICAL in kinds and EventType.DIVERGENCE in kinds
    view = eng.view()
    assert view.twin_names == ("svc",) and view.health[0] == pytest.approx(10.0)
    assert set(view.severity.tolist()) == {4}


def test_risk_factors_and_breach_eta_from_a_rising_trend() -> None:
    eng = Engine()
    eng.create_twin("svc", at=T0, limits={"cpu_usage": 95.0})
    t = T0
    for i in range(440):                                  # +0.75 % per minute for 110 minutes, from 0 %
        t = T0 + 15 * i
        eng.sync("svc", {"cpu_usage": 0.75 * (15 * i) / 60.0}, at=t)
    last = eng.get("svc").current_metrics["cpu_usage"]
    preds = eng.predictions("svc")
    assert [p.horizon_seconds for p in preds] == [300.0, 900.0, 1800.0, 3600.0]
    assert "CPU increasing by 0.75 percentage points per minute" in preds[0].contributing_trends
    eta = eng.status("svc")["metrics"]["cpu_usage"]["breach_eta_seconds"]
    expected_eta = (95.0 - last) / 0.75 * 60.0            # about 17 minutes
    assert eta == pytest.approx(expected_eta, rel=0.15)
    assert preds[0].risk_factors == [] and preds[1].risk_factors == []
    assert any(r.startswith("CPU may reach 95% in ") for r in preds[2].risk_factors)
    assert eng.view().breach_eta_s[0] == pytest.approx(eta)
    rows = eng.drain().predictions[-1]                 # what the store keeps, every 5 minutes per series
    risky = [(h, r) for h, r in zip(rows.horizon_s.tolist(), list(rows.risk_factor), strict=True) if r]
    assert risky and all(r == "CPU may reach 95% in " + f"{int(h // 60)} minutes" for h, r in risky)
    assert rows.failure_probability[rows.horizon_s == 3600.0][0] > 0.5


def test_set_expected_snapshots_before_and_configure() -> None:
    eng = Engine()
    tw = eng.create_twin("svc", at=T0)
    eng.sync("svc", {"cpu_usage": 40.0}, at=T0 + 0.5)     # expected values are for metrics the twin has
    snap = eng.set_expected_state("svc", {"cpu_usage": 50.0}, at=T0 + 1)
    assert snap.state_snapshot["expected_state"] is None          # the state *before* the change
    assert snap.verify() and tw.expected_state == {"cpu_usage": 50.0}
    eng.set_expected_state("svc", {"cpu_usage": None}, at=T0 + 2)  # null clears
    assert tw.expected_state is None
    eng.configure("svc", at=T0 + 3, thresholds={"cpu_usage": 5.0})
    assert tw.state_history[-1].change_reason == "configuration changed"
    n = len(tw.state_history)
    eng.configure("svc", at=T0 + 4, thresholds={"cpu_usage": 5.0})   # no change, no snapshot
    assert len(tw.state_history) == n
    assert eng.status("svc")["thresholds"] == {"cpu_usage": 5.0}


def test_retire_reuses_slots_and_drain_carries_everything() -> None:
    eng = Engine()
    eng.create_twin("a", at=T0)
    eng.create_twin("b", at=T0)
    eng.sync("a", {"cpu_usage": 10.0}, at=T0 + 1)
    out = eng.drain()
    assert {t.source_system for t in out.twins} == {"a", "b"}
    assert len(out.snapshots) == 2 and out.samples and out.samples[0].metric == ("cpu_usage",)
    assert not eng.drain()                                  # drained means empty
    old = eng.series.index[(eng.get("a").twin_id, "cpu_usage")]
    eng.retire_twin("a", at=T0 + 2)
    with pytest.raises(UnknownTwinError):
        eng.get("a")
    eng.create_twin("c", at=T0 + 3)
    slot = int(eng.series_for("c", ["cpu_usage"])[0])
    assert slot == old and math.isnan(eng.series.last_v[slot])    # reused and clean
    assert eng.drain().retired == [stable_twin_id("a")]
    assert eng.view().twin_names == ("b", "c")


def test_backfill_and_restore_resume_forecasts() -> None:
    eng = Engine()
    tw = eng.create_twin("svc", at=T0, expected={"cpu_usage": 40.0})
    times = T0 + 15 * np.arange(240)
    cpu = 40 + 0.05 * np.arange(240)
    eng.backfill({(tw.twin_id, "cpu_usage"): (times, cpu)})
    assert not eng.drain().samples                         # history is not written again
    fc = eng.predictions("svc")[0].metrics["cpu_usage"]
    assert math.isfinite(fc.lower) and fc.predicted > cpu[-1]
    assert eng.events(type="divergence") == []             # backfill never raises alerts

    eng2 = Engine()
    restored = eng2.restore_twin(tw.definition(), snapshots=tw.state_history,
                                 samples={"cpu_usage": eng.history("svc")["cpu_usage"]})
    assert restored.expected_state == {"cpu_usage": 40.0}
    assert [s.snapshot_id for s in restored.state_history] == [s.snapshot_id for s in tw.state_history]
    fc2 = eng2.predictions("svc")[0].metrics["cpu_usage"]
    assert fc2.predicted == pytest.approx(fc.predicted)
    with pytest.raises(InputError, match="malformed"):
        Engine().restore_twin({"twin_id": "x"})


def test_many_twins_in_one_vectorised_tick() -> None:
    eng = Engine()
    n = 50
    slots = []
    for i in range(n):
        eng.create_twin(f"t{i}", at=T0, expected={"cpu_usage": 50.0})
        slots.append(eng.series_for(f"t{i}", ["cpu_usage", "memory_usage"]))
    idx = np.concatenate(slots)
    cpu = np.linspace(40, 100, n)
    vals = np.column_stack([cpu, np.full(n, 30.0)]).ravel()
    r = eng.ingest(idx, vals, at=T0 + 15)
    assert r.accepted == 2 * n
    v = eng.view()
    sev = v.severity[np.array(v.series_metric) == "cpu_usage"]
    pct = np.abs(cpu - 50) / 50 * 100
    want = np.where(pct > 20, 1 + (pct > 25) + (pct > 50) + (pct > 75), 0)
    assert sev.tolist() == want.tolist()


def test_forecast_bounds_never_below_zero_for_metrics_that_never_were() -> None:
    eng = Engine()
    eng.create_twin("svc", at=T0)
    rng = np.random.default_rng(3)
    for i in range(200):     # a noisy request rate near 0 and a custom signed metric
        eng.sync("svc", {"request_rate": abs(2 + 3 * rng.standard_normal()),
                         "balance": -5 + 3 * rng.standard_normal()}, at=T0 + 15 * i)
    v = eng.view()
    rate = np.array(v.series_metric) == "request_rate"
    assert np.nanmin(v.forecast_lower[rate]) >= 0.0
    assert np.nanmin(v.forecast_lower[~rate]) < 0.0          # a signed metric keeps its negative bounds


def test_a_twin_shows_only_the_horizons_it_asked_for() -> None:
    """One bank forecasts the union of horizons; a twin that asked for 5 and 15 minutes exports, reports and
    stores only those, and its time to a limit only within 15 minutes."""
    eng = Engine()
    for name in ("short", "full"):
        eng.create_twin(name, at=T0, limits={"cpu_usage": 95.0})
    eng.set_horizons("short", [300.0, 900.0], at=T0)
    t = T0
    for i in range(440):                                   # +0.75 % per minute: crosses 95 % in about 17 min
        t = T0 + 15 * i
        for name in ("short", "full"):
            eng.sync(name, {"cpu_usage": 0.75 * (15 * i) / 60.0}, at=t)
    view = eng.view()
    rows = {tw: i for i, tw in enumerate(view.series_twin)}
    short, full = rows["short"], rows["full"]
    assert np.isfinite(view.forecast_mean[full]).all() and np.isfinite(view.confidence[full]).all()
    assert np.isfinite(view.forecast_mean[short, :2]).all()
    for a in (view.forecast_mean, view.forecast_lower, view.forecast_upper, view.confidence):
        assert np.isnan(a[short, 2:]).all()                # absent series on /metrics, not zeros
    assert math.isfinite(view.breach_eta_s[full]) and view.breach_eta_s[full] > 900.0
    assert math.isnan(view.breach_eta_s[short]), "beyond the twin's longest horizon"
    assert eng.status("short")["metrics"]["cpu_usage"]["breach_eta_seconds"] is None, "the API agrees"
    assert [p.horizon_seconds for p in eng.predictions("short")] == [300.0, 900.0]
    assert [p.horizon_seconds for p in eng.predictions("full")] == [300.0, 900.0, 1800.0, 3600.0]
    stored = eng.drain().predictions
    tid = eng.get("short").twin_id
    assert {h for r in stored for tw, h in zip(r.twin_id, r.horizon_s.tolist(), strict=True) if tw == tid} \
        == {300.0, 900.0}
    with pytest.raises(InputError, match="120"):
        eng.set_horizons("short", [120.0], at=t)
    eng.set_horizons("short", None, at=t)                  # back to every horizon
    assert np.isfinite(eng.view().forecast_mean[short]).all()


def test_a_metric_fed_nan_keeps_its_last_sample_time_while_the_twin_syncs() -> None:
    """What TwinMetricStale needs: the twin's sync time moves on, the NaN-fed metric's last sample does not."""
    eng = Engine()
    eng.create_twin("svc", at=T0)
    for i in range(10):
        err = 0.01 if i < 4 else float("nan")          # 0/0 once traffic stops
        eng.sync("svc", {"cpu_usage": 40.0 + i, "error_rate": err}, at=T0 + 15 * i)
    v = eng.view()
    last = dict(zip(v.series_metric, np.asarray(v.series_last_sample).tolist(), strict=True))
    assert last["cpu_usage"] == T0 + 135 and last["error_rate"] == T0 + 45
    assert v.last_sync[0] == T0 + 135

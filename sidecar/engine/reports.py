"""What the engine tells about a twin, read from the arrays and never changing them.

A twin's record (``DigitalTwin``) is brought up to date with the arrays on read (:meth:`Reports.refresh_twin`),
not per tick; ``status`` and ``list_status`` are the API's JSON; ``simulate`` hands a twin's history and
forecasts to the what-if simulation, whose result is never ingested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ScenarioError
from .diverge import advice, harmful_side
from .predict import risk_text, trend_text
from .records import DigitalTwin, MetricForecast, Source, StatePrediction, SystemMetrics, TwinEvent, iso
from .regime import REGIMES
from .state import SOURCE_CODES, EngineState
from .tick import Tick
from .twins import TwinRegistry

if TYPE_CHECKING:
    from .whatif import SimulationContext

BANDS = {0: "healthy", 1: "warning", 2: "critical"}
SEVERITIES = ("none", "low", "medium", "high", "critical")


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


class Reports:
    """Read-only views of twins; see the module docstring."""

    def __init__(self, state: EngineState, registry: TwinRegistry, tick: Tick) -> None:
        self.st = state
        self.registry = registry
        self.tick = tick

    def get(self, twin: str) -> DigitalTwin:
        """The twin by id or name, its record brought up to date with the arrays."""
        t = self.registry.lookup(twin)
        self.refresh_twin(t)
        return t

    def twins(self) -> list[DigitalTwin]:
        return [self.get(tid) for tid in list(self.st.twins)]

    def refresh_twin(self, t: DigitalTwin) -> None:
        """Copy the array state of one twin into its record (done on read, not per tick)."""
        st, tr = self.st, self.st.twin_rows
        if st.dirty:
            self.tick.view()
        ts = st.twin_slot[t.twin_id]
        t.health_score = float(tr.health[ts])
        t.drift_detected = bool(tr.drift[ts])
        ls = tr.last_sync[ts]
        t.last_sync = float(ls) if np.isfinite(ls) else None
        t.metrics_count = int(tr.sync_count[ts])
        t.sync_counts = {str(SOURCE_CODES[i]): int(c) for i, c in enumerate(tr.source_count[ts].tolist()) if c}
        code = int(tr.last_source[ts])
        t.last_source = str(SOURCE_CODES[code]) if code >= 0 else None
        t.current_metrics = self.registry.current_metrics(t)
        t.divergence_alerts = [st.alerts[s] for s in sorted(st.series.slots_of(t.twin_id)) if s in st.alerts]
        t.state_predictions = self._predictions(t)

    def _sorted_slots(self, twin_id: str) -> list[int]:
        series = self.st.series
        return sorted(series.slots_of(twin_id), key=lambda s: series.keys[s] or ("", ""))

    def _predictions(self, t: DigitalTwin) -> list[StatePrediction]:
        st, r, series = self.st, self.st.rows, self.st.series
        slots = self._sorted_slots(t.twin_id)
        if not slots:
            return []
        trends: list[str] = []
        for s in slots:
            key = series.keys[s]
            assert key is not None
            txt = trend_text(key[1], float(r.slope[s]), float(series.last_v[s]))
            if txt:
                trends.append(txt)
        names = st.bank.model_names
        preds: list[StatePrediction] = []
        shown = st.horizon_mask.get(t.twin_id)
        for j, h in enumerate(st.horizons_s.tolist()):
            if shown is not None and not shown[j]:
                continue
            values: dict[str, float] = {}
            per: dict[str, MetricForecast] = {}
            confs: list[float] = []
            risks: list[str] = []
            for s in slots:
                key = series.keys[s]
                assert key is not None
                m = float(r.fc_mean[s, j])
                warm = math.isfinite(m)
                if not warm:
                    m = float(series.last_v[s])   # not warm yet: the last value, no bounds
                if not math.isfinite(m):
                    continue
                values[key[1]] = m
                conf = float(r.fc_conf[s, j]) if warm else 0.0
                confs.append(conf if math.isfinite(conf) else 0.0)
                per[key[1]] = MetricForecast(predicted=m, lower=float(r.fc_lower[s, j]),
                                             upper=float(r.fc_upper[s, j]), confidence=confs[-1],
                                             model=names[int(r.fc_model[s, j])] if warm else "last",
                                             regime=REGIMES[int(r.fc_regime[s, j])] if warm else REGIMES[1])
                eta = float(r.eta[s])
                lim = float(r.limit[s])
                if math.isfinite(eta) and math.isfinite(lim) and eta <= h:
                    risks.append(risk_text(key[1], lim, eta))
            preds.append(StatePrediction(
                prediction_time=iso((t.last_sync or t.created_at) + h), horizon_seconds=h,
                predicted_metrics=SystemMetrics.from_dict(values),
                confidence=round(float(np.mean(confs)), 4) if confs else 0.0,
                contributing_trends=list(trends), risk_factors=risks, metrics=per))
        return preds

    def predictions(self, twin: str) -> list[StatePrediction]:
        return list(self.get(twin).state_predictions)

    def status(self, twin: str) -> dict[str, Any]:
        st, r, series = self.st, self.st.rows, self.st.series
        t = self.get(twin)
        tslot = st.twin_slot[t.twin_id]
        metrics: dict[str, Any] = {}
        for slot in self._sorted_slots(t.twin_id):
            key = series.keys[slot]
            assert key is not None
            sev = int(r.severity[slot])
            value, expected = float(series.last_v[slot]), float(r.expected[slot])
            harmful = bool(harmful_side(np.array(value), np.array(expected), r.direction[slot]))
            direction = {1: "up", -1: "down", 0: "both"}[int(r.direction[slot])]
            metrics[key[1]] = {
                "value": _num(value),
                "expected": _num(expected),
                "direction": direction,
                "divergence_harmful": harmful if sev else None,
                "advice": advice(key[1], harmful, value > expected) if sev else None,
                "expected_source": "manual" if np.isfinite(r.manual_expected[slot]) else "learned",
                "divergence_percent": _num(r.div_pct[slot]), "divergence_ratio": _num(r.div_ratio[slot]),
                "severity": str(SEVERITIES[sev]),
                "anomaly_score": _num(r.anomaly_score[slot]), "limit": _num(r.limit[slot]),
                "threshold_percent": _num(r.threshold[slot]),
                "breach_eta_seconds": _num(r.eta[slot]),
                "samples": int(series.count[slot]),
            }
        return {
            "twin_id": t.twin_id, "name": t.source_system, "source_system": t.source_system,
            "system_type": str(t.system_type), "labels": dict(t.labels), "created_at": iso(t.created_at),
            "last_sync": iso(t.last_sync) if t.last_sync is not None else None,
            "last_source": t.last_source, "sync_counts": dict(t.sync_counts), "refused_syncs": t.refused_syncs,
            "metrics_count": t.metrics_count, "health_score": round(t.health_score, 2),
            "health_status": BANDS[int(st.twin_rows.band[tslot])],
            "drift_detected": t.drift_detected, "current_metrics": dict(t.current_metrics),
            "expected_state": dict(t.expected_state) if t.expected_state else None,
            "auto_correction_enabled": t.auto_correction_enabled,
            "thresholds": dict(t.thresholds), "limits": dict(t.limits),
            "metrics": metrics,
            "state_predictions": [p.to_dict() for p in t.state_predictions],
            "active_predictions": sum(1 for p in t.state_predictions if p.risk_factors),
            "active_risk_predictions": int(st.twin_rows.risk_count[tslot]),
            "divergence_alerts": [a.to_dict() for a in t.divergence_alerts],
            "corrections": [c.to_dict() for c in t.corrections[-20:]],
            "snapshots": len(t.state_history),
            "latest_snapshot_id": t.state_history[-1].snapshot_id if t.state_history else None,
        }

    def list_status(self) -> list[dict[str, Any]]:
        st, tr = self.st, self.st.twin_rows
        out = []
        for tid in list(st.twins):
            t = st.twins[tid]
            ts = st.twin_slot[tid]
            ls = tr.last_sync[ts]
            out.append({"twin_id": tid, "name": t.source_system, "system_type": str(t.system_type),
                        "health_score": round(float(tr.health[ts]), 2),
                        "health_status": BANDS[int(tr.band[ts])],
                        "drift_detected": bool(tr.drift[ts]),
                        "last_sync": iso(float(ls)) if np.isfinite(ls) else None,
                        "active_alerts": sum(1 for s in st.series.slots_of(tid) if s in st.alerts),
                        "labels": dict(t.labels)})
        return out

    def history(self, twin: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        t = self.registry.lookup(twin)
        series = self.st.series
        out = {}
        for slot in series.slots_of(t.twin_id):
            key = series.keys[slot]
            if key is not None:
                out[key[1]] = series.history(slot)
        return out

    def events(self, *, twin: str | None = None, type: str | None = None, since: float | None = None,
               limit: int = 1000) -> list[TwinEvent]:
        tid = self.registry.lookup(twin).twin_id if twin is not None else None
        return self.st.monitor.query(twin=tid, type=type, since=since, limit=limit)

    # -------------------------------------------------------------- what-if
    def simulate(self, twin: str, scenario: Mapping[str, Any], *, at: float, seed: int = 0,
                 replicas: int | None = None, workers: int | None = None) -> dict[str, Any]:
        from .whatif import run_scenario

        if not isinstance(scenario, Mapping):
            raise ScenarioError("scenario must be an object with a 'type'")
        ctx = self.context(twin, at=at, replicas=replicas, workers=workers)
        result = run_scenario(ctx, scenario, seed=seed).to_dict()
        result["twin_id"] = ctx.twin_id
        result["source"] = Source.SIMULATION.value   # never ingested: sync refuses this source
        return result

    def context(self, twin: str, *, at: float, replicas: int | None = None,
                workers: int | None = None) -> SimulationContext:
        """What the capacity model works from: the twin's history, forecasts, limits, domains and sizing."""
        from .whatif import CORE_DOMAINS, SimulationContext

        st, r, series = self.st, self.st.rows, self.st.series
        t = self.registry.lookup(twin)
        times: dict[str, np.ndarray] = {}
        values: dict[str, np.ndarray] = {}
        mean: dict[str, np.ndarray] = {}
        lower: dict[str, np.ndarray] = {}
        upper: dict[str, np.ndarray] = {}
        limits: dict[str, float] = {}
        for slot in series.slots_of(t.twin_id):
            key = series.keys[slot]
            assert key is not None
            times[key[1]], values[key[1]] = series.history(slot)
            mean[key[1]], lower[key[1]], upper[key[1]] = (r.fc_mean[slot].copy(), r.fc_lower[slot].copy(),
                                                          r.fc_upper[slot].copy())
            if np.isfinite(r.limit[slot]):
                limits[key[1]] = float(r.limit[slot])
        # only the twin's own metrics: a default limit for a metric it does not report would invent one
        for k, v in st.settings.limits.items():
            if k in times:
                limits.setdefault(k, float(t.limits.get(k, v)))
        domains = {m: CORE_DOMAINS[m] for m in times if m in CORE_DOMAINS}
        domains.update({m: b for m, b in st.metric_rules.get(t.twin_id, ({}, {}))[1].items() if m in times})
        sizing = t.initial_state
        if replicas is None and isinstance(sizing.get("replicas"), int):
            replicas = int(sizing["replicas"])
        if workers is None and isinstance(sizing.get("workers"), int):
            workers = int(sizing["workers"])
        return SimulationContext(twin_id=t.twin_id, now=at, limits=limits, times=times, values=values,
                                 horizons_s=st.horizons_s.copy(), forecast_mean=mean, forecast_lower=lower,
                                 forecast_upper=upper, replicas=replicas, workers=workers, domains=domains)

"""Records the engine hands out: plain dataclasses, JSON-ready via ``to_dict``.

They keep the names of the design this product replaces (``SystemMetrics``,
``StatePrediction``, ``DivergenceAlert`` …) so code written against it keeps
working, but the engine computes on arrays and only builds these at the edge.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: The four metrics every twin knows by name; any other name is a custom metric.
CORE_METRICS: tuple[str, ...] = ("cpu_usage", "memory_usage", "request_latency_ms", "error_rate")

#: Expected-state keys as the old design wrote them -> metric names.
DESIGN_ALIASES: Mapping[str, str] = {
    "cpu": "cpu_usage",
    "memory": "memory_usage",
    "latency_ms": "request_latency_ms",
    "latency": "request_latency_ms",
    "errors": "error_rate",
}

#: Component names used in alerts and correction rules.
COMPONENT_OF: Mapping[str, str] = {
    "cpu_usage": "cpu",
    "memory_usage": "memory",
    "request_latency_ms": "latency",
    "error_rate": "error_rate",
}


def canonical_metric(name: str) -> str:
    """Map a design-era key (``latency_ms``) to its metric name (``request_latency_ms``)."""
    return DESIGN_ALIASES.get(name, name)


def component_of(metric: str) -> str:
    return COMPONENT_OF.get(metric, metric)


class SystemType(StrEnum):
    API_GATEWAY = "api_gateway"
    DATABASE = "database"
    CACHE = "cache"
    QUEUE = "queue"
    WORKER = "worker"
    WEB_SERVICE = "web_service"
    OTHER = "other"


class Source(StrEnum):
    """Where a sync's data came from.

    Only observations (``external``, ``state_sync``) are ever ingested; the
    twin's own output (``internal``) and what-if results (``simulation``) are
    refused, so a twin can never feed on itself.
    """

    EXTERNAL = "external"
    INTERNAL = "internal"
    SIMULATION = "simulation"
    STATE_SYNC = "state_sync"

    @property
    def is_observation(self) -> bool:
        return self in (Source.EXTERNAL, Source.STATE_SYNC)


class Severity(StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def code(self) -> int:
        return SEVERITY_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Severity:
        return SEVERITY_ORDER[int(code)]


SEVERITY_ORDER: tuple[Severity, ...] = (
    Severity.NONE, Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL,
)
SEVERITY_CODES: Mapping[Severity, int] = {s: i for i, s in enumerate(SEVERITY_ORDER)}


def iso(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC string (what the API and records show)."""
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class SystemMetrics:
    """One observation of a service. Percentages are 0–100, error_rate a fraction."""

    cpu_usage: float | None = None
    memory_usage: float | None = None
    request_latency_ms: float | None = None
    error_rate: float | None = None
    custom: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """Metric name -> value, only the metrics present."""
        out: dict[str, float] = {}
        for name in CORE_METRICS:
            v = getattr(self, name)
            if v is not None:
                out[name] = float(v)
        out.update({k: float(v) for k, v in self.custom.items()})
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> SystemMetrics:
        core: dict[str, float] = {}
        custom: dict[str, float] = {}
        for k, v in values.items():
            name = canonical_metric(k)
            (core if name in CORE_METRICS else custom)[name] = float(v)
        return cls(**core, custom=custom)

    def to_dict(self) -> dict[str, Any]:
        return self.as_dict()


@dataclass(slots=True)
class MetricForecast:
    """One metric at one horizon."""

    predicted: float
    lower: float
    upper: float
    confidence: float
    model: str
    regime: str = "cold_start"   # what the forecast rests on: backtested, cold_start or level_shift

    def to_dict(self) -> dict[str, Any]:
        return {"predicted": _num(self.predicted), "lower": _num(self.lower), "upper": _num(self.upper),
                "confidence": _num(self.confidence), "model": self.model, "regime": self.regime}


@dataclass(slots=True)
class StatePrediction:
    """Where the twin is heading at one horizon (the design's record, with bounds)."""

    prediction_time: str
    horizon_seconds: float
    predicted_metrics: SystemMetrics
    confidence: float
    contributing_trends: list[str]
    risk_factors: list[str]
    metrics: dict[str, MetricForecast] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prediction_time": self.prediction_time,
            "horizon_seconds": self.horizon_seconds,
            "predicted_metrics": self.predicted_metrics.to_dict(),
            "confidence": _num(self.confidence),
            "contributing_trends": list(self.contributing_trends),
            "risk_factors": list(self.risk_factors),
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
        }


@dataclass(slots=True)
class DivergenceAlert:
    alert_id: str
    twin_id: str
    component: str
    metric: str
    expected_value: float
    actual_value: float
    divergence_percent: float
    severity: str
    recommended_correction: str
    auto_correct_eligible: bool
    timestamp: str
    expected_source: str = "manual"  # "manual" (set by hand) or "learned" (the twin's own forecast)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id, "twin_id": self.twin_id, "component": self.component,
            "metric": self.metric, "expected_value": _num(self.expected_value),
            "actual_value": _num(self.actual_value), "divergence_percent": _num(self.divergence_percent),
            "severity": self.severity, "recommended_correction": self.recommended_correction,
            "auto_correct_eligible": self.auto_correct_eligible, "timestamp": self.timestamp,
            "expected_source": self.expected_source,
        }


@dataclass(frozen=True, slots=True)
class CorrectionRecord:
    """One auto-correction attempt, applied or not: the audit trail."""

    correction_id: str
    twin_id: str
    alert_id: str
    component: str
    action: str  # recommend_scaling | update_expected_state | manual_investigation
    details: str
    applied: bool
    reason: str
    timestamp: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "correction_id": self.correction_id, "twin_id": self.twin_id, "alert_id": self.alert_id,
            "component": self.component, "action": self.action, "details": self.details,
            "applied": self.applied, "reason": self.reason, "timestamp": self.timestamp,
        }


def checksum_of(payload: Mapping[str, Any]) -> str:
    """SHA-256 over canonical JSON, so the same content always hashes the same."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StateHistoryEntry:
    """An immutable snapshot of a twin's state before a change.

    ``state_snapshot`` holds what a rollback restores (expected state,
    thresholds, limits, auto-correction flag, definition); ``metrics`` the last
    observed values. The checksum covers every other field and is verified
    whenever the entry is read back or used as a rollback target.
    """

    snapshot_id: str
    twin_id: str
    timestamp: float
    state_snapshot: Mapping[str, Any]
    metrics: Mapping[str, float]
    health_score: float
    change_reason: str
    can_rollback_to: bool
    checksum: str

    @staticmethod
    def payload(snapshot_id: str, twin_id: str, timestamp: float, state_snapshot: Mapping[str, Any],
                metrics: Mapping[str, float], health_score: float, change_reason: str,
                can_rollback_to: bool) -> dict[str, Any]:
        return {
            "snapshot_id": snapshot_id, "twin_id": twin_id, "timestamp": round(float(timestamp), 6),
            "state_snapshot": state_snapshot, "metrics": dict(metrics),
            "health_score": round(float(health_score), 6), "change_reason": change_reason,
            "can_rollback_to": bool(can_rollback_to),
        }

    @classmethod
    def create(cls, *, snapshot_id: str, twin_id: str, timestamp: float, state_snapshot: Mapping[str, Any],
               metrics: Mapping[str, float], health_score: float, change_reason: str,
               can_rollback_to: bool = True) -> StateHistoryEntry:
        # round-trip through JSON: a deep, detached copy, and exactly what a store will hand back
        state = json.loads(json.dumps(state_snapshot, sort_keys=True, default=str))
        mets = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
        p = cls.payload(snapshot_id, twin_id, timestamp, state, mets, health_score, change_reason,
                        can_rollback_to)
        return cls(snapshot_id=snapshot_id, twin_id=twin_id, timestamp=p["timestamp"], state_snapshot=state,
                   metrics=mets, health_score=p["health_score"], change_reason=change_reason,
                   can_rollback_to=bool(can_rollback_to), checksum=checksum_of(p))

    def computed_checksum(self) -> str:
        return checksum_of(self.payload(self.snapshot_id, self.twin_id, self.timestamp, self.state_snapshot,
                                        self.metrics, self.health_score, self.change_reason,
                                        self.can_rollback_to))

    def verify(self) -> bool:
        return self.computed_checksum() == self.checksum

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id, "twin_id": self.twin_id, "timestamp": iso(self.timestamp),
            "timestamp_unix": self.timestamp, "state_snapshot": self.state_snapshot,
            "metrics": dict(self.metrics), "health_score": self.health_score,
            "change_reason": self.change_reason, "can_rollback_to": self.can_rollback_to,
            "checksum": self.checksum,
        }


class EventType(StrEnum):
    HEALTH_WARNING = "health_warning"      # health < 70
    HEALTH_CRITICAL = "health_critical"    # health < 50
    HEALTH_RECOVERED = "health_recovered"
    DRIFT_DETECTED = "drift_detected"
    DRIFT_CLEARED = "drift_cleared"
    RISK_WARNING = "risk_warning"          # more than 3 active risk predictions
    DIVERGENCE = "divergence"              # a high/critical divergence alert opened
    CORRECTION = "correction"
    ROLLBACK = "rollback"
    TWIN_CREATED = "twin_created"
    TWIN_RETIRED = "twin_retired"
    TWIN_REFUSED = "twin_refused"          # a new twin past limits.max_twins or limits.max_series


@dataclass(frozen=True, slots=True)
class TwinEvent:
    event_id: str
    twin_id: str
    type: EventType
    severity: str  # info | warning | critical
    message: str
    timestamp: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "twin_id": self.twin_id, "type": str(self.type),
                "severity": self.severity, "message": self.message, "timestamp": iso(self.timestamp),
                "timestamp_unix": self.timestamp, "data": dict(self.data)}


def _num(v: float) -> float | None:
    """JSON has no NaN: missing numbers are null."""
    return float(v) if v is not None and math.isfinite(v) else None


@dataclass(slots=True)
class DigitalTwin:
    """The live state of one twin, as the design exposed it.

    The engine keeps the numeric history of its metrics in shared arrays;
    this object holds what is per twin and small. Flipping
    ``auto_correction_enabled`` takes effect on the next sync.
    """

    twin_id: str
    source_system: str
    system_type: SystemType
    created_at: float
    sync_frequency_seconds: float = 60.0
    initial_state: dict[str, Any] = field(default_factory=dict)
    expected_state: dict[str, float] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)   # divergence % per metric (overrides)
    limits: dict[str, float] = field(default_factory=dict)       # risk limits per metric (overrides)
    auto_correction_enabled: bool = True
    labels: dict[str, str] = field(default_factory=dict)         # e.g. the discovery series' labels
    last_sync: float | None = None
    last_source: str | None = None
    sync_counts: dict[str, int] = field(default_factory=dict)
    refused_syncs: int = 0
    metrics_count: int = 0
    health_score: float = 100.0
    drift_detected: bool = False
    current_metrics: dict[str, float] = field(default_factory=dict)
    state_predictions: list[StatePrediction] = field(default_factory=list)
    divergence_alerts: list[DivergenceAlert] = field(default_factory=list)
    corrections: list[CorrectionRecord] = field(default_factory=list)
    state_history: list[StateHistoryEntry] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source_system

    def definition(self) -> dict[str, Any]:
        """What a rollback restores and a store persists (JSON-ready)."""
        return {
            "twin_id": self.twin_id, "source_system": self.source_system,
            "system_type": str(self.system_type), "created_at": self.created_at,
            "sync_frequency_seconds": self.sync_frequency_seconds, "initial_state": self.initial_state,
            "expected_state": self.expected_state, "thresholds": self.thresholds, "limits": self.limits,
            "auto_correction_enabled": self.auto_correction_enabled, "labels": self.labels,
        }

"""What the engine shows the outside after each tick.

``EngineView`` is an immutable copy of the numbers the exporter and the API
read: it is built once per tick, so a scrape never runs a model and never
blocks on the engine (the prometheus-client custom-collector pattern).
``Outbox`` carries what changed since the last drain to the store, so the
engine itself never does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .records import CorrectionRecord, DigitalTwin, StateHistoryEntry, TwinEvent


@dataclass(frozen=True, slots=True)
class EngineView:
    """Arrays indexed by series (S) and twin (T); NaN where a value is unknown."""

    at: float                         # time of the last tick (unix s)
    horizons_s: np.ndarray            # (H,)
    series_twin: tuple[str, ...]      # (S,) twin name of each series
    series_metric: tuple[str, ...]    # (S,) metric name of each series
    last_value: np.ndarray            # (S,)
    forecast_mean: np.ndarray         # (S, H)
    forecast_lower: np.ndarray        # (S, H)
    forecast_upper: np.ndarray        # (S, H)
    confidence: np.ndarray            # (S, H)
    expected: np.ndarray              # (S,) hand-set or learned expected value
    divergence_ratio: np.ndarray      # (S,) (actual - expected) / expected
    severity: np.ndarray              # (S,) int8: 0 none, 1 low, 2 medium, 3 high, 4 critical
    anomaly: np.ndarray               # (S,) 0..1
    limit: np.ndarray                 # (S,) the metric's limit (NaN: none)
    breach_eta_s: np.ndarray          # (S,) forecast seconds until the limit is crossed (NaN: none within horizons)
    twin_names: tuple[str, ...]       # (T,)
    health: np.ndarray                # (T,) 0..100
    drift: np.ndarray                 # (T,) bool
    last_sync: np.ndarray             # (T,) unix s, NaN: never
    series_last_sample: np.ndarray    # (S,) unix s of each series' last accepted sample, NaN: never
    twins_refused: Mapping[str, int] = field(default_factory=dict)   # limit name -> new twins refused, ever

    @classmethod
    def empty(cls, horizons_s: np.ndarray) -> EngineView:
        h = len(horizons_s)
        z = np.zeros(0)
        return cls(at=float("nan"), horizons_s=horizons_s, series_twin=(), series_metric=(), last_value=z,
                   forecast_mean=np.zeros((0, h)), forecast_lower=np.zeros((0, h)),
                   forecast_upper=np.zeros((0, h)), confidence=np.zeros((0, h)), expected=z,
                   divergence_ratio=z, severity=np.zeros(0, np.int8), anomaly=z, limit=z, breach_eta_s=z,
                   twin_names=(), health=z, drift=np.zeros(0, bool), last_sync=z,
                   series_last_sample=z)


@dataclass(frozen=True, slots=True)
class MetricSamples:
    """Observed samples accepted since the last drain, flat arrays of equal length
    (names as object arrays: building a tuple of strings per tick cost more than the tick's maths)."""

    twin_id: Sequence[str] | np.ndarray
    metric: Sequence[str] | np.ndarray
    timestamp: np.ndarray
    value: np.ndarray


@dataclass(frozen=True, slots=True)
class PredictionRows:
    """Forecasts made at one tick, flat: one row per (series, horizon); names as object arrays."""

    twin_id: Sequence[str] | np.ndarray
    metric: Sequence[str] | np.ndarray
    made_at: np.ndarray
    horizon_s: np.ndarray
    predicted: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    failure_probability: np.ndarray   # P(limit crossed by the horizon), NaN when no limit
    risk_factor: Sequence[str] | np.ndarray   # "" when none


@dataclass(slots=True)
class Outbox:
    """Everything the store must persist, accumulated between drains."""

    twins: list[DigitalTwin] = field(default_factory=list)            # created or definition changed
    retired: list[str] = field(default_factory=list)                  # twin ids retired
    snapshots: list[StateHistoryEntry] = field(default_factory=list)
    corrections: list[CorrectionRecord] = field(default_factory=list)
    events: list[TwinEvent] = field(default_factory=list)
    samples: list[MetricSamples] = field(default_factory=list)
    predictions: list[PredictionRows] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.twins or self.retired or self.snapshots or self.corrections or self.events
                    or self.samples or self.predictions)

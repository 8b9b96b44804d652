"""Engine settings: the numbers an SRE may want to change, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Divergence (percent of the expected value) above which a metric diverges.
DEFAULT_THRESHOLDS: Mapping[str, float] = MappingProxyType({
    "cpu_usage": 20.0, "memory_usage": 15.0, "request_latency_ms": 50.0, "error_rate": 100.0,
})
#: Used for metrics without a threshold of their own (custom metrics).
DEFAULT_CUSTOM_THRESHOLD = 50.0

#: Limits for risk factors, time-to-breach and health (same units as the metric).
DEFAULT_LIMITS: Mapping[str, float] = MappingProxyType({
    "cpu_usage": 95.0, "memory_usage": 90.0, "request_latency_ms": 1000.0, "error_rate": 0.05,
})


#: The direction in which a divergence hurts: "up" (above the expected value), "down" or "both".
DIRECTIONS = ("up", "down", "both")
DEFAULT_DIRECTIONS: Mapping[str, str] = MappingProxyType({
    "cpu_usage": "up", "memory_usage": "up", "request_latency_ms": "up", "error_rate": "up",
})
DEFAULT_CUSTOM_DIRECTION = "both"

#: The values a metric can take: forecasts, bounds and projections stay inside.
DOMAINS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "cpu_usage": (0.0, 100.0), "memory_usage": (0.0, 100.0), "request_latency_ms": (0.0, float("inf")),
    "error_rate": (0.0, 1.0), "request_rate": (0.0, float("inf")),
})


@dataclass(frozen=True, slots=True)
class EngineSettings:
    horizons_s: tuple[float, ...] = (300.0, 900.0, 1800.0, 3600.0)
    # names twin ids apart: replicas sharing one database each keep their own twins ("" = the single-replica ids)
    id_namespace: str = ""
    level: float = 0.9                       # interval coverage of forecast bounds
    model: str = "auto"                      # forecast model: "auto" or a ForecastBank model name
    # metric samples kept in memory per series: 1 h at 15 s, both ends (the service sizes it from limits.history)
    history_size: int = 241
    # new twins are refused (CapacityError) past this many twins, or once this many series exist (None: no limit)
    max_twins: int | None = None
    max_series: int | None = None
    # forecast rows for the store at most this often per series, the series spread evenly over the period
    forecast_store_every_s: float = 300.0
    snapshot_memory: int = 100               # snapshots kept in memory per twin
    correction_memory: int = 100             # correction records kept in memory per twin
    event_buffer: int = 10_000               # monitor events kept in memory
    drift_samples: int = 4                   # consecutive diverging samples that make a drift
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    limits: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    custom_threshold: float = DEFAULT_CUSTOM_THRESHOLD

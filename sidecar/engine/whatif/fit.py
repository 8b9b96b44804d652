"""`CapacityFit`: a twin's fitted capacity model as a record, what the draws, the projection and the words read.

Traffic comes in four states (``CapacityFit.traffic``), because "no rate" and "a rate of 0" mean
opposite things: ``observed`` (a fitted capacity model), ``zero`` (the request rate was observed
and is 0 now: every multiple of it is still 0, so a scenario's traffic changes nothing), and
``no_query`` / ``no_data`` (no throughput metric, or one that returned nothing: the first model,
utilisation assumed proportional to traffic, rates in units of the current load).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: What the fit knows about traffic (see the module docstring).
TRAFFIC_OBSERVED = "observed"
TRAFFIC_ZERO = "zero"
TRAFFIC_NO_QUERY = "no_query"
TRAFFIC_NO_DATA = "no_data"



@dataclass(frozen=True, slots=True)
class CapacityFit:
    """Fitted parameters (point values and their uncertainty) of one twin's capacity model.

    Rates are in req/s when ``has_rate``; otherwise in units of the current load (1.0 = now)
    and the fit is the first model: utilisation scales with traffic. ``candidates`` holds
    every route's capacity and log-sd; the smallest is ``capacity`` (the bottleneck).
    """

    has_rate: bool
    rate_now: float
    servers: int
    quantile: float
    capacity: float                 # K = c·μ, requests/s the pool can serve
    capacity_source: str            # "cpu", "mean_latency", "latency" or "assumed"
    candidates: Mapping[str, tuple[float, float]]   # route -> (capacity, log sd)
    capacity_floor: float           # K can not be below what was served with a stable queue
    variability: float              # k: waiting time relative to M/M/c (0.5 M/D/c … 1 M/M/c)
    variability_range: tuple[float, float]
    cpu_idle: float                 # a (%)
    cpu_slope: float                # b (% per unit rate)
    cpu_cov: tuple[tuple[float, float], tuple[float, float]]
    has_cpu: bool
    error_base: float
    error_slope: float
    memory_slope: float
    memory_slope_sd: float
    now: Mapping[str, float]        # current level of every metric
    trustworthy: bool
    reasons: tuple[str, ...]
    samples: int
    rate_range: tuple[float, float]
    extra: Mapping[str, Any] = field(default_factory=dict)
    traffic: str = TRAFFIC_OBSERVED     # observed, zero, no_query or no_data

    @property
    def zero_traffic(self) -> bool:
        """The request rate was observed and is 0 now: a multiple of it is still 0."""
        return self.traffic == TRAFFIC_ZERO

    @property
    def capacity_known(self) -> bool:
        return self.capacity_source != "unknown"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "enough history with load variation"

    def params(self) -> dict[str, Any]:
        unit = "req/s" if self.has_rate else "x current load"

        def num(x: float, nd: int = 4) -> float | None:
            return round(float(x), nd) if math.isfinite(x) else None

        known = self.capacity_known
        return {
            "traffic": self.traffic,
            "rate_unit": unit,
            "rate_now": num(self.rate_now),
            "servers": self.servers,
            "capacity": num(self.capacity) if known else None,
            "capacity_source": self.capacity_source,
            "capacity_by_route": {k: num(v[0]) for k, v in self.candidates.items()} if known else {},
            "service_time_ms": (num(1000.0 * self.servers / self.capacity)
                                if known and self.capacity > 0 else None),
            "variability": num(self.variability, 3),
            "variability_range": [num(self.variability_range[0], 3), num(self.variability_range[1], 3)],
            "cpu_idle_pct": num(self.cpu_idle) if self.has_cpu else None,
            "cpu_pct_per_unit_rate": num(self.cpu_slope, 6) if self.has_cpu else None,
            "latency_quantile": self.quantile,
            "error_base": num(self.error_base, 6),
            "memory_pct_per_unit_rate": num(self.memory_slope, 6),
            "samples": self.samples,
            "observed_rate_range": [num(self.rate_range[0]), num(self.rate_range[1])],
            **dict(self.extra.items()),
        }


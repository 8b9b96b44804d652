"""The what-if's vocabulary of metrics: the core metrics the capacity model knows, their domains and keys.

Every other module of the what-if reads its metric names from here, so one spelling holds everywhere:
the capacity fit, the draws, the projection and the words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

CPU = "cpu_usage"
MEMORY = "memory_usage"
LATENCY = "request_latency_ms"
#: Optional: mean latency (e.g. rate(..._sum) / rate(..._count) of the same histogram), in ms.
MEAN_LATENCY = "request_latency_mean_ms"
ERRORS = "error_rate"

#: The metrics the capacity model projects (when the twin has them); any other metric follows its forecast.
METRICS = (CPU, MEMORY, LATENCY, ERRORS, MEAN_LATENCY)
BOTTLENECK = {CPU: "cpu", LATENCY: "latency", ERRORS: "errors", MEMORY: "memory", MEAN_LATENCY: "mean_latency"}
#: Built-in domains of the core metrics; `SimulationContext.domains` may narrow them or give a custom metric one.
CORE_DOMAINS: Mapping[str, tuple[float, float]] = {
    CPU: (0.0, 100.0), MEMORY: (0.0, 100.0), LATENCY: (0.0, math.inf), ERRORS: (0.0, 1.0),
    MEAN_LATENCY: (0.0, math.inf)}
#: How the projection of a metric was made (``projected_metrics[m]["model"]``).
BY_CAPACITY = "capacity"
BY_FORECAST = "forecast"


def metric_key(metric: str) -> str:
    """A metric's key in ``breach_probability`` (and a load test's bottleneck): cpu, latency, …, or its name."""
    return BOTTLENECK.get(metric, metric)

"""`SimulationResult`: a scenario's answer, JSON-ready, and how its arrays are summarised for it.

Projections are reported as the point estimate (draw 0) with the 90% interval of the other draws, on at
most `OUTPUT_POINTS` points of the time or multiplier grid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .draws import DRAWS
from .metrics import F64

#: Interval reported for projections and breaking points.
INTERVAL = (0.05, 0.95)
#: Points of each projected series in the JSON result.
OUTPUT_POINTS = 61


@dataclass(slots=True)
class SimulationResult:
    """A scenario's answer; `to_dict` is JSON-ready (no NaN or inf: None), its ``caveat`` first."""

    scenario: dict[str, Any]
    failure_probability: float
    will_likely_fail: bool
    projected_metrics: dict[str, Any]
    time_to_first_breach_s: float | None
    breaking_point: dict[str, Any] | None
    recommendations: list[str]
    recovery_time_s: float | None
    model_fit: dict[str, Any]
    breach_probability: dict[str, float] = field(default_factory=dict)
    recovery_time_interval_s: list[float | None] | None = None
    seed: int = 0
    samples: int = DRAWS
    # what an SRE reads first: why the probability is a guess (None when the fit is trustworthy)
    caveat: str | None = None
    # metric the scenario acts on that the twin does not have -> what of the scenario is therefore not projected
    missing_metrics: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = _clean(asdict(self))
        out = {"caveat": raw.pop("caveat")}
        out.update(raw)
        return out


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return round(x, 6) if math.isfinite(x) else None
    return obj


def interval_of(x: F64, axis: int = 0) -> tuple[F64, F64]:
    """The `INTERVAL` quantiles of the draws along ``axis`` (lower, upper)."""
    lo, hi = np.quantile(x, INTERVAL, axis=axis, method="inverted_cdf")
    return np.asarray(lo), np.asarray(hi)


def output_points(n: int) -> np.ndarray:
    """Indices of at most `OUTPUT_POINTS` evenly spread points of a grid of ``n``, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, OUTPUT_POINTS)).round().astype(int))

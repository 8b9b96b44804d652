"""The what-if's words: numbers, probabilities, metrics and breaking points as an SRE reads them.

Pure formatting, no decisions: what to say lives in `advice.py`.
"""

from __future__ import annotations

import math

from .fit import CapacityFit
from .metrics import CPU, ERRORS, LATENCY, MEAN_LATENCY, MEMORY

LABEL = {CPU: "CPU", MEMORY: "memory", LATENCY: "latency", ERRORS: "error rate", MEAN_LATENCY: "mean latency"}


def fmt(x: float, unit: str = "") -> str:
    """A number with the digits that matter at its size (120, 12.5, 1.25, 0.125), "unbounded" if infinite."""
    if not math.isfinite(x):
        return "unbounded"
    if abs(x) >= 100:
        s = f"{x:.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    elif abs(x) >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3g}"
    return f"{s}{unit}"


def percent(p: float) -> str:
    """A probability in whole percent, except that a small non-zero one is never shown as 0%."""
    if 0.0 < p < 0.005:
        return "<1%"
    return f"{100 * p:.0f}%"


def metric_value(metric: str, x: float) -> str:
    """A metric's value in its unit: ms for latency, % for CPU, memory and the error rate (a ratio)."""
    if metric in (LATENCY, MEAN_LATENCY):
        return fmt(x, " ms")
    if metric == ERRORS:
        return fmt(100.0 * x, "%")
    if metric in (CPU, MEMORY):
        return fmt(x, "%")
    return fmt(x)                   # a custom metric: its own unit


def metric_label(metric: str) -> str:
    """A core metric's name in words ("CPU", "latency"); any other metric's own name."""
    return LABEL.get(metric, metric)


def metric_names(metrics: list[str] | tuple[str, ...]) -> tuple[str, bool]:
    """"load1 and queue_depth", and whether that is one metric."""
    return " and ".join(metric_label(m) for m in metrics), len(metrics) == 1


def interval_text(lo: float, hi: float, tested: float) -> str:
    """A breaking point's interval; an end beyond the multipliers tested is open, not a number."""
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{fmt(lo)}–{fmt(hi)}x"
    if math.isfinite(lo):
        return f"at least {fmt(lo)}x (the upper end lies beyond the {fmt(tested)}x tested)"
    return f"beyond the {fmt(tested)}x tested"


def rate_text(fit: CapacityFit, multiplier: float) -> str:
    """" (≈ 40 req/s)": a multiple of the traffic as a rate, when the twin has one."""
    if fit.has_rate and math.isfinite(multiplier):
        return f" (≈ {fmt(multiplier * fit.rate_now)} req/s)"
    return ""


def quantile_name(fit: CapacityFit) -> str:
    """The latency percentile the fit reads, as "p99"."""
    return f"p{fit.quantile * 100:g}"

"""The rules for an expected state, in one place: the engine applies them, the API and the rules file ask it.

An expected value is what a metric should be; divergence is measured against it. So it must be a finite
number; a core metric (cpu, memory, latency, error rate) cannot be negative (the engine drops such
samples, so such an expectation could never be met); and it must name a metric the twin has — a typo
would otherwise sit there unused, without a word. ``None`` clears a key, and may clear one the twin no
longer has a series for. Design-era keys (``latency_ms``) count as the metric they stand for.

Errors are :class:`~sidecar.errors.ExpectedStateError`: an ``InputError`` that carries the key as given,
the value and the reason, so each caller words its own location (``field 'x'`` in the API, ``file:line: key``
in the rules file) from the fields rather than from the message.

A limit follows the same core-metric rules, stricter (:func:`check_limit_value`, errors
:class:`~sidecar.errors.LimitError`): a core metric's limit must be above 0 — at or below 0 it is breached by
every sample, so the time to breach is 0 forever while health says nothing is wrong — and the shares (CPU and
memory in percent, the error rate a fraction) cannot have a limit above their whole, which no sample reaches
(the simulation and the capacity model read 100% CPU as saturation). A custom metric may be negative (a
temperature), so its limit need only be finite.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from ..errors import ExpectedStateError, LimitError
from .records import CORE_METRICS, canonical_metric


def value_kind(value: Any) -> str:
    """A value's kind as a JSON or YAML user would call it (``a string``, ``a number``)."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:       # an int beyond a float's range
        return False


def check_expected_value(key: Any, value: Any, *, allow_null: bool = True) -> float | None:
    """One entry's value as a float (``None`` clears when ``allow_null``); the metric name is not looked up."""
    if not isinstance(key, str) or not key:
        raise ExpectedStateError("expected a metric name (a non-empty string)", field=None, value=key)
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        wanted = "a finite number or null" if allow_null else "a finite number"
        raise ExpectedStateError(f"expected {wanted}, got {value_kind(value)}", field=key, value=value)
    metric = canonical_metric(key)
    if value < 0 and metric in CORE_METRICS:
        raise ExpectedStateError(f"expected a number >= 0 ({metric} cannot be negative), got {value}",
                                 field=key, value=value)
    return float(value)


def check_expected_values(expected: Mapping[Any, Any], *, allow_null: bool = True) -> dict[str, float | None]:
    """Every entry's value checked (keys kept as given, in order); the first bad one raises."""
    if not isinstance(expected, Mapping):
        raise ExpectedStateError(f"expected an object of metric -> number (null clears), got {value_kind(expected)}",
                                 field=None, value=expected)
    return {key: check_expected_value(key, value, allow_null=allow_null) for key, value in expected.items()}


def check_expected_metrics(expected: Mapping[str, float | None], metrics: Collection[str],
                           current: Collection[str] = ()) -> None:
    """Each key names one of ``metrics`` (the twin's, by canonical name); ``None`` may also clear a key of
    ``current`` (the expected state now)."""
    for key, value in expected.items():
        name = canonical_metric(key)
        if name in metrics or (value is None and name in current):
            continue
        known = ", ".join(sorted(metrics)) or "none yet"
        raise ExpectedStateError(f"not one of this twin's metrics (expected one of: {known})", field=key, value=value)


def canonical_expected(values: Mapping[str, float | None]) -> tuple[dict[str, float], list[str]]:
    """Checked entries split into what to set and what to clear, by canonical metric name."""
    sets = {canonical_metric(k): v for k, v in values.items() if v is not None}
    clears = [canonical_metric(k) for k, v in values.items() if v is None]
    return sets, clears


#: The whole of each core metric that is a share: no sample is above it, so neither may a limit be.
SHARE_MAXIMUM: Mapping[str, tuple[float, str]] = {
    "cpu_usage": (100.0, "a percentage of the CPU the service may use (100 is saturation)"),
    "memory_usage": (100.0, "a percentage of the memory the service may use"),
    "error_rate": (1.0, "a fraction of the requests (0.05 is 5%)"),
}


def check_limit_value(key: str, value: Any) -> float:
    """A limit as a float, or :class:`LimitError` naming ``key`` (as given; checked by its canonical name)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise LimitError(f"expected a finite number, got {value_kind(value)}", field=key, value=value)
    metric = canonical_metric(key)
    if metric not in CORE_METRICS:
        return float(value)
    if value <= 0:
        raise LimitError(f"expected a number > 0, got {value}: a {metric} limit at or below 0 is breached by "
                         "every sample", field=key, value=value)
    whole = SHARE_MAXIMUM.get(metric)
    if whole is not None and value > whole[0]:
        raise LimitError(f"expected a number <= {whole[0]:g}, got {value}: {metric} is {whole[1]}, so a limit "
                         "above it is never reached", field=key, value=value)
    return float(value)

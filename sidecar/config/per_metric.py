"""A twin rule's per-metric mappings: ``expected``, ``thresholds``, ``limits``, ``direction`` and ``bounds``.

Each key must be one of the twin's metrics, and each value obeys the engine's own rules for it, so the file
refuses what the engine would refuse.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import yaml

from ..engine.expected import check_expected_value, check_limit_value
from ..engine.settings import DIRECTIONS, DOMAINS
from ..errors import ExpectedStateError, LimitError
from .reader import Reader, number, scalar, show


def metric_entries(r: Reader, name: str, metrics: Mapping[str, str]) -> Iterator[tuple[Reader, str, yaml.Node]]:
    """(the mapping's reader, metric, value node) of a per-metric mapping of a twin rule, each key checked to be
    one of the twin's metrics (none when the key is absent)."""
    m = r.mapping(name)
    if m is None:
        return
    for metric, (k, v) in m.items.items():
        m.used.add(metric)
        if metric not in metrics:
            raise m.error(k, m.key(metric),
                          f"not one of this twin's metrics (expected one of: {', '.join(sorted(metrics))})")
        yield m, metric, v


def metric_map(r: Reader, name: str, metrics: Mapping[str, str], *, positive: bool,
                expected: bool = False, limit: bool = False) -> dict[str, float]:
    """metric -> number for this twin's metrics; ``expected`` values also by the engine's expected-state
    rules (a core metric's cannot be negative), ``limit`` values by its limit rules (a core metric's above 0,
    a share at most its whole), so the file refuses what those rules refuse."""
    out: dict[str, float] = {}
    for m, metric, v in metric_entries(r, name, metrics):
        out[metric] = number(m, v, m.key(metric), positive=positive)
        if expected:
            try:
                check_expected_value(metric, scalar(v), allow_null=False)
            except ExpectedStateError as exc:
                raise m.error(v, m.key(metric), exc.detail) from exc
        if limit:
            try:
                check_limit_value(metric, scalar(v))
            except LimitError as exc:
                raise m.error(v, m.key(metric), exc.detail) from exc
    return out


def directions(r: Reader, metrics: Mapping[str, str]) -> dict[str, str]:
    """``direction: {metric: up|down|both}``: which way a divergence of each metric hurts."""
    out: dict[str, str] = {}
    for m, metric, v in metric_entries(r, "direction", metrics):
        value = scalar(v)
        if value not in DIRECTIONS:
            raise m.error(v, m.key(metric), f"expected one of {', '.join(DIRECTIONS)}, got {show(v)}")
        out[metric] = str(value)
    return out


def bounds(r: Reader, metrics: Mapping[str, str]) -> dict[str, tuple[float | None, float | None]]:
    """``bounds: {metric: [low, high]}`` for custom metrics (null: open on that side)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for m, metric, v in metric_entries(r, "bounds", metrics):
        if metric in DOMAINS:
            lo, hi = DOMAINS[metric]
            raise m.error(v, m.key(metric), f"{metric} has a fixed domain ({lo:g} to {hi:g}); bounds are for "
                                            "custom metrics")
        if not isinstance(v, yaml.SequenceNode) or len(v.value) != 2:
            raise m.error(v, m.key(metric), f"expected [low, high] (null for an open side), got {show(v)}")
        ends: list[float | None] = []
        for n in v.value:
            x = scalar(n)
            if x is None:
                ends.append(None)
            elif isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(float(x)):
                raise m.error(n, m.key(metric), f"expected a finite number or null, got {show(n)}")
            else:
                ends.append(float(x))
        if ends[0] is not None and ends[1] is not None and not ends[0] < ends[1]:
            raise m.error(v, m.key(metric), f"expected low < high, got [{ends[0]:g}, {ends[1]:g}]")
        out[metric] = (ends[0], ends[1])
    return out

"""The scenario schema: what a what-if may ask, validated field by field, every default filled in.

Three types: ``traffic_spike`` (a multiple of the traffic for a while, optionally ramped),
``failure_injection`` (replicas lost, a slow dependency, an error burst) and ``load_test`` (a ramp up
to ``max_multiplier`` that fails when the service breaks below ``required_multiplier``). Every
problem raises `ScenarioError` naming the field, so the API and the rules file can point at it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.errors import ScenarioError

SCENARIO_TYPES = ("traffic_spike", "failure_injection", "load_test")
#: Fields every scenario type may carry.
COMMON_KEYS = {"type", "name", "description", "seed"}
#: Fields of each scenario type.
SCENARIO_KEYS = {
    "traffic_spike": {"traffic_multiplier", "duration_minutes", "ramp_minutes", "timeout_s"},
    "failure_injection": {"replicas", "replicas_lost", "added_latency_ms", "dependency_latency_ms",
                          "error_rate", "error_burst", "duration_minutes", "traffic_multiplier",
                          "component", "timeout_s"},
    "load_test": {"max_multiplier", "required_multiplier"},
}
#: How far above current traffic a load test requires the service to hold before it counts as a failure.
DEFAULT_REQUIRED_MULTIPLIER = 2.0
#: The highest multiplier a load test ramps to by default.
DEFAULT_MAX_MULTIPLIER = 20.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario with every default filled in."""

    type: str
    multiplier: float = 1.0
    duration_s: float = 0.0
    ramp_s: float = 0.0
    timeout_s: float = 30.0
    replicas: int = 1
    replicas_lost: int = 0
    added_latency_ms: float = 0.0
    error_burst: float = 0.0
    component: str | None = None
    max_multiplier: float = DEFAULT_MAX_MULTIPLIER
    required_multiplier: float = DEFAULT_REQUIRED_MULTIPLIER

    def describe(self) -> dict[str, Any]:
        if self.type == "traffic_spike":
            return {"type": self.type, "traffic_multiplier": self.multiplier,
                    "duration_minutes": self.duration_s / 60, "ramp_minutes": self.ramp_s / 60,
                    "timeout_s": self.timeout_s}
        if self.type == "failure_injection":
            return {"type": self.type, "replicas": self.replicas, "replicas_lost": self.replicas_lost,
                    "added_latency_ms": self.added_latency_ms, "error_rate": self.error_burst,
                    "duration_minutes": self.duration_s / 60, "traffic_multiplier": self.multiplier,
                    "component": self.component, "timeout_s": self.timeout_s}
        return {"type": self.type, "max_multiplier": self.max_multiplier,
                "required_multiplier": self.required_multiplier}


def _number(raw: Mapping[str, Any], key: str, default: float | None, *, low: float, high: float,
            low_open: bool = False, alias: str | None = None) -> float:
    name = key
    value = raw.get(key)
    if value is None and alias is not None and raw.get(alias) is not None:
        name, value = alias, raw.get(alias)
    if value is None:
        if default is None:
            raise ScenarioError(f"scenario field '{key}' is required for type '{raw.get('type')}'", field=key)
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value) if isinstance(value, str) and not isinstance(value, bool) else None
        except ValueError:
            value = None
        if value is None:
            raise ScenarioError(f"scenario field '{name}' must be a number, got {raw.get(name)!r}", field=name)
    try:
        x = float(value)
    except OverflowError:       # an integer beyond any float: out of range like any other huge value
        x = math.inf
    if not math.isfinite(x) or x > high or x < low or (low_open and x <= low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ScenarioError(f"scenario field '{name}' must be {bound} and <= {high:g}, got {value!r}", field=name)
    return x


def _integer(raw: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    # is_integer() rather than int(value): int() of an infinite or NaN float raises (OverflowError/ValueError)
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not value.is_integer()):
        raise ScenarioError(f"scenario field '{key}' must be a whole number, got {value!r}", field=key)
    if not low <= int(value) <= high:
        raise ScenarioError(f"scenario field '{key}' must be between {low} and {high}, got {value!r}", field=key)
    return int(value)


def parse_scenario(raw: Mapping[str, Any], *, replicas: int | None = None) -> Scenario:
    """Validate a scenario mapping; every problem raises `ScenarioError` naming the field."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"scenario must be an object, got {type(raw).__name__}")
    kind = raw.get("type")
    if kind not in SCENARIO_TYPES:
        raise ScenarioError(f"scenario field 'type' must be one of {', '.join(SCENARIO_TYPES)}; got {kind!r}",
                            field="type")
    unknown = sorted(set(raw) - COMMON_KEYS - SCENARIO_KEYS[kind])
    if unknown:
        raise ScenarioError(f"scenario field '{unknown[0]}' is not known for type '{kind}' "
                            f"(known: {', '.join(sorted(SCENARIO_KEYS[kind]))})", field=unknown[0])
    if kind == "traffic_spike":
        return Scenario(
            type=kind,
            multiplier=_number(raw, "traffic_multiplier", None, low=0.0, high=1000.0, low_open=True),
            duration_s=60 * _number(raw, "duration_minutes", 30.0, low=0.0, high=24 * 60, low_open=True),
            ramp_s=60 * _number(raw, "ramp_minutes", 0.0, low=0.0, high=24 * 60),
            timeout_s=_number(raw, "timeout_s", 30.0, low=0.0, high=3600.0, low_open=True),
        )
    if kind == "failure_injection":
        n = _integer(raw, "replicas", replicas or 1, low=1, high=100_000)
        lost = _integer(raw, "replicas_lost", 0, low=0, high=100_000)
        if lost >= n:
            raise ScenarioError(f"scenario field 'replicas_lost' ({lost}) must be less than 'replicas' "
                                f"({n}): losing every replica is a total outage", field="replicas_lost")
        added = _number(raw, "added_latency_ms", 0.0, low=0.0, high=3_600_000.0,
                        alias="dependency_latency_ms")
        burst = _number(raw, "error_rate", 0.0, low=0.0, high=1.0, alias="error_burst")
        if lost == 0 and added == 0 and burst == 0:
            raise ScenarioError("scenario field 'replicas_lost', 'added_latency_ms' or 'error_rate' must "
                                "describe a fault (all are 0)", field="replicas_lost")
        component = raw.get("component")
        if component is not None and not isinstance(component, str):
            raise ScenarioError(f"scenario field 'component' must be a string, got {component!r}",
                                field="component")
        return Scenario(
            type=kind, replicas=n, replicas_lost=lost, added_latency_ms=added, error_burst=burst,
            duration_s=60 * _number(raw, "duration_minutes", 10.0, low=0.0, high=24 * 60, low_open=True),
            multiplier=_number(raw, "traffic_multiplier", 1.0, low=0.0, high=1000.0, low_open=True),
            timeout_s=_number(raw, "timeout_s", 30.0, low=0.0, high=3600.0, low_open=True),
            component=component,
        )
    return _load_test_scenario(raw)


def _load_test_scenario(raw: Mapping[str, Any]) -> Scenario:
    """A load test ramps up to ``max_multiplier`` and fails when it breaks below ``required_multiplier``.

    The required multiple defaults to 2x (or ``max_multiplier`` when that is lower) and may not exceed
    ``max_multiplier``: beyond the ramp the test cannot tell whether the service holds.
    """
    top = _number(raw, "max_multiplier", DEFAULT_MAX_MULTIPLIER, low=1.0, high=1000.0, low_open=True)
    required = _number(raw, "required_multiplier", min(DEFAULT_REQUIRED_MULTIPLIER, top), low=1.0, high=1000.0)
    if required > top:
        raise ScenarioError(f"scenario field 'required_multiplier' ({required:g}) must be at most "
                            f"'max_multiplier' ({top:g}): the load test only ramps that far",
                            field="required_multiplier")
    return Scenario(type="load_test", max_multiplier=top, required_multiplier=required)

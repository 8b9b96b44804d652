"""``scenarios:``: standing what-if scenarios, each checked by the simulation's own parser at load."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from ..errors import ConfigError, ScenarioError
from .maxima import MAX_EVERY_S
from .reader import METRIC_NAME, Reader, kind, scalar
from .records import ScenarioRule, TwinRule

#: Scenario types the engine knows; the simulation validates their parameters.
SCENARIO_TYPES: tuple[str, ...] = ("traffic_spike", "failure_injection", "load_test")


def read_scenario(path: str, node: yaml.Node, index: int, twins: Mapping[str, TwinRule]) -> ScenarioRule:
    r = Reader(path, node, f"scenarios[{index}]")
    twin_names = set(twins)
    name = r.req_str("name")
    if not METRIC_NAME.fullmatch(name):
        raise r.error(r.items["name"][1], r.key("name"), "expected a name like spike_5x (letters, digits, _)")
    twin = r.str_("twin", "all")
    assert twin is not None
    if twin != "all" and twin not in twin_names:
        raise r.error(r.items["twin"][1], r.key("twin"),
                      f"no twin rule named {twin!r} "
                      f"(expected \"all\" or one of: {', '.join(sorted(twin_names))})")
    every = r.duration("every", 300.0, maximum=MAX_EVERY_S)
    sn = r.node_of("scenario")
    if sn is None:
        raise r.error(r.node, r.key("scenario"), "required: a mapping with a `type` and its parameters")
    sr = Reader(path, sn, r.key("scenario"))
    stype = sr.req_str("type")
    if stype not in SCENARIO_TYPES:
        raise sr.error(sr.items["type"][1], sr.key("type"),
                       f"expected one of {', '.join(SCENARIO_TYPES)}, got {stype!r}")
    params: dict[str, Any] = {"type": stype}
    for pname, (_, v) in sr.items.items():
        if pname == "type":
            continue
        value = scalar(v)
        if not isinstance(v, yaml.ScalarNode) or value is None:
            raise sr.error(v, sr.key(pname), f"expected a number, string or boolean, got {kind(v)}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2 ** 63:
            raise sr.error(v, sr.key(pname), f"expected a number of a sensible size, got {len(str(value))} digits")
        params[pname] = value
    _check_scenario(sr, params, [t for t in twins.values() if twin in ("all", t.name)])
    r.finish()
    return ScenarioRule(name=name, twin=twin, every_s=every, scenario=MappingProxyType(params),
                        line=node.start_mark.line + 1)


def _check_scenario(sr: Reader, params: Mapping[str, Any], rules: list[TwinRule]) -> None:
    """Validate the parameters with the simulation's own parser, so a typo or a bad value fails here
    rather than every round (the scheduler would log ``standing scenario failed`` and export nothing).

    Checked once on its own (unknown keys, ranges), then for each twin rule it runs on, with that rule's
    ``replicas``, since whether ``replicas_lost`` leaves a replica standing depends on the twin.
    """
    from ..engine.whatif.scenario import parse_scenario  # late: only when a rules file has a scenario

    def fail(exc: ScenarioError, context: str = "") -> ConfigError:
        # the key the error names, from the error itself (a key the file does not have: the whole mapping)
        field = exc.field if exc.field in sr.items else None
        node = sr.items[field][1] if field is not None else sr.node
        key = sr.key(field) if field is not None else sr.where
        return sr.error(node, key, f"{exc}{context}")

    try:   # more replicas than replicas_lost can name: only what is wrong whatever the twin shows here
        parse_scenario(params, replicas=100_001)
    except ScenarioError as exc:
        raise fail(exc) from exc
    for rule in rules:
        try:
            parse_scenario(params, replicas=rule.replicas)
        except ScenarioError as exc:
            raise fail(exc, f" (for twin rule {rule.name!r}, replicas: {rule.replicas or 1})") from exc

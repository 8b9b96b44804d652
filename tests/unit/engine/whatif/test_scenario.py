"""A scenario error carries the key at fault, and the rules file points at that key from the field, not the text."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from sidecar.config import parse_config
from sidecar.engine.whatif import parse_scenario
from sidecar.errors import ConfigError, ScenarioError

REFUSED: list[tuple[dict[str, Any], int | None, str | None]] = [
    ({"type": "meteor"}, None, "type"),
    ({"type": "traffic_spike", "traffic_multipler": 5}, None, "traffic_multipler"),
    ({"type": "traffic_spike"}, None, "traffic_multiplier"),                        # required, absent
    ({"type": "traffic_spike", "traffic_multiplier": "lots"}, None, "traffic_multiplier"),
    ({"type": "traffic_spike", "traffic_multiplier": 5, "ramp_minutes": -1}, None, "ramp_minutes"),
    ({"type": "failure_injection", "replicas": 2.5, "replicas_lost": 1}, None, "replicas"),
    ({"type": "failure_injection", "replicas": 0, "replicas_lost": 1}, None, "replicas"),
    ({"type": "failure_injection", "replicas_lost": 1}, 1, "replicas_lost"),         # every replica lost
    ({"type": "failure_injection", "replicas": 3}, None, "replicas_lost"),           # no fault at all
    ({"type": "failure_injection", "replicas": 3, "replicas_lost": 1, "dependency_latency_ms": -1}, None,
     "dependency_latency_ms"),                                                         # the alias as written
    ({"type": "failure_injection", "replicas": 3, "replicas_lost": 1, "component": 7}, None, "component"),
    ({"type": "load_test", "max_multiplier": 1}, None, "max_multiplier"),
]


@pytest.mark.parametrize(("raw", "replicas", "field"), REFUSED)
def test_every_refusal_names_its_field(raw: dict[str, Any], replicas: int | None, field: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(raw, replicas=replicas)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)                   # the message still names it too


def test_a_scenario_that_is_not_a_mapping_has_no_field() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario([1, 2])  # type: ignore[arg-type]
    assert info.value.field is None


def rules(body: str) -> str:
    return ("twins:\n  - name: a\n    metrics: {c: up}\n    replicas: 3\nscenarios:\n  - name: s\n    scenario:\n"
            + textwrap.indent(body, "      "))


@pytest.mark.parametrize(("body", "line", "key"), [
    ("type: traffic_spike\ntraffic_multiplier: 5\nramp_minutes: -1\n", 10, "scenarios[0].scenario.ramp_minutes"),
    ("type: failure_injection\nreplicas_lost: 1\ndependency_latency_ms: -1\n", 10,
     "scenarios[0].scenario.dependency_latency_ms"),
    ("type: failure_injection\nreplicas_lost: 3\n", 9, "scenarios[0].scenario.replicas_lost"),   # for rule a
    ("type: traffic_spike\nduration_minutes: 30\n", 8, "scenarios[0].scenario"),   # required key: the mapping
])
def test_the_rules_file_maps_the_field_whatever_the_wording(monkeypatch: pytest.MonkeyPatch, body: str,
                                                            line: int, key: str) -> None:
    """The real simulation parser refuses; its message is reworded so it names nothing: the key still holds."""
    monkeypatch.setattr(ScenarioError, "__str__", lambda self: "this value will not do")
    with pytest.raises(ConfigError) as info:
        parse_config(rules(body), path="rules.yaml", env={})
    err = info.value
    assert (err.line, err.key) == (line, key), str(err)
    assert "this value will not do" in err.detail

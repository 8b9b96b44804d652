"""``scale_quantile``: the forecast quantile a twin's replica recommendation is sized for, read with the other
replica keys and refused, with its line, where it would size for less than the expected traffic."""

from __future__ import annotations

import pytest

from sidecar.config import parse_config
from sidecar.engine.replicas import DEFAULT_QUANTILE
from sidecar.errors import ConfigError

RULE = ("twins:\n  - name: a\n    metrics: {request_latency_ms: up}\n    request_rate: up\n    workers: 4\n"
        "    limits: {request_latency_ms: 2000}\n")


def test_the_quantile_defaults_to_the_cross_validated_one_and_is_read_when_given() -> None:
    default = parse_config(RULE + "    max_replicas: 10\n", path="rules.yaml", env={}).twins[0]
    assert default.scale_quantile == DEFAULT_QUANTILE
    given = parse_config(RULE + "    max_replicas: 10\n    scale_quantile: 0.95\n", path="rules.yaml", env={}).twins[0]
    assert given.scale_quantile == 0.95


@pytest.mark.parametrize(("extra", "line", "expected"), [
    ("    max_replicas: 10\n    scale_quantile: 0.3\n", 8, "expected at least 0.5"),
    ("    max_replicas: 10\n    scale_quantile: 1\n", 8, "expected at most 0.99"),
    ("    scale_quantile: 0.8\n", 7, "only meaningful with `max_replicas`"),
])
def test_a_quantile_below_the_point_forecast_or_without_max_replicas_is_refused(extra: str, line: int,
                                                                                expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(RULE + extra, path="rules.yaml", env={})
    assert (info.value.line, info.value.key) == (line, "twins[0].scale_quantile"), str(info.value)
    assert expected in str(info.value)

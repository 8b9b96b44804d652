"""The rules file parses each PromQL query once: the loop guard's parse tree is handed on for the result type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import promql_parser
import pytest

from sidecar.config import parse_config
from sidecar.errors import ConfigError

RULES = """\
twins:
  - name: a
    discover: 'up{job="shop"}'
    metrics:
      cpu_usage: 'rate(process_cpu_seconds_total{instance="$instance"}[1m])'
      memory_usage: 'process_resident_memory_bytes{instance="${instance}"}'
    request_rate: 'sum(rate(http_requests_total{instance="$instance"}[1m]))'
  - name: b
    metrics: {c: 'scalar(up)'}
"""


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the real parser is handed during the test."""
    seen: list[str] = []
    real: Callable[[str], Any] = promql_parser.parse

    def counting(text: str) -> Any:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(promql_parser, "parse", counting)
    return seen


def test_each_query_is_parsed_once(parsed: list[str]) -> None:
    cfg = parse_config(RULES, env={})
    assert len(parsed) == 5 == len(set(parsed))          # discover, two metrics, request_rate, c
    assert cfg.twins[0].discover == 'up{job="shop"}'


@pytest.mark.parametrize(("query", "problem"), [
    ("'\"hello\"'", "got a string"),
    ("'up[5m]'", "got a range vector"),
    ("'rate(up{i=\"$instance\"}[1m])[5m:1m]'", "got a range vector"),
])
def test_the_result_type_is_still_judged_from_that_one_parse(parsed: list[str], query: str, problem: str) -> None:
    text = f"twins:\n  - name: a\n    discover: up\n    metrics:\n      c: {query}\n"
    with pytest.raises(ConfigError, match=problem):
        parse_config(text, path="r.yaml", env={})
    assert len(parsed) == 2                              # discover and c, once each

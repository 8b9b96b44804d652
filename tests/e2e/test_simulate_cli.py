"""Review 2, against a real Prometheus: a simulation at zero traffic does not predict failure, and the CLI's
warnings carry their fields (which twin, which metric, what error)."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.prom import require_prometheus

from sidecar.cli import main
from sidecar.testing import PrometheusServer, openmetrics_history

STEP = 15.0
POINTS = 240


@pytest.fixture(scope="module")
def idle_prom() -> Iterator[str]:
    """A Prometheus holding the last hour of an idle service: a request counter that never moves (its rate is
    0), CPU at ~30%, and two series of one metric (a query matching them one-to-one fails at run time)."""
    require_prometheus()
    start = math.floor((time.time() - STEP * (POINTS + 2)) / STEP) * STEP
    ts = [start + i * STEP for i in range(POINTS)]
    history = openmetrics_history({
        'idle_requests_total{job="idle"}': [(t, 1234.0) for t in ts],
        'idle_cpu_percent{job="idle"}': [(t, 30.0 + 0.3 * math.sin(i / 7)) for i, t in enumerate(ts)],
        'idle_latency_ms{job="idle"}': [(t, 12.0 + 0.2 * math.cos(i / 5)) for i, t in enumerate(ts)],
        'idle_pair{k="a"}': [(t, 1.0) for t in ts],
        'idle_pair{k="b"}': [(t, 2.0) for t in ts],
    })
    with PrometheusServer(history=history) as prom:
        yield prom.url


def _rules(tmp_path: Path, url: str, extra_metric: str = "") -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(f"""
prometheus: {{url: "{url}"}}
interval: 15s
backfill: 1h
storage: {{path: "{tmp_path / 'db.sqlite'}"}}
twins:
  - name: idle
    metrics:
      cpu_usage: 'idle_cpu_percent{{job="idle"}}'
      request_latency_ms: 'idle_latency_ms{{job="idle"}}'{extra_metric}
    request_rate: 'sum(rate(idle_requests_total{{job="idle"}}[1m]))'
    limits: {{cpu_usage: 95, request_latency_ms: 1000}}
    replicas: 2
    workers: 1
""")
    return p


def test_spike_on_zero_traffic_from_prometheus_does_not_predict_failure(
        tmp_path: Path, idle_prom: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The reviewer's repro: rate() of a constant counter is 0; traffic_spike x5 said 93% failure, peak CPU
    100% and "Add 2 replica(s)", enough to fire TwinSimulationFailureLikely."""
    rules = _rules(tmp_path, idle_prom)
    assert main(["simulate", "--config", str(rules), "--twin", "idle", "--scenario",
                 '{"type": "traffic_spike", "traffic_multiplier": 5, "duration_minutes": 30}']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["failure_probability"] == 0.0 and res["will_likely_fail"] is False
    assert res["model_fit"]["traffic"] == "zero"
    assert "Traffic is 0 req/s now" in res["recommendations"][0]
    assert not any("replica" in r for r in res["recommendations"])
    peak = res["projected_metrics"]["peak"]["cpu_usage"]["value"]
    assert 29.0 < peak < 31.0                                      # the CPU it idles at, not 100%
    assert set(res["projected_metrics"]["request_rate"]) == {0.0}

    assert main(["simulate", "--config", str(rules), "--twin", "idle", "--scenario", '{"type": "load_test"}']) == 0
    lt = json.loads(capsys.readouterr().out)
    assert lt["failure_probability"] == 0.0 and lt["breaking_point"]["traffic_multiplier"] is None
    assert any("of 0 req/s is still 0 req/s" in r for r in lt["recommendations"])


def test_cli_warning_names_the_twin_metric_and_error(tmp_path: Path, idle_prom: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """One query fails at run time (two series on each side of a one-to-one match): stderr carries the fields,
    key=value, not a bare "query failing"."""
    failing = "\n      memory_usage: 'idle_pair + on() idle_pair'"
    rules = _rules(tmp_path, idle_prom, failing)
    assert main(["simulate", "--config", str(rules), "--twin", "idle", "--scenario", '{"type": "load_test"}']) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)                                       # stdout stays the JSON result alone
    line = next(x for x in captured.err.splitlines() if "query failing" in x)
    assert "WARNING sidecar.collect.streaks: query failing" in line
    assert "twin=idle" in line and "metric=memory_usage" in line
    assert re.search(r"error=.*(duplicate|many-to-many|match)", line), line

"""Signals an SRE can page on, end to end: a real Prometheus holding levels we control, queried round by round.

The history is written into Prometheus' own TSDB (a step down to idle, a cache flush, a latency step up, a
climb that starts from nothing), the scheduler backfills the hour before the change with range queries and
then runs its rounds at the history's times, exactly as it does live. What it must show: the harmless way is
low with the right advice, the harmful way pages, forecasts follow the new level within a few rounds and stay
in their domains, no time to limit appears far below the limit, a climb gets one within minutes, and a
what-if projects only the metrics the twin has.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers.prom import require_prometheus

from sidecar.collect.scheduler import Scheduler
from sidecar.config import SidecarConfig, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.prometheus import PrometheusClient
from sidecar.status import ServiceStatus
from sidecar.testing import MetricsTarget, PrometheusServer, openmetrics_history

pytestmark = pytest.mark.integration

STEP = 15.0
BEFORE = 240                   # an hour before the change
AFTER = 40                     # ten minutes after it


class History:
    def __init__(self, start: float) -> None:
        self.start = start

    def at(self, i: int) -> float:
        return self.start + STEP * i

    @property
    def change(self) -> float:
        return self.at(BEFORE)


def _levels(before: float, after: float, sd: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float((before if i < BEFORE else after) + sd * rng.standard_normal()) for i in range(BEFORE + AFTER)]


@pytest.fixture(scope="module")
def history() -> Iterator[tuple[PrometheusServer, History]]:
    require_prometheus()
    start = math.floor((time.time() - STEP * (BEFORE + AFTER + 8)) / STEP) * STEP
    h = History(start)
    climb = [(h.at(i), 20.0 + 3.0 * (i - BEFORE) * STEP / 60.0 + 0.2 * math.sin(i))
             for i in range(BEFORE, BEFORE + AFTER)]
    series = {
        'sig_cpu{svc="idle"}': _levels(55.0, 7.5, 0.5, 1),
        'sig_mem{svc="idle"}': _levels(40.0, 40.0, 0.3, 2),
        'sig_mem{svc="flush"}': _levels(80.0, 1.0, 0.4, 3),
        'sig_lat{svc="flush"}': _levels(40.0, 140.0, 1.0, 4),
        'sig_load{svc="flush"}': _levels(1.5, 1.5, 0.1, 5),
    }
    data = {k: [(h.at(i), v) for i, v in enumerate(vals)] for k, vals in series.items()}
    data['sig_cpu{svc="ramp"}'] = climb
    with MetricsTarget() as target:
        target.set("sig_up", 1.0)
        with PrometheusServer(scrape_targets=[target.address], job_name="sig",
                              history=openmetrics_history(data)) as prom:
            prom.wait_for_series("sig_up")
            yield prom, h


Replayed = tuple[Engine, History, list[dict[str, Any]]]


def _config(url: str) -> SidecarConfig:
    text = f"""\
prometheus: {{url: '{url}', timeout: 5s, max_concurrency: 4}}
interval: 15s
backfill: 1h
twins:
  - name: idle
    metrics: {{cpu_usage: 'sig_cpu{{svc="idle"}}', memory_usage: 'sig_mem{{svc="idle"}}'}}
    expected: {{cpu_usage: 55}}
  - name: flush
    metrics: {{memory_usage: 'sig_mem{{svc="flush"}}', request_latency_ms: 'sig_lat{{svc="flush"}}',
               load1: 'sig_load{{svc="flush"}}'}}
    expected: {{request_latency_ms: 40}}
    bounds: {{load1: [0, null]}}
  - name: ramp
    metrics: {{cpu_usage: 'sig_cpu{{svc="ramp"}}'}}
"""
    return parse_config(text, path="signals.yaml", env={})


@pytest.fixture(scope="module")
def replayed(history: tuple[PrometheusServer, History]) -> Iterator[Replayed]:
    """The scheduler over the real Prometheus: backfill up to the change, then a round per history step after it;
    the status of every twin after each round is kept."""
    import asyncio

    prom, h = history
    cfg = _config(prom.url)
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s))
    seen: list[dict[str, Any]] = []

    async def run() -> None:
        async with PrometheusClient(cfg.prometheus) as client:
            sched = Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True))
            await sched.backfill(now=h.change - 1.0)
            for i in range(BEFORE, BEFORE + AFTER):
                await sched.run_round(at=h.at(i) + 1.0)
                seen.append({n: engine.status(n) for n in ("idle", "flush", "ramp")})

    asyncio.run(run())
    yield engine, h, seen


def test_an_idle_host_is_low_with_scaling_in_advice_and_pages_nobody(replayed: Replayed) -> None:
    engine, _, seen = replayed
    for st in seen[3:]:
        cpu = st["idle"]["metrics"]["cpu_usage"]
        assert cpu["severity"] in ("none", "low")
        assert not st["idle"]["divergence_alerts"] and not st["idle"]["drift_detected"]
    cpu = seen[-1]["idle"]["metrics"]["cpu_usage"]
    assert cpu["severity"] == "low" and "consider scaling in" in cpu["advice"]
    assert engine.status("idle")["health_score"] == 100.0
    assert not [e for e in engine.events(twin="idle") if e.type in ("divergence", "drift_detected")]


def test_latency_above_its_expected_level_pages(replayed: Replayed) -> None:
    _, _, seen = replayed
    lat = seen[-1]["flush"]["metrics"]["request_latency_ms"]
    assert lat["severity"] == "critical" and lat["divergence_harmful"] is True
    assert seen[-1]["flush"]["drift_detected"] is True


def test_forecasts_follow_a_cache_flush_within_a_few_rounds_and_show_no_time_to_limit(replayed: Replayed) -> None:
    _, _, seen = replayed
    for k, st in enumerate(seen):
        mem = st["flush"]["metrics"]["memory_usage"]
        preds = st["flush"]["state_predictions"]
        for p in preds:
            f = p["metrics"]["memory_usage"]
            assert 0.0 <= f["lower"] <= f["predicted"] <= f["upper"] <= 100.0, (k, f)
            if k >= 3:
                assert f["predicted"] <= 10.0, (k, p["horizon_seconds"], f)
        assert mem["breach_eta_seconds"] is None, (k, mem)
    regimes = {p["metrics"]["memory_usage"]["regime"] for st in seen[3:6]
               for p in st["flush"]["state_predictions"]}
    assert "level_shift" in regimes


def test_a_climb_from_nothing_gets_a_time_to_limit_within_minutes(replayed: Replayed) -> None:
    _, _, seen = replayed
    first = next((k for k, st in enumerate(seen)
                  if st["ramp"]["metrics"]["cpu_usage"]["breach_eta_seconds"] is not None), None)
    assert first is not None and first * STEP <= 240.0, first
    cpu = seen[first]["ramp"]["metrics"]["cpu_usage"]
    true_eta = (95.0 - cpu["value"]) / (3.0 / 60.0)
    assert abs(cpu["breach_eta_seconds"] - true_eta) <= 0.5 * true_eta


def test_what_if_projects_only_the_metrics_the_twin_has(replayed: Replayed) -> None:
    engine, h, _ = replayed
    result = engine.simulate("flush", {"type": "traffic_spike", "traffic_multiplier": 3, "duration_minutes": 10},
                             at=h.at(BEFORE + AFTER))
    projected = set(result["projected_metrics"])
    assert "error_rate" not in projected and "cpu_usage" not in projected
    assert "error_rate" not in (result.get("breach_probability") or {})
    assert "load1" in projected

"""The generated rules on a real Prometheus scraping real sidecars, for the cases a reviewer found silent:

* two sidecar instances under one job, one of them dies: ``absent(twin_source_up)`` stays empty (the other is
  still scraped) and the dead one's own series go stale, so only TwinSidecarDown (``up == 0`` per instance) can
  say it;
* a metric driven into critical divergence whose query then returns NaN: its severity stays exported, frozen at
  4, and TwinMetricStale fires; the divergence alerts must stop paging on it.

Intervals are 1 s and the holds 1-3 s, so each test takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.alerts import AlertSettings, dump_rules, render_rules
from sidecar.config import SidecarConfig, parse_config
from sidecar.testing import MetricsTarget, PrometheusServer, free_port, prometheus_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not prometheus_available(), reason="prometheus not installed (apt-get install prometheus)"),
]

TWIN = "checkout-api"
#: Short holds; stale after 3 s (3 intervals of 1 s) instead of the 60 s floor.
FAST = AlertSettings(divergence_for_s=2, health_for_s=2, breach_for_s=2, sync_for_s=1, source_down_for_s=2,
                     absent_for_s=3, store_down_for_s=2, simulation_for_s=2, stale_after_intervals=3,
                     stale_after_min_s=3)


def sidecar_config(prometheus_url: str, port: int, db: Path) -> SidecarConfig:
    text = f"""
prometheus: {{url: "{prometheus_url}", timeout: 2s}}
interval: 1s
backfill: 0
server: {{listen: "127.0.0.1:{port}"}}
storage: {{path: "{db}"}}
twins:
  - name: {TWIN}
    system_type: api_gateway
    metrics:
      cpu_usage: 'e2e_cpu{{service="checkout"}}'
      memory_usage: 'e2e_memory{{service="checkout"}}'
    expected: {{cpu_usage: 50, memory_usage: 40}}
    limits: {{cpu_usage: 95}}
    auto_correction: false
"""
    return parse_config(text, path=str(db.parent / "rules.yaml"))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def firing(prom: PrometheusServer, alert: str) -> list[dict[str, str]]:
    """Label sets of ``alert`` firing now (Prometheus' own ALERTS series)."""
    return [r["metric"] for r in prom.query(f'ALERTS{{alertname="{alert}",alertstate="firing"}}')]


async def scraped_severity(url: str, metric: str) -> float | None:
    async with httpx.AsyncClient(timeout=5.0) as http:
        body = (await http.get(f"{url}/metrics")).text
    prefix = f'twin_divergence_severity{{twin="{TWIN}",metric="{metric}"}} '
    line = next((x for x in body.splitlines() if x.startswith(prefix)), None)
    return float(line.removeprefix(prefix)) if line else None


@pytest.fixture
def target() -> Iterator[MetricsTarget]:
    with MetricsTarget() as t:
        t.set("e2e_cpu", 50.0, service="checkout")
        t.set("e2e_memory", 40.0, service="checkout")
        yield t


async def test_one_of_two_sidecars_down_fires_sidecar_down_for_it_alone(target: MetricsTarget,
                                                                        tmp_path: Path) -> None:
    from sidecar.app import start_service

    ports = [free_port(), free_port()]
    sidecars = [f"127.0.0.1:{p}" for p in ports]
    rules = dump_rules(render_rules(sidecar_config("http://127.0.0.1:9", ports[0], tmp_path / "a.db"), FAST))
    scrape = [{"job_name": "demo", "static_configs": [{"targets": [target.address]}]},
              {"job_name": "twin-sidecar", "static_configs": [{"targets": sidecars}]}]
    with PrometheusServer(scrape_configs=scrape, rules=rules) as prom:
        services = [await start_service(sidecar_config(prom.url, p, tmp_path / f"{i}.db"))
                    for i, p in enumerate(ports)]
        try:
            await asyncio.to_thread(prom.wait_for_series, 'up{job="twin-sidecar"} == 1', count=2)
            await asyncio.to_thread(prom.wait_for_series, "twin_source_up == 1", count=2)
            await asyncio.sleep(FAST.absent_for_s + 2)            # longer than the hold: both up, nothing fires
            assert firing(prom, "TwinSidecarDown") == []

            await services[1].shutdown()                           # one instance dies; the other goes on
            down = await asyncio.to_thread(wait_for, "TwinSidecarDown",
                                           lambda: firing(prom, "TwinSidecarDown"))
            assert [(a["instance"], a["job"], a["severity"]) for a in down] == [(sidecars[1], "twin-sidecar",
                                                                                 "warning")]
            # the reviewer's repro: one target up, one down, and absent() has nothing to say
            assert {r["metric"]["instance"]: r["value"][1] for r in prom.query('up{job="twin-sidecar"}')} == {
                sidecars[0]: "1", sidecars[1]: "0"}
            assert prom.query("absent(twin_source_up)") == []
            assert firing(prom, "TwinSidecarAbsent") == []
        finally:
            for s in services:
                await s.shutdown()


async def test_a_stale_metric_stops_the_divergence_alerts_while_its_severity_stays_frozen(
        target: MetricsTarget, tmp_path: Path) -> None:
    from sidecar.app import start_service

    port = free_port()
    rules = dump_rules(render_rules(sidecar_config("http://127.0.0.1:9", port, tmp_path / "t.db"), FAST))
    scrape = [{"job_name": "demo", "static_configs": [{"targets": [target.address]}]},
              {"job_name": "twin-sidecar", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
    with PrometheusServer(scrape_configs=scrape, rules=rules) as prom:
        service = await start_service(sidecar_config(prom.url, port, tmp_path / "t.db"))
        try:
            await asyncio.to_thread(prom.wait_for_series, f'twin_divergence_severity{{twin="{TWIN}"}}', count=2)
            async with httpx.AsyncClient(timeout=5.0) as http:   # expect 5 while it runs at 50: +900 %, critical
                resp = await http.put(f"{service.url}/api/v1/twins/{TWIN}/expected", json={"cpu_usage": 5})
                assert resp.status_code == 200, resp.text

            def critical_cpu() -> list[dict[str, str]]:
                return [a for a in firing(prom, "TwinDivergenceCritical") if a["metric"] == "cpu_usage"]

            await asyncio.to_thread(wait_for, "TwinDivergenceCritical on cpu_usage", critical_cpu)

            target.set("e2e_cpu", float("nan"), service="checkout")   # the query now returns only NaN
            stale = await asyncio.to_thread(wait_for, "TwinMetricStale on cpu_usage",
                                            lambda: firing(prom, "TwinMetricStale"))
            assert [(a["twin"], a["metric"]) for a in stale] == [(TWIN, "cpu_usage")]
            # the sidecar still exports the last severity it computed (frozen, on data no longer observed) …
            assert await scraped_severity(service.url, "cpu_usage") == 4.0
            assert prom.query(f'twin_divergence_severity{{twin="{TWIN}",metric="cpu_usage"}} >= 4')
            # … and the divergence alerts no longer page on it; the twin's healthy metric never paged
            assert critical_cpu() == []
            assert [a for a in firing(prom, "TwinDivergenceHigh") if a["metric"] == "cpu_usage"] == []
            assert firing(prom, "TwinMetricNoData") == []            # it had data: stale, not "never"
            await asyncio.sleep(FAST.divergence_for_s + 2)
            assert critical_cpu() == [] and firing(prom, "TwinMetricStale")
        finally:
            await service.shutdown()

"""End to end with the real servers: Prometheus scrapes the sidecar and evaluates the generated rules, a real
Alertmanager receives the alert; a twin driven into critical divergence pages, and the page resolves.

    demo target --scrape--> Prometheus <--query-- sidecar (start_service)
                            Prometheus --scrape--> sidecar /metrics
                            Prometheus --rules (sidecar.alerts)--> Alertmanager /api/v2/alerts

Intervals are 1 s and the alerts' ``for`` 2 s, so the whole test takes well under a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.alerts import AlertSettings, dump_rules, render_rules
from sidecar.config import SidecarConfig, parse_config
from sidecar.testing import (
    AlertmanagerServer,
    MetricsTarget,
    PrometheusServer,
    alertmanager_available,
    free_port,
    prometheus_available,
)

TWIN = "checkout-api"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not prometheus_available(), reason="prometheus not installed (apt-get install prometheus)"),
    pytest.mark.skipif(not alertmanager_available(),
                       reason="alertmanager not installed (apt-get install prometheus-alertmanager)"),
]

#: Routes everything to a receiver that sends nothing (the test reads the API), and lets a critical alert
#: silence the warning about the same twin and metric: the inhibition the README recommends.
ALERTMANAGER_CONFIG = {
    "route": {"receiver": "blackhole", "group_by": ["alertname", "twin"], "group_wait": "1s",
              "group_interval": "1s", "repeat_interval": "1h"},
    "receivers": [{"name": "blackhole"}],
    "inhibit_rules": [{"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                       "equal": ["twin", "metric"]}],
}


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
      cpu_usage: 'demo_cpu_usage{{service="checkout"}}'
    expected: {{cpu_usage: 50}}
    limits: {{cpu_usage: 95}}
    auto_correction: false
export: {{divergence_ratio: true}}   # the divergence alerts' text gives the ratio when it is exported
"""
    return parse_config(text, path=str(db.parent / "rules.yaml"))


#: The generated rules with short holds so the test is quick; everything else as users get it.
FAST = AlertSettings(divergence_for_s=2, health_for_s=2, breach_for_s=2, sync_for_s=2, source_down_for_s=2,
                     absent_for_s=30, store_down_for_s=2, simulation_for_s=2)


Stack = tuple[MetricsTarget, PrometheusServer, AlertmanagerServer, SidecarConfig]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    with MetricsTarget() as target, AlertmanagerServer(ALERTMANAGER_CONFIG) as am:
        target.set("demo_cpu_usage", 50.0, service="checkout")
        scrape = [{"job_name": job, "static_configs": [{"targets": [address]}]}
                  for job, address in (("demo", target.address), ("twin-sidecar", f"127.0.0.1:{port}"))]
        # the rules come from the same config the sidecar runs (the URL is only known once Prometheus is up)
        rules = dump_rules(render_rules(sidecar_config("http://127.0.0.1:9", port, tmp_path / "twins.db"), FAST))
        with PrometheusServer(scrape_configs=scrape, rules=rules, alertmanagers=[am.address]) as prom:
            yield target, prom, am, sidecar_config(prom.url, port, tmp_path / "twins.db")


@pytest.fixture
async def sidecar(stack: Stack) -> AsyncIterator[str]:
    from sidecar.app import start_service

    service = await start_service(stack[3])
    try:
        yield service.url
    finally:
        await service.shutdown()


async def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll an async check until it returns something truthy (the loop keeps the sidecar running meanwhile)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


async def test_critical_divergence_pages_through_alertmanager_and_resolves(
        stack: Stack, sidecar: str) -> None:
    _, prom, am, _ = stack
    async with httpx.AsyncClient(timeout=5.0) as http:

        async def twin_alerts() -> dict[str, dict[str, Any]]:
            resp = await http.get(f"http://{am.address}/api/v2/alerts")
            resp.raise_for_status()
            return {a["labels"]["alertname"]: a for a in resp.json() if a["labels"].get("twin") == TWIN}

        async def severity_series() -> list[dict[str, Any]]:
            return await asyncio.to_thread(prom.query, f'twin_divergence_severity{{twin="{TWIN}"}}')

        async def severity_in_prometheus() -> float:
            (series,) = await severity_series()
            return float(series["value"][1])

        # Healthy: actual 50 = expected 50. Prometheus sees the sidecar's series, and no divergence pages.
        await wait_for("the twin's severity in Prometheus", severity_series)
        assert await severity_in_prometheus() == 0.0
        await asyncio.sleep(4)  # longer than the 2 s hold: a quiet alert would have fired by now
        assert not {"TwinDivergenceHigh", "TwinDivergenceCritical"} & set(await twin_alerts())

        # Drive the twin into critical divergence: expect 5 while the service runs at 50 (+900 %).
        resp = await http.put(f"{sidecar}/api/v1/twins/{TWIN}/expected", json={"cpu_usage": 5})
        assert resp.status_code == 200, resp.text
        alerts = await wait_for("TwinDivergenceCritical in Alertmanager",
                                lambda: _having(twin_alerts, "TwinDivergenceCritical"), timeout=30)
        critical = alerts["TwinDivergenceCritical"]
        assert critical["labels"]["severity"] == "critical"
        assert critical["labels"]["metric"] == "cpu_usage"
        assert critical["labels"]["job"] == "twin-sidecar"
        assert critical["status"]["state"] == "active"
        ann = critical["annotations"]
        assert ann["summary"] == f"{TWIN}: cpu_usage diverges critically from its twin"
        assert ann["description"].startswith(f"cpu_usage of twin {TWIN} is 900% off its expected value")
        assert ann["runbook_url"] == "README.md#runbook-twindivergencecritical"
        # the warning about the same twin and metric fires too, and Alertmanager's inhibition mutes it
        high = (await wait_for("TwinDivergenceHigh", lambda: _having(twin_alerts, "TwinDivergenceHigh")))[
            "TwinDivergenceHigh"]
        assert high["status"]["state"] == "suppressed"
        assert high["status"]["inhibitedBy"] == [critical["fingerprint"]]

        # Put the expectation back: divergence ends, Prometheus resolves, Alertmanager drops the alerts.
        resp = await http.put(f"{sidecar}/api/v1/twins/{TWIN}/expected", json={"cpu_usage": 50})
        assert resp.status_code == 200, resp.text

        async def resolved() -> bool:
            return not {"TwinDivergenceHigh", "TwinDivergenceCritical"} & set(await twin_alerts())

        await wait_for("the divergence alerts to resolve", resolved, timeout=30)
        assert await severity_in_prometheus() == 0.0


async def _having(fetch: Callable[[], Any], name: str) -> dict[str, dict[str, Any]] | None:
    alerts: dict[str, dict[str, Any]] = await fetch()
    return alerts if name in alerts else None

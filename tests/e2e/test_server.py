"""The HTTP server: probes, /metrics over real HTTP (checked by promtool and scraped by a real Prometheus)."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar.engine.records import SystemType
from sidecar.engine.twin import TwinEngine
from sidecar.exporter import sync_duration_histogram
from sidecar.server import build_app
from sidecar.status import ServiceStatus
from sidecar.testing import PrometheusServer, free_port, prometheus_available

PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
               "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


class Service:
    """A facade with two fed twins, its status and registry, and the app over them."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.facade = TwinEngine(clock=lambda: self.now)
        self.status = ServiceStatus()
        self.registry = CollectorRegistry()
        self.app = build_app(facade=self.facade, status=self.status, registry=self.registry,
                             engine_lock=asyncio.Lock(), auth_token="t0ken", max_body_bytes=2048)

    async def feed(self) -> None:
        await self.facade.create_twin("checkout", SystemType.API_GATEWAY)
        await self.facade.create_twin("search", SystemType.WEB_SERVICE)
        for i in range(40):
            self.now += 15.0
            for name in ("checkout", "search"):
                await self.facade.sync_twin(name, {"cpu_usage": 30.0 + i, "memory_usage": 60.0,
                                                   "request_latency_ms": 150.0, "error_rate": 0.002})


@pytest.fixture
async def service() -> AsyncIterator[tuple[Service, TestClient[Any, Any]]]:
    svc = Service()
    await svc.feed()
    client: TestClient[Any, Any] = TestClient(TestServer(svc.app, host="127.0.0.1"))
    await client.start_server()
    yield svc, client
    await client.close()


async def test_healthz_is_always_ok(service: tuple[Service, TestClient[Any, Any]]) -> None:
    _, client = service
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "shard": {"index": 0, "count": 1}}


async def test_readyz_waits_for_config_and_first_round(service: tuple[Service, TestClient[Any, Any]]) -> None:
    svc, client = service
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["ready"] is False
    assert body["reasons"] == ["configuration not loaded", "first query round not done"]
    svc.status.config_loaded = True
    assert (await (await client.get("/readyz")).json())["reasons"] == ["first query round not done"]
    svc.status.first_round_done = True
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["reasons"] == []


async def test_readyz_reports_an_unavailable_store_but_stays_ready(
        service: tuple[Service, TestClient[Any, Any]]) -> None:
    svc, client = service
    svc.status.config_loaded = svc.status.first_round_done = True
    svc.status.store_up = False
    svc.status.store_backlog = 42
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["store_up"] is False and body["store_backlog"] == 42 and "unavailable" in body["store"]


async def test_metrics_text_format_by_default(service: tuple[Service, TestClient[Any, Any]]) -> None:
    svc, client = service
    sync_duration_histogram(svc.registry).observe(0.04)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in parse_text(await resp.text()) for s in f.samples}
    assert samples[("twin_twins", ())] == 2
    assert ("twin_health_score", (("twin", "checkout"),)) in samples
    assert samples[("twin_sync_duration_seconds_count", ())] == 1
    forecasts = [k for k in samples if k[0] == "twin_forecast" and ("twin", "search") in k[1]]
    assert {dict(k[1])["horizon"] for k in forecasts} == {"5m"}     # the default export: the shortest horizon


async def test_metrics_openmetrics_when_the_scraper_asks(
        service: tuple[Service, TestClient[Any, Any]]) -> None:
    _, client = service
    resp = await client.get("/metrics", headers={"Accept": PROM_ACCEPT})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = await resp.text()
    assert text.endswith("# EOF\n")
    names = {f.name for f in parse_om(text)}   # the strict OpenMetrics parser accepts it
    assert {"twin_forecast", "twin_health_score", "twin_query_errors"} <= names


async def test_metrics_are_gzipped_only_when_accepted(service: tuple[Service, TestClient[Any, Any]]) -> None:
    _, client = service
    zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    raw = await zipped.read()
    assert zipped.headers["Content-Encoding"] == "gzip"
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert gzip.decompress(raw) == await plain.read()


async def test_metrics_reflect_the_service_status(service: tuple[Service, TestClient[Any, Any]]) -> None:
    svc, client = service
    svc.status.source_up = True
    svc.status.query_errors[("checkout", "cpu_usage")] += 3
    text = await (await client.get("/metrics")).text()
    assert "twin_source_up 1.0" in text
    assert 'twin_query_errors_total{metric="cpu_usage",twin="checkout"} 3.0' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_promtool_accepts_a_real_scrape(service: tuple[Service, TestClient[Any, Any]]) -> None:
    svc, client = service
    svc.status.query_errors[("search", "error_rate")] = 1
    sync_duration_histogram(svc.registry).observe(0.2)
    body = await (await client.get("/metrics")).read()
    proc = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=body,
                                   capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert (proc.stdout + proc.stderr).strip() == b""


async def test_build_app_twice_on_one_registry_keeps_one_collector() -> None:
    svc = Service()
    build_app(facade=svc.facade, status=svc.status, registry=svc.registry, engine_lock=asyncio.Lock(),
              auth_token=None, max_body_bytes=1024)
    from prometheus_client import generate_latest
    text = generate_latest(svc.registry).decode()
    assert text.count("# TYPE twin_twins gauge") == 1


def test_body_limit_must_be_positive() -> None:
    svc = Service()
    with pytest.raises(ValueError, match="max_body_bytes"):
        build_app(facade=svc.facade, status=svc.status, registry=CollectorRegistry(),
                  engine_lock=asyncio.Lock(), auth_token=None, max_body_bytes=0)


@pytest.mark.integration
@pytest.mark.skipif(not prometheus_available(), reason="prometheus not installed")
async def test_a_real_prometheus_scrapes_the_sidecar() -> None:
    svc = Service()
    await svc.feed()
    runner = web.AppRunner(svc.app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    prom = PrometheusServer(scrape_targets=[f"127.0.0.1:{port}"], job_name="sidecar")
    try:
        await asyncio.to_thread(prom.start)
        result = await asyncio.to_thread(prom.wait_for_series, 'twin_health_score{job="sidecar"}', count=2)
        assert {r["metric"]["twin"] for r in result} == {"checkout", "search"}
        up = await asyncio.to_thread(prom.query, 'up{job="sidecar"}')
        assert up[0]["value"][1] == "1"
        fc = await asyncio.to_thread(prom.query, 'twin_forecast{twin="checkout",metric="cpu_usage"}')
        view = svc.facade.engine.view()
        i = next(k for k, (t, m) in enumerate(zip(view.series_twin, view.series_metric, strict=True))
                 if (t, m) == ("checkout", "cpu_usage"))
        by_h = {r["metric"]["horizon"]: float(r["value"][1]) for r in fc}
        assert by_h["5m"] == pytest.approx(float(view.forecast_mean[i, 0]), rel=1e-8)
        # the scrape was negotiated as OpenMetrics (Prometheus asks for it first) and parsed without error
        targets = await asyncio.to_thread(_targets, prom)
        assert targets[0]["health"] == "up" and targets[0]["lastError"] == ""
    finally:
        await asyncio.to_thread(prom.stop)
        await runner.cleanup()


def _targets(prom: PrometheusServer) -> list[dict[str, Any]]:
    import urllib.request
    with urllib.request.urlopen(f"{prom.url}/api/v1/targets", timeout=10) as resp:
        data: list[dict[str, Any]] = json.loads(resp.read())["data"]["activeTargets"]
    return data

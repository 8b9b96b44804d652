"""The assembled service for real: a real Prometheus scraping the demo service, the sidecar against it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.prom import require_prometheus
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import Service, start_service
from sidecar.config import load_config
from sidecar.logs import JsonFormatter
from sidecar.testing import PrometheusServer, free_port, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_prom() -> Iterator[PrometheusServer]:
    """The demo service (its own process, driving its own traffic) scraped by a real Prometheus."""
    require_prometheus()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.demo.service", "--port", str(port),
                             "--base-rps", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        with PrometheusServer(scrape_targets=[f"127.0.0.1:{port}"], job_name="demo") as prom:
            prom.wait_for_series('demo_http_requests_total{job="demo"}')
            prom.wait_for_series('rate(demo_http_requests_total{job="demo"}[30s]) > 0')
            yield prom
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def demo_rules(tmp_path: Path, prom_url: str, *, port: int = 0, token: str | None = None) -> Path:
    rules = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    rules["prometheus"]["url"] = prom_url
    rules["interval"] = "1s"
    rules["backfill"] = "0"
    rules["server"]["listen"] = f"127.0.0.1:{port}"
    rules["storage"]["path"] = str(tmp_path / "twins.db")
    if token is not None:
        (tmp_path / "api-token").write_text(token)
        rules["server"]["auth_token_file"] = str(tmp_path / "api-token")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def one(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    vals = [v for lbl, v in found.get(name, []) if all(lbl.get(k) == x for k, x in labels.items())]
    assert len(vals) == 1, f"{name}{labels}: {vals}"
    return vals[0]


@pytest.fixture
async def service(demo_prom: PrometheusServer, tmp_path: Path) -> AsyncIterator[Service]:
    svc = await start_service(load_config(demo_rules(tmp_path, demo_prom.url)))
    yield svc
    await svc.shutdown()


async def test_sidecar_forecasts_the_demo_service_from_real_prometheus(
        service: Service, demo_prom: PrometheusServer, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        deadline = time.monotonic() + 90
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        while time.monotonic() < deadline:
            found = samples((await http.get("/metrics")).text)
            lows = [v for lbl, v in found.get("twin_forecast_lower", [])   # bounds come once the model is warm
                    if lbl.get("twin") == "demo-api" and lbl.get("metric") == "cpu_usage" and math.isfinite(v)]
            if len(lows) == 3:
                break
            await asyncio.sleep(1)
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["source_up"] is True
        text = (await http.get("/metrics")).text
    found = samples(text)
    assert one(found, "twin_source_up") == 1.0
    assert one(found, "twin_twins") == 2.0                  # demo-api + one discovered target
    discovered = [lbl["twin"] for lbl, _ in found["twin_health_score"]
                  if lbl["twin"].startswith("demo-targets@")]
    assert len(discovered) == 1
    family_metrics = {lbl["metric"] for lbl, _ in found["twin_forecast"] if lbl["twin"] == discovered[0]}
    assert family_metrics == {"resident_memory_mb", "inflight"}     # shared and per-twin queries both land
    assert 1.0 < one(found, "twin_forecast", twin=discovered[0], metric="resident_memory_mb", horizon="1m") < 1e4
    assert 0.0 <= one(found, "twin_health_score", twin="demo-api") <= 100.0
    assert abs(one(found, "twin_last_sync_timestamp_seconds", twin="demo-api") - time.time()) < 30
    horizons = {lbl["horizon"] for lbl, _ in found["twin_forecast"] if lbl["twin"] == "demo-api"}
    assert horizons == {"1m", "5m", "15m"}
    # the forecast of CPU is a forecast of what Prometheus measures, in the same units
    cpu_query = '100 * rate(process_cpu_seconds_total{job="demo"}[30s])'
    cpu_now = float(demo_prom.query(cpu_query)[0]["value"][1])
    forecast = one(found, "twin_forecast", twin="demo-api", metric="cpu_usage", horizon="1m")
    lower = one(found, "twin_forecast_lower", twin="demo-api", metric="cpu_usage", horizon="1m")
    upper = one(found, "twin_forecast_upper", twin="demo-api", metric="cpu_usage", horizon="1m")
    assert lower <= forecast <= upper
    assert 0.0 < cpu_now < 100.0 and abs(forecast - cpu_now) < 50.0
    # a query that never failed exports no error counter by default (export.query_errors: from 0 for all)
    assert not [v for lbl, v in found.get("twin_query_errors_total", []) if lbl["twin"] == "demo-api"]
    assert one(found, "twin_dropped_own_series_total") == 0.0
    rounds = sum(v for lbl, v in found["twin_sync_duration_seconds_count"])
    assert 1 <= rounds <= service.status.rounds_total
    # the exposition is valid for Prometheus' own checker
    (tmp_path / "scrape.txt").write_text(text)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_api_reads_and_token_protected_writes(demo_prom: PrometheusServer, tmp_path: Path) -> None:
    svc = await start_service(load_config(demo_rules(tmp_path, demo_prom.url, token="t0ps3cret")))
    try:
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            while not svc.status.first_round_done:
                await asyncio.sleep(0.1)
            twins = (await http.get("/api/v1/twins")).json()
            assert "demo-api" in json.dumps(twins)
            body = {"cpu_usage": 5.0}
            assert (await http.put("/api/v1/twins/demo-api/expected", json=body)).status_code == 401
            ok = await http.put("/api/v1/twins/demo-api/expected", json=body,
                                headers={"Authorization": "Bearer t0ps3cret"})
            assert ok.status_code == 200, ok.text
            status = (await http.get("/api/v1/twins/demo-api")).json()
            assert status["expected_state"]["cpu_usage"] == 5.0
    finally:
        await svc.shutdown()



def test_sigterm_flushes_and_exits_zero_and_history_survives_a_restart(
        demo_prom: PrometheusServer, tmp_path: Path) -> None:
    port = free_port()
    rules = demo_rules(tmp_path, demo_prom.url, port=port, token="never-logged-secret")
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}

    def run_once(hangup: bool = False) -> tuple[int, float, str]:
        proc = subprocess.Popen([sys.executable, "-m", "sidecar.app", "--config", str(rules)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            wait_ready(url, proc)
            time.sleep(2)                                    # a few rounds
            if hangup:                                       # "reload" flushes, it does not kill
                proc.send_signal(signal.SIGHUP)
                time.sleep(0.5)
                assert proc.poll() is None, "SIGHUP stopped the sidecar"
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            return proc.returncode, time.monotonic() - t0, err.decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    code, took, logs = run_once(hangup=True)
    assert code == 0 and took < 10, (code, took, logs[-2000:])
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]    # every line is JSON
    assert any(r["msg"].startswith("SIGHUP ignored") and r["level"] == "warning" for r in lines), logs[-2000:]
    assert any(r["msg"] == "sidecar started" for r in lines)
    assert any(r["msg"] == "sidecar stopped" for r in lines)
    assert "never-logged-secret" not in logs

    code, _, logs = run_once()
    assert code == 0
    restored = [json.loads(line) for line in logs.splitlines() if "twins restored" in line]
    assert restored and restored[0]["twins"] == 2


def test_json_formatter_masks_secret_looking_fields() -> None:
    import logging

    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    rec.password = "hunter2"
    rec.count = 3
    rec.ratio = float("nan")
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "hello world" and out["password"] == "***" and out["count"] == 3
    assert out["ratio"] == "nan"

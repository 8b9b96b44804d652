"""End to end with the real servers: Prometheus scrapes the sidecar and evaluates the generated rules, a real
Alertmanager receives the alert; a twin driven into critical divergence pages, and the page resolves.

    demo target --scrape--> Prometheus <--query-- sidecar (start_service)
                            Prometheus --scrape--> sidecar /metrics
                            Prometheus --rules (sidecar.alerts)--> Alertmanager /api/v2/alerts

Intervals are 1 s and the alerts' ``for`` 2 s, so the whole test takes well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar.alerts import AlertSettings, dump_rules, render_rules
from sidecar.config import SidecarConfig, parse_config
from sidecar.testing import MetricsTarget, free_port

ALERTMANAGER_BIN = os.environ.get("ALERTMANAGER_BIN", "/usr/bin/prometheus-alertmanager")
PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
TWIN = "checkout-api"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(PROMETHEUS_BIN, os.X_OK),
                       reason="prometheus not installed (apt-get install prometheus)"),
    pytest.mark.skipif(not os.access(ALERTMANAGER_BIN, os.X_OK),
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


class ServerProcess:
    """Test-only: a real server binary on a free loopback port, its files in a temp dir, ready when ``/-/ready``
    answers 200 (Prometheus and Alertmanager both have it)."""

    def __init__(self, binary: str, files: dict[str, str]) -> None:
        self.binary = binary
        self.files = files
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="twin-e2e-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def args(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> ServerProcess:
        for name, text in self.files.items():
            (self.dir / name).write_text(text)
        for _ in range(5):  # a free port can be taken between probe and bind: retry
            self.port = free_port()
            log = open(self.dir / "server.log", "ab")
            self.proc = subprocess.Popen([self.binary, *self.args()], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            if self._wait_ready():
                return self
            self._kill()
        self.__exit__()
        raise RuntimeError(f"{self.binary} did not start: {self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        path = self.dir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


class Alertmanager(ServerProcess):
    """Clustering off (it would otherwise listen on 0.0.0.0:9094), state in the temp dir."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(ALERTMANAGER_BIN, {"alertmanager.yml": yaml.safe_dump(config)})

    def args(self) -> list[str]:
        return [f"--config.file={self.dir / 'alertmanager.yml'}", f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address={self.address}", "--cluster.listen-address=", "--log.level=warn"]


class Prometheus(ServerProcess):
    """Scrapes every second, evaluates ``rules`` every second, sends alerts to ``alertmanager``."""

    def __init__(self, scrape: dict[str, str], rules: str, alertmanager: str) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": ["alerts.yaml"],   # relative to the config file
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in scrape.items()],
        }
        super().__init__(PROMETHEUS_BIN, {"prometheus.yml": yaml.safe_dump(config), "alerts.yaml": rules})

    def args(self) -> list[str]:
        return [f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={self.address}", "--log.level=warn"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


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
"""
    return parse_config(text, path=str(db.parent / "rules.yaml"))


#: The generated rules with short holds so the test is quick; everything else as users get it.
FAST = AlertSettings(divergence_for_s=2, health_for_s=2, breach_for_s=2, sync_for_s=2, source_down_for_s=2,
                     absent_for_s=30, store_down_for_s=2, simulation_for_s=2)


Stack = tuple[MetricsTarget, Prometheus, Alertmanager, SidecarConfig]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    with MetricsTarget() as target, Alertmanager(ALERTMANAGER_CONFIG) as am:
        target.set("demo_cpu_usage", 50.0, service="checkout")
        scrape = {"demo": target.address, "twin-sidecar": f"127.0.0.1:{port}"}
        # the rules come from the same config the sidecar runs (the URL is only known once Prometheus is up)
        rules = dump_rules(render_rules(sidecar_config("http://127.0.0.1:9", port, tmp_path / "twins.db"), FAST))
        with Prometheus(scrape, rules, am.address) as prom:
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

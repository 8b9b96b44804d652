"""The demo end to end: the README's first command must start, show the twin changing, and clean up."""

from __future__ import annotations

import asyncio
import io
import math
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from helpers.prom import require_prometheus
from prometheus_client import CollectorRegistry

from sidecar.demo import run_demo
from sidecar.demo.runner import MAIN_TWIN, TABLE_WIDTH, _table, health_text, units_for
from sidecar.demo.service import DemoService
from sidecar.engine.core import Engine
from sidecar.engine.records import SystemType
from sidecar.engine.settings import EngineSettings
from sidecar.engine.twin import TwinEngine
from sidecar.server import build_app
from sidecar.status import ServiceStatus

pytestmark = pytest.mark.integration


def test_demo_runs_shows_the_twin_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    require_prometheus()
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        """The demo's own directories (other demos may run beside this test and have theirs)."""
        path = real_mkdtemp(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    out = io.StringIO()
    assert run_demo(duration_s=25, table_every_s=12, out=out) == 0
    text = out.getvalue()
    assert "sidecar /metrics   http://127.0.0.1:" in text and "Prometheus         http://127.0.0.1:" in text
    tables = re.findall(r"demo-api: health (\d+\.\d)", text)
    assert len(tables) >= 2
    assert re.search(r"cpu_usage\s+\d+\.\d", text)                     # a measured value, not a dash
    assert "twin demo-targets@127.0.0.1:" in text                        # the discovered twin
    # 25 s of data is too little for a capacity fit: no standing scenario may show a probability yet
    what_ifs = re.findall(r"what-if \w+: (.*)", text)
    assert what_ifs and not any(re.search(r"P\(fail\) \d", w) for w in what_ifs), what_ifs
    assert re.search(r"error_rate %\s+\d+\.\d\d\s", text)                # a percentage with 2 decimals
    tables = [t for t in text.split("\n\n") if "demo-api: health" in t]
    assert max(len(line) for t in tables for line in t.splitlines()) <= 120
    assert "stopped; temporary files removed." in text
    assert any(p.name.startswith("twin-demo-") for p in made)
    assert [p for p in made if p.exists()] == []


def test_demo_load_follows_a_wave_with_spikes() -> None:
    svc = DemoService(base_rps=10, wave_period_s=600, spike_every_s=300, spike_len_s=60, spike_factor=3)
    assert svc.target_rps(0.0) == pytest.approx(10.0)
    assert svc.target_rps(150.0) == pytest.approx(15.0)                   # crest of the wave
    assert svc.target_rps(450.0) == pytest.approx(5.0)                    # trough
    wave_at_299 = 1 + 0.5 * math.sin(2 * math.pi * 299 / 600)
    assert svc.target_rps(299.0) == pytest.approx(30.0 * wave_at_299)    # inside the 3x spike


# ------------------------------------------------------------------ the table, read from a real sidecar API

DEMO_HORIZONS = (60.0, 300.0, 900.0)          # the demo rules' horizons: 1m, 5m, 15m
SPIKE = {"type": "traffic_spike", "traffic_multiplier": 3, "duration_minutes": 5}
LOAD = {"type": "load_test", "max_multiplier": 20, "required_multiplier": 2}


class Sidecar:
    """The sidecar's HTTP app over a real engine (what the demo's table reads), on a loopback port."""

    def __init__(self, facade: TwinEngine, status: ServiceStatus, url: str) -> None:
        self.facade, self.status, self.url = facade, status, url

    async def table(self, scenarios: list[tuple[str, dict[str, Any]]]) -> str:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as api:
            return await _table(api, scenarios)


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    clock = [1_700_000_000.0]
    facade = TwinEngine(Engine(EngineSettings(horizons_s=DEMO_HORIZONS)), clock=lambda: clock[0])
    await facade.create_twin(MAIN_TWIN, SystemType.API_GATEWAY)
    for i in range(40):
        clock[0] += 5.0
        await facade.sync_twin(MAIN_TWIN, {"cpu_usage": 20.0 + i % 3, "memory_usage": 40.0,
                                           "request_latency_ms": 50.0, "error_rate": 0.0123 + 0.0001 * (i % 2),
                                           "request_rate": 10.0})
    status = ServiceStatus(config_loaded=True, first_round_done=True)
    app = build_app(facade=facade, status=status, registry=CollectorRegistry(), engine_lock=asyncio.Lock(),
                    auth_token=None)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Sidecar(facade, status, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


async def test_the_table_prints_each_metric_with_the_precision_its_limit_needs(sidecar: Sidecar) -> None:
    text = await sidecar.table([])
    (row,) = [line for line in text.splitlines() if line.lstrip().startswith("error_rate")]
    name, unit, now, expected = row.split()[:4]
    assert (name, unit) == ("error_rate", "%") and now in ("1.23", "1.24") and expected in ("1.23", "1.24"), row
    assert "0.0 [0.0–0.1]" not in text
    (cpu,) = [line for line in text.splitlines() if line.lstrip().startswith("cpu_usage")]
    assert re.match(r"\s+cpu_usage\s+\d+\.\d\s", cpu), cpu
    assert max(len(line) for line in text.splitlines()) <= TABLE_WIDTH


async def test_an_untrusted_what_if_shows_why_and_no_probability(sidecar: Sidecar) -> None:
    st = sidecar.status
    key = (MAIN_TWIN, "spike_3x")
    st.simulation_failure_probability[key], st.simulation_breaking_multiplier[key] = 0.99, 1.1
    st.simulation_fit_trustworthy[key] = False
    text = await sidecar.table([("spike_3x", SPIKE)])
    reason = sidecar.facade.engine.simulate(MAIN_TWIN, SPIKE, at=sidecar.facade.clock())["model_fit"]["reason"]
    line = " ".join(text.split("what-if spike_3x:")[1].split())
    assert line.startswith("P(fail) — (fit untrusted: ") and " ".join(reason.split()) in line
    assert "0.99" not in text and "1.1x" not in text
    assert max(len(line) for line in text.splitlines()) <= TABLE_WIDTH


async def test_a_trusted_what_if_shows_its_probability_and_a_missing_one_none(sidecar: Sidecar) -> None:
    st = sidecar.status
    key = (MAIN_TWIN, "breaking_point")
    st.simulation_failure_probability[key], st.simulation_breaking_multiplier[key] = 0.44, 2.3
    st.simulation_fit_trustworthy[key] = True
    text = await sidecar.table([("breaking_point", LOAD), ("spike_3x", SPIKE)])
    assert "  what-if breaking_point: P(fail) 0.44, breaks at 2.3x today's traffic" in text
    assert "  what-if spike_3x: no result yet (too little data, or the scenario has not run)" in text


@pytest.mark.parametrize(("score", "shown"), [(49.96, "49.9"), (50.0, "50.0"), (69.99, "69.9"), (70.0, "70.0"),
                                              (100.0, "100.0"), (0.0, "0.0")])
def test_health_is_cut_not_rounded_so_it_never_reads_across_a_band(score: float, shown: str) -> None:
    assert health_text(score) == shown


def test_units_follow_the_metric_and_its_limit() -> None:
    assert units_for("error_rate", 0.05)(0.0123) == "1.23" and units_for("error_rate", 0.05).suffix == " %"
    assert units_for("cpu_usage", 60.0)(4.66) == "4.7"
    assert units_for("queue_ratio", 0.05)(0.01234) == "0.0123"
    assert units_for("request_latency_ms", 1000.0)(52.46) == "52.5"
    assert units_for("inflight", None)(None) == "—"

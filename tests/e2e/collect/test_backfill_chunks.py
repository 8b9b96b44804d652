"""Long backfills are split into range queries Prometheus accepts and answers in time; a refused one says why."""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import respx
from helpers.prom import PromEnv

from sidecar.collect.backfill import PART_POINTS, part_steps
from sidecar.collect.scheduler import Scheduler
from sidecar.config import SidecarConfig, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.prometheus import MAX_RANGE_POINTS, RANGE_HALVINGS, PrometheusClient, QueryFailed, SourceTimeout
from sidecar.status import ServiceStatus

pytestmark = pytest.mark.integration

DAY = 86_400.0


def rules(url: str, *, interval: str, backfill: str) -> SidecarConfig:
    return parse_config(f"prometheus: {{url: '{url}', timeout: 10s, max_concurrency: 4}}\n"
                        f"interval: {interval}\nbackfill: {backfill}\n"
                        "twins: [{name: clocked, metrics: {clock: 'time()'}}]\n", path="test.yaml", env={})


@pytest.fixture
async def client(prom_env: PromEnv) -> AsyncIterator[PrometheusClient]:
    async with PrometheusClient(rules(prom_env.url, interval="15s", backfill="0").prometheus) as c:
        yield c


async def range_requests(client: PrometheusClient) -> float:
    """What the real Prometheus counted on its own /query_range handler (read from its /metrics)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{client.base}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query_range"' in line)


async def test_prometheus_really_refuses_one_long_range(client: PrometheusClient) -> None:
    end = math.floor(time.time())
    with pytest.raises(QueryFailed, match="exceeded maximum resolution"):
        await client.query_range("time()", end - 12_000 * 15, end, 15, max_points=20_000)


async def test_a_long_range_comes_back_whole_from_consecutive_parts(client: PrometheusClient) -> None:
    end = math.floor(time.time() / 15) * 15
    start = end - 25_001 * 15                       # 25,002 points: three requests of 10,000, 10,000, 5,002
    before = await range_requests(client)
    m = await client.query_range("time()", start, end, 15)
    assert await range_requests(client) - before == 3
    assert m.labels == ({},) and m.times.size == 25_002
    assert m.times[0] == start and m.times[-1] == end and np.all(np.diff(m.times) == 15)
    assert np.array_equal(m.values[0], m.times)     # every step answered, each by its own evaluation time


async def test_a_fractional_step_loses_no_column_where_the_parts_meet(client: PrometheusClient) -> None:
    """Each part keeps the whole range's grid (not one rebuilt from its ms-rounded ends, a column short at a
    step like 7.7 s): every step of time() has a value, none NaN where the parts meet."""
    start = 1_700_000_000.3
    m = await client.query_range("time()", start, start + 7.7 * 499 + 0.01, 7.7, max_points=50)
    assert m.times.size == 500
    assert np.all(np.isfinite(m.values[0]))
    assert np.allclose(m.values[0], m.times, atol=1e-3)


async def test_backfill_needing_more_than_11000_steps_loads_the_whole_range(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    cfg = rules(prom_env.url, interval="15s", backfill="2d")      # 11,520 steps: over Prometheus' limit
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s, history_size=20_000))
    sched = Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True))
    now = math.floor(time.time() / 15) * 15 + 7.0
    before = await range_requests(client)
    accepted = await sched.backfill(now=now)
    assert await range_requests(client) - before == 2
    times, values = engine.history("clocked")["clock"]
    first = math.ceil((now - 2 * DAY) / 15) * 15
    expected = np.arange(first, now - 15 + 1e-6, 15.0)
    assert expected.size > 11_000 > MAX_RANGE_POINTS
    assert accepted == times.size == expected.size
    assert np.array_equal(times, expected)          # oldest first, no gap, no overlap, up to now - step
    assert np.array_equal(values, times)


@respx.mock(assert_all_called=False)
async def test_a_refused_backfill_query_is_logged_at_warning_with_the_reason(
        respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture) -> None:
    url = "http://prometheus.test:9090"
    respx_mock.post(f"{url}/api/v1/query").respond(200, json={
        "status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]}})
    reason = "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution"
    respx_mock.post(f"{url}/api/v1/query_range").respond(400, json={
        "status": "error", "errorType": "bad_data", "error": reason})
    cfg = rules(url, interval="15s", backfill="1h")
    async with PrometheusClient(cfg.prometheus) as c:
        sched = Scheduler(cfg, Engine(EngineSettings(horizons_s=cfg.horizons_s)), c,
                          ServiceStatus(config_loaded=True))
        with caplog.at_level(logging.DEBUG, logger="sidecar.collect"):
            assert await sched.backfill(now=time.time()) == 0
    failed = [r for r in caplog.records if r.getMessage() == "backfill query failed"]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    rec = failed[0].__dict__
    assert rec["twin"] == "clocked" and rec["metric"] == "clock"
    assert rec["error"] == f"bad_data: {reason}"
    done = [r for r in caplog.records if r.getMessage() == "backfill done"]
    assert done and done[0].__dict__["failed"] == 1


async def test_a_range_part_not_answered_in_time_is_asked_again_as_its_halves(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    """A request for more than 100 steps times out (injected: the real server answers too fast); the client asks
    for halves until each fits, and the joined answer is the real server's, every step once."""
    asked: list[int] = []

    def slow_when_wide(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        steps = round((float(form["end"]) - float(form["start"])) / float(form["step"])) + 1
        asked.append(steps)
        if steps > 100:
            raise httpx.ReadTimeout("injected", request=request)
        # forwarded with urllib (respx intercepts every httpx client): the answer is the real server's
        body = urllib.parse.urlencode(form).encode()
        with urllib.request.urlopen(f"{prom_env.url}/api/v1/query_range", data=body, timeout=10) as real:
            return httpx.Response(real.status, content=real.read(), headers={"content-type": "application/json"})

    end = math.floor(time.time() / 15) * 15
    start = end - 239 * 15                                     # 240 steps: 240 -> 120 -> 60
    with respx.mock(assert_all_called=True) as mock:
        mock.post(f"{prom_env.url}/api/v1/query_range").mock(side_effect=slow_when_wide)
        m = await client.query_range("time()", start, end, 15)
    assert asked == [240, 120, 60, 60, 120, 60, 60]
    assert m.times.size == 240 and np.array_equal(m.values[0], m.times)


async def test_a_source_too_slow_for_any_part_fails_after_a_few_timeouts_not_one_per_step(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    asked: list[int] = []

    def always_slow(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        asked.append(round((float(form["end"]) - float(form["start"])) / float(form["step"])) + 1)
        raise httpx.ReadTimeout("injected", request=request)

    end = math.floor(time.time() / 15) * 15
    with respx.mock(assert_all_called=True) as mock:
        mock.post(f"{prom_env.url}/api/v1/query_range").mock(side_effect=always_slow)
        with pytest.raises(SourceTimeout, match="no answer within"):
            await client.query_range("time()", end - 239 * 15, end, 15)
    assert asked == [240, 120, 60, 30, 15]                  # RANGE_HALVINGS deep, the first half each time
    assert len(asked) == RANGE_HALVINGS + 1


def test_a_shared_backfill_query_asks_for_parts_sized_by_its_family() -> None:
    assert part_steps(1) == MAX_RANGE_POINTS                 # one series: only Prometheus' own limit
    assert part_steps(10_000) * 10_000 <= PART_POINTS < (part_steps(10_000) + 1) * 10_000
    assert part_steps(10 * PART_POINTS) == 1                 # never less than a step a request
    assert part_steps(0) == MAX_RANGE_POINTS

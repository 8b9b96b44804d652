"""``backfill_max_samples`` bounds the start-up backfill: past it the window shrinks to its most recent part
before anything is fetched, and the ``backfill done`` line says the window asked, the window used and why."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from helpers.prom import PromEnv

from sidecar.collect.backfill import grid_steps
from sidecar.collect.scheduler import Scheduler
from sidecar.config import SidecarConfig, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.prometheus import PrometheusClient, RangeMatrix
from sidecar.status import ServiceStatus

pytestmark = pytest.mark.integration

STEP = 15.0
#: a family of two twins (svc a and b), each with a shared metric (one query for the family) and its own
#: (one query per twin); both answer time() at every step, so every step of the range has a sample
SHARED = 'label_replace(vector(time()), "svc", "a", "", "") or label_replace(vector(time()), "svc", "b", "", "")'
OWN = 'label_replace(vector(time()), "svc", "$svc", "", "")'
FLEET = f"""twins:
  - name: fleet
    discover: budget_up
    name_labels: [svc]
    metrics:
      shared_clock: '{SHARED}'
      own_clock: '{OWN}'
"""
#: the log line's fields when the whole window is fetched: the same as with no budget at all
PLAIN_FIELDS = {"queries", "failed", "series", "samples", "window_s", "fetch_s", "replay_s"}


def rules(url: str, budget: int | None = None) -> SidecarConfig:
    extra = "" if budget is None else f"backfill_max_samples: {budget}\n"
    return parse_config(f"prometheus: {{url: '{url}', timeout: 10s, max_concurrency: 4}}\ninterval: 15s\n"
                        f"backfill: 1h\n{extra}{FLEET}", path="test.yaml", env={})


@pytest.fixture
async def client(prom_env: PromEnv) -> AsyncIterator[PrometheusClient]:
    prom_env.target.set("budget_up", 1.0, svc="a")
    prom_env.target.set("budget_up", 1.0, svc="b")
    prom_env.prom.wait_for_series('budget_up{svc="b"}')
    async with PrometheusClient(rules(prom_env.url).prometheus) as c:
        yield c


async def backfill(cfg: SidecarConfig, client: PrometheusClient, caplog: pytest.LogCaptureFixture,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, Scheduler, float, list[float], dict[str, Any]]:
    """One backfill now; returns the engine, the scheduler, the time, the start of every range asked of
    Prometheus and the ``backfill done`` line's fields."""
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s, history_size=1000))
    sched = Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True))
    starts: list[float] = []
    real = client.query_range

    async def spy(query: str, start: float, end: float, step: float, **kw: Any) -> RangeMatrix:
        starts.append(start)
        return await real(query, start, end, step, **kw)

    monkeypatch.setattr(client, "query_range", spy)
    now = time.time()                   # (not a past time: discovery finds the family's series only now)
    with caplog.at_level(logging.INFO, logger="sidecar.collect"):
        await sched.backfill(now=now)
    done = [r for r in caplog.records if r.getMessage() == "backfill done"]
    assert len(done) == 1
    fields = {k: v for k, v in done[0].__dict__.items() if k not in logging.makeLogRecord({}).__dict__
              and k not in ("message", "asctime")}
    return engine, sched, now, starts, fields


def clocks(engine: Engine, sched: Scheduler) -> dict[tuple[str, str], np.ndarray]:
    family = [t.name for t in sched.roster.family("fleet")]
    assert len(family) == 2
    out = {}
    for name in family:
        for metric, (times, values) in engine.history(name).items():
            assert np.array_equal(values, times)               # time() at every step: the real answers
            out[(name, metric)] = times
    return out


async def test_the_default_budget_leaves_a_small_fleet_its_whole_window(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = rules(prom_env.url)
    assert cfg.backfill_max_samples == 1_000_000                # 1,000 twins x 4 metrics x 240 steps fit
    engine, sched, now, starts, fields = await backfill(cfg, client, caplog, monkeypatch)
    first = math.ceil((now - 3600) / STEP) * STEP
    whole = np.arange(first, now - STEP + 1e-6, STEP)
    got = clocks(engine, sched)
    assert len(got) == 4 and all(np.array_equal(t, whole) for t in got.values())
    assert starts and set(starts) == {first}
    assert set(fields) == PLAIN_FIELDS                           # the line as without a budget
    assert (fields["window_s"], fields["samples"], fields["series"]) == (3600.0, 4 * whole.size, 4)


async def test_a_budget_smaller_than_the_window_keeps_its_newest_steps_and_says_so(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine, sched, now, starts, fields = await backfill(rules(prom_env.url, budget=401), client, caplog, monkeypatch)
    full = grid_steps(math.ceil((now - 3600) / STEP) * STEP, now - STEP, STEP)
    last = math.floor((now - STEP) / STEP) * STEP
    kept = np.arange(last - 99 * STEP, last + 1e-6, STEP)           # 4 series x 100 steps <= 401
    assert kept.size == 100
    got = clocks(engine, sched)
    assert len(got) == 4 and all(np.array_equal(t, kept) for t in got.values())   # contiguous up to now - step
    assert starts and set(starts) == {kept[0]}                  # the range shrank before it was asked
    assert fields == {**fields, "window_s": 1500.0, "window_asked_s": 3600.0, "reason": "backfill_max_samples",
                      "backfill_max_samples": 401, "samples_asked": 4 * full, "series_asked": 4, "samples": 400}


async def test_a_budget_below_one_step_of_every_series_fetches_nothing(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine, sched, _, starts, fields = await backfill(rules(prom_env.url, budget=3), client, caplog, monkeypatch)
    assert starts == []
    assert all(engine.history(t.name) == {} or all(v[0].size == 0 for v in engine.history(t.name).values())
               for t in sched.roster.family("fleet"))
    assert (fields["window_s"], fields["samples"], fields["queries"], fields["series_asked"]) == (0.0, 0, 0, 4)

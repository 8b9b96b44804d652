"""The replica recommendation loop (sidecar/autoscale.py) over a real engine: what /metrics exports and what the
twin status API says, for a trustworthy twin and for one whose fit is not."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.autoscale import ReplicaRecommender
from sidecar.config import TwinRule, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.replicas import ReplicaPolicy, fit_replica, half_widths, recommend
from sidecar.engine.settings import EngineSettings
from sidecar.engine.twin import TwinEngine
from sidecar.engine.whatif import mean_wait_s
from sidecar.exporter import install_exporter, render
from sidecar.server import build_app
from sidecar.status import ServiceStatus

RULES = """
prometheus: {url: "http://127.0.0.1:9"}
twins:
  - name: %s
    metrics:
      request_latency_mean_ms: 'm'
      replicas: 'r'
    request_rate: 'q'
    limits: {request_latency_mean_ms: 250}
    workers: 4
    max_replicas: 40
    scale_down_stabilisation: 5m
    horizons: [5m, 10m]
"""


def _rule(name: str) -> TwinRule:
    return parse_config(RULES % name).twins[0]


def _feed(engine: Engine, twin: str, *, flat: bool, n: int = 120, t0: float = 1_000_000.0) -> float:
    """A twin whose replicas moved between 2 and 5 while its traffic varied, latency from M/M/4 per replica."""
    engine.create_twin(twin, at=t0)
    engine.configure(twin, at=t0, limits={"request_latency_mean_ms": 250.0})
    rng = np.random.default_rng(5)
    for i in range(n):
        replicas = 2.0 if (i // 40) % 2 == 0 else 5.0
        per = 20.0 if flat else 20.0 + 12.0 * np.sin(i / 9.0) + rng.normal(0, 1.0)
        mean = 1000.0 * (0.1 + float(mean_wait_s(per, 40.0, 4)))
        engine.sync(twin, {"request_rate": per * replicas, "request_latency_mean_ms": mean, "replicas": replicas},
                    at=t0 + 15.0 * i)
    return t0 + 15.0 * (n - 1)


def _exported(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(render(registry).decode()) for s in f.samples
            if s.name in ("twin_recommended_replicas", "twin_headroom_ratio", "twin_capacity_requests_per_second")}


async def test_recommendation_is_exported_for_a_trusted_twin_and_withheld_with_its_reason_otherwise() -> None:
    engine = Engine(EngineSettings(horizons_s=(300.0, 600.0)))
    now = _feed(engine, "api", flat=False)
    _feed(engine, "flat", flat=True)
    status = ServiceStatus()
    rules = {"api": _rule("api"), "flat": _rule("flat")}
    rec = ReplicaRecommender(engine, status, asyncio.Lock(), lambda: rules, interval_s=15.0)
    assert await rec.round(now) == 1
    registry = CollectorRegistry()
    install_exporter(registry, view=engine.view, status=status)
    got = _exported(registry)
    api5 = got[("twin_recommended_replicas", (("horizon", "5m"), ("twin", "api")))]
    api10 = got[("twin_recommended_replicas", (("horizon", "10m"), ("twin", "api")))]
    assert 1 <= api5 <= api10 <= 40
    assert got[("twin_capacity_requests_per_second", (("twin", "api"),))] > 0
    assert ("twin_headroom_ratio", (("horizon", "5m"), ("twin", "api"))) in got
    assert not any(("twin", "flat") in labels for _, labels in got)        # not trustworthy: absent

    facade = TwinEngine(engine)
    app = build_app(facade=facade, status=status, registry=CollectorRegistry(), engine_lock=asyncio.Lock(),
                    auth_token=None)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        trusted: dict[str, Any] = await (await client.get("/api/v1/twins/api")).json()
        withheld: dict[str, Any] = await (await client.get("/api/v1/twins/flat")).json()
    assert trusted["replicas"]["trustworthy"] is True
    assert [h["replicas_stabilised"] for h in trusted["replicas"]["horizons"]] == [api5, api10]
    assert withheld["replicas"]["trustworthy"] is False
    assert "not trustworthy" in withheld["replicas"]["reason"]


async def test_a_twin_that_leaves_takes_its_recommendation_with_it() -> None:
    engine = Engine(EngineSettings(horizons_s=(300.0, 600.0)))
    now = _feed(engine, "api", flat=False)
    status = ServiceStatus()
    rules = {"api": _rule("api")}
    rec = ReplicaRecommender(engine, status, asyncio.Lock(), lambda: rules, interval_s=15.0)
    await rec.round(now)
    assert "api" in status.replica_signals
    rules.clear()
    await rec.round(now + 15.0)
    assert status.replica_signals == {}


async def test_the_recommender_sizes_on_the_narrowest_interval_of_its_recent_rounds() -> None:
    engine = Engine(EngineSettings(horizons_s=(300.0, 600.0)))
    now = _feed(engine, "api", flat=False)
    status = ServiceStatus()
    rules = {"api": _rule("api")}
    rec = ReplicaRecommender(engine, status, asyncio.Lock(), lambda: rules, interval_s=15.0)
    await rec.round(now)
    # a burst of one sample, six times the traffic: the interval widens after the miss, the traffic now (a median)
    # does not follow it
    for i, rate in enumerate((600.0, 100.0, 100.0), start=1):
        engine.sync("api", {"request_rate": rate, "request_latency_mean_ms": 120.0, "replicas": 5.0},
                    at=now + 15.0 * i)
    later = now + 45.0
    await rec.round(later)
    settled = status.replica_signals["api"].advice["horizons"][0]["request_rate_upper"]
    rule = rules["api"]
    ctx = engine.context("api", at=later, replicas=rule.replicas, workers=rule.workers)
    assert rule.max_replicas is not None
    policy = ReplicaPolicy(rule.min_replicas, rule.max_replicas, rule.scale_down_stabilisation_s,
                           quantile=rule.scale_quantile, level=engine.settings.level)
    plain = recommend(ctx, policy, fit_replica(ctx))
    assert rec._twins["api"].widths.widths[0][300.0] < half_widths(ctx)[300.0]     # the burst widened it
    assert settled < plain.rate_upper[0]

"""Bodies a handler cannot use (non-finite replicas, deep nesting, huge integers) are 400s, never 500s, and
PUT /expected follows the rules file: only the twin's metrics, no negative core metric."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from sidecar.config import parse_config
from sidecar.engine.history import MemoryHistoryStore
from sidecar.engine.records import SystemType
from sidecar.engine.twin import TwinEngine
from sidecar.errors import ConfigError
from sidecar.server import build_app
from sidecar.status import ServiceStatus

TOKEN = "tok-review"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    clock = Clock()
    facade = TwinEngine(clock=clock, store=MemoryHistoryStore())
    await facade.create_twin("checkout", SystemType.API_GATEWAY)
    for i in range(30):
        clock.now += 15.0
        await facade.sync_twin("checkout", {"cpu_usage": 40.0 + 0.3 * i, "memory_usage": 55.0,
                                            "request_latency_ms": 120.0 + i, "error_rate": 0.01,
                                            "request_rate": 100.0 + i, "queue_depth": -3.0 + i})
    app = build_app(facade=facade, status=ServiceStatus(), registry=CollectorRegistry(),
                    engine_lock=asyncio.Lock(), auth_token=TOKEN, max_body_bytes=64 * 1024)
    c: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await c.start_server()
    yield c
    await c.close()


async def error_of(resp: Any) -> str:
    assert resp.content_type == "application/json"
    body = json.loads(await resp.text())
    assert body["status"] == resp.status
    return str(body["error"])


def no_trace(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


# --------------------------------------------------------------------------- C: 500 -> 400

@pytest.mark.parametrize("body", [
    '{"type":"failure_injection","replicas":Infinity,"replicas_lost":1}',
    '{"type":"failure_injection","replicas":NaN,"replicas_lost":1}',
    '{"type":"failure_injection","replicas":3,"replicas_lost":-Infinity}',
    '{"type":"failure_injection","replicas":3,"replicas_lost":1e400}',
])
async def test_non_finite_replicas_are_a_400_naming_the_field(client: TestClient[Any, Any], body: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        resp = await client.post("/api/v1/twins/checkout/simulate", data=body, headers=AUTH)
    assert resp.status == 400
    error = await error_of(resp)
    assert "must be a whole number" in error and ("'replicas'" in error or "'replicas_lost'" in error)
    no_trace(caplog)


async def test_a_body_nested_5000_levels_is_a_400_without_a_traceback(client: TestClient[Any, Any],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    deep = '{"type":"load_test","description":' + "[" * 5000 + "]" * 5000 + "}"
    assert len(deep) > 10_000
    with caplog.at_level(logging.DEBUG):
        for path, method in (("/api/v1/twins/checkout/simulate", "post"), ("/api/v1/twins/checkout/expected", "put"),
                             ("/api/v1/twins/checkout/rollback", "post")):
            resp = await client.request(method, path, data=deep, headers=AUTH)
            assert resp.status == 400, path
            assert "nested more than 32 levels" in await error_of(resp)
    no_trace(caplog)


async def test_nesting_below_the_recursion_limit_is_refused_too_and_flat_bodies_pass(
        client: TestClient[Any, Any]) -> None:
    middling = '{"type":"load_test","description":' + "[" * 200 + "]" * 200 + "}"
    resp = await client.post("/api/v1/twins/checkout/simulate", data=middling, headers=AUTH)
    assert resp.status == 400 and "nested" in await error_of(resp)
    shallow = await client.post("/api/v1/twins/checkout/simulate", data='{"type":"load_test","description":[[1]]}',
                                headers=AUTH)
    assert shallow.status == 400 and "'description': expected a string" in await error_of(shallow)
    ok = await client.post("/api/v1/twins/checkout/simulate", data='{"type":"load_test","description":"flat"}',
                           headers=AUTH)
    assert ok.status == 200


async def test_an_integer_too_long_for_a_float_is_a_400(client: TestClient[Any, Any],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    body = '{"type":"traffic_spike","traffic_multiplier":' + "9" * 400 + "}"
    with caplog.at_level(logging.DEBUG):
        resp = await client.post("/api/v1/twins/checkout/simulate", data=body, headers=AUTH)
    assert resp.status == 400 and "more than 300 digits" in await error_of(resp)
    no_trace(caplog)


# --------------------------------------------------------------------------- D: expected like the rules file

@pytest.mark.parametrize(("payload", "needle"), [
    ({"nope_metric": 5}, "'nope_metric': not one of this twin's metrics (expected one of: cpu_usage, "),
    ({"nope_metric": None}, "'nope_metric': not one of this twin's metrics"),
    ({"cpu_usage": -5}, "'cpu_usage': expected a number >= 0 (cpu_usage cannot be negative)"),
    ({"latency_ms": -1}, "'latency_ms': expected a number >= 0 (request_latency_ms cannot be negative)"),
    ({"cpu_usage": 50, "typo_usage": 1}, "'typo_usage'"),
])
async def test_expected_refuses_what_the_rules_file_refuses(client: TestClient[Any, Any], payload: dict[str, Any],
                                                            needle: str) -> None:
    before = json.loads(await (await client.get("/api/v1/twins/checkout/history")).text())["count"]
    resp = await client.put("/api/v1/twins/checkout/expected", json=payload, headers=AUTH)
    assert resp.status == 400
    assert needle in await error_of(resp)
    status = json.loads(await (await client.get("/api/v1/twins/checkout")).text())
    assert status["expected_state"] is None                         # nothing stored
    after = json.loads(await (await client.get("/api/v1/twins/checkout/history")).text())["count"]
    assert after == before                                          # and no snapshot taken


async def test_expected_still_takes_the_twins_metrics_aliases_and_custom_negatives(
        client: TestClient[Any, Any]) -> None:
    resp = await client.put("/api/v1/twins/checkout/expected",
                            json={"cpu_usage": 50, "latency_ms": 200, "queue_depth": -2}, headers=AUTH)
    assert resp.status == 200
    body = json.loads(await resp.text())
    assert body["expected_state"] == {"cpu_usage": 50.0, "request_latency_ms": 200.0, "queue_depth": -2.0}
    cleared = await client.put("/api/v1/twins/checkout/expected", json={"queue_depth": None}, headers=AUTH)
    assert cleared.status == 200
    assert json.loads(await cleared.text())["expected_state"] == {"cpu_usage": 50.0, "request_latency_ms": 200.0}


async def test_unknown_twin_is_still_404(client: TestClient[Any, Any]) -> None:
    resp = await client.put("/api/v1/twins/nobody/expected", json={"cpu_usage": 5}, headers=AUTH)
    assert resp.status == 404


def test_the_rules_file_refuses_the_same_negative_expected_value() -> None:
    text = "twins:\n  - name: a\n    metrics: {cpu_usage: up, temp: t}\n    expected: {cpu_usage: -5}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="rules.yaml", env={})
    assert str(info.value) == ("rules.yaml:4: twins[0].expected.cpu_usage: expected a number >= 0 "
                               "(cpu_usage cannot be negative), got -5")
    cfg = parse_config(text.replace("cpu_usage: -5", "temp: -5"), env={})   # a custom metric may be negative
    assert dict(cfg.twins[0].expected) == {"temp": -5.0}

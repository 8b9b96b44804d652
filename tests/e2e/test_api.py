"""The JSON API over real HTTP (aiohttp's test server on 127.0.0.1): every route, its errors and its auth.

Every successful body is validated against the schema the OpenAPI document gives for that route, so the
document cannot drift from what the API really returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from helpers.service import assert_matches
from prometheus_client import CollectorRegistry

from sidecar.api import (
    EVENTS_FROM_MEMORY_MESSAGE,
    EVENTS_LIMIT_MAX,
    ApiError,
    RefusalLog,
    jsonable,
    parse_expected,
)
from sidecar.config import SecretFile
from sidecar.engine.history import MemoryHistoryStore
from sidecar.engine.records import StateHistoryEntry, SystemType
from sidecar.engine.twin import TwinEngine
from sidecar.engine.view import Outbox
from sidecar.logs import JsonFormatter, TextFormatter
from sidecar.openapi import OPENAPI
from sidecar.server import build_app
from sidecar.status import ServiceStatus
from sidecar.store import EventQuery
from sidecar.store.postgres import PostgresStore
from sidecar.store.sqlite import SQLiteStore
from sidecar.testing import free_port

TOKEN = "tok-9f2c1e7d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_700_000_000.0

def strict_json(text: str) -> Any:
    """JSON as the standard defines it: NaN/Infinity are errors."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name} in a response")
    return json.loads(text, parse_constant=refuse)


async def body_of(resp: ClientResponse) -> Any:
    assert resp.content_type == "application/json"
    return strict_json(await resp.text())


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def feed(facade: TwinEngine, clock: Clock, name: str, n: int = 30) -> None:
    for i in range(n):
        clock.now += 15.0
        await facade.sync_twin(name, {"cpu_usage": 40.0 + 0.3 * i, "memory_usage": 55.0,
                                      "request_latency_ms": 120.0 + i, "error_rate": 0.01,
                                      "request_rate": 100.0 + 10 * math.sin(i / 5)})


@dataclasses.dataclass
class Api:
    client: TestClient[Any, Any]
    facade: TwinEngine
    clock: Clock
    store: Any


ApiFactory = Callable[..., Any]


@pytest.fixture
async def make_api() -> AsyncIterator[ApiFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(*, auth_token: str | None = TOKEN, max_body_bytes: int = 4096, store: Any = None,
                   sink: Callable[[Outbox], Any] | None = None) -> Api:
        clock = Clock()
        store = MemoryHistoryStore() if store is None else store
        facade = TwinEngine(clock=clock, store=store, sink=sink)
        await facade.create_twin("checkout", SystemType.API_GATEWAY)
        await facade.create_twin("search", SystemType.WEB_SERVICE)
        await feed(facade, clock, "checkout")
        await feed(facade, clock, "search", 5)
        app = build_app(facade=facade, status=ServiceStatus(), registry=CollectorRegistry(),
                        engine_lock=asyncio.Lock(), auth_token=auth_token, max_body_bytes=max_body_bytes)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Api(client, facade, clock, store)

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------- reads

async def test_list_twins(api: Api) -> None:
    resp = await api.client.get("/api/v1/twins")
    assert resp.status == 200
    body = await body_of(resp)
    assert_matches(body, "/api/v1/twins", "get", 200)
    assert body["count"] == 2
    assert {t["name"] for t in body["twins"]} == {"checkout", "search"}


async def test_twin_status_by_name_and_by_id(api: Api) -> None:
    resp = await api.client.get("/api/v1/twins/checkout")
    assert resp.status == 200
    body = await body_of(resp)
    assert_matches(body, "/api/v1/twins/{twin}", "get", 200)
    assert body["name"] == "checkout"
    assert len(body["state_predictions"]) == 4
    assert body["state_predictions"][0]["contributing_trends"], "a rising CPU gives a trend in words"
    assert "cpu_usage" in body["metrics"]
    by_id = await body_of(await api.client.get(f"/api/v1/twins/{body['twin_id']}"))
    assert by_id["twin_id"] == body["twin_id"]


async def test_twin_names_with_a_slash_are_addressed_percent_encoded(api: Api) -> None:
    """Discovered twins are often named namespace/service; %2F keeps the name one path segment."""
    await api.facade.create_twin("shop/checkout", SystemType.API_GATEWAY)
    await feed(api.facade, api.clock, "shop/checkout", 5)
    body = await body_of(await api.client.get("/api/v1/twins/shop%2Fcheckout"))
    assert body["name"] == "shop/checkout"
    hist = await api.client.get("/api/v1/twins/shop%2Fcheckout/history")
    assert hist.status == 200
    assert (await body_of(hist))["snapshots"]
    resp = await api.client.post("/api/v1/twins/shop%2Fcheckout/simulate", json={"type": "load_test"},
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    assert (await api.client.get("/api/v1/twins/shop/checkout")).status == 404


async def test_unknown_twin_is_404_on_every_twin_route(api: Api) -> None:
    c = api.client
    for resp in (await c.get("/api/v1/twins/nope"), await c.get("/api/v1/twins/nope/history"),
                 await c.get("/api/v1/events?twin=nope"),
                 await c.post("/api/v1/twins/nope/rollback", json={"snapshot_id": "x"}, headers=AUTH),
                 await c.put("/api/v1/twins/nope/expected", json={"cpu_usage": 1}, headers=AUTH),
                 await c.post("/api/v1/twins/nope/simulate", json={"type": "load_test"}, headers=AUTH)):
        assert resp.status == 404
        body = await body_of(resp)
        assert body["status"] == 404 and "nope" in body["error"]


async def test_unknown_api_path_is_a_json_404(api: Api) -> None:
    resp = await api.client.get("/api/v1/nothing-here")
    assert resp.status == 404
    assert (await body_of(resp))["status"] == 404


async def test_wrong_method_is_a_json_405(api: Api) -> None:
    resp = await api.client.delete("/api/v1/twins/checkout")
    assert resp.status == 405
    assert (await body_of(resp))["status"] == 405


async def test_history_is_newest_first_and_pages_with_before(api: Api) -> None:
    c = api.client
    for v in (50, 60, 70):
        api.clock.now += 60
        resp = await c.put("/api/v1/twins/checkout/expected", json={"cpu_usage": v}, headers=AUTH)
        assert resp.status == 200
    resp = await c.get("/api/v1/twins/checkout/history")
    body = await body_of(resp)
    assert_matches(body, "/api/v1/twins/{twin}/history", "get", 200)
    stamps = [s["timestamp_unix"] for s in body["snapshots"]]
    assert stamps == sorted(stamps, reverse=True) and len(stamps) >= 4
    page1 = await body_of(await c.get("/api/v1/twins/checkout/history?limit=2"))
    assert page1["count"] == 2 and page1["next_before"] == page1["snapshots"][-1]["timestamp_unix"]
    before = page1["next_before"]
    page2 = await body_of(await c.get(f"/api/v1/twins/checkout/history?limit=2&before={before}"))
    assert all(s["timestamp_unix"] < page1["next_before"] for s in page2["snapshots"])
    assert page2["snapshots"][0]["snapshot_id"] == body["snapshots"][2]["snapshot_id"]
    whole = await body_of(await c.get("/api/v1/twins/checkout/history", params={"limit": body["count"]}))
    assert whole["next_before"] is None, "a page that ends with the oldest snapshot says it is the last"


async def test_history_reaches_the_store_beyond_memory(api: Api) -> None:
    twin_id = api.facade.engine.get("checkout").twin_id
    old = StateHistoryEntry.create(snapshot_id="snap_from_store", twin_id=twin_id, timestamp=T0 - 3600,
                                   state_snapshot={"expected_state": {"cpu_usage": 10.0}}, metrics={},
                                   health_score=100.0, change_reason="before a restart")
    await api.store.write(Outbox(snapshots=[old]))
    body = await body_of(await api.client.get("/api/v1/twins/checkout/history?limit=1000"))
    assert body["snapshots"][-1]["snapshot_id"] == "snap_from_store"


@pytest.mark.parametrize("query, field", [("limit=0", "limit"), ("limit=abc", "limit"),
                                          ("limit=100000", "limit"), ("before=yesterday", "before")])
async def test_history_bad_query_is_400_naming_the_parameter(api: Api, query: str, field: str) -> None:
    resp = await api.client.get(f"/api/v1/twins/checkout/history?{query}")
    assert resp.status == 400
    assert f"'{field}'" in (await body_of(resp))["error"]


async def test_events_filter_by_twin_type_and_since(api: Api) -> None:
    c = api.client
    body = await body_of(await c.get("/api/v1/events"))
    assert_matches(body, "/api/v1/events", "get", 200)
    assert {e["type"] for e in body["events"]} >= {"twin_created"}
    created = await body_of(await c.get("/api/v1/events?type=twin_created&twin=search"))
    search_id = api.facade.engine.get("search").twin_id
    assert created["count"] == 1 and created["events"][0]["twin_id"] == search_id
    later = await body_of(await c.get(f"/api/v1/events?since={api.clock.now + 1}"))
    assert later["count"] == 0
    iso_since = await body_of(await c.get("/api/v1/events?since=2000-01-01T00:00:00Z&limit=1"))
    assert iso_since["count"] == 1


@pytest.mark.parametrize("query, field", [("type=party", "type"), ("since=soon", "since"),
                                          ("limit=-1", "limit"), ("before=later", "before"),
                                          ("before_id=evt_1_1", "before_id"),
                                          (f"before=1&before_id={'x' * 201}", "before_id")])
async def test_events_bad_query_is_400(api: Api, query: str, field: str) -> None:
    resp = await api.client.get(f"/api/v1/events?{query}")
    assert resp.status == 400
    assert f"'{field}'" in (await body_of(resp))["error"]


def event_ids(body: dict[str, Any]) -> list[str]:
    return [e["event_id"] for e in body["events"]]


async def all_events(client: TestClient[Any, Any], limit: int, **params: str) -> list[str]:
    """Every event, walking the pages by next_before / next_before_id."""
    ids: list[str] = []
    query: dict[str, Any] = {"limit": limit, **params}
    while True:
        body = await body_of(await client.get("/api/v1/events", params=query))
        assert_matches(body, "/api/v1/events", "get", 200)
        ids += event_ids(body)
        if body["next_before"] is None:
            assert body["next_before_id"] is None
            return ids
        query = {**query, "before": repr(body["next_before"]), "before_id": body["next_before_id"]}


async def test_events_come_from_the_store_with_those_not_yet_written_once(make_api: ApiFactory,
                                                                          tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "twins.db")
    api: Api = await make_api(store=store)
    try:
        stored = [e.event_id for e in await store.list_events(EventQuery(limit=EVENTS_LIMIT_MAX))]
        assert stored, "creating and feeding the twins stored events"
        late = api.facade.engine.create_twin("late", at=api.clock.now)   # emitted, not yet written
        (unwritten,) = [e.event_id for e in api.facade.engine.events(twin=late.twin_id)]
        body = await body_of(await api.client.get("/api/v1/events"))
        assert_matches(body, "/api/v1/events", "get", 200)
        assert body["source"] == "store" and "message" not in body
        assert sorted(event_ids(body)) == sorted([*stored, unwritten])
        await store.write(api.facade.engine.drain())                        # now written too: still once
        again = await body_of(await api.client.get("/api/v1/events"))
        assert event_ids(again) == event_ids(body)
        # a new engine over the same file (a restart): nothing in memory, everything from the store
        fresh = TwinEngine(clock=api.clock, store=store)
        app = build_app(facade=fresh, status=ServiceStatus(), registry=CollectorRegistry(),
                        engine_lock=asyncio.Lock(), auth_token=None)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            after = await body_of(await client.get("/api/v1/events"))
        assert fresh.engine.events() == []
        assert event_ids(after) == event_ids(body) and after["count"] == len(stored) + 1
    finally:
        await store.close()


async def test_event_pages_follow_next_before_and_before_id_without_gaps(make_api: ApiFactory,
                                                                         tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "twins.db")
    api: Api = await make_api(store=store)
    try:
        for i in range(5):              # one instant, five events: pages must continue inside the group
            await api.facade.create_twin(f"svc-{i}", SystemType.WEB_SERVICE)
        api.facade.engine.create_twin("unwritten", at=api.clock.now)
        full = await body_of(await api.client.get("/api/v1/events"))
        assert full["next_before"] is None and full["count"] >= 8
        stamps = [(e["timestamp_unix"], e["event_id"]) for e in full["events"]]
        assert stamps == sorted(stamps, reverse=True)
        for limit in (1, 2, 3):
            assert await all_events(api.client, limit) == event_ids(full), limit
        created = await all_events(api.client, 2, type="twin_created")
        assert created == [i for i, e in zip(event_ids(full), full["events"], strict=True)
                           if e["type"] == "twin_created"]
        exact = await body_of(await api.client.get("/api/v1/events", params={"limit": full["count"]}))
        assert exact["next_before"] is None, "a page that ends with the last event says it is the last"
    finally:
        await store.close()


async def test_events_fall_back_to_memory_and_say_so_when_the_store_does_not_answer(
        make_api: ApiFactory, caplog: pytest.LogCaptureFixture) -> None:
    down = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", connect_timeout_s=2.0)
    api: Api = await make_api(store=down, sink=lambda outbox: None)     # nothing listens at that port
    with caplog.at_level(logging.WARNING, logger="sidecar.api"):
        for _ in range(2):
            body = await body_of(await api.client.get("/api/v1/events"))
            assert_matches(body, "/api/v1/events", "get", 200)
            assert body["source"] == "memory" and body["message"] == EVENTS_FROM_MEMORY_MESSAGE
            assert {e["type"] for e in body["events"]} == {"twin_created"}
    warned = [r for r in caplog.records if "events served from memory" in r.getMessage()]
    assert len(warned) == 1, "one line per outage, not one per request"


# ------------------------------------------------------------------------------------------- writes

async def test_set_expected_then_clear_with_null(api: Api) -> None:
    c = api.client
    resp = await c.put("/api/v1/twins/checkout/expected", json={"cpu_usage": 50, "latency_ms": 200},
                       headers=AUTH)
    assert resp.status == 200
    body = await body_of(resp)
    assert_matches(body, "/api/v1/twins/{twin}/expected", "put", 200)
    assert body["expected_state"] == {"cpu_usage": 50.0, "request_latency_ms": 200.0}
    cleared = await body_of(await c.put("/api/v1/twins/checkout/expected", json={"cpu_usage": None},
                                        headers=AUTH))
    assert cleared["expected_state"] == {"request_latency_ms": 200.0}
    status = await body_of(await c.get("/api/v1/twins/checkout"))
    assert status["metrics"]["request_latency_ms"]["expected_source"] == "manual"
    assert status["metrics"]["cpu_usage"]["expected_source"] == "learned"


@pytest.mark.parametrize("payload, needle", [
    ({"cpu_usage": "fifty"}, "'cpu_usage'"),
    ({"cpu_usage": True}, "'cpu_usage'"),
    ({}, "at least one metric"),
    ([1, 2], "JSON object"),
])
async def test_bad_expected_body_is_400_naming_the_field(api: Api, payload: Any, needle: str) -> None:
    resp = await api.client.put("/api/v1/twins/checkout/expected", json=payload, headers=AUTH)
    assert resp.status == 400
    assert needle in (await body_of(resp))["error"]


async def test_non_json_and_empty_bodies_are_400(api: Api) -> None:
    c = api.client
    for data in (b"{not json", b"", b"\xff\xfe"):
        resp = await c.put("/api/v1/twins/checkout/expected", data=data,
                           headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400, data
        assert "request body" in (await body_of(resp))["error"]


async def test_rollback_restores_the_earlier_expected_state(api: Api) -> None:
    c = api.client
    first = await body_of(await c.put("/api/v1/twins/checkout/expected", json={"cpu_usage": 50},
                                      headers=AUTH))
    await c.put("/api/v1/twins/checkout/expected", json={"cpu_usage": 80}, headers=AUTH)
    # the snapshot taken before the first change holds "nothing expected"
    resp = await c.post("/api/v1/twins/checkout/rollback", json={"snapshot_id": first["snapshot_id"]},
                        headers=AUTH)
    assert resp.status == 200
    body = await body_of(resp)
    assert_matches(body, "/api/v1/twins/{twin}/rollback", "post", 200)
    assert body["success"] is True and body["expected_state"] is None
    status = await body_of(await c.get("/api/v1/twins/checkout"))
    assert status["expected_state"] is None
    events = await body_of(await c.get("/api/v1/events?type=rollback"))
    assert events["count"] == 1


async def test_rollback_errors(api: Api) -> None:
    c = api.client
    missing = await c.post("/api/v1/twins/checkout/rollback", json={"snapshot_id": "snap_nope"}, headers=AUTH)
    assert missing.status == 404 and "snap_nope" in (await body_of(missing))["error"]
    for payload in ({}, {"snapshot_id": ""}, {"snapshot_id": 7}):
        resp = await c.post("/api/v1/twins/checkout/rollback", json=payload, headers=AUTH)
        assert resp.status == 400 and "'snapshot_id'" in (await body_of(resp))["error"]


async def test_corrupt_snapshot_is_409_on_rollback_and_history(api: Api) -> None:
    twin_id = api.facade.engine.get("checkout").twin_id
    good = StateHistoryEntry.create(snapshot_id="snap_tampered", twin_id=twin_id, timestamp=T0 - 60,
                                    state_snapshot={"expected_state": {"cpu_usage": 10.0}}, metrics={},
                                    health_score=100.0, change_reason="old")
    tampered = dataclasses.replace(good, state_snapshot={"expected_state": {"cpu_usage": 99.0}})
    await api.store.write(Outbox(snapshots=[tampered]))
    resp = await api.client.post("/api/v1/twins/checkout/rollback", json={"snapshot_id": "snap_tampered"},
                                 headers=AUTH)
    assert resp.status == 409
    assert "checksum" in (await body_of(resp))["error"]
    hist = await api.client.get("/api/v1/twins/checkout/history?limit=1000")
    assert hist.status == 409
    # and the twin was left alone
    assert api.facade.engine.get("checkout").expected_state is None


async def test_simulate_returns_a_reproducible_result(api: Api) -> None:
    c = api.client
    scenario = {"type": "traffic_spike", "traffic_multiplier": 5, "duration_minutes": 10, "seed": 3}
    resp = await c.post("/api/v1/twins/checkout/simulate", json=scenario, headers=AUTH)
    assert resp.status == 200
    body = await body_of(resp)
    assert_matches(body, "/api/v1/twins/{twin}/simulate", "post", 200)
    assert 0.0 <= body["failure_probability"] <= 1.0
    again = await body_of(await c.post("/api/v1/twins/checkout/simulate", json=scenario, headers=AUTH))
    assert again == body


@pytest.mark.parametrize("payload, needle", [
    ({"traffic_multiplier": 5}, "'type'"),
    ({"type": "meteor"}, "'type'"),
    ({"type": "traffic_spike", "traffic_multiplier": "lots"}, "'traffic_multiplier'"),
    ({"type": "load_test", "warp": 9}, "'warp'"),
    ({"type": "load_test", "seed": -1}, "'seed'"),
])
async def test_bad_scenario_is_400_naming_the_field(api: Api, payload: dict[str, Any], needle: str) -> None:
    resp = await api.client.post("/api/v1/twins/checkout/simulate", json=payload, headers=AUTH)
    assert resp.status == 400
    assert needle in (await body_of(resp))["error"]


# ------------------------------------------------------------------------------------------- auth & limits

WRITES = [("post", "/api/v1/twins/checkout/rollback", {"snapshot_id": "snap_x"}),
          ("put", "/api/v1/twins/checkout/expected", {"cpu_usage": 50}),
          ("post", "/api/v1/twins/checkout/simulate", {"type": "load_test"})]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}])
async def test_writes_need_the_bearer_token(api: Api, headers: dict[str, str]) -> None:
    for method, path, payload in WRITES:
        resp = await api.client.request(method, path, json=payload, headers=headers)
        assert resp.status == 401, (method, path)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        text = await resp.text()
        assert TOKEN not in text and "wrong" not in text
    assert api.facade.engine.get("checkout").expected_state is None, "nothing changed"


GUESS = "guess-5b1e77"


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "api authentication refused"]


@pytest.mark.parametrize("headers, reason", [
    ({}, "missing"),
    ({"Authorization": f"Bearer {GUESS}"}, "wrong token"),
    ({"Authorization": f"Bearer {TOKEN}{GUESS}"}, "wrong token"),      # the real token, and more
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "wrong token"),        # all but its last character
    ({"Authorization": TOKEN}, "not a bearer token"),                  # the token without a scheme
    ({"Authorization": f"Basic {TOKEN}"}, "not a bearer token"),
    ({"Authorization": "Bearer "}, "empty bearer token"),
])
async def test_a_refused_authentication_is_logged_without_the_token(
        api: Api, caplog: pytest.LogCaptureFixture, headers: dict[str, str], reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar.api"):
        resp = await api.client.put("/api/v1/twins/checkout/expected", json={"cpu_usage": 50}, headers=headers)
    assert resp.status == 401
    (line,) = refusal_lines(caplog)
    assert line.levelno == logging.WARNING
    fields = {k: getattr(line, k) for k in ("client", "method", "path", "reason", "refused")}
    assert fields == {"client": "127.0.0.1", "method": "PUT", "path": "/api/v1/twins/checkout/expected",
                      "reason": reason, "refused": 1}
    rendered = [JsonFormatter().format(r) for r in caplog.records] + [TextFormatter().format(r)
                                                                     for r in caplog.records]
    everything = "\n".join(rendered) + caplog.text + repr([r.__dict__ for r in caplog.records])
    for secret in (TOKEN, TOKEN[:6], TOKEN[-6:], GUESS):
        assert secret not in everything, secret


async def test_a_flood_of_refusals_writes_one_line_per_client_per_minute(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar.api"):
        for _ in range(30):
            resp = await api.client.post("/api/v1/twins/checkout/simulate", json={"type": "load_test"},
                                         headers={"Authorization": f"Bearer {GUESS}"})
            assert resp.status == 401
    assert len(refusal_lines(caplog)) == 1


def test_refusals_past_the_minute_are_logged_with_their_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    refusals = RefusalLog(every_s=60.0, max_clients=2, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="sidecar.api"):
        for _ in range(50):
            refusals.refused("10.0.0.1", "PUT", "/p", "wrong token")
        refusals.refused("10.0.0.2", "PUT", "/p", "missing")             # another client: its own line
        now[0] += 61.0
        refusals.refused("10.0.0.1", "POST", "/q", "wrong token")
        lines = refusal_lines(caplog)
        assert [(r.client, r.refused) for r in lines] == [("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.1", 50)]
        caplog.clear()
        # two addresses are remembered: 10.0.0.2, idle for a minute, makes room for 10.0.0.3; the others share
        # one entry, so a flood from many addresses still writes one line a minute
        for i in range(3, 20):
            refusals.refused(f"10.0.0.{i}", "PUT", "/p", "missing")
        assert [r.client for r in refusal_lines(caplog)] == ["10.0.0.3", "10.0.0.4"]


async def test_auth_is_checked_before_the_twin_is_looked_up(api: Api) -> None:
    resp = await api.client.put("/api/v1/twins/nope/expected", json={"cpu_usage": 1})
    assert resp.status == 401


async def test_reads_stay_open_with_a_token_configured(api: Api) -> None:
    for path in ("/api/v1/twins", "/api/v1/twins/checkout", "/api/v1/twins/checkout/history",
                 "/api/v1/events", "/api/v1/openapi.json", "/metrics"):
        assert (await api.client.get(path)).status == 200, path


async def test_without_a_token_writes_are_open(make_api: ApiFactory) -> None:
    api: Api = await make_api(auth_token=None)
    resp = await api.client.put("/api/v1/twins/checkout/expected", json={"cpu_usage": 50})
    assert resp.status == 200


async def test_a_rotated_token_file_takes_effect_without_a_restart(make_api: ApiFactory, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("first-token\n")
    api: Api = await make_api(auth_token=SecretFile(str(secret)).read)

    async def put(token: str) -> int:
        resp = await api.client.put("/api/v1/twins/checkout/expected", json={"cpu_usage": 50},
                                    headers={"Authorization": f"Bearer {token}"})
        return resp.status

    assert await put("first-token") == 200
    secret.write_text("second-token\n")
    os.utime(secret, (1e9, 1e9))          # a new mtime even within the file system's timestamp resolution
    assert await put("first-token") == 401
    assert await put("second-token") == 200
    secret.unlink()                       # mid-rotation: unreadable fails closed, the old token does not linger
    assert await put("second-token") == 401
    secret.write_text("")
    assert await put("") == 401, "an empty token file must not open the writes"


async def test_body_over_the_limit_is_413(make_api: ApiFactory) -> None:
    api: Api = await make_api(max_body_bytes=512)
    big = {f"metric_{i}": i for i in range(200)}
    resp = await api.client.put("/api/v1/twins/checkout/expected", json=big, headers=AUTH)
    assert resp.status == 413
    assert "too large" in (await body_of(resp))["error"]
    assert api.facade.engine.get("checkout").expected_state is None


async def test_openapi_document_is_served(api: Api) -> None:
    resp = await api.client.get("/api/v1/openapi.json")
    assert resp.status == 200
    assert await body_of(resp) == json.loads(json.dumps(OPENAPI))


# ------------------------------------------------------------------------------------------- helpers

def test_jsonable_turns_non_finite_numbers_into_null() -> None:
    data = {"a": float("nan"), "b": [np.float64(np.inf), np.int64(3)], "c": np.array([1.5, np.nan]),
            "d": (1, "x")}
    assert jsonable(data) == {"a": None, "b": [None, 3], "c": [1.5, None], "d": [1, "x"]}


def test_parse_expected_accepts_numbers_and_null_only() -> None:
    assert parse_expected({"cpu_usage": 5, "memory_usage": None}) == {"cpu_usage": 5.0, "memory_usage": None}
    with pytest.raises(ApiError, match="'x'"):
        parse_expected({"x": float("inf")})

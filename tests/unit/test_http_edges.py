"""HTTP edges on a real server (the service's runner on a loopback port, real sockets): malformed requests
logged once per client per minute without a traceback, Allow on every 405, empty time parameters refused,
JSON bodies only as JSON (415 otherwise), a deadline for request headers (slowloris), and the schema nits
(an integral float is an integer; an empty metric name is refused, as the schema says)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar import server as server_module
from sidecar.engine.records import SystemType
from sidecar.engine.twin import TwinEngine
from sidecar.openapi import OPENAPI
from sidecar.server import SidecarRunner, build_app
from sidecar.status import ServiceStatus


class Running:
    def __init__(self, port: int, facade: TwinEngine) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.facade = facade

    def raw(self, data: bytes, *, wait: float = 5.0) -> bytes:
        """Send bytes on a fresh connection; what comes back until the server closes it (or ``wait`` passes)."""
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(data)
            s.settimeout(wait)
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except TimeoutError:
                pass
            return out


@pytest.fixture
async def running(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    monkeypatch.setattr(server_module, "HEADER_TIMEOUT_S", 1.0)      # the deadline's behaviour, sooner
    now = [1_700_000_000.0]
    facade = TwinEngine(clock=lambda: now[0])
    await facade.create_twin("svc", SystemType.API_GATEWAY)
    for i in range(30):
        now[0] += 15.0
        await facade.sync_twin("svc", {"cpu_usage": 30.0 + i % 5, "request_latency_ms": 120.0})
    app = build_app(facade=facade, status=ServiceStatus(), registry=CollectorRegistry(), engine_lock=asyncio.Lock(),
                    auth_token=None)
    runner = SidecarRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield Running(int(runner.addresses[0][1]), facade)
    await runner.cleanup()


async def in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


# --------------------------------------------------------------------------- malformed requests

async def test_500_malformed_requests_write_at_most_a_couple_of_lines_without_a_traceback(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    bad = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: a\x00b\r\n\r\n"
    with caplog.at_level(logging.DEBUG):
        for _ in range(500):
            answer = await in_thread(running.raw, bad, wait=2.0)
            assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:80]
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    (first, *_) = lines
    assert first.levelno == logging.WARNING and first.getMessage() == "http request malformed"
    assert first.exc_info is None and first.reason == "Invalid header value char"   # type: ignore[attr-defined]
    assert first.client == "127.0.0.1" and first.requests == 1                       # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_line_past_the_minute_counts_what_it_stands_for() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    from sidecar.api import ClientThrottle
    now = [0.0]
    malformed = server_module.MalformedRequestLog(throttle=ClientThrottle(every_s=60.0, clock=lambda: now[0]))
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger("sidecar.server").addHandler(keep)
    try:
        quoting = BadHttpMessage("Bad header:\n  b'Authorization: Bearer s3cret'")
        for _ in range(30):
            malformed.exception("Error handling request from %s", "10.0.0.9", exc_info=quoting)
        now[0] = 61.0
        malformed.exception("Error handling request from %s", "10.0.0.9", exc_info=BadHttpMessage("Bad header"))
    finally:
        logging.getLogger("sidecar.server").removeHandler(keep)
    assert [r.requests for r in seen] == [1, 30]                                       # type: ignore[attr-defined]
    assert all("s3cret" not in str(r.__dict__) for r in seen)                          # the quoted bytes never


# --------------------------------------------------------------------------- 405, empty parameters, 415

async def test_every_405_carries_allow(running: Running) -> None:
    async with httpx.AsyncClient(base_url=running.url) as client:
        for method, path, allowed in (("POST", "/api/v1/twins", {"GET", "HEAD"}),
                                      ("DELETE", "/api/v1/twins/svc/expected", {"PUT"}),
                                      ("GET", "/api/v1/twins/svc/simulate", {"POST"}),
                                      ("POST", "/metrics", {"GET", "HEAD"})):
            r = await client.request(method, path)
            assert r.status_code == 405, (method, path)
            assert set(r.headers["Allow"].replace(" ", "").split(",")) == allowed, (method, path)


@pytest.mark.parametrize("path,param", [("/api/v1/events?since=", "since"), ("/api/v1/events?before=", "before"),
                                        ("/api/v1/twins/svc/history?before=", "before"),
                                        ("/api/v1/events?limit=", "limit"),
                                        ("/api/v1/events?since=1&before=", "before")])
async def test_an_empty_parameter_is_refused_naming_it(running: Running, path: str, param: str) -> None:
    async with httpx.AsyncClient(base_url=running.url) as client:
        r = await client.get(path)
    assert r.status_code == 400
    assert r.json()["error"].startswith(f"query parameter {param!r}: empty")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_a_json_body_not_sent_as_json_is_refused(running: Running, content_type: str | None) -> None:
    """A cross-site form posts text/plain or form-encoded: with auth off it must not change a twin."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    before = dict(running.facade.engine.get("svc").expected_state or {})
    async with httpx.AsyncClient(base_url=running.url) as client:
        for method, path, body in (("PUT", "/api/v1/twins/svc/expected", b'{"cpu_usage": 77}'),
                                   ("POST", "/api/v1/twins/svc/simulate", b'{"type": "load_test"}'),
                                   ("POST", "/api/v1/twins/svc/rollback", b'{"snapshot_id": "x"}')):
            r = await client.request(method, path, content=body, headers=headers)
            assert r.status_code == 415, (method, path, r.text)
            assert r.json()["error"].startswith("request body: Content-Type must be application/json")
    assert dict(running.facade.engine.get("svc").expected_state or {}) == before


async def test_json_and_json_suffixed_types_are_taken(running: Running) -> None:
    async with httpx.AsyncClient(base_url=running.url) as client:
        for ct in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                   "application/merge-patch+json"):
            r = await client.put("/api/v1/twins/svc/expected", content=b'{"cpu_usage": 40}',
                                 headers={"Content-Type": ct})
            assert r.status_code == 200, (ct, r.text)


# --------------------------------------------------------------------------- header deadline

async def test_connections_that_never_finish_their_headers_are_closed_and_probes_stay_fast(
        running: Running) -> None:
    loop = asyncio.get_running_loop()
    conns = []
    for i in range(100):
        s = socket.create_connection(("127.0.0.1", running.port))
        if i % 2:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")   # headers trickling, never finished
        conns.append(s)                                                   # or nothing sent at all
    try:
        async with httpx.AsyncClient(base_url=running.url) as client:
            for _ in range(5):
                t0 = loop.time()
                assert (await client.get("/healthz")).status_code == 200
                assert loop.time() - t0 < 0.5
        started = time.monotonic()
        for s in conns:
            s.settimeout(5.0)
            assert await in_thread(s.recv, 100) == b""                   # closed by the server
        assert time.monotonic() - started < 4.0
    finally:
        for s in conns:
            s.close()


async def test_a_kept_alive_connection_is_not_cut_between_requests(running: Running) -> None:
    """Only unfinished headers are timed: a scraper's idle keep-alive connection is not closed by it."""
    def two_requests() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", running.port)) as s:
            s.settimeout(5.0)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = s.recv(65536)
            time.sleep(2.0)                                               # twice the (test's) header deadline
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return first, s.recv(65536)
    first, second = await in_thread(two_requests)
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")


def test_the_header_deadline_is_a_few_seconds() -> None:
    assert 1.0 <= server_module.HEADER_TIMEOUT_S <= 10.0


# --------------------------------------------------------------------------- schema nits

async def test_an_integral_float_seed_is_an_integer(running: Running) -> None:
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
        r = await client.post("/api/v1/twins/svc/simulate", json={"type": "load_test", "seed": 3179181.0})
        assert r.status_code == 200, r.text
        assert r.json()["seed"] == 3179181 and isinstance(r.json()["seed"], int)
        same = await client.post("/api/v1/twins/svc/simulate", json={"type": "load_test", "seed": 3179181})
        assert same.json()["failure_probability"] == r.json()["failure_probability"]
        for bad in (1.5, -1.0, "3", True):
            r = await client.post("/api/v1/twins/svc/simulate", json={"type": "load_test", "seed": bad})
            assert r.status_code == 400 and "'seed'" in r.json()["error"], bad


async def test_an_empty_metric_name_is_refused_as_the_schema_says(running: Running) -> None:
    names = OPENAPI["components"]["schemas"]["ExpectedRequest"]["propertyNames"]
    assert names["minLength"] == 1 and names["maxLength"] == 200
    async with httpx.AsyncClient(base_url=running.url) as client:
        r = await client.put("/api/v1/twins/svc/expected", json={"": 2.0})
    assert r.status_code == 400 and r.json()["error"].startswith("field name")


async def test_bodies_are_held_to_their_schema(running: Running) -> None:
    async with httpx.AsyncClient(base_url=running.url) as client:
        r = await client.post("/api/v1/twins/svc/rollback", json={"snapshot_id": "snap_x", "extra": 1})
        assert r.status_code == 400 and r.json()["error"].startswith("field 'extra': not known")
        r = await client.post("/api/v1/twins/svc/simulate", json={"type": "load_test", "required_multiplier": None})
        assert r.status_code == 400 and "'required_multiplier': expected a value, got null" in r.json()["error"]
        r = await client.post("/api/v1/twins/svc/simulate", json={"type": "load_test", "description": {}})
        assert r.status_code == 400 and r.json()["error"].startswith("field 'description': expected a string")


def test_the_write_routes_document_415() -> None:
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                assert "415" in op["responses"], (method, path)

"""The Prometheus client: real Prometheus for answers, respx for faults a real one cannot produce."""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import respx
from aiohttp import web
from helpers.prom import PromEnv

from sidecar.config import BasicAuth, PrometheusConfig, SecretFile
from sidecar.errors import SourceError
from sidecar.prometheus import PrometheusClient, QueryFailed, SourceUnavailable, parse_value
from sidecar.testing import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(prom_env: PromEnv) -> AsyncIterator[PrometheusClient]:
    async with PrometheusClient(PrometheusConfig(url=prom_env.url, timeout_s=5.0)) as c:
        yield c


# --------------------------------------------------------------------------- real Prometheus


async def test_instant_vector_is_typed_float64_with_labels(client: PrometheusClient) -> None:
    at = time.time()
    vec = await client.query('test_gauge{job="target"}', at=at)
    assert vec.at == at and vec.values.dtype == np.float64 and vec.unparseable == 0
    by_k = {lbl["k"]: v for lbl, v in zip(vec.labels, vec.values, strict=True)}
    assert by_k["a"] == 1.5
    assert math.isnan(by_k["nan"])
    assert by_k["inf"] == math.inf and by_k["neginf"] == -math.inf
    assert all(lbl["__name__"] == "test_gauge" and lbl["job"] == "target" for lbl in vec.labels)


async def test_scalar_and_empty_results(client: PrometheusClient) -> None:
    scalar = await client.query("1 + 2", at=time.time())
    assert scalar.labels == ({},) and scalar.values.tolist() == [3.0]
    empty = await client.query('test_gauge{k="absent"}', at=time.time())
    assert len(empty) == 0 and empty.values.shape == (0,)


async def test_evaluation_time_is_honoured(prom_env: PromEnv, client: PrometheusClient) -> None:
    at = prom_env.history_start + 10 * prom_env.step
    vec = await client.query('test_history{series="ramp"}', at=at)
    assert vec.values.tolist() == [10.0]


async def test_range_query_lands_on_the_step_grid(prom_env: PromEnv, client: PrometheusClient) -> None:
    start = prom_env.history_start
    end = start + 9 * prom_env.step
    m = await client.query_range("test_history", start, end, prom_env.step)
    assert m.times.tolist() == [start + i * prom_env.step for i in range(10)]
    assert m.values.shape == (2, 10)
    rows = {lbl["series"]: row for lbl, row in zip(m.labels, m.values, strict=True)}
    assert rows["ramp"].tolist() == [float(i) for i in range(10)]
    # gappy has only even steps, but Prometheus' 5 min lookback fills the odd ones with the previous value
    assert rows["gappy"].tolist() == [float(i - i % 2) for i in range(10)]
    before = await client.query_range("test_history", start - 3600, start - 601, prom_env.step)
    assert len(before) == 0


async def test_query_error_carries_error_type_and_query(client: PrometheusClient) -> None:
    with pytest.raises(QueryFailed) as info:
        await client.query("rate(test_gauge[5m]", at=time.time())
    assert info.value.error_type == "bad_data" and info.value.query == "rate(test_gauge[5m]"
    assert "bad_data" in str(info.value)
    assert isinstance(info.value, SourceError)


async def test_unreachable_prometheus_is_source_unavailable() -> None:
    cfg = PrometheusConfig(url=f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    async with PrometheusClient(cfg) as c:
        with pytest.raises(SourceUnavailable, match="cannot reach") as info:
            await c.query("up", at=time.time())
    assert isinstance(info.value.__cause__, httpx.ConnectError)


# --------------------------------------------------------------------------- credentials, headers, TLS


async def _recording_server(seen: list[dict[str, str]], ssl_ctx: object = None) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        seen.append({**request.headers, **{f"form:{k}": v for k, v in (await request.post()).items()}})
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    app = web.Application()
    app.router.add_post("/prefix/api/v1/query", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_ctx).start()  # type: ignore[arg-type]
    return runner, port


async def test_headers_bearer_token_and_path_prefix(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    seen: list[dict[str, str]] = []
    runner, port = await _recording_server(seen)
    try:
        cfg = PrometheusConfig(url=f"http://127.0.0.1:{port}/prefix", headers={"X-Scope-OrgID": "tenant-7"},
                               bearer_token_file=SecretFile(str(token)))
        async with PrometheusClient(cfg) as c:
            await c.query("up", at=1700000000.0)
            token.write_text("tok-2\n")
            import os
            os.utime(token, (1, 1))
            await c.query("up", at=1700000000.0)
    finally:
        await runner.cleanup()
    assert seen[0]["X-Scope-OrgID"] == "tenant-7"
    assert seen[0]["Authorization"] == "Bearer tok-1" and seen[1]["Authorization"] == "Bearer tok-2"
    assert seen[0]["form:query"] == "up" and seen[0]["form:time"] == "1700000000.000"


async def test_basic_auth(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2")
    seen: list[dict[str, str]] = []
    runner, port = await _recording_server(seen)
    try:
        cfg = PrometheusConfig(url=f"http://127.0.0.1:{port}/prefix",
                               basic_auth=BasicAuth("me", SecretFile(str(pw))))
        async with PrometheusClient(cfg) as c:
            await c.query("up", at=time.time())
    finally:
        await runner.cleanup()
    assert seen[0]["Authorization"] == httpx.BasicAuth("me", "hunter2")._auth_header


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="openssl is needed to make a test CA")
async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    import ssl

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    seen: list[dict[str, str]] = []
    runner, port = await _recording_server(seen, ctx)
    try:
        url = f"https://127.0.0.1:{port}/prefix"
        async with PrometheusClient(PrometheusConfig(url=url, tls_ca_file=str(cert))) as c:
            assert len(await c.query("up", at=time.time())) == 0
        async with PrometheusClient(PrometheusConfig(url=url)) as c:
            with pytest.raises(SourceUnavailable):
                await c.query("up", at=time.time())
    finally:
        await runner.cleanup()
    assert len(seen) == 1


# --------------------------------------------------------------------------- faults (respx)

FAKE = "http://prometheus.invalid:9090"


@pytest.fixture
async def faked() -> AsyncIterator[tuple[respx.MockRouter, PrometheusClient]]:
    with respx.mock(base_url=FAKE, assert_all_called=False) as router:
        async with PrometheusClient(PrometheusConfig(url=FAKE, timeout_s=0.5)) as c:
            yield router, c


async def test_timeout_is_source_unavailable(faked: tuple[respx.MockRouter, PrometheusClient]) -> None:
    router, c = faked
    router.post("/api/v1/query").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(SourceUnavailable, match="no answer within") as info:
        await c.query("up", at=1.0)
    assert info.value.query == "up"


async def test_slow_answer_is_cut_at_the_timeout(faked: tuple[respx.MockRouter, PrometheusClient]) -> None:
    router, c = faked

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    router.post("/api/v1/query").mock(side_effect=slow)
    with pytest.raises(SourceUnavailable, match=r"no answer within 0\.5s"):
        await c.query("up", at=1.0)


@pytest.mark.parametrize(("status", "body", "match"), [
    (503, b"<html>Service Unavailable</html>", "HTTP 503, body is not JSON"),
    (502, b"", "HTTP 502, body is not JSON"),
    (200, b'{"status": "success", "data": {"resultType": "vec', "not JSON"),
    (200, b'[1, 2, 3]', "not a Prometheus API response"),
    (200, b'{"status": "success"}', "without data"),
    (200, b'{"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}',
     "expected a vector"),
    (200, b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": 5}]}}',
     "malformed sample"),
    (503, b'{"status": "error", "errorType": "unavailable", "error": "ingesters down"}',
     "HTTP 503: unavailable"),
])
async def test_garbage_and_5xx_are_source_unavailable(
        faked: tuple[respx.MockRouter, PrometheusClient], status: int, body: bytes, match: str) -> None:
    router, c = faked
    router.post("/api/v1/query").mock(return_value=httpx.Response(status, content=body))
    with pytest.raises(SourceUnavailable, match=match):
        await c.query("up", at=1.0)


PARTIAL = {"status": "success", "warnings": ["partial response: store 3 unreachable"],
           "data": {"resultType": "vector", "result": [{"metric": {"a": "1"}, "value": [1.0, "2"]}]}}


async def test_partial_result_with_warnings_is_refused(
        faked: tuple[respx.MockRouter, PrometheusClient]) -> None:
    router, c = faked
    router.post("/api/v1/query").mock(return_value=httpx.Response(200, json=PARTIAL))
    with pytest.raises(QueryFailed, match="store 3 unreachable") as info:
        await c.query("up", at=1.0)
    assert info.value.error_type == "warnings"


async def test_partial_result_accepted_when_configured() -> None:
    with respx.mock(base_url=FAKE) as router:
        router.post("/api/v1/query").mock(return_value=httpx.Response(200, json=PARTIAL))
        async with PrometheusClient(PrometheusConfig(url=FAKE, accept_warnings=True)) as c:
            vec = await c.query("up", at=1.0)
    assert vec.values.tolist() == [2.0] and vec.warnings == ("partial response: store 3 unreachable",)


async def test_unparseable_values_become_nan_and_are_counted(
        faked: tuple[respx.MockRouter, PrometheusClient]) -> None:
    router, c = faked
    raw = ["stale", "1e3", "-Inf", "NaN"]
    result = [{"metric": {"s": str(i)}, "value": [1.0, v]} for i, v in enumerate(raw)]
    router.post("/api/v1/query").mock(return_value=httpx.Response(
        200, json={"status": "success", "data": {"resultType": "vector", "result": result}}))
    vec = await c.query("up", at=1.0)
    assert vec.unparseable == 1
    assert math.isnan(vec.values[0]) and vec.values[1] == 1000.0 and vec.values[2] == -math.inf
    assert math.isnan(vec.values[3])


def test_parse_value() -> None:
    assert parse_value("+Inf") == math.inf and parse_value("-Inf") == -math.inf
    assert parse_value("0.25") == 0.25 and parse_value("stale") is None and parse_value(None) is None

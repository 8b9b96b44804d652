"""What the API acknowledged is not lost: a change answered 200 or 202 outlives retention's count for at least
``storage.retention_min_age``, and a partial change made while PostgreSQL was down at start adds to the stored
expected state when it is merged back, key by key (a real sidecar, the real PostgreSQL behind a TCP gate that
the test opens and closes, a real Prometheus)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import yaml
from helpers.prom import PromEnv

from sidecar.app import Service, start_service
from sidecar.config import load_config
from sidecar.store.base import decode_json
from sidecar.testing import free_port

pytestmark = pytest.mark.integration

METRICS = {"cpu_usage": 'test_gauge{k="a"}', "load1": 'test_gauge{k="a"} * 2'}


def rules(tmp_path: Path, prom_url: str, **storage: object) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_url}, "interval": "1s", "backfill": "0",
        "server": {"listen": "127.0.0.1:0"}, "storage": {"path": str(tmp_path / "twins.db"), **storage},
        "twins": [{"name": "svc", "metrics": METRICS}],
    }))
    return p


async def until(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def put_expected(svc: Service, body: dict[str, float]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
        return await client.put("/api/v1/twins/svc/expected", json=body)


async def test_retention_keeps_every_acknowledged_snapshot_younger_than_the_minimum_age(
        tmp_path: Path, prom_env: PromEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """retention_snapshots: 1 under a burst of changes, each answered 200: retention (as the writer runs it)
    drops none of them, since none is a day old."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    svc = await start_service(load_config(rules(tmp_path, prom_env.url, retention_snapshots=1)))
    try:
        await until(lambda: svc.status.first_round_done, "a round")
        acknowledged = []
        for v in range(5):
            r = await put_expected(svc, {"cpu_usage": 50.0 + v})
            assert r.status_code == 200 and r.json()["stored"] is True
            acknowledged.append(r.json()["snapshot_id"])
        assert svc.writer.retention is not None and svc.writer.retention.snapshot_min_age_s == 86400.0
        report = await svc.store.apply_retention(svc.writer.retention, now=time.time())
        assert report.snapshots == 0
        kept = {s.snapshot_id for s in await svc.store.list_snapshots(svc.engine.get("svc").twin_id, limit=100)}
        assert set(acknowledged) <= kept
        # a day later the count applies again (the twin's newest is always kept)
        report = await svc.store.apply_retention(svc.writer.retention, now=time.time() + 86400 + 60)
        assert report.snapshots == len(kept) - 1
    finally:
        await svc.shutdown()


class TcpGate:
    """A loopback TCP forwarder to the real PostgreSQL: closed, the database is down (connection refused)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._tasks):
            t.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)


@pytest.fixture
async def gate(pg_url: str) -> AsyncIterator[tuple[TcpGate, str]]:
    parts = urlsplit(pg_url)
    g = TcpGate(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{g.port}") if parts.port \
        else f"{parts.netloc}:{g.port}".replace(f"{parts.hostname}:", "127.0.0.1:")
    yield g, parts._replace(netloc=netloc).geturl()
    await g.close()


async def stored_expected(pg_url: str) -> dict[str, float]:
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow("SELECT definition FROM twin_definitions")
    finally:
        await conn.close()
    assert row is not None
    return dict(decode_json(row["definition"])["expected_state"])


async def test_a_partial_change_while_postgres_was_down_at_start_keeps_the_other_stored_keys(
        tmp_path: Path, prom_env: PromEnv, pg_url: str, gate: tuple[TcpGate, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    g, gated_url = gate
    path = rules(tmp_path, prom_env.url)
    first = await start_service(load_config(path))                  # DATABASE_URL: the database itself
    try:
        await until(lambda: first.status.first_round_done and "load1" in first.engine.metric_names(
            first.engine.get("svc").twin_id), "both metrics")
        r = await put_expected(first, {"cpu_usage": 60.0, "load1": 2.5})
        assert r.status_code == 200, r.text
    finally:
        await first.shutdown()
    assert await stored_expected(pg_url) == {"cpu_usage": 60.0, "load1": 2.5}

    monkeypatch.setenv("DATABASE_URL", gated_url)                   # through the gate, closed: down at start
    second = await start_service(load_config(path))
    try:
        await until(lambda: second.status.first_round_done, "a round")
        assert second.sink is not None and second.sink.pending
        r = await put_expected(second, {"cpu_usage": 77.5})
        assert r.status_code == 202 and r.json()["stored"] is False
        await g.open()                                              # PostgreSQL answers again
        await until(lambda: second.sink is not None and not second.sink.pending, "the merge", timeout=60)
        assert second.engine.get("svc").expected_state == {"cpu_usage": 77.5, "load1": 2.5}
        await until(lambda: second.status.store_up and second.status.store_backlog == 0, "the backlog written",
                    timeout=60)
    finally:
        await second.shutdown()
    assert await stored_expected(pg_url) == {"cpu_usage": 77.5, "load1": 2.5}

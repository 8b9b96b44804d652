"""A scrape while twins are being created (the roster's worker thread, under the engine lock) renders the view last
built, whole: it never rebuilds the view from the scrape's thread while the engine changes under it (families
skipped for arrays of different lengths, arrays grown under the rebuild); a stale view is rebuilt under the lock
once the lock is free. A real server on a loopback port, real sockets."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.engine.twin import TwinEngine
from sidecar.server import SidecarRunner, build_app
from sidecar.status import ServiceStatus

T0 = 1_700_000_000.0
TWINS = 3000


class Served:
    def __init__(self, url: str, facade: TwinEngine, lock: asyncio.Lock) -> None:
        self.url, self.facade, self.lock = url, facade, lock


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    facade = TwinEngine(clock=lambda: T0)
    lock = asyncio.Lock()
    app = build_app(facade=facade, status=ServiceStatus(), registry=CollectorRegistry(), engine_lock=lock,
                    auth_token=None)
    runner = SidecarRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield Served(f"http://127.0.0.1:{runner.addresses[0][1]}", facade, lock)
    await runner.cleanup()


def rows(body: str, family: str) -> int:
    return len(re.findall(rf"^{family}{{", body, flags=re.MULTILINE))


async def test_scrapes_during_twin_creation_are_whole_and_a_stale_view_is_rebuilt_once_the_lock_is_free(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    engine = served.facade.engine

    half, scraped = threading.Event(), threading.Event()

    def create() -> None:                         # as Roster.apply: a worker thread, under the engine lock
        for i in range(TWINS):
            if i == TWINS // 2:                   # half the twins made: a scrape happens now, whatever the host's load
                half.set()
                scraped.wait(timeout=30)
            engine.create_twin(f"t{i}", at=T0 + i)

    bodies: list[str] = []
    with caplog.at_level(logging.ERROR, logger="sidecar.exporter"):
        async with httpx.AsyncClient(timeout=30) as client:
            async with served.lock:
                creating = asyncio.create_task(asyncio.to_thread(create))
                while not creating.done():
                    r = await client.get(served.url + "/metrics")
                    assert r.status_code == 200
                    bodies.append(r.text)
                    if half.is_set():
                        scraped.set()
                await creating                      # the creation itself never tripped over a scrape
            assert engine.view_stale                # created outside a tick: the view is behind
            after = (await client.get(served.url + "/metrics")).text
    assert not [rec for rec in caplog.records if "label rows" in rec.getMessage()]
    assert scraped.is_set() and bodies               # at least one scrape in the middle of the creation
    for body in bodies:                             # the view last built: every per-twin family the same rows
        counts = {rows(body, f) for f in ("twin_health_score", "twin_drift", "twin_last_sync_timestamp_seconds")}
        assert len(counts) == 1
    assert rows(after, "twin_health_score") == rows(after, "twin_drift") == TWINS
    assert not engine.view_stale

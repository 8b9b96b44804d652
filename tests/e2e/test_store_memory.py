"""SQLite in memory (``storage.path: ":memory:"``, the chart's ``storage.type: memory``).

SQLite opens a new, empty database on every connection to ``:memory:``; a
store that opens one for its writer and another for its reader leaves the
reader with no tables ("no such table: schema_version" at start, 503 on
``/history``). These tests hold the store to one database shared by every read
and write for its whole life: the shared store contract (what needs a second
store on the same database does not apply), the reported symptoms, and the
assembled service against a real Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers.prom import PromEnv
from helpers.store_contract import T0, StoreContract, count, samples, snap, twin

from sidecar.engine.view import Outbox
from sidecar.errors import StoreError
from sidecar.status import ServiceStatus
from sidecar.store import RetentionPolicy, Store, open_store, schema
from sidecar.store.sqlite import SQLiteStore


class MemoryRaw:
    """Direct SQL on a memory store's database: only its own connection can reach it, so go through that."""

    def __init__(self, store: Store) -> None:
        assert isinstance(store, SQLiteStore) and store.memory
        self.store = store

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self.store._writer.run(fn)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self._run(lambda c: c.execute(sql, args).fetchall())
        return rows

    async def execute(self, sql: str, *args: Any) -> None:
        await self._run(lambda c: c.execute(sql, args))

    async def tamper(self, sql: str, *args: Any) -> None:
        trigger = schema.MIGRATIONS[0].statements("sqlite")[-1]

        def tx(c: sqlite3.Connection) -> None:
            c.execute("DROP TRIGGER twin_state_history_immutable")
            c.execute(sql, args)
            c.execute(trigger)

        await self._run(tx)


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = open_store(path=":memory:", status=ServiceStatus(), env={})
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def make_store() -> Callable[..., Awaitable[Store]]:
    pytest.skip("a memory store shares its database with no other store (and none survives a restart)")


@pytest.fixture
def raw(store: Store) -> MemoryRaw:
    return MemoryRaw(store)


class TestMemoryContract(StoreContract):
    """Everything a file store guarantees that one store alone can show, on the memory store."""


# ------------------------------------------------------------------ the memory store's own


def outbox() -> Outbox:
    snaps = [snap("twin_a", f"s{i}", T0 + 10 * i, cpu=40.0 + i) for i in range(4)]
    return Outbox(twins=[twin("a")], snapshots=snaps,
                  samples=[samples("twin_a", "cpu_usage", [T0 + i for i in range(30)], [40.0 + i for i in range(30)])])


async def test_open_store_memory_by_path_and_by_url() -> None:
    for s in (open_store(path=":memory:", env={}), open_store(url="sqlite:///:memory:", env={}),
              open_store(env={"DATABASE_URL": "sqlite:///:memory:"})):
        assert isinstance(s, SQLiteStore) and s.memory
        assert s._reader is s._writer      # one connection, hence one database
        await s.close()
    on_disk = open_store(path="twins.db", env={})
    assert isinstance(on_disk, SQLiteStore) and not on_disk.memory and on_disk._reader is not on_disk._writer
    await on_disk.close()


async def test_opens_migrated_and_logs_no_missing_table(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.store")
    s = open_store(path=":memory:", env={})
    try:
        await s.open()          # a reader with its own ":memory:" would find no schema_version table
        assert await s.schema_version() == schema.LATEST_VERSION
    finally:
        await s.close()
    assert not any("no such table" in r.getMessage() for r in caplog.records)
    assert any("in memory" in r.getMessage() for r in caplog.records)


async def test_what_is_written_is_read_back_through_every_read(store: Store, raw: MemoryRaw) -> None:
    await store.write(outbox())
    assert await count(raw, "twin_state_history") == 4
    got = await store.get_snapshot("twin_a", "s2")
    assert got is not None and got.verify() and got.metrics["cpu_usage"] == 42.0
    # the rollback listing the API pages through: newest first, then older pages by ?before=
    assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s3", "s2", "s1", "s0"]
    page = await store.list_snapshots("twin_a", limit=2)
    assert [e.snapshot_id for e in page] == ["s3", "s2"]
    older = await store.list_snapshots("twin_a", limit=2, before=page[-1].timestamp)
    assert [e.snapshot_id for e in older] == ["s1", "s0"]
    ts, vals = await store.metrics_history("twin_a", "cpu_usage", T0 + 5, T0 + 9)
    assert ts.tolist() == [T0 + i for i in range(5, 10)] and vals.tolist() == [45.0, 46.0, 47.0, 48.0, 49.0]
    (restored,) = await store.load_twins()
    assert restored.definition["twin_id"] == "twin_a"
    assert [e.snapshot_id for e in restored.snapshots] == ["s0", "s1", "s2", "s3"]
    assert restored.samples["cpu_usage"][1].tolist() == [40.0 + i for i in range(30)]


async def test_model_state_and_retention_work_in_memory(store: Store, raw: MemoryRaw) -> None:
    await store.write(outbox())
    assert await store.save_model_states({"twin_a": b"learnt"}, at=T0) == 1
    assert await store.load_model_states() == {"twin_a": b"learnt"}
    report = await store.apply_retention(RetentionPolicy(snapshot_max_count=2), now=T0 + 100)
    assert report.snapshots == 2
    assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s3", "s2"]
    assert await store.get_snapshot("twin_a", "s0") is None


async def test_a_failed_statement_does_not_lose_the_database(store: Store, raw: MemoryRaw) -> None:
    """A file store drops a failed connection to reopen it; in memory that would drop every row."""
    await store.write(outbox())
    with pytest.raises(sqlite3.Error):
        await raw.execute("SELECT * FROM no_such_table")
    with pytest.raises(sqlite3.Error, match="append-only"):
        await raw.execute("UPDATE twin_state_history SET health_score = 1")
    assert await count(raw, "twin_state_history") == 4
    assert len(await store.list_snapshots("twin_a")) == 4
    assert await store.schema_version() == schema.LATEST_VERSION


async def test_concurrent_reads_and_writes_see_one_database(store: Store) -> None:
    async def writer(i: int) -> None:
        await store.write(Outbox(snapshots=[snap("twin_a", f"w{i}", T0 + i)],
                                 samples=[samples("twin_a", "cpu_usage", [T0 + i], [float(i)])]))

    async def reader() -> int:
        return len(await store.list_snapshots("twin_a", limit=1000))

    results = await asyncio.gather(*(writer(i) for i in range(50)), *(reader() for _ in range(50)))
    assert all(isinstance(n, int) and 0 <= n <= 50 for n in results[50:])
    assert len(await store.list_snapshots("twin_a", limit=1000)) == 50
    _, vals = await store.metrics_history("twin_a", "cpu_usage", T0, T0 + 100)
    assert len(vals) == 50


async def test_two_memory_stores_are_independent() -> None:
    a, b = open_store(path=":memory:", env={}), open_store(path=":memory:", env={})
    try:
        await a.open()
        await b.open()
        await a.write(Outbox(twins=[twin("a")], snapshots=[snap("twin_a", "only-in-a", T0)]))
        await b.write(Outbox(twins=[twin("b")], snapshots=[snap("twin_b", "only-in-b", T0)]))
        assert [e.snapshot_id for e in await a.list_snapshots("twin_a")] == ["only-in-a"]
        assert await a.list_snapshots("twin_b") == []
        assert await b.list_snapshots("twin_a") == []
        assert [t.definition["twin_id"] for t in await b.load_twins()] == ["twin_b"]
        await a.close()
        assert [e.snapshot_id for e in await b.list_snapshots("twin_b")] == ["only-in-b"]   # b outlives a
    finally:
        await a.close()
        await b.close()


async def test_closed_memory_store_refuses_and_closes_once() -> None:
    s = open_store(path=":memory:", env={})
    await s.open()
    await s.close()
    await s.close()
    with pytest.raises(StoreError, match="closed"):
        await s.list_snapshots("twin_a")


# ------------------------------------------------------------------ the assembled service


@pytest.mark.integration
async def test_service_with_memory_storage_serves_history(prom_env: PromEnv, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The reviewer's reproduction: the service on ":memory:" starts without a store error and
    GET /history answers 200 with the snapshots the store holds."""
    from sidecar.app import start_service
    from sidecar.config import load_config

    rules = {
        "prometheus": {"url": prom_env.url, "timeout": "5s"},
        "interval": "1s",
        "backfill": "0",
        "server": {"listen": "127.0.0.1:0"},
        "storage": {"path": ":memory:"},
        "twins": [{"name": "gauge", "metrics": {"cpu_usage": 'test_gauge{k="a"}'}, "limits": {"cpu_usage": 95}}],
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    caplog.set_level(logging.INFO)
    svc = await start_service(load_config(path))
    try:
        assert svc.status.store_up
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            while not svc.status.first_round_done:
                await asyncio.sleep(0.1)
            put = await http.put("/api/v1/twins/gauge/expected", json={"cpu_usage": 7.0})
            assert put.status_code == 200, put.text
            twin_id = (await http.get("/api/v1/twins/gauge")).json()["twin_id"]
            for _ in range(100):           # the writer stores the round's outbox in the background
                if await svc.store.list_snapshots(twin_id):
                    break
                await asyncio.sleep(0.1)
            stored = await svc.store.list_snapshots(twin_id)
            assert stored, "nothing reached the memory store"
            hist = await http.get("/api/v1/twins/gauge/history")
            assert hist.status_code == 200, hist.text
            ids = {s["snapshot_id"] for s in hist.json()["snapshots"]}
            assert {e.snapshot_id for e in stored} <= ids
            metrics = (await http.get("/metrics")).text
            assert "twin_store_up 1.0" in metrics
    finally:
        await svc.shutdown()
    assert not any("history store unavailable" in r.getMessage() for r in caplog.records)
    assert not any("no such table" in r.getMessage() for r in caplog.records)

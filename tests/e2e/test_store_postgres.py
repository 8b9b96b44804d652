"""PostgreSQL store against the real server on 127.0.0.1:5432: the shared contract, plus its own guarantees.

Every test works in a schema of its own (``t_store_<random>``), dropped afterwards, so runs in parallel or
one after another never see each other's rows. Skipped, with the reason, only when no server answers.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pytest
from helpers.store_contract import T0, MakeStore, StoreContract, count, event, samples, snap, twin

from sidecar.engine.view import Outbox
from sidecar.errors import StoreError
from sidecar.status import ServiceStatus
from sidecar.store import EventQuery, Store, open_store, schema
from sidecar.store.postgres import PostgresStore

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _server_answers() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as e:   # any failure to connect is a reason to skip, and the reason is shown
        return f"no PostgreSQL server answers at {PG_URL}: {type(e).__name__}: {e}"
    return None


_SKIP = _server_answers()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


class PGRaw:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        n = iter(range(1, 1000))
        return re.sub(r"\?", lambda _: f"${next(n)}", sql)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(self._sql(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(self._sql(sql), *args)

    async def tamper(self, sql: str, *args: Any) -> None:
        async with self.conn.transaction():
            await self.conn.execute("ALTER TABLE twin_state_history DISABLE TRIGGER twin_state_history_immutable")
            await self.conn.execute(self._sql(sql), *args)
            await self.conn.execute("ALTER TABLE twin_state_history ENABLE TRIGGER twin_state_history_immutable")


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    name = f"t_store_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def make_store(pg_schema: str) -> AsyncIterator[MakeStore]:
    made: list[Store] = []

    async def make(replica: str = "default") -> Store:
        s = open_store(url=PG_URL, replica=replica, status=ServiceStatus(), schema=pg_schema, env={})
        await s.open()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()


@pytest.fixture
async def raw(pg_schema: str, store: Store) -> AsyncIterator[PGRaw]:
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": pg_schema})
    yield PGRaw(conn)
    await conn.close()


class TestPostgresContract(StoreContract):
    pass


# ------------------------------------------------------------------ PostgreSQL's own


async def test_documents_are_jsonb_and_lookups_indexed(store: Store, raw: PGRaw, pg_schema: str) -> None:
    types = dict(await raw.fetch("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_schema = ? AND table_name = 'twin_state_history'", pg_schema))
    assert types["state_snapshot"] == "jsonb" and types["metrics"] == "jsonb"
    assert types["timestamp"] == "double precision"
    indexes = " ".join(r[0] for r in await raw.fetch("SELECT indexdef FROM pg_indexes WHERE schemaname = ?",
                                                     pg_schema))
    assert "twin_metrics_history USING btree (twin_id, \"timestamp\", metric)" in indexes
    assert "twin_state_history USING btree (twin_id, \"timestamp\")" in indexes
    assert "twin_state_history USING btree (snapshot_id)" in indexes
    # the documents are queryable as JSON
    await store.write(Outbox(snapshots=[snap("twin_a", "s1", T0, cpu=42.0)]))
    assert await raw.fetch("SELECT (metrics->>'cpu_usage')::float FROM twin_state_history") == [(42.0,)]


async def test_connection_cut_mid_transaction_leaves_nothing_half_written(make_store: MakeStore,
                                                                         raw: PGRaw, pg_schema: str) -> None:
    store = await make_store(replica=pg_schema)            # application_name names this test's connections
    n = 120_000
    big = Outbox(twins=[twin("a")], snapshots=[snap("twin_a", "s1", T0), snap("twin_a", "s2", T0 + 1)],
                 samples=[samples("twin_a", "cpu_usage", T0 + np.arange(n, dtype=float), np.ones(n))])
    write = asyncio.create_task(store.write(big))
    killed = None
    for _ in range(2000):
        rows = await raw.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ? AND xact_start IS NOT NULL "
            "AND query LIKE 'INSERT INTO twin_metrics_history%' AND state = 'active'", f"twin-sidecar/{pg_schema}")
        if rows:
            killed = rows[0][0]
            await raw.fetch("SELECT pg_terminate_backend(?)", killed)
            break
        if write.done():
            break
        await asyncio.sleep(0.005)
    assert killed is not None, "the write finished before it could be cut; make the batch bigger"
    with pytest.raises(StoreError, match="postgres write failed"):
        await write
    # the definition and snapshots went in earlier in the same transaction: all rolled back
    for table in ("twin_definitions", "twin_state_history", "twin_metrics_history"):
        assert await count(raw, table) == 0, table
    # the pool reconnects; the same outbox written again lands whole, exactly once
    await store.write(big)
    await store.write(big)
    assert await count(raw, "twin_metrics_history") == n
    assert await count(raw, "twin_state_history") == 2
    assert all(e.verify() for e in await store.list_snapshots("twin_a"))


async def test_reconnects_after_the_server_drops_every_connection(make_store: MakeStore, raw: PGRaw,
                                                                  pg_schema: str) -> None:
    store = await make_store(replica=pg_schema)
    await store.write(Outbox(snapshots=[snap("twin_a", "s1", T0)]))
    await raw.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
                    f"twin-sidecar/{pg_schema}")
    ok = False
    for _ in range(3):      # at most the first call may see the dead connection
        try:
            await store.write(Outbox(snapshots=[snap("twin_a", "s2", T0 + 1)]))
            ok = True
            break
        except StoreError:
            continue
    assert ok
    assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s2", "s1"]


async def test_replicas_starting_together_migrate_once(pg_schema: str) -> None:
    stores = [open_store(url=PG_URL, replica=f"r{i}", schema=pg_schema, env={}) for i in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        conn = await asyncpg.connect(PG_URL, server_settings={"search_path": pg_schema})
        try:
            rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
        finally:
            await conn.close()
        assert [r[0] for r in rows] == [m.version for m in schema.MIGRATIONS]
    finally:
        for s in stores:
            await s.close()


async def test_nothing_listening_is_a_store_error_not_a_hang() -> None:
    s = open_store(url="postgresql://postgres@127.0.0.1:1/test", env={})
    assert isinstance(s, PostgresStore)
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1"):
        await s.open()
    with pytest.raises(StoreError):
        await s.write(Outbox(snapshots=[snap("twin_a", "s1", T0)]))
    await s.close()


async def test_event_order_is_bytewise_in_a_database_with_a_locale_collation() -> None:
    """A database whose default collation is a locale's (ICU English here) orders ``evt_A`` beside ``evt_a``;
    events are listed and paged in code point order all the same, as SQLite and the memory buffer do."""
    name = f"t_icu_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE \'en\' '
                            "LOCALE 'C.UTF-8'")
    except asyncpg.PostgresError as e:
        await admin.close()
        pytest.skip(f"this server cannot create an ICU-collated database: {e}")
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    store = open_store(url=url, status=ServiceStatus(), env={})
    try:
        ids = ["evt_a_1", "evt_A_2", "evt_B", "evt_10", "evt_9"]
        await store.write(Outbox(twins=[twin("a")], events=[event(i, "twin_a", T0) for i in ids]))
        expected = sorted(ids, reverse=True)
        assert [e.event_id for e in await store.list_events(EventQuery())] == expected
        first = await store.list_events(EventQuery(limit=2))
        rest = await store.list_events(EventQuery(before=T0, before_id=first[-1].event_id))
        assert [e.event_id for e in first + rest] == expected
    finally:
        await store.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()

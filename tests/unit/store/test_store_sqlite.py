"""SQLite store: the shared contract on a real temporary file, plus what is SQLite's own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.store_contract import T0, MakeStore, StoreContract, count, samples, snap, twin

from sidecar.engine.view import Outbox
from sidecar.errors import ConfigError, CorruptSnapshotError
from sidecar.status import ServiceStatus
from sidecar.store import DEFAULT_PATH, Store, open_store, schema
from sidecar.store.postgres import PostgresStore
from sidecar.store.sqlite import SQLiteStore, migrate_file


class SQLiteRaw:
    """Direct access to the file, as another process (or an operator with sqlite3) would have."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _conn(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._conn() as c:
            return c.execute(sql, args).fetchall()

    async def execute(self, sql: str, *args: Any) -> None:
        c = self._conn()
        try:
            c.execute(sql, args)
        finally:
            c.close()

    async def tamper(self, sql: str, *args: Any) -> None:
        trigger = schema.MIGRATIONS[0].statements("sqlite")[-1]
        c = self._conn()
        try:
            c.execute("DROP TRIGGER twin_state_history_immutable")
            c.execute(sql, args)
            c.execute(trigger)
        finally:
            c.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "twins.db"     # the directory does not exist yet: the store creates it


@pytest.fixture
async def make_store(db_path: Path) -> AsyncIterator[MakeStore]:
    made: list[Store] = []

    async def make(replica: str = "default") -> Store:
        s = open_store(path=db_path, replica=replica, status=ServiceStatus(), env={})
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
def raw(db_path: Path) -> SQLiteRaw:
    return SQLiteRaw(db_path)


class TestSQLiteContract(StoreContract):
    pass


# ------------------------------------------------------------------ SQLite's own


async def test_file_is_wal_with_full_sync(store: Store, raw: SQLiteRaw) -> None:
    assert (await raw.fetch("PRAGMA journal_mode"))[0][0] == "wal"
    assert isinstance(store, SQLiteStore)
    await store.write(Outbox(snapshots=[snap("twin_a", "s1", T0)]))
    assert Path(str(raw.path) + "-wal").exists()
    assert (await store._writer.run(lambda c: c.execute("PRAGMA synchronous").fetchone()))[0] == 2   # FULL


async def test_time_queries_use_the_twin_timestamp_indexes(store: Store, raw: SQLiteRaw) -> None:
    for table in ("twin_metrics_history", "twin_state_history"):
        plan = " ".join(str(r) for r in await raw.fetch(
            f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE twin_id = ? AND timestamp >= ?", "t", 0.0))
        assert "SEARCH" in plan and "twin_id=? AND timestamp>?" in plan, plan     # an index, not a scan
    plan = " ".join(str(r) for r in await raw.fetch(
        "EXPLAIN QUERY PLAN SELECT * FROM twin_state_history WHERE snapshot_id = ?", "s"))
    assert "SEARCH" in plan and "snapshot_id=?" in plan, plan


async def test_undecodable_snapshot_row_is_corruption_not_a_crash(store: Store, raw: SQLiteRaw) -> None:
    await store.write(Outbox(snapshots=[snap("twin_a", "s1", T0), snap("twin_a", "s2", T0 + 1)]))
    await raw.tamper("UPDATE twin_state_history SET state_snapshot = '{\"broken' WHERE snapshot_id = ?", "s1")
    with pytest.raises(CorruptSnapshotError):
        await store.get_snapshot("twin_a", "s1")
    assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s2"]
    assert store.corrupt_snapshots_total == 1


async def test_upgrade_from_version_1_keeps_every_row(db_path: Path, raw: SQLiteRaw) -> None:
    db_path.parent.mkdir(parents=True)
    migrate_file(db_path, up_to=1)
    e = snap("twin_a", "s1", T0)
    await raw.execute("INSERT INTO twin_state_history (snapshot_id, twin_id, timestamp, state_snapshot, metrics, "
                      "health_score, change_reason, can_rollback_to, checksum) VALUES (?,?,?,?,?,?,?,?,?)",
                      e.snapshot_id, e.twin_id, e.timestamp, '{"expected_state":{"cpu_usage":50.0},"limits":{}}',
                      '{"cpu_usage":50.0,"memory_usage":40.0}', e.health_score, e.change_reason, 1, e.checksum)
    await raw.execute("INSERT INTO twin_metrics_history VALUES ('twin_a', ?, 'cpu_usage', 1.5)", T0)
    assert [r[0] for r in await raw.fetch("SELECT version FROM schema_version")] == [1]
    s = open_store(path=db_path, env={})
    try:
        await s.open()
        assert await s.schema_version() == schema.LATEST_VERSION
        assert await s.get_snapshot("twin_a", "s1") == e
        _, v = await s.metrics_history("twin_a", "cpu_usage", T0, T0)
        assert v.tolist() == [1.5]
        await s.write(Outbox(twins=[twin("a")]))      # the new tables work
        assert await count(raw, "twin_definitions") == 1
    finally:
        await s.close()


def test_migrations_are_never_destructive() -> None:
    forbidden = ("DROP ", "DELETE ", "TRUNCATE", "RENAME", "UPDATE ", "REPLACE INTO")
    for m in schema.MIGRATIONS:
        for dialect in ("sqlite", "postgres"):
            for stmt in m.statements(dialect):
                head = stmt.upper().replace("BEFORE UPDATE", "").replace("CREATE OR REPLACE FUNCTION", "")
                assert not any(w in head for w in forbidden), (m.version, stmt)
    assert [m.version for m in schema.MIGRATIONS] == list(range(1, schema.LATEST_VERSION + 1))


async def test_writes_run_off_the_event_loop(store: Store) -> None:
    n = 50_000
    big = Outbox(samples=[samples("twin_a", "cpu_usage", T0 + np.arange(n, dtype=float), np.ones(n))])
    done = False
    ticks_while_writing = 0

    async def ticker() -> None:
        nonlocal ticks_while_writing
        while not done:
            ticks_while_writing += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await store.write(big)
    done = True
    await task
    assert ticks_while_writing > 0      # the loop kept running while the rows went to disk


async def test_a_store_created_before_its_file_can_be_written_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store wants its directory")
    s = open_store(path=blocker / "twins.db", env={})
    from sidecar.errors import StoreError

    with pytest.raises(StoreError, match="sqlite"):
        await s.write(Outbox(snapshots=[snap("twin_a", "s1", T0)]))
    blocker.unlink()
    await s.write(Outbox(snapshots=[snap("twin_a", "s1", T0)]))     # the same store object, now working
    assert await s.get_snapshot("twin_a", "s1") is not None
    await s.close()


# ------------------------------------------------------------------ open_store


def test_open_store_picks_the_database(tmp_path: Path) -> None:
    assert isinstance(open_store(path=tmp_path / "a.db", env={}), SQLiteStore)
    assert open_store(env={}).path == Path(DEFAULT_PATH)                      # type: ignore[attr-defined]
    pg = open_store(path=tmp_path / "a.db", env={"DATABASE_URL": "postgresql://u:secret@db:5433/x"})
    assert isinstance(pg, PostgresStore) and "secret" not in repr(pg) and "db:5433/x" in repr(pg)
    # the environment wins over the rules file
    pg2 = open_store(url="sqlite:///ignored.db", env={"DATABASE_URL": "postgres://db/x"})
    assert isinstance(pg2, PostgresStore)
    assert isinstance(open_store(url="postgresql://db/x", env={}), PostgresStore)
    s = open_store(url="sqlite:///rel/twins.db", env={})
    assert isinstance(s, SQLiteStore) and s.path == Path("rel/twins.db")
    s = open_store(url=f"sqlite:///{tmp_path}/abs.db", env={})
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "abs.db"
    with pytest.raises(ConfigError, match=r"storage\.url"):
        open_store(url="mysql://db/x", env={})
    with pytest.raises(ConfigError, match=r"storage\.url"):
        open_store(url="sqlite://", env={})
    with pytest.raises(ConfigError, match="schema"):
        open_store(url="postgresql://db/x", schema="Robert'); DROP", env={})


def test_only_retention_deletes_snapshots_and_nothing_updates_them() -> None:
    """The code has no UPDATE path for a snapshot, and its only DELETE is retention (both databases)."""
    import ast

    import sidecar.store as pkg

    found = []
    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        outer = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        outer += [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body
                  if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
        for fn in outer:       # nested helpers count as their outermost function
            for node in ast.walk(fn):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    sql = " ".join(node.value.upper().split())
                    if "UPDATE TWIN_STATE_HISTORY" in sql or ("DELETE" in sql and "TWIN_STATE_HISTORY" in sql):
                        found.append((path.name, fn.name, "UPDATE" if "UPDATE TWIN" in sql else "DELETE"))
    assert {(f, n) for f, n, _ in found} == {("postgres.py", "apply_retention"), ("sqlite.py", "_retain")}, found
    assert all(kind == "DELETE" for _, _, kind in found), found

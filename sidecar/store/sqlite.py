"""History in one SQLite file: the embedded default.

One writer thread owns the write connection, so the event loop never waits
on disk and there is never more than one writer; a second thread serves
reads on its own connection, which WAL mode lets run while a write is in
progress. Each outbox is one ``BEGIN IMMEDIATE … COMMIT``: after a crash
the file holds every committed outbox whole and nothing of the one in
flight. ``synchronous=FULL`` makes an acknowledged write survive power loss,
not only a killed process; at one commit per round that costs nothing.

A connection that fails (file read-only, disk full, file removed) is closed
and reopened on the next call, so the store recovers once the file can be
written again.

The path ``:memory:`` keeps the history in memory for the life of the store
(the Helm chart's ``storage.type: memory``). SQLite gives every connection to
``:memory:`` its own new, empty database, so the usual writer and reader would
see two different databases; and a shared-cache URI would share it but fail a
read with "database table is locked" whenever it meets a write in progress
(shared cache locks tables and has no WAL). So a memory store has ONE
connection on ONE thread, made on first use and kept until ``close()``, never
dropped on an error: dropping it would drop the database. Reads wait behind a
write, which in memory is short. Migrations, writes, reads and retention are
the same as on a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..engine.records import StateHistoryEntry, TwinEvent
from ..engine.view import Outbox
from ..errors import StoreError
from ..status import ServiceStatus
from . import schema
from .base import (
    CORRECTION_COLUMNS,
    DEFAULT_LOAD,
    SNAPSHOT_COLUMNS,
    EventQuery,
    KeepDefinition,
    LoadLimits,
    PreparedBatch,
    RestoredTwin,
    RetentionPolicy,
    RetentionReport,
    Store,
    correction_from_row,
    correction_row,
    decode_json,
    event_from_row,
    event_select,
    group_samples,
    prediction_columns,
    prepare,
    retention_bounds,
    sample_columns,
    snapshot_row,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_WRITER_PRAGMAS = (
    "PRAGMA busy_timeout=10000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
)
_READER_PRAGMAS = (
    "PRAGMA busy_timeout=10000",
    "PRAGMA query_only=ON",     # the reader can never become a second writer
)

#: The path that asks for a database in memory, private to one store and gone when it closes.
MEMORY_PATH = ":memory:"


def is_memory_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names SQLite's in-memory database rather than a file."""
    return os.fspath(path) == MEMORY_PATH


class _Lane:
    """One thread and the connection that lives on it (sqlite3 connections stay on their thread)."""

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection], *, keep: bool = False) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._connect = connect
        self._keep = keep       # the connection IS the database (in memory): never drop it on an error
        self.conn: sqlite3.Connection | None = None
        self.closed = False

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.conn is None:
            self.conn = self._connect()
        try:
            return fn(self.conn)
        except sqlite3.Error:
            if not self._keep:
                self._drop()    # a fresh connection next time: the file may be writable again by then
            raise

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, fn)

    async def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._drop)
        self._pool.shutdown(wait=True)


class SQLiteStore(Store):
    """Store in a SQLite file (WAL, one writer thread, one transaction per outbox), or in memory (``:memory:``)."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, replica: str = "default",
                 status: ServiceStatus | None = None) -> None:
        super().__init__(replica=replica, status=status)
        self.path = Path(path)
        self.memory = is_memory_path(path)
        self._migrated = False
        self._migrate_lock = threading.Lock()
        if self.memory:     # one connection is one database: reads share the writer's (see the module doc)
            self._writer = _Lane("sqlite-memory", self._connect_memory, keep=True)
            self._reader = self._writer
        else:
            self._writer = _Lane("sqlite-writer", self._connect_writer)
            self._reader = _Lane("sqlite-reader", self._connect_reader)
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, replica={self.replica!r})"

    # ------------------------------------------------------------ connections and migrations

    def _connect_writer(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            for pragma in _WRITER_PRAGMAS:
                conn.execute(pragma)
            with self._migrate_lock:
                if not self._migrated:
                    _migrate(conn)
                    self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_memory(self) -> sqlite3.Connection:
        conn = sqlite3.connect(MEMORY_PATH, isolation_level=None)
        try:
            with self._migrate_lock:
                _migrate(conn)      # a new connection is a new, empty database: always from scratch
                self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            for pragma in _READER_PRAGMAS:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _on(self, lane: _Lane, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        try:
            return await lane.run(fn)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"sqlite {what} failed on {self.path}: {e}") from e

    async def open(self) -> None:
        await self._on(self._writer, "open", lambda c: None)
        log.info("store open: sqlite path=%s replica=%s schema_version=%d%s", self.path, self.replica,
                 await self.schema_version(), " (in memory: history lasts until the process exits)"
                 if self.memory else "")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._writer.shutdown()
        await self._reader.shutdown()

    async def schema_version(self) -> int:
        return await self._on(self._reader, "schema_version", _current_version)

    async def ping(self) -> None:
        await self._on(self._writer, "ping", lambda c: c.execute("SELECT 1").fetchone())

    # ------------------------------------------------------------ writing

    async def write(self, outbox: Outbox) -> None:
        if not outbox:
            return
        batch = prepare(outbox, owner=self.replica, now=time.time())
        await self._on(self._writer, "write", lambda c: self._write_batch(c, batch))

    def _write_batch(self, conn: sqlite3.Connection, batch: PreparedBatch) -> None:
        samples = sample_columns(batch.samples)
        predictions = prediction_columns(batch.predictions)
        conn.execute("BEGIN IMMEDIATE")
        try:
            refused = []
            for row in batch.definitions:
                cur = conn.execute(
                    "INSERT INTO twin_definitions (twin_id, name, owner, definition, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (twin_id) DO UPDATE SET name = excluded.name, "
                    "definition = excluded.definition, updated_at = excluded.updated_at, retired_at = NULL "
                    "WHERE twin_definitions.owner = excluded.owner", row)
                if cur.rowcount == 0:
                    refused.append(row[0])
            if batch.retired:
                now = time.time()
                # its learnt models stay: a retired twin is kept for a while, across a restart too, to return
                # as it was; they go when it is no longer kept (forget_model_states, purge_retired_model_states)
                conn.executemany("UPDATE twin_definitions SET retired_at = ? WHERE twin_id = ? AND owner = ?",
                                 [(now, t, self.replica) for t in batch.retired])
            conn.executemany(
                "INSERT INTO twin_state_history (snapshot_id, twin_id, timestamp, state_snapshot, metrics, "
                "health_score, change_reason, can_rollback_to, checksum, owner) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (snapshot_id) DO NOTHING",
                [snapshot_row(s, self.replica) for s in batch.snapshots])
            conn.executemany(
                f"INSERT INTO twin_corrections ({CORRECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (correction_id) DO NOTHING", [correction_row(c) for c in batch.corrections])
            conn.executemany(
                "INSERT INTO twin_events (event_id, twin_id, type, severity, message, timestamp, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING", batch.events)
            conn.executemany(
                "INSERT INTO twin_metrics_history (twin_id, timestamp, metric, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING", zip(*samples, strict=True))
            conn.executemany(
                "INSERT INTO twin_failure_predictions (twin_id, made_at, metric, horizon_seconds, predicted, "
                "lower, upper, failure_probability, risk_factor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING", zip(*predictions, strict=True))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if refused:
            log.warning("twin definitions owned by another replica left untouched: replica=%s twins=%s",
                        self.replica, refused[:10])

    # ------------------------------------------------------------ reading snapshots

    async def get_snapshot(self, twin_id: str, snapshot_id: str) -> StateHistoryEntry | None:
        row = await self._on(self._reader, "get_snapshot", lambda c: c.execute(
            f"SELECT {SNAPSHOT_COLUMNS} FROM twin_state_history WHERE twin_id = ? AND snapshot_id = ?",
            (twin_id, snapshot_id)).fetchone())
        return self._get_verified(row, twin_id, snapshot_id)

    async def list_snapshots(self, twin_id: str, *, limit: int = 100,
                             before: float | None = None) -> list[StateHistoryEntry]:
        cutoff = math.inf if before is None else float(before)
        rows = await self._on(self._reader, "list_snapshots", lambda c: c.execute(
            f"SELECT {SNAPSHOT_COLUMNS} FROM twin_state_history WHERE twin_id = ? AND timestamp < ? "
            "ORDER BY timestamp DESC, id DESC LIMIT ?", (twin_id, cutoff, int(limit))).fetchall())
        return [e for e in map(self._verified, rows) if e is not None]

    # ------------------------------------------------------------ start-up and queries

    async def load_twins(self, *, limits: LoadLimits = DEFAULT_LOAD, include_retired: bool = False,
                         retired_since: float | None = None, retired_max: int | None = None,
                         keep: KeepDefinition | None = None) -> list[RestoredTwin]:
        retired = _Retired(-math.inf if retired_since is None else float(retired_since),
                           -1 if retired_max is None else max(0, int(retired_max))) if include_retired else None
        raw = await self._on(self._reader, "load_twins", lambda c: _load(c, self.replica, limits, retired, keep))
        out = []
        for definition, retired_at, snap_rows, corr_rows, samples in raw:
            snaps = [e for e in map(self._verified, snap_rows) if e is not None]
            snaps.reverse()
            corrections = [correction_from_row(r) for r in reversed(corr_rows)]
            out.append(RestoredTwin(definition=definition, snapshots=snaps, samples=samples,
                                    corrections=corrections, owner=self.replica, retired_at=retired_at))
        log.info("store loaded twins=%d replica=%s", len(out), self.replica)
        return out

    async def list_events(self, query: EventQuery) -> list[TwinEvent]:
        sql, args = event_select(query, self.replica, mark=lambda n: "?")
        rows = await self._on(self._reader, "list_events", lambda c: c.execute(sql, args).fetchall())
        return [event_from_row(r) for r in rows]

    async def metrics_history(self, twin_id: str, metric: str, start: float,
                              end: float) -> tuple[np.ndarray, np.ndarray]:
        rows = await self._on(self._reader, "metrics_history", lambda c: c.execute(
            "SELECT timestamp, value FROM twin_metrics_history WHERE twin_id = ? AND timestamp >= ? "
            "AND timestamp <= ? AND metric = ? ORDER BY timestamp", (twin_id, start, end, metric)).fetchall())
        arr = np.array(rows, dtype=np.float64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    async def save_model_states(self, states: Mapping[str, bytes], *, at: float) -> int:
        rows = [(tid, self.replica, float(at), blob, hashlib.sha256(blob).hexdigest())
                for tid, blob in states.items()]

        def tx(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                written = 0
                for row in rows:
                    written += conn.execute(
                        "INSERT INTO twin_model_state (twin_id, owner, saved_at, state, checksum) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (twin_id) DO UPDATE SET saved_at = excluded.saved_at, "
                        "state = excluded.state, checksum = excluded.checksum "
                        "WHERE twin_model_state.owner = excluded.owner", row).rowcount
                conn.execute("COMMIT")
                return written
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

        return await self._on(self._writer, "save_model_states", tx) if rows else 0

    async def load_model_states(self, twin_ids: Collection[str] | None = None) -> dict[str, bytes]:
        rows = await self._on(self._reader, "load_model_states", lambda c: c.execute(
            "SELECT twin_id, state, checksum FROM twin_model_state WHERE owner = ?", (self.replica,)).fetchall())
        if twin_ids is not None:
            wanted = set(twin_ids)
            rows = [r for r in rows if r[0] in wanted]
        return self._model_state_rows(rows)

    async def forget_model_states(self, twin_ids: Sequence[str]) -> int:
        rows = [(t, self.replica) for t in dict.fromkeys(twin_ids)]

        def tx(conn: sqlite3.Connection) -> int:
            return _in_tx(conn, lambda: sum(
                max(conn.execute("DELETE FROM twin_model_state WHERE twin_id = ? AND owner = ?", r).rowcount, 0)
                for r in rows))

        gone = await self._on(self._writer, "forget_model_states", tx) if rows else 0
        if gone:
            log.info("model state of twins no longer kept deleted: rows=%d replica=%s", gone, self.replica)
        return gone

    async def purge_retired_model_states(self, *, keep: Collection[str] = ()) -> int:
        kept = set(keep)

        def tx(conn: sqlite3.Connection) -> int:
            def purge() -> int:
                victims = [r[0] for r in conn.execute(
                    "SELECT m.twin_id FROM twin_model_state m JOIN twin_definitions d ON d.twin_id = m.twin_id "
                    "WHERE m.owner = ? AND d.owner = ? AND d.retired_at IS NOT NULL",
                    (self.replica, self.replica)).fetchall() if r[0] not in kept]
                conn.executemany("DELETE FROM twin_model_state WHERE twin_id = ? AND owner = ?",
                                 [(t, self.replica) for t in victims])
                return len(victims)
            return _in_tx(conn, purge)

        gone = await self._on(self._writer, "purge_retired_model_states", tx)
        if gone:
            log.info("model state of twins retired and no longer kept purged: rows=%d replica=%s", gone,
                     self.replica)
        return gone

    async def apply_retention(self, policy: RetentionPolicy, *, now: float) -> RetentionReport:
        b = retention_bounds(policy, now)
        report = await self._on(self._writer, "retention", lambda c: _retain(c, b))
        self._log_retention(policy, report)
        return report


# ---------------------------------------------------------------- on the database thread


def _current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _migrate(conn: sqlite3.Connection, *, up_to: int | None = None) -> None:
    """Apply pending migrations, each in its own transaction (SQLite DDL is transactional)."""
    conn.execute("BEGIN IMMEDIATE")   # the write lock: another process migrating waits here
    try:
        conn.execute(schema.VERSION_TABLE)
        applied = {int(r[0]) for r in conn.execute("SELECT version FROM schema_version")}
        todo = schema.pending(applied, up_to=up_to)
        for m in todo:
            for stmt in m.statements("sqlite"):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                         (m.version, m.description, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    for m in todo:
        log.info("schema migrated: sqlite version=%d (%s)", m.version, m.description)
    newest = max(applied | {m.version for m in todo}, default=0)
    if newest > schema.LATEST_VERSION:
        log.warning("database schema version %d is newer than this build's %d; migrations are additive, "
                    "continuing", newest, schema.LATEST_VERSION)


def migrate_file(path: str | os.PathLike[str], *, up_to: int | None = None) -> None:
    """Create or upgrade a database file synchronously (tools and tests of the upgrade path)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in _WRITER_PRAGMAS:
            conn.execute(pragma)
        _migrate(conn, up_to=up_to)
    finally:
        conn.close()


def _in_tx(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """``fn`` in one write transaction: all of it or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        out = fn()
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return out


@dataclass(frozen=True, slots=True)
class _Retired:
    """Which retired twins ``load_twins`` adds: retired at or after ``since``, the ``most`` newest (-1: all)."""

    since: float
    most: int


_LoadedTwin = tuple[dict[str, Any], float | None, list[Any], list[Any], dict[str, tuple[np.ndarray, np.ndarray]]]


def _load(conn: sqlite3.Connection, owner: str, limits: LoadLimits,
          retired: _Retired | None, keep: KeepDefinition | None) -> list[_LoadedTwin]:
    where = "owner = ? AND retired_at IS NULL"
    args: list[Any] = [owner]
    if retired is not None:
        where = ("owner = ? AND (retired_at IS NULL OR twin_id IN (SELECT twin_id FROM twin_definitions "
                 "WHERE owner = ? AND retired_at IS NOT NULL AND retired_at >= ? "
                 "ORDER BY retired_at DESC, twin_id LIMIT ?))")
        args = [owner, owner, retired.since, retired.most]
    out: list[_LoadedTwin] = []
    conn.execute("BEGIN")   # one consistent read across all the queries below
    try:
        defs = conn.execute(f"SELECT twin_id, definition, retired_at FROM twin_definitions WHERE {where} "
                            "ORDER BY created_at, twin_id", args).fetchall()
        for twin_id, raw, retired_at in defs:
            definition = decode_json(raw)
            if keep is not None and not keep(definition):
                continue
            snaps = conn.execute(f"SELECT {SNAPSHOT_COLUMNS} FROM twin_state_history WHERE twin_id = ? "
                                 "ORDER BY timestamp DESC, id DESC LIMIT ?",
                                 (twin_id, limits.snapshots)).fetchall()
            corr = conn.execute(f"SELECT {CORRECTION_COLUMNS} FROM twin_corrections WHERE twin_id = ? "
                                "ORDER BY id DESC LIMIT ?", (twin_id, limits.corrections)).fetchall()
            newest = conn.execute("SELECT MAX(timestamp) FROM twin_metrics_history WHERE twin_id = ?",
                                  (twin_id,)).fetchone()[0]
            samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            if newest is not None:
                rows = conn.execute("SELECT metric, timestamp, value FROM twin_metrics_history "
                                    "WHERE twin_id = ? AND timestamp >= ? ORDER BY timestamp",
                                    (twin_id, newest - limits.sample_window_s)).fetchall()
                samples = group_samples((r[0] for r in rows), (r[1] for r in rows), (r[2] for r in rows),
                                        limit=limits.samples) if rows else {}
            out.append((definition, None if retired_at is None else float(retired_at), snaps, corr,
                        samples))
    finally:
        conn.execute("COMMIT")
    return out


_RANKED = ("SELECT id, timestamp, twin_id, ROW_NUMBER() OVER "
           "(PARTITION BY twin_id ORDER BY timestamp DESC, id DESC) AS rn FROM twin_state_history")


def _retain(conn: sqlite3.Connection, b: dict[str, float | int]) -> RetentionReport:
    conn.execute("BEGIN IMMEDIATE")
    try:
        victims = conn.execute(f"SELECT id, twin_id FROM ({_RANKED}) "
                               "WHERE rn > 1 AND timestamp < ? AND (rn > ? OR timestamp < ?)",
                               (b["snapshot_young"], b["snapshot_keep"], b["snapshot_cutoff"])).fetchall()
        conn.executemany("DELETE FROM twin_state_history WHERE id = ?", [(v[0],) for v in victims])
        samples = conn.execute("DELETE FROM twin_metrics_history WHERE timestamp < ?",
                               (b["samples_cutoff"],)).rowcount
        predictions = conn.execute("DELETE FROM twin_failure_predictions WHERE made_at < ?",
                                   (b["predictions_cutoff"],)).rowcount
        events = conn.execute("DELETE FROM twin_events WHERE timestamp < ?", (b["events_cutoff"],)).rowcount
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return RetentionReport(snapshots=len(victims), samples=max(samples, 0), predictions=max(predictions, 0),
                           events=max(events, 0), twins_touched=len({v[1] for v in victims}))


__all__ = ["MEMORY_PATH", "SQLiteStore", "is_memory_path", "migrate_file"]

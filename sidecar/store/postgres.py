"""History in PostgreSQL (``DATABASE_URL``), shared safely between sidecar replicas.

asyncpg with a small connection pool; a connection that breaks is replaced
by the pool, and a pool that could not be created (server down at start)
is created again on the next call, so the store reconnects by itself.

Each outbox is one transaction built from a handful of
``INSERT … SELECT FROM unnest(arrays)`` statements (one round trip per
table, whatever the batch size). Everything is idempotent: snapshots,
samples, predictions, corrections and events are inserted with
``ON CONFLICT DO NOTHING``, so a batch whose commit acknowledgement was
lost can be sent again. Replicas sharing the database never clobber each
other: a twin definition row is only replaced by the replica named in its
``owner`` column, snapshots are append-only (a trigger refuses UPDATE), and
migrations run under an advisory lock so two replicas starting together do
not race.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import numpy as np

from ..engine.records import StateHistoryEntry, TwinEvent
from ..engine.view import Outbox
from ..errors import ConfigError, StoreError
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
    encode_jsonb,
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

#: Errors that mean "the database did not do it": translated to StoreError, retried by the writer.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CHUNK = 100    # twins per query when loading
_ROWS_PER_STATEMENT = 2000   # sample / forecast rows per INSERT (bounds the event-loop time of one encode)


def describe_url(url: str) -> str:
    """host:port/db for logs: never the password."""
    u = urlsplit(url)
    return f"{u.hostname or 'localhost'}:{u.port or 5432}{u.path or ''}"


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _deleted(status: str) -> int:
    """'DELETE 12' -> 12."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


class PostgresStore(Store):
    """Store in PostgreSQL (JSONB documents, one transaction per outbox, owner-guarded twin rows)."""

    backend = "postgres"

    def __init__(self, url: str, *, replica: str = "default", status: ServiceStatus | None = None,
                 schema: str | None = None, pool_min: int = 1, pool_max: int = 4,
                 connect_timeout_s: float = 5.0, command_timeout_s: float = 60.0) -> None:
        super().__init__(replica=replica, status=status)
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"invalid schema name {schema!r}: lower-case letters, digits and _",
                              key="storage.schema")
        self.url = url
        self.schema = schema
        self.where = describe_url(url) + (f" schema={schema}" if schema else "")
        self._pool_min, self._pool_max = pool_min, pool_max
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r}, replica={self.replica!r})"

    # ------------------------------------------------------------ connections and migrations

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": f"twin-sidecar/{self.replica}"[:63]}
        if self.schema:
            settings["search_path"] = self.schema
        return settings

    async def _get_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.url, min_size=self._pool_min, max_size=self._pool_max,
                    timeout=self._connect_timeout_s, command_timeout=self._command_timeout_s,
                    server_settings=self._server_settings())
                try:
                    async with pool.acquire() as conn:
                        await self._migrate(conn)
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
        return self._pool

    async def _migrate(self, conn: asyncpg.Connection, *, up_to: int | None = None) -> None:
        key = int.from_bytes(hashlib.sha256(f"twin-sidecar:{self.schema or 'public'}".encode()).digest()[:8],
                             "big", signed=True)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)   # replicas migrate one at a time
            if self.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(schema.VERSION_TABLE)
            applied = {int(r[0]) for r in await conn.fetch("SELECT version FROM schema_version")}
            todo = schema.pending(applied, up_to=up_to)
            for m in todo:
                for stmt in m.statements("postgres"):
                    await conn.execute(stmt)
                await conn.execute("INSERT INTO schema_version (version, description, applied_at) "
                                   "VALUES ($1, $2, $3)", m.version, m.description, time.time())
        for m in todo:
            log.info("schema migrated: postgres version=%d (%s) at %s", m.version, m.description, self.where)
        newest = max(applied | {m.version for m in todo}, default=0)
        if newest > schema.LATEST_VERSION:
            log.warning("database schema version %d is newer than this build's %d; migrations are additive, "
                        "continuing", newest, schema.LATEST_VERSION)

    async def _call(self, what: str, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        try:
            pool = await self._get_pool()
            return await fn(pool)
        except StoreError:
            raise
        except _DB_ERRORS as e:
            raise StoreError(f"postgres {what} failed at {self.where}: {type(e).__name__}: {e}") from e

    async def open(self) -> None:
        await self._call("open", lambda pool: asyncio.sleep(0))
        log.info("store open: postgres %s replica=%s schema_version=%d", self.where, self.replica,
                 await self.schema_version())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except _DB_ERRORS:
                pool.terminate()

    async def schema_version(self) -> int:
        v = await self._call("schema_version",
                             lambda p: p.fetchval("SELECT MAX(version) FROM schema_version"))
        return int(v or 0)

    async def ping(self) -> None:
        await self._call("ping", lambda p: p.fetchval("SELECT 1"))

    # ------------------------------------------------------------ writing

    async def write(self, outbox: Outbox) -> None:
        if not outbox:
            return
        batch = prepare(outbox, owner=self.replica, now=time.time(), encode=encode_jsonb)
        # the bulk arrays become Python lists off the event loop
        samples, predictions = await asyncio.to_thread(
            lambda: (sample_columns(batch.samples), prediction_columns(batch.predictions)))

        async def tx(pool: asyncpg.Pool) -> list[str]:
            async with pool.acquire() as conn, conn.transaction():
                return await self._write_batch(conn, batch, samples, predictions)

        refused = await self._call("write", tx)
        if refused:
            log.warning("twin definitions owned by another replica left untouched: replica=%s twins=%s",
                        self.replica, refused[:10])

    async def _write_batch(self, conn: asyncpg.Connection, batch: PreparedBatch,
                           samples: tuple[list[str], list[float], list[str], list[float]],
                           predictions: list[list[Any]]) -> list[str]:
        refused: list[str] = []
        if batch.definitions:
            cols = _columns(batch.definitions, 6)
            done = await conn.fetch(
                "INSERT INTO twin_definitions AS d "
                "(twin_id, name, owner, definition, created_at, updated_at) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::float8[], "
                "$6::float8[]) ON CONFLICT (twin_id) DO UPDATE SET name = EXCLUDED.name, "
                "definition = EXCLUDED.definition, updated_at = EXCLUDED.updated_at, retired_at = NULL "
                "WHERE d.owner = EXCLUDED.owner RETURNING twin_id", *cols)
            written = {r[0] for r in done}
            refused = [t for t in cols[0] if t not in written]
        if batch.retired:
            # its learnt models stay: a retired twin is kept for a while, across a restart too, to return as
            # it was; they go when it is no longer kept (forget_model_states, purge_retired_model_states)
            await conn.execute("UPDATE twin_definitions SET retired_at = $1 WHERE twin_id = ANY($2::text[]) "
                               "AND owner = $3", time.time(), batch.retired, self.replica)
        if batch.snapshots:
            rows = [snapshot_row(s, self.replica, encode_jsonb) for s in batch.snapshots]
            await conn.execute(
                "INSERT INTO twin_state_history (snapshot_id, twin_id, timestamp, state_snapshot, metrics, "
                "health_score, change_reason, can_rollback_to, checksum, owner) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::jsonb[], $5::jsonb[], "
                "$6::float8[], $7::text[], $8::bool[], $9::text[], $10::text[]) "
                "ON CONFLICT (snapshot_id) DO NOTHING", *_columns(rows, 10))
        if batch.corrections:
            await conn.execute(
                f"INSERT INTO twin_corrections ({CORRECTION_COLUMNS}) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
                "$6::text[], $7::bool[], $8::text[], $9::text[]) ON CONFLICT (correction_id) DO NOTHING",
                *_columns([correction_row(c) for c in batch.corrections], 9))
        if batch.events:
            await conn.execute(
                "INSERT INTO twin_events (event_id, twin_id, type, severity, message, timestamp, data) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
                "$6::float8[], $7::jsonb[]) ON CONFLICT (event_id) DO NOTHING", *_columns(batch.events, 7))
        # asyncpg encodes parameters on the event loop: in slices, so no single statement stalls it for long
        for lo in range(0, len(samples[0]), _ROWS_PER_STATEMENT):
            await conn.execute(
                "INSERT INTO twin_metrics_history (twin_id, timestamp, metric, value) "
                "SELECT * FROM unnest($1::text[], $2::float8[], $3::text[], $4::float8[]) "
                "ON CONFLICT DO NOTHING",
                *(c[lo:lo + _ROWS_PER_STATEMENT] for c in samples))
        for lo in range(0, len(predictions[0]), _ROWS_PER_STATEMENT):
            await conn.execute(
                "INSERT INTO twin_failure_predictions (twin_id, made_at, metric, horizon_seconds, predicted, "
                "lower, upper, failure_probability, risk_factor) "
                "SELECT * FROM unnest($1::text[], $2::float8[], $3::text[], $4::float8[], $5::float8[], "
                "$6::float8[], $7::float8[], $8::float8[], $9::text[]) ON CONFLICT DO NOTHING",
                *(c[lo:lo + _ROWS_PER_STATEMENT] for c in predictions))
        return refused

    # ------------------------------------------------------------ reading snapshots

    async def get_snapshot(self, twin_id: str, snapshot_id: str) -> StateHistoryEntry | None:
        row = await self._call("get_snapshot", lambda p: p.fetchrow(
            f"SELECT {SNAPSHOT_COLUMNS} FROM twin_state_history WHERE twin_id = $1 AND snapshot_id = $2",
            twin_id, snapshot_id))
        return self._get_verified(None if row is None else tuple(row), twin_id, snapshot_id)

    async def list_snapshots(self, twin_id: str, *, limit: int = 100,
                             before: float | None = None) -> list[StateHistoryEntry]:
        cutoff = math.inf if before is None else float(before)
        rows = await self._call("list_snapshots", lambda p: p.fetch(
            f"SELECT {SNAPSHOT_COLUMNS} FROM twin_state_history WHERE twin_id = $1 AND timestamp < $2 "
            "ORDER BY timestamp DESC, id DESC LIMIT $3", twin_id, cutoff, int(limit)))
        return [e for e in (self._verified(tuple(r)) for r in rows) if e is not None]

    # ------------------------------------------------------------ start-up and queries

    async def load_twins(self, *, limits: LoadLimits = DEFAULT_LOAD, include_retired: bool = False,
                         retired_since: float | None = None, retired_max: int | None = None,
                         keep: KeepDefinition | None = None) -> list[RestoredTwin]:
        # retired ones: at or after `since`, the `most` retired last (NULL: no limit)
        retired = ((-math.inf if retired_since is None else float(retired_since),
                    None if retired_max is None else max(0, int(retired_max))) if include_retired else None)

        async def read(pool: asyncpg.Pool) -> list[RestoredTwin]:
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                return await self._load(conn, limits, retired, keep)

        out = await self._call("load_twins", read)
        log.info("store loaded twins=%d replica=%s", len(out), self.replica)
        return out

    async def _load(self, conn: asyncpg.Connection, limits: LoadLimits,
                    retired: tuple[float, int | None] | None, keep: KeepDefinition | None) -> list[RestoredTwin]:
        if retired is None:
            defs = await conn.fetch("SELECT twin_id, definition, retired_at FROM twin_definitions "
                                    "WHERE owner = $1 AND retired_at IS NULL ORDER BY created_at, twin_id",
                                    self.replica)
        else:
            defs = await conn.fetch(
                "SELECT twin_id, definition, retired_at FROM twin_definitions WHERE owner = $1 AND "
                "(retired_at IS NULL OR twin_id IN (SELECT twin_id FROM twin_definitions WHERE owner = $1 "
                "AND retired_at IS NOT NULL AND retired_at >= $2 ORDER BY retired_at DESC, twin_id LIMIT $3)) "
                "ORDER BY created_at, twin_id", self.replica, retired[0], retired[1])
        decoded = [(r[0], decode_json(r[1]), r[2]) for r in defs]
        if keep is not None:
            decoded = [d for d in decoded if keep(d[1])]
        out: list[RestoredTwin] = []
        for start in range(0, len(decoded), _CHUNK):
            chunk = decoded[start:start + _CHUNK]
            ids = [r[0] for r in chunk]
            snaps = await conn.fetch(
                f"SELECT s.* FROM unnest($1::text[]) AS t(id) CROSS JOIN LATERAL ("
                f"SELECT {SNAPSHOT_COLUMNS}, id AS seq FROM twin_state_history WHERE twin_id = t.id "
                "ORDER BY timestamp DESC, id DESC LIMIT $2) AS s ORDER BY s.twin_id, s.timestamp, s.seq",
                ids, limits.snapshots)
            corr = await conn.fetch(
                f"SELECT c.* FROM unnest($1::text[]) AS t(id) CROSS JOIN LATERAL ("
                f"SELECT {CORRECTION_COLUMNS}, id AS seq FROM twin_corrections WHERE twin_id = t.id "
                "ORDER BY id DESC LIMIT $2) AS c ORDER BY c.twin_id, c.seq", ids, limits.corrections)
            samples = await conn.fetch(
                "SELECT t.id, m.metric, m.timestamp, m.value FROM unnest($1::text[]) AS t(id) "
                "CROSS JOIN LATERAL (SELECT max(timestamp) AS newest FROM twin_metrics_history "
                "WHERE twin_id = t.id) AS n "
                "JOIN twin_metrics_history m ON m.twin_id = t.id AND m.timestamp >= n.newest - $2 "
                "ORDER BY t.id, m.timestamp", ids, limits.sample_window_s)
            by_twin: dict[str, dict[str, list[Any]]] = {t: {"s": [], "c": [], "m": []} for t in ids}
            for r in snaps:
                by_twin[r[1]]["s"].append(tuple(r))
            for r in corr:
                by_twin[r[1]]["c"].append(tuple(r))
            for r in samples:
                by_twin[r[0]]["m"].append(r)
            for twin_id, definition, retired_at in chunk:
                got = by_twin[twin_id]
                rows = got["m"]
                out.append(RestoredTwin(
                    definition=definition,
                    snapshots=[e for e in map(self._verified, got["s"]) if e is not None],
                    samples=group_samples((r[1] for r in rows), (r[2] for r in rows), (r[3] for r in rows),
                                          limit=limits.samples) if rows else {},
                    corrections=[correction_from_row(r) for r in got["c"]], owner=self.replica,
                    retired_at=None if retired_at is None else float(retired_at)))
        return out

    async def list_events(self, query: EventQuery) -> list[TwinEvent]:
        # ids compare bytewise (COLLATE "C"), as in SQLite and Python, whatever the database's collation
        sql, args = event_select(query, self.replica, mark=lambda n: f"${n}", collate=' COLLATE "C"')
        rows = await self._call("list_events", lambda p: p.fetch(sql, *args))
        return [event_from_row(tuple(r)) for r in rows]

    async def metrics_history(self, twin_id: str, metric: str, start: float,
                              end: float) -> tuple[np.ndarray, np.ndarray]:
        rows = await self._call("metrics_history", lambda p: p.fetch(
            "SELECT timestamp, value FROM twin_metrics_history WHERE twin_id = $1 AND timestamp >= $2 "
            "AND timestamp <= $3 AND metric = $4 ORDER BY timestamp",
            twin_id, float(start), float(end), metric))
        arr = np.array([tuple(r) for r in rows], dtype=np.float64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    async def save_model_states(self, states: Mapping[str, bytes], *, at: float) -> int:
        rows = [(tid, self.replica, float(at), blob, hashlib.sha256(blob).hexdigest())
                for tid, blob in states.items()]

        async def tx(pool: asyncpg.Pool) -> int:
            async with pool.acquire() as conn, conn.transaction():
                got = await conn.fetch(
                    "INSERT INTO twin_model_state (twin_id, owner, saved_at, state, checksum) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::bytea[], $5::text[]) "
                    "ON CONFLICT (twin_id) DO UPDATE SET saved_at = excluded.saved_at, state = excluded.state, "
                    "checksum = excluded.checksum WHERE twin_model_state.owner = excluded.owner "
                    "RETURNING twin_id", *_columns(rows, 5))
                return len(got)

        return await self._call("save_model_states", tx) if rows else 0

    async def load_model_states(self, twin_ids: Collection[str] | None = None) -> dict[str, bytes]:
        if twin_ids is None:
            rows = await self._call("load_model_states", lambda p: p.fetch(
                "SELECT twin_id, state, checksum FROM twin_model_state WHERE owner = $1", self.replica))
        else:
            ids = list(dict.fromkeys(twin_ids))
            rows = await self._call("load_model_states", lambda p: p.fetch(
                "SELECT twin_id, state, checksum FROM twin_model_state WHERE owner = $1 "
                "AND twin_id = ANY($2::text[])", self.replica, ids))
        return self._model_state_rows([tuple(r) for r in rows])

    async def forget_model_states(self, twin_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(twin_ids))
        if not ids:
            return 0
        status = await self._call("forget_model_states", lambda p: p.execute(
            "DELETE FROM twin_model_state WHERE twin_id = ANY($1::text[]) AND owner = $2", ids, self.replica))
        gone = _deleted(status)
        if gone:
            log.info("model state of twins no longer kept deleted: rows=%d replica=%s", gone, self.replica)
        return gone

    async def purge_retired_model_states(self, *, keep: Collection[str] = ()) -> int:
        status = await self._call("purge_retired_model_states", lambda p: p.execute(
            "DELETE FROM twin_model_state m USING twin_definitions d WHERE d.twin_id = m.twin_id "
            "AND m.owner = $1 AND d.owner = $1 AND d.retired_at IS NOT NULL AND NOT (m.twin_id = ANY($2::text[]))",
            self.replica, list(keep)))
        gone = _deleted(status)
        if gone:
            log.info("model state of twins retired and no longer kept purged: rows=%d replica=%s", gone,
                     self.replica)
        return gone

    async def apply_retention(self, policy: RetentionPolicy, *, now: float) -> RetentionReport:
        b = retention_bounds(policy, now)

        async def tx(pool: asyncpg.Pool) -> RetentionReport:
            async with pool.acquire() as conn, conn.transaction():
                snaps = await conn.fetchrow(
                    "WITH ranked AS (SELECT id, timestamp, ROW_NUMBER() OVER (PARTITION BY twin_id "
                    "ORDER BY timestamp DESC, id DESC) AS rn FROM twin_state_history), "
                    "gone AS (DELETE FROM twin_state_history h USING ranked r WHERE h.id = r.id AND r.rn > 1 "
                    "AND r.timestamp < $3 AND (r.rn > $1 OR r.timestamp < $2) RETURNING h.twin_id) "
                    "SELECT count(*), count(DISTINCT twin_id) FROM gone",
                    int(b["snapshot_keep"]), float(b["snapshot_cutoff"]), float(b["snapshot_young"]))
                samples = await conn.execute("DELETE FROM twin_metrics_history WHERE timestamp < $1",
                                             float(b["samples_cutoff"]))
                preds = await conn.execute("DELETE FROM twin_failure_predictions WHERE made_at < $1",
                                           float(b["predictions_cutoff"]))
                events = await conn.execute("DELETE FROM twin_events WHERE timestamp < $1",
                                            float(b["events_cutoff"]))
            return RetentionReport(snapshots=int(snaps[0]), samples=_deleted(samples),
                                   predictions=_deleted(preds), events=_deleted(events),
                                   twins_touched=int(snaps[1]))

        report = await self._call("retention", tx)
        self._log_retention(policy, report)
        return report


__all__ = ["PostgresStore", "describe_url"]



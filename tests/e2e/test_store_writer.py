"""StoreWriter: the service keeps going while the database is away, buffers a bounded amount, and catches up.

Unavailability is real, never simulated: a SQLite file that cannot be written (immutable as root, mode
0444 otherwise), a filesystem that is full (a 1 MiB tmpfs, root only), and a PostgreSQL URL with nothing
listening (a TCP relay in front of the real server that we stop and start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from helpers.files import ReadOnlyFile
from helpers.store_contract import T0, samples, snap, twin
from helpers.stores import PG_URL, Relay, migrated_file, pg_target, round_outbox

from sidecar.engine.view import MetricSamples, Outbox
from sidecar.status import ServiceStatus
from sidecar.store import RetentionPolicy, Store, StoreWriter, open_store
from sidecar.store.writer import count_items


async def stored_sample_rounds(store: Store) -> list[int]:
    _, v = await store.metrics_history("twin_a", "cpu_usage", -np.inf, np.inf)
    return sorted({int(x) for x in v})


# ------------------------------------------------------------------ ways to make SQLite unwritable



# ------------------------------------------------------------------ the normal path


async def test_submit_returns_at_once_and_the_background_task_writes(db_path: Path) -> None:
    status = ServiceStatus()
    store = open_store(path=db_path, status=None, env={})
    writer = StoreWriter(store, status, max_items=10_000)
    assert store.status is status                  # corrupt-snapshot counts land in the same status
    await writer.start()
    out = round_outbox(0)
    out.twins.append(twin("a"))
    writer.submit(out)
    assert status.store_backlog == count_items(out) == 12      # queued, not yet written: submit did not wait
    assert await writer.flush(timeout=30)
    assert status.store_backlog == 0 and status.store_up
    assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s000"]
    assert await stored_sample_rounds(store) == [0]
    await writer.close()
    with pytest.raises(Exception, match="closed"):
        writer.submit(round_outbox(1))


async def test_empty_outboxes_are_not_queued(db_path: Path) -> None:
    writer = StoreWriter(open_store(path=db_path, env={}), ServiceStatus())
    writer.submit(Outbox())
    assert writer.backlog == 0
    await writer.close()


async def test_a_malformed_outbox_is_dropped_and_the_rest_still_written(db_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    status = ServiceStatus()
    store = open_store(path=db_path, env={})
    writer = StoreWriter(store, status)
    await writer.start()
    bad = Outbox(samples=[MetricSamples(twin_id=("twin_a",), metric=("cpu_usage",), timestamp=np.array([1.0, 2.0]),
                                        value=np.array([1.0]))])
    writer.submit(bad)
    writer.submit(round_outbox(1))
    assert await writer.flush(timeout=30)
    assert await stored_sample_rounds(store) == [1]
    assert any("cannot be written" in r.getMessage() for r in caplog.records)
    await writer.close()


# ------------------------------------------------------------------ SQLite file read-only


async def test_read_only_file_buffers_bounded_drops_oldest_samples_then_recovers(
        db_path: Path, read_only: ReadOnlyFile, caplog: pytest.LogCaptureFixture) -> None:
    await migrated_file(db_path)
    read_only.lock()
    status = ServiceStatus()
    store = open_store(path=db_path, env={})
    writer = StoreWriter(store, status, max_items=50, retry_initial_s=0.05, retry_max_s=0.2)
    await writer.start()
    rounds = [round_outbox(i) for i in range(10)]     # 10 x (1 snapshot + 10 samples) = 110 rows
    for out in rounds:
        writer.submit(out)                            # never blocks, database or not
    assert not await writer.flush(timeout=0.5)        # cannot be written
    assert status.store_up is False
    assert status.store_backlog == 50                 # bounded
    assert status.store_dropped_samples_total == 60   # the overflow, counted
    assert all(len(o.samples[0].twin_id) == 10 for o in rounds)   # the caller's outboxes are left alone
    assert any("store unavailable" in r.getMessage() for r in caplog.records)

    read_only.unlock()                                # the file comes back
    assert await writer.flush(timeout=30)
    assert status.store_up is True and status.store_backlog == 0
    # every snapshot made it; of the samples, the oldest rounds were the ones dropped
    assert [e.snapshot_id for e in reversed(await store.list_snapshots("twin_a"))] == [f"s{i:03d}" for i in range(10)]
    assert await stored_sample_rounds(store) == [6, 7, 8, 9]
    await writer.close()


async def test_snapshots_are_never_dropped_even_past_the_bound(db_path: Path, read_only: ReadOnlyFile) -> None:
    await migrated_file(db_path)
    read_only.lock()
    status = ServiceStatus()
    store = open_store(path=db_path, env={})
    writer = StoreWriter(store, status, max_items=3, retry_initial_s=0.05, retry_max_s=0.2)
    await writer.start()
    for i in range(10):
        writer.submit(Outbox(snapshots=[snap("twin_a", f"s{i}", T0 + i)],
                             samples=[samples("twin_a", "cpu_usage", [T0 + i], [float(i)])]))
    assert not await writer.flush(timeout=0.3)
    assert status.store_backlog == 10 and status.store_dropped_samples_total == 10
    read_only.unlock()
    assert await writer.flush(timeout=30)
    assert len(await store.list_snapshots("twin_a")) == 10
    await writer.close()


async def test_close_with_the_database_down_gives_up_after_the_timeout(
        db_path: Path, read_only: ReadOnlyFile, caplog: pytest.LogCaptureFixture) -> None:
    await migrated_file(db_path)
    read_only.lock()
    writer = StoreWriter(open_store(path=db_path, env={}), ServiceStatus(), retry_initial_s=0.05)
    await writer.start()
    writer.submit(round_outbox(0))
    await writer.close(timeout=0.3)
    assert any("closed with rows unwritten" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ disk full


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_buffers_then_writes_the_backlog(tiny_fs: Path) -> None:
    path = tiny_fs / "twins.db"
    status = ServiceStatus()
    store = open_store(path=path, env={})
    writer = StoreWriter(store, status, retry_initial_s=0.05, retry_max_s=0.2)
    await writer.start()
    writer.submit(round_outbox(0))
    assert await writer.flush(timeout=30)
    filler = tiny_fs / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:   # fill the filesystem to the last byte
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    for i in range(1, 4):
        writer.submit(round_outbox(i, n_samples=2000))
    assert not await writer.flush(timeout=0.5)
    assert status.store_up is False and status.store_backlog > 0
    filler.unlink()                                   # space again
    assert await writer.flush(timeout=30)
    assert status.store_up is True
    assert await stored_sample_rounds(store) == [0, 1, 2, 3]
    await writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# ------------------------------------------------------------------ PostgreSQL away and back


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    try:
        conn = await asyncpg.connect(PG_URL, timeout=3)
    except Exception as e:
        pytest.skip(f"no PostgreSQL server answers at {PG_URL}: {type(e).__name__}: {e}")
    await conn.close()
    name = f"t_writer_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    await conn.close()


@pytest.mark.integration
async def test_postgres_with_nothing_listening_buffers_then_catches_up(pg_schema: str) -> None:
    relay = Relay(pg_target())
    url = f"postgresql://postgres@127.0.0.1:{relay.port}/test"
    status = ServiceStatus()
    store = open_store(url=url, schema=pg_schema, env={})
    writer = StoreWriter(store, status, retry_initial_s=0.05, retry_max_s=0.3)
    await writer.start()
    writer.submit(Outbox(twins=[twin("a")]))
    for i in range(5):
        writer.submit(round_outbox(i))
    assert not await writer.flush(timeout=0.5)         # nothing is listening yet
    assert status.store_up is False and status.store_backlog == 1 + 5 * 11

    await relay.start()                                 # the database comes (back) up
    assert await writer.flush(timeout=30)
    assert status.store_up and status.store_backlog == 0
    assert await stored_sample_rounds(store) == [0, 1, 2, 3, 4]

    await relay.stop()                                  # and goes away again, cutting live connections
    for i in range(5, 8):
        writer.submit(round_outbox(i))
    assert not await writer.flush(timeout=0.5)
    assert status.store_up is False
    await relay.start()
    assert await writer.flush(timeout=30)
    assert status.store_up
    assert await stored_sample_rounds(store) == list(range(8))
    assert len(await store.list_snapshots("twin_a")) == 8
    (restored,) = await store.load_twins()
    assert restored.twin_id == "twin_a"
    await writer.close()
    await relay.stop()


# ------------------------------------------------------------------ retention


async def test_writer_applies_retention_on_its_interval(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [T0 + 10_000.0]
    store = open_store(path=db_path, env={})
    writer = StoreWriter(store, ServiceStatus(), retention=RetentionPolicy(snapshot_max_count=3),
                         retention_interval_s=60.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="sidecar.store")
    await writer.start()
    for i in range(6):
        writer.submit(round_outbox(i))
    assert await writer.flush(timeout=30)
    now[0] += 61.0
    writer.submit(round_outbox(6))                    # wakes the task; retention runs when the queue is empty
    assert await writer.flush(timeout=30)
    for _ in range(100):
        if len(await store.list_snapshots("twin_a")) == 3:
            break
        await asyncio.sleep(0.02)
    assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s006", "s005", "s004"]
    assert any("retention dropped" in r.getMessage() for r in caplog.records)
    await writer.close()

"""StoreWriter.wait_written: the barrier the API's state changes await before they answer 200.

Real SQLite files throughout: a slow database is another connection holding the write lock, a database
that is down is a file made immutable (chattr +i as root, mode 0444 otherwise; see test_store_writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import numpy as np
from helpers.files import ReadOnlyFile
from helpers.store_contract import T0, snap, twin
from helpers.stores import WriteLockHolder, migrated_file, round_outbox

from sidecar.app import _BufferedHistory, _RestoreGate
from sidecar.engine.view import MetricSamples, Outbox
from sidecar.status import ServiceStatus
from sidecar.store import StoreWriter, open_store


def on_disk(path: Path, snapshot_id: str) -> bool:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT 1 FROM twin_state_history WHERE snapshot_id = ?", (snapshot_id,)).fetchone() \
            is not None
    finally:
        conn.close()



async def test_each_waiter_gets_its_own_outbox_committed_and_on_disk(db_path: Path) -> None:
    writer = StoreWriter(open_store(path=db_path, env={}), ServiceStatus())
    await writer.start()
    tickets = []
    for i in range(20):
        writer.submit(round_outbox(i, n_samples=200))
        tickets.append(writer.last_ticket)
    seen: list[int] = []

    async def wait(i: int) -> None:
        assert await writer.wait_written(tickets[i], timeout=30)
        # committed when the wait says so, not later, and in order: every older outbox is on disk too (outboxes
        # committed in one batch wake their waiters together, in whatever order the loop resumes them)
        assert all(on_disk(db_path, f"s{j:03d}") for j in range(i + 1))
        seen.append(i)

    await asyncio.gather(*(wait(i) for i in reversed(range(20))))
    assert sorted(seen) == list(range(20))
    await writer.close()


async def test_an_empty_outbox_has_nothing_to_wait_for(db_path: Path) -> None:
    writer = StoreWriter(open_store(path=db_path, env={}), ServiceStatus())
    writer.submit(Outbox())
    assert writer.last_ticket.written is True
    assert await writer.wait_written(writer.last_ticket, timeout=0.1)
    await writer.close()


async def test_a_slow_database_times_out_then_the_outbox_is_still_written(db_path: Path) -> None:
    await migrated_file(db_path)
    writer = StoreWriter(open_store(path=db_path, env={}), ServiceStatus())
    await writer.start()
    with WriteLockHolder(db_path, 1.5):
        writer.submit(round_outbox(0))
        ticket = writer.last_ticket
        t0 = time.monotonic()
        assert not await writer.wait_written(ticket, timeout=0.3)
        took = time.monotonic() - t0
        assert 0.25 < took < 1.0, took
        assert ticket.written is None and not on_disk(db_path, "s000")
    assert await writer.wait_written(ticket, timeout=30)     # the lock went away: the same outbox commits
    assert on_disk(db_path, "s000")
    await writer.close()


async def test_a_database_that_is_down_answers_at_once_and_writes_in_order_later(
        db_path: Path, read_only: ReadOnlyFile) -> None:
    await migrated_file(db_path)
    read_only.lock()
    status = ServiceStatus()
    writer = StoreWriter(open_store(path=db_path, env={}), status, retry_initial_s=5.0, retry_max_s=5.0)
    await writer.start()
    writer.submit(round_outbox(0))
    first = writer.last_ticket
    t0 = time.monotonic()
    assert not await writer.wait_written(first, timeout=10)   # the failed attempt answers, not the timeout
    assert time.monotonic() - t0 < 2.0
    assert status.store_up is False
    writer.submit(round_outbox(1))                             # a submit skips the backoff: one more attempt
    second = writer.last_ticket
    t0 = time.monotonic()
    assert not await writer.wait_written(second, timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert first.written is None and second.written is None    # kept, not given up
    read_only.unlock()
    writer.submit(round_outbox(2))
    assert await writer.wait_written(writer.last_ticket, timeout=30)
    assert first.written and second.written
    store = writer.store
    assert [e.snapshot_id for e in reversed(await store.list_snapshots("twin_a"))] == ["s000", "s001", "s002"]
    await writer.close()


async def test_a_refused_outbox_is_reported_not_written(db_path: Path) -> None:
    writer = StoreWriter(open_store(path=db_path, env={}), ServiceStatus())
    await writer.start()
    bad = Outbox(snapshots=[snap("twin_a", "bad", T0)],
                 samples=[MetricSamples(twin_id=("twin_a",), metric=("cpu_usage",), timestamp=np.array([1.0, 2.0]),
                                        value=np.array([1.0]))])
    writer.submit(bad)
    refused = writer.last_ticket
    writer.submit(round_outbox(1))
    good = writer.last_ticket
    assert not await writer.wait_written(refused, timeout=30)
    assert refused.written is False
    assert await writer.wait_written(good, timeout=30)
    await writer.close()


async def test_close_answers_waiters_whose_outbox_could_not_be_written(
        db_path: Path, read_only: ReadOnlyFile) -> None:
    await migrated_file(db_path)
    read_only.lock()
    writer = StoreWriter(open_store(path=db_path, env={}), ServiceStatus(), retry_initial_s=0.05)
    await writer.start()
    writer.submit(round_outbox(0))
    ticket = writer.last_ticket
    await writer.close(timeout=0.3)
    assert ticket.written is False
    assert not await writer.wait_written(ticket, timeout=5)


async def test_a_change_whose_definition_is_held_back_is_never_reported_stored(db_path: Path) -> None:
    """The store was down at start and the stored twins are not merged yet: the snapshot is committed, the
    definition (which holds the new expected state) is not, so the change is not durable yet."""
    store = open_store(path=db_path, env={})
    writer = StoreWriter(store, ServiceStatus())
    await writer.start()
    gate = _RestoreGate(writer, pending=True)
    history = _BufferedHistory(store, gate, wait_s=5.0)
    await history.write(Outbox(twins=[twin("a")], snapshots=[snap("twin_a", "s0", T0)]))
    assert not await history.last_write()()
    assert await writer.flush(timeout=30)
    assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s0"]
    assert await store.load_twins() == []                       # held back: not durable, rightly not "stored"
    gate.pending = False                                         # merged: definitions go through again
    await history.write(Outbox(twins=[twin("a")], snapshots=[snap("twin_a", "s1", T0 + 1)]))
    assert await history.last_write()()
    assert [t.twin_id for t in await store.load_twins()] == ["twin_a"]
    await writer.close()

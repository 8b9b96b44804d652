"""Observed samples written at a cadence (``storage.sample_interval``): held, then written together, never lost
on a clean shutdown, never held past half the buffer; everything else still goes out at once. Real SQLite files.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import numpy as np
import yaml
from helpers.store_contract import T0, predictions, samples
from helpers.stores import round_outbox

from sidecar.app import _open_history
from sidecar.config import load_config
from sidecar.engine.core import Engine
from sidecar.engine.view import Outbox
from sidecar.status import ServiceStatus
from sidecar.store import Store, StoreWriter, open_store
from sidecar.store.base import prediction_columns, sample_columns


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def stored_rounds(store: Store) -> list[int]:
    _, v = await store.metrics_history("twin_a", "cpu_usage", -np.inf, np.inf)
    return sorted({int(x) for x in v})


async def test_samples_are_held_until_their_interval_then_written_together(db_path: Path) -> None:
    clock, status = Clock(), ServiceStatus()
    store = open_store(path=db_path, status=None, env={})
    writer = StoreWriter(store, status, samples_every_s=60.0, clock=clock)
    await writer.start()
    for i in range(4):                                  # rounds at 0, 15, 30, 45 s
        clock.now = T0 + 15.0 * i
        writer.submit(round_outbox(i))
    assert await writer.flush(timeout=30)               # flush writes what is held too
    assert await stored_rounds(store) == [0, 1, 2, 3]
    for i in range(4, 7):                               # 60, 75, 90 s: held again
        clock.now = T0 + 15.0 * i
        writer.submit(round_outbox(i))
    await _settle(writer)
    snaps = {e.snapshot_id for e in await store.list_snapshots("twin_a")}
    assert {"s004", "s005", "s006"} <= snaps            # snapshots are never held
    assert await stored_rounds(store) == [0, 1, 2, 3]   # the samples are
    clock.now = T0 + 15.0 * 8                           # 60 s after the oldest held: out with this round
    writer.submit(round_outbox(8))
    await _settle(writer)
    assert await stored_rounds(store) == [0, 1, 2, 3, 4, 5, 6, 8]
    await writer.close()


async def test_a_clean_shutdown_writes_the_held_samples_and_forecast_rows(db_path: Path) -> None:
    clock = Clock()
    writer = StoreWriter(open_store(path=db_path, status=None, env={}), ServiceStatus(), samples_every_s=3600.0,
                         clock=clock)
    await writer.start()
    writer.submit(Outbox(samples=[samples("twin_a", "cpu_usage", [T0, T0 + 15], [1.0, 2.0])]))
    writer.submit(Outbox(predictions=[predictions("twin_a", "cpu_usage", T0 + 15, [300, 900], [50, 96], [0, .6])]))
    ticket = writer.last_ticket
    assert ticket.written is None                       # held: not written yet, and its ticket says so
    assert writer.backlog == 0                          # nor counted as the outage buffer's backlog
    await writer.close()
    assert ticket.written is True
    reopened = open_store(path=db_path, status=None, env={})
    try:
        assert await stored_rounds(reopened) == [1, 2]
    finally:
        await reopened.close()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT horizon_seconds, predicted FROM twin_failure_predictions "
                            "ORDER BY horizon_seconds").fetchall()
    assert rows == [(300.0, 50.0), (900.0, 96.0)]


async def test_held_samples_go_out_before_they_reach_half_the_buffer(db_path: Path) -> None:
    clock, status = Clock(), ServiceStatus()
    store = open_store(path=db_path, status=None, env={})
    writer = StoreWriter(store, status, max_items=100, samples_every_s=3600.0, clock=clock)
    await writer.start()
    for i in range(5):                                  # 10 samples a round; half the buffer is 50
        writer.submit(round_outbox(i))
    await _settle(writer)
    assert await stored_rounds(store) == [0, 1, 2, 3, 4]
    assert status.store_dropped_samples_total == 0
    await writer.close()


async def test_without_a_cadence_every_round_is_written_at_once(db_path: Path) -> None:
    store = open_store(path=db_path, status=None, env={})
    writer = StoreWriter(store, ServiceStatus())
    await writer.start()
    writer.submit(round_outbox(0))
    await _settle(writer)
    assert await stored_rounds(store) == [0]
    await writer.close()


def test_sample_rows_come_out_in_key_order_with_every_finite_sample() -> None:
    batches = [samples("twin_b", "mem", [T0 + 15], [1.0]), samples("twin_a", "mem", [T0 + 15], [2.0]),
               samples("twin_a", "cpu", [T0 + 15, T0], [3.0, 4.0]), samples("twin_c", "cpu", [T0], [np.nan])]
    twin, ts, metric, val = sample_columns(batches)
    rows = list(zip(twin, ts, metric, val, strict=True))
    assert rows == sorted(rows)
    assert sorted(rows) == sorted([("twin_b", T0 + 15, "mem", 1.0), ("twin_a", T0 + 15, "mem", 2.0),
                                   ("twin_a", T0 + 15, "cpu", 3.0), ("twin_a", T0, "cpu", 4.0)])


def test_forecast_rows_come_out_in_key_order_with_every_row() -> None:
    batches = [predictions("twin_b", "mem", T0, [900, 300], [1, 2], [0, 0]),
               predictions("twin_a", "mem", T0, [300], [3], [0]), predictions("twin_a", "cpu", T0, [300], [4], [0])]
    cols = prediction_columns(batches)
    keys = list(zip(cols[0], cols[1], cols[2], cols[3], strict=True))
    assert keys == sorted(keys) == [("twin_a", T0, "cpu", 300.0), ("twin_a", T0, "mem", 300.0),
                                    ("twin_b", T0, "mem", 300.0), ("twin_b", T0, "mem", 900.0)]
    assert cols[4] == [4.0, 3.0, 2.0, 1.0]              # each row's values travel with its key


async def _settle(writer: StoreWriter) -> None:
    """Wait for what is queued (not what is held) to be written."""
    for _ in range(300):
        if writer.backlog == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the writer did not catch up")


async def test_a_restart_replays_every_sample_the_last_run_held_at_shutdown(tmp_path: Path) -> None:
    """The service's writer holds samples for the default minute; a clean stop writes them, and the next start
    puts every one back in the twin's history."""
    db = tmp_path / "twins.db"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({
        "prometheus": {"url": "http://127.0.0.1:9"}, "interval": "15s", "backfill": "0",
        "server": {"listen": "127.0.0.1:0"}, "storage": {"path": str(db)},
        "twins": [{"name": "svc", "metrics": {"cpu_usage": 'test_gauge{k="a"}'}}]}))
    cfg = load_config(rules)
    assert cfg.storage.sample_interval_s == 60.0
    first = Engine()
    opened = await _open_history(cfg, first, ServiceStatus())
    t0 = time.time() - 600.0            # recent: the writer's retention pass deletes samples older than its days
    first.create_twin("svc", at=t0, system_type="web_service")
    slot = first.series_for("svc", ["cpu_usage"])
    times = t0 + 15.0 * np.arange(1, 9)
    for t in times:                                     # 8 rounds in a few milliseconds: all held
        first.ingest(slot, np.array([20.0 + t % 7]), at=float(t))
        opened.writer.submit(first.drain())
    assert opened.writer.last_ticket.written is None
    await opened.writer.close()

    second = Engine()
    reopened = await _open_history(cfg, second, ServiceStatus())
    await reopened.writer.close(1.0)
    t_hist, y_hist = second.history("svc")["cpu_usage"]
    np.testing.assert_array_equal(t_hist, times)
    np.testing.assert_array_equal(y_hist, 20.0 + times % 7)

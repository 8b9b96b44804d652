#!/usr/bin/env python3
"""What the store costs a round: samples and forecast rows written every round, or held and written at a cadence.

A fleet of ``--twins`` twins × 4 metrics on a real SQLite file through ``StoreWriter``, as the service runs it:
each round one sample per series and the forecast rows of a twentieth of the series (4 horizons; the
default 5-minute forecast cadence spread over 20 rounds of 15 s). The table is first filled with
``--warm-rounds`` rounds (a row costs more in a larger B-tree), then ``--rounds`` rounds are timed; the clock is
simulated (15 s a round), so ``--every`` 60 writes every fourth round. Reported: this process's CPU per round
(the writer's thread included), by ``time.process_time``.

    python benchmarks/store_cadence.py --twins 1000 --every 0 60 300
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.engine.view import MetricSamples, Outbox, PredictionRows  # noqa: E402
from sidecar.status import ServiceStatus  # noqa: E402
from sidecar.store import StoreWriter, open_store  # noqa: E402

METRICS = ("cpu_usage", "memory_usage", "request_latency_ms", "error_rate")
HORIZONS = np.array([300.0, 900.0, 1800.0, 3600.0])
T0 = 1_700_000_000.0
STEP = 15.0


def round_outbox(k: int, twin: np.ndarray, metric: np.ndarray, rng: np.random.Generator) -> Outbox:
    n = twin.size
    at = T0 + STEP * k
    s = MetricSamples(twin_id=twin, metric=metric, timestamp=np.full(n, at), value=rng.random(n))
    due = np.flatnonzero(np.arange(n) % 20 == k % 20)
    h = HORIZONS.size
    m = rng.random(due.size * h)
    p = PredictionRows(twin_id=np.repeat(twin[due], h), metric=np.repeat(metric[due], h),
                       made_at=np.full(due.size * h, at), horizon_s=np.tile(HORIZONS, due.size), predicted=m,
                       lower=m - 1, upper=m + 1, failure_probability=np.zeros(due.size * h),
                       risk_factor=np.full(due.size * h, "", dtype=object))
    return Outbox(samples=[s], predictions=[p])


async def one(twins: int, every: float, warm: int, rounds: int) -> float:
    rng = np.random.default_rng(1)
    ids = np.array([f"twin_{x:016x}" for x in rng.integers(0, 2**63, twins)], dtype=object)
    twin = np.repeat(ids, len(METRICS))
    metric = np.tile(np.array(METRICS, dtype=object), twins)
    clock = [T0]
    with tempfile.TemporaryDirectory() as d:
        store = open_store(path=str(Path(d) / "twins.db"), env={})
        await store.open()
        for k in range(warm):
            await store.write(round_outbox(k, twin, metric, rng))
        writer = StoreWriter(store, ServiceStatus(), max_items=10_000_000, samples_every_s=every,
                             clock=lambda: clock[0])
        await writer.start()
        cpu0 = time.process_time()
        for k in range(warm, warm + rounds):
            clock[0] = T0 + STEP * k
            writer.submit(round_outbox(k, twin, metric, rng))
            while writer.backlog:                 # what is queued is written before the next round, as in service
                await asyncio.sleep(0.005)
        cpu = time.process_time() - cpu0
        await writer.close()
    return cpu / rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=int, default=1000)
    ap.add_argument("--every", type=float, nargs="+", default=[0.0, 60.0])
    ap.add_argument("--warm-rounds", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=80, help="timed rounds (a multiple of every cadence's rounds)")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
          f"Python {platform.python_version()}; {a.twins} twins x 4 metrics, {a.warm_rounds} rounds stored first")
    for rep in range(a.repeat):
        for every in a.every:
            s = asyncio.run(one(a.twins, every, a.warm_rounds, a.rounds))
            print(f"  run {rep + 1}, every {every:g} s: {s * 1e3:.1f} ms CPU a round "
                  f"({s / (a.twins * len(METRICS)) * 1e6:.2f} us per series)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""How fast the stores take a round's outbox, and how long the event loop stalls meanwhile.

A round for ``--twins`` twins x 4 metrics: one sample per series (every round) and, once a minute, forecast
rows for 4 horizons per series (the engine emits forecasts every 60 s). Each kind of round is written
``--repeat`` times; reported are wall time, this process's CPU time (SQLite's writer thread included;
the PostgreSQL server's own CPU is not), rows per second, and the longest gap between two ticks of a
coroutine that runs alongside (the time the event loop could not serve /metrics or the API).

    python benchmarks/store_throughput.py --twins 10000 --repeat 3    # writes benchmarks/results/store_throughput.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.engine.view import MetricSamples, Outbox, PredictionRows  # noqa: E402
from sidecar.store import Store, open_store  # noqa: E402

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
METRICS = ("cpu_usage", "memory_usage", "request_latency_ms", "error_rate")
HORIZONS = np.array([300.0, 900.0, 1800.0, 3600.0])
T0 = 1_700_000_000.0


def round_outbox(twins: int, k: int, *, forecasts: bool) -> Outbox:
    at = T0 + 15.0 * k
    tw = tuple(f"twin_{i:05d}" for i in range(twins) for _ in METRICS)
    me = METRICS * twins
    n = len(tw)
    out = Outbox(samples=[MetricSamples(twin_id=tw, metric=me, timestamp=np.full(n, at),
                                        value=np.random.default_rng(k).random(n) * 100)])
    if forecasts:
        h = HORIZONS.size
        mean = np.random.default_rng(k + 1).random(n * h) * 100
        out.predictions.append(PredictionRows(
            twin_id=tuple(t for t in tw for _ in range(h)), metric=tuple(m for m in me for _ in range(h)),
            made_at=np.full(n * h, at), horizon_s=np.tile(HORIZONS, n), predicted=mean, lower=mean - 5,
            upper=mean + 5, failure_probability=np.where(mean > 90, 0.5, np.nan),
            risk_factor=tuple("" for _ in range(n * h))))
    return out


async def measure(store: Store, outbox: Outbox) -> tuple[float, float, float]:
    """(wall s, CPU s, longest event-loop gap s) for one write."""
    done = False
    gap = 0.0

    async def ticker() -> None:
        nonlocal gap
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gap = max(gap, now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    w0, c0 = time.perf_counter(), time.process_time()
    await store.write(outbox)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    done = True
    await task
    return wall, cpu, gap


async def bench(backend: str, twins: int, repeat: int) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="store_bench_"))
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    store = (open_store(path=tmp / "twins.db", env={}) if backend == "sqlite"
             else open_store(url=PG_URL, schema=schema, env={}))
    await store.open()
    rows = []
    try:
        k = 0
        for kind, forecasts in (("samples only", False), ("samples + forecasts", True)):
            res = []
            for _ in range(repeat):
                out = round_outbox(twins, k, forecasts=forecasts)
                k += 1
                n = sum(len(s.twin_id) for s in out.samples) + sum(len(p.twin_id) for p in out.predictions)
                res.append((n, *await measure(store, out)))
            n = res[0][0]
            walls = [r[1] for r in res]
            cpus = [r[2] for r in res]
            gaps = [r[3] for r in res]
            rows.append(f"| {backend} | {kind} | {n:,} | {np.median(walls):.2f} s | {np.median(cpus):.2f} s | "
                        f"{n / np.median(walls):,.0f} | {max(gaps) * 1000:.0f} ms |")
            print(rows[-1], flush=True)
    finally:
        await store.close()
        if backend == "postgres":
            import asyncpg

            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--twins", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "store_throughput.md"))
    args = p.parse_args()
    rows: list[str] = []
    for b in (["sqlite", "postgres"] if args.backend == "both" else [args.backend]):
        rows += asyncio.run(bench(b, args.twins, args.repeat))
    load = os.getloadavg()
    text = "\n".join([
        "# Store write throughput", "",
        f"Command: `python benchmarks/store_throughput.py --twins {args.twins} --repeat {args.repeat} "
        f"--backend {args.backend}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work: load average "
        f"{load[0]:.1f} at the end), Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        "PostgreSQL on the same machine  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
        "One `store.write` per round, medians over the repeats; \"loop stall\" is the longest the event loop "
        "went without running another coroutine during the write (worst of the repeats).", "",
        "| backend | round | rows | wall | CPU (this process) | rows/s | loop stall |",
        "|---|---|---|---|---|---|---|", *rows, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a model-state save costs at scale, and whether rounds and the API go on meanwhile.  (benchmark, issue 17)

A real engine with N twins × 4 metrics (``export_cardinality.Fleet``, warmed up) is saved to a real SQLite
store by the service's own ``save_model_states``, while a coroutine plays the scheduler: every 50 ms it takes
the engine lock as a round would and records how long it waited, and a probe records the event loop's lag
(what ``/healthz`` would feel). Then the same save with the shutdown's deadline (``SHUTDOWN_SAVE_S``). Reports
wall and CPU time of the save, the longest lock wait and loop lag, and RSS before and at its peak.
Writes ``benchmarks/results/model_state_save.md``.

    python3 benchmarks/model_state_save.py --twins 5000 20000
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_cardinality import Fleet

from sidecar.app import SHUTDOWN_SAVE_S, save_model_states
from sidecar.store import open_store


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def one_save(fleet: Fleet, db: Path, deadline_s: float | None) -> dict[str, Any]:
    store = open_store(path=str(db))
    await store.open()
    lock = asyncio.Lock()
    waits: list[float] = []
    lags: list[float] = []
    peak = [rss_mb()]
    done = asyncio.Event()

    async def rounds() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            async with lock:
                waits.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)

    async def probe() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t0 - 0.01)
            peak[0] = max(peak[0], rss_mb())

    before = rss_mb()
    tasks = [asyncio.create_task(rounds()), asyncio.create_task(probe())]
    c0, w0 = time.process_time(), time.monotonic()
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    written = await save_model_states(fleet.engine, store, lock, deadline=deadline)
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    done.set()
    await asyncio.gather(*tasks)
    await store.close()
    return {"written": written, "wall_s": wall, "cpu_s": cpu, "max_lock_wait_s": max(waits, default=0.0),
            "max_loop_lag_s": max(lags, default=0.0), "rss_before_mb": before, "rss_peak_mb": peak[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--warmup", type=int, default=20, help="ticks before saving")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_state_save.md"))
    a = ap.parse_args()
    rows = []
    for n in a.twins:
        fleet = Fleet(n)
        for _ in range(a.warmup):
            fleet.tick()
        with tempfile.TemporaryDirectory() as d:
            periodic = asyncio.run(one_save(fleet, Path(d) / "twins.db", None))
            shutdown = asyncio.run(one_save(fleet, Path(d) / "twins.db", SHUTDOWN_SAVE_S))
        rows.append((n, periodic, shutdown))
        print(n, periodic, shutdown, flush=True)
        del fleet
    md = [f"# Model-state save at scale ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
          f"`python3 benchmarks/model_state_save.py --twins {' '.join(map(str, a.twins))}` on {platform.machine()}, "
          f"Python {platform.python_version()}, shared with other work; SQLite, 4 metrics per twin, "
          f"{a.warmup} ticks first. *Lock wait*: the longest a round waited for the engine lock during the save; "
          f"*loop lag*: the longest the event loop was late (what the probes feel).", "",
          "| twins | save | wall | CPU | twins saved | longest lock wait | longest loop lag | RSS before → peak |",
          "|---|---|---|---|---|---|---|---|"]
    for n, p, s in rows:
        for label, r in (("periodic", p), (f"shutdown ({SHUTDOWN_SAVE_S:g} s deadline)", s)):
            md.append(f"| {n:,} | {label} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s | {r['written']:,} | "
                      f"{r['max_lock_wait_s'] * 1000:.0f} ms | {r['max_loop_lag_s'] * 1000:.0f} ms | "
                      f"{r['rss_before_mb']:.0f} → {r['rss_peak_mb']:.0f} MB |")
    md.append(f"\nPeak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.\n")
    text = "\n".join(md)
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

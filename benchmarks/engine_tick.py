"""CPU time of one engine tick for many twins: the service's hot path.

Syncs N twins × 4 metrics (cpu, memory, latency, error rate) for many ticks through the
batch path (``Engine.ingest``), every model, the 4 horizons, intervals, anomaly, divergence,
health and events included, and reports CPU time per tick and per series and the process's
peak memory. Writes ``benchmarks/results/engine_tick.{json,md}``.

    python3 benchmarks/engine_tick.py [--twins 10000] [--ticks 60] [--warmup 240]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from sidecar.engine.core import Engine

METRICS = ("cpu_usage", "memory_usage", "request_latency_ms", "error_rate")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=int, default=10_000)
    ap.add_argument("--ticks", type=int, default=60, help="measured ticks")
    ap.add_argument("--warmup", type=int, default=240, help="ticks before measuring (1 h at 15 s): models warm")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "engine_tick"))
    a = ap.parse_args()

    rng = np.random.default_rng(7)
    eng = Engine()
    t0 = 1_700_000_000.0
    slots = []
    t_setup = time.process_time()
    for i in range(a.twins):
        eng.create_twin(f"svc-{i}", at=t0)
        slots.append(eng.series_for(f"svc-{i}", METRICS))
    idx = np.concatenate(slots)
    setup_s = time.process_time() - t_setup
    n = idx.size
    base = np.tile([40.0, 60.0, 120.0, 0.01], a.twins) * rng.uniform(0.5, 1.5, n)
    trend = rng.normal(0, 0.002, n) * base
    eng.drain()

    def tick(k: int) -> float:
        values = base + trend * k + rng.normal(0, 0.03, n) * base
        values[3::4] = np.clip(values[3::4], 0, None)
        c = time.process_time()
        eng.ingest(idx, values, at=t0 + 15.0 * k)
        eng.drain()                      # the store writer's share: handing the outbox over
        return time.process_time() - c

    for k in range(1, a.warmup + 1):
        tick(k)
    cpu = np.array([tick(a.warmup + k) for k in range(1, a.ticks + 1)])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res = {
        "twins": a.twins, "series": n, "warmup_ticks": a.warmup, "measured_ticks": a.ticks,
        "cpu_s_per_tick_median": float(np.median(cpu)), "cpu_s_per_tick_p95": float(np.percentile(cpu, 95)),
        "cpu_us_per_series_per_tick": float(np.median(cpu) / n * 1e6),
        "setup_cpu_s": setup_s, "peak_rss_mib": peak_mib,
        "models": list(eng.bank.model_names), "horizons_s": eng.horizons_s.tolist(),
        "machine": f"{platform.machine()} {platform.processor() or ''} {_cpu_model()}, "
                   f"{_ncpu()} cores, Python {platform.python_version()}, numpy {np.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = (f"# Engine tick benchmark ({res['date']})\n\n{res['machine']}\n\n"
          f"| twins | series | CPU per tick (median) | p95 | CPU per series per tick | peak RSS | setup CPU |\n"
          f"|---|---|---|---|---|---|---|\n"
          f"| {a.twins} | {n} | {res['cpu_s_per_tick_median']:.3f} s | {res['cpu_s_per_tick_p95']:.3f} s | "
          f"{res['cpu_us_per_series_per_tick']:.2f} µs | {peak_mib:.0f} MiB | {setup_s:.2f} s |\n\n"
          f"Models: {', '.join(res['models'])}; horizons {res['horizons_s']}; after {a.warmup} warm-up ticks, "
          f"{a.ticks} measured; setup CPU: creating the twins and their series (the arrays' growth copies).\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _ncpu() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())

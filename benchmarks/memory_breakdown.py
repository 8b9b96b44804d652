"""Where the engine's bytes go, per series: every numpy array it keeps, by owner, and the process' RSS.
(benchmark, issue 17: the goal is ≤ 8 KB per series with every model)

A real engine with N twins × 4 metrics (``export_cardinality.Fleet``) ticks ``--ticks`` times; then every
array reachable from its state is counted once (views of another array are not counted again), grouped by
where it lives, and divided by the series. RSS is read from /proc before the fleet exists, after creating it and
after the ticks; its peak (during a tick) from ``getrusage``.
Writes ``benchmarks/results/memory_breakdown.md``.

    python3 benchmarks/memory_breakdown.py [--twins 2500] [--ticks 300]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_cardinality import Fleet

from sidecar.engine.models_base import GROWTH


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def arrays_by_owner(root: Any) -> dict[str, int]:
    """Bytes of every array reachable from ``root`` (each counted once, views not at all), by attribute path
    (dict keys and list positions folded, so a bank's arrays add up under one name)."""
    seen: set[int] = set()
    out: dict[str, int] = {}

    def walk(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 10:
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            if obj.base is None:
                out[path] = out.get(path, 0) + obj.nbytes
            return
        if isinstance(obj, str | bytes | int | float | bool | type(None)):
            return
        if isinstance(obj, dict):
            for v in list(obj.values())[:200]:
                walk(v, path + "{}", depth + 1)
            return
        if isinstance(obj, list | tuple):
            for v in list(obj)[:200]:
                walk(v, path + "[]", depth + 1)
            return
        names = list(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            names += list(getattr(cls, "__slots__", ()))
        for n in names:
            try:
                walk(getattr(obj, n), f"{path}.{n}", depth + 1)
            except AttributeError:
                continue

    walk(root, "state", 0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=int, default=2500)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_breakdown.md"))
    a = ap.parse_args()
    r0 = rss_mb()
    fleet = Fleet(a.twins)
    r_made = rss_mb()
    for _ in range(a.ticks):
        fleet.tick()
    r1 = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # the process' high-water mark, MB
    series = a.twins * 4
    sizes = arrays_by_owner(fleet.engine.state)
    cap = fleet.engine.state.bank.core.capacity
    total = sum(sizes.values())
    top = sorted(sizes.items(), key=lambda kv: -kv[1])
    md = [f"# Engine memory per series ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
          f"`python3 benchmarks/memory_breakdown.py --twins {a.twins} --ticks {a.ticks}` on {platform.machine()}, "
          f"Python {platform.python_version()}, numpy {np.__version__}: {series:,} series.", "",
          f"RSS grew by {r1 - r0:.0f} MB, **{(r1 - r0) * 2**20 / series / 1024:.1f} KB per series**; the engine's "
          f"arrays are {total / 2**20:.0f} MB, {total / series / 1024:.1f} KB per series (the rest: per-twin and "
          "per-series Python objects, names, the view's copies, the allocator). Arrays are allocated for a capacity "
          f"that grows by {GROWTH:g}× when full: {cap:,} slots for these {series:,} series "
          f"({1 - series / cap:.1%} unused rows in every figure). Right after the twins were created, before the "
          f"first tick, RSS had grown by {(r_made - r0) * 2**20 / series / 1024:.1f} KB per series; at its highest "
          f"(during a tick: its temporaries), by {(peak - r0) * 2**20 / series / 1024:.1f} KB per series "
          f"({peak - r0:.0f} MB).", "",
          "| where | bytes per series | share of the arrays |", "|---|---|---|"]
    for path, b in top:
        if b / series >= 16:
            md.append(f"| `{path}` | {b / series:,.0f} | {b / total:.1%} |")
    md.append(f"| everything else | {sum(b for _, b in top if b / series < 16) / series:,.0f} | |")
    bank = fleet.engine.state.bank
    fields = [(f"core.{n}", arr) for n, arr in bank.core.items()]
    fields += [(f"{type(f).__name__}.{n}", arr) for f in bank.families for n, arr in f.slots.items()]
    fields.sort(key=lambda kv: -kv[1].nbytes)
    md += ["", "The forecast bank's arrays by field (bytes per series slot, dtype, shape after the slot axis):", "",
           "| field | bytes per slot | dtype | shape |", "|---|---|---|---|"]
    md += [f"| `{name}` | {arr.nbytes / cap:,.0f} | {arr.dtype} | {arr.shape[1:]} |" for name, arr in fields
           if arr.nbytes / cap >= 64]
    md.append(f"| the other {sum(1 for _, arr in fields if arr.nbytes / cap < 64)} fields | "
              f"{sum(arr.nbytes for _, arr in fields if arr.nbytes / cap < 64) / cap:,.0f} | | |")
    text = "\n".join(md) + "\n"
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bytes a retired twin kept for its return holds (``collect/restore.Parked``), by part.  (benchmark, issue 17)

A real engine with one twin of 4 metrics fed ``--samples`` samples at 15 s (its history full at the default
``limits.history``), then what ``RetiredTwins.park`` keeps of it — its definition, snapshots, the
history's samples and the models' rows — built the same way and measured with ``sys.getsizeof`` (an array's
buffer included), each object counted once. Writes ``benchmarks/results/parked_size.md``.

    python3 benchmarks/parked_size.py [--samples 400] [--history-size 241]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings

METRICS = ("cpu_usage", "memory_usage", "request_latency_ms", "error_rate")


def deep_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and everything it holds, each object once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):            # getsizeof counts an array's own buffer; a view's is its base's
        return sys.getsizeof(obj) + (deep_bytes(obj.base, seen) if obj.base is not None else 0)
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        return size + sum(deep_bytes(k, seen) + deep_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return size + sum(deep_bytes(v, seen) for v in obj)
    if isinstance(obj, str | bytes | int | float | bool | type(None)):
        return size
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names += [n for n in getattr(cls, "__slots__", ()) if n not in ("__dict__", "__weakref__")]
    return size + sum(deep_bytes(getattr(obj, n), seen) for n in names if hasattr(obj, n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--history-size", type=int, default=EngineSettings().history_size)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "parked_size.md"))
    a = ap.parse_args()
    eng = Engine(EngineSettings(history_size=a.history_size))
    t0 = 1_700_000_000.0
    twin = eng.create_twin("svc", at=t0)
    slots = eng.series_for(twin.twin_id, METRICS)
    rng = np.random.default_rng(3)
    base = np.array([40.0, 60.0, 120.0, 0.01])
    for k in range(a.samples):
        eng.ingest(slots, base * rng.uniform(0.8, 1.2, 4), at=t0 + 15.0 * k)
    # what RetiredTwins.park keeps
    history = eng.history(twin.twin_id)
    parts = {
        "definition": json.loads(json.dumps(eng.get(twin.twin_id).definition())),
        "snapshots": eng.get(twin.twin_id).state_history,
        "samples": {m: (np.array(ts), np.array(ys)) for m, (ts, ys) in history.items()},
        "models": eng.model_states([twin.twin_id])[twin.twin_id],
    }
    seen: set[int] = set()
    sizes = {k: deep_bytes(v, seen) for k, v in parts.items()}
    total = sum(sizes.values())
    md = [f"# A retired twin kept for its return ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
          f"`python3 benchmarks/parked_size.py --samples {a.samples} --history-size {a.history_size}`: one twin "
          f"of {len(METRICS)} metrics, {a.samples} samples each at 15 s.", "",
          "| part | bytes |", "|---|---|"]
    md += [f"| {k} | {v:,} |" for k, v in sizes.items()]
    md.append(f"| **total** | **{total:,}** ({total / 1024:.0f} KB) |")
    text = "\n".join(md) + "\n"
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Backfill's dealing of a family's range answer to its twins: CPU time against the number of twins.

A discovery rule's shared query answers one series per twin; at start-up backfill hands each twin its own
series. This measures that matching alone (no Prometheus, no engine): ``index`` is the code the sidecar runs
(``sidecar.collect.targets.rows_by_twin``: the twins indexed by naming labels once, each series looked up),
``scan`` is every twin compared against every series, as backfill matched them before (kept here as the
baseline, run only up to ``--scan-max`` twins because it grows with the square). CPU time of this process
(``time.process_time``), best of ``--repeat``; the answers of both are checked to agree.

Writes ``benchmarks/results/backfill_match.{json,md}``.

    python3 benchmarks/backfill_match.py [--twins 1000,3000,10000,30000] [--scan-max 3000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar.collect.naming import naming_key
from sidecar.collect.targets import Target, rows_by_twin
from sidecar.config import parse_config

OUT = Path(__file__).resolve().parent / "results"
RULES = """
prometheus: {url: "http://127.0.0.1:9090"}
twins:
  - name: fam
    discover: 'up{job="app"}'
    name_labels: [instance]
    metrics: {cpu_usage: 'rate(cpu_seconds_total[1m])'}
"""


def family(n: int) -> tuple[list[Target], list[dict[str, str]]]:
    """``n`` twins of one rule and their series, in reverse order (nothing lines up by position)."""
    rule = parse_config(RULES).twins[0]
    labels = [{"instance": f"10.0.{i // 250}.{i % 250}:8080", "job": "app"} for i in range(n)]
    targets = [Target(f"fam@{lb['instance']}", rule, {}, lb, key=naming_key(rule, lb)) for lb in labels]
    return targets, labels[::-1]


def scan(targets: Sequence[Target], labels: Sequence[dict[str, str]], keep: Sequence[int]) -> dict[str, list[int]]:
    """Every twin against every series (the baseline)."""
    out: dict[str, list[int]] = {}
    for t in targets:
        names = [k for k, _ in t.key]
        want = tuple(v for _, v in t.key)
        rows = [i for i in keep if tuple(labels[i].get(k) for k in names) == want]
        if rows:
            out[t.name] = rows
    return out


def cpu(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", default="1000,3000,10000,30000")
    ap.add_argument("--scan-max", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.twins.split(",")):
        targets, labels = family(n)
        keep = list(range(n))
        got = rows_by_twin(targets, labels, keep)
        assert len(got) == n and all(len(v) == 1 for v in got.values())
        index_s = cpu(lambda: rows_by_twin(targets, labels, keep), args.repeat)   # noqa: B023
        scan_s = None
        if n <= args.scan_max:
            assert scan(targets, labels, keep) == got
            scan_s = cpu(lambda: scan(targets, labels, keep), args.repeat)          # noqa: B023
        rows.append({"twins": n, "index_cpu_s": index_s, "scan_cpu_s": scan_s})
        print(rows[-1], flush=True)
    result = {"when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.processor()
              or platform.machine(), "python": platform.python_version(), "repeat": args.repeat, "rows": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "backfill_match.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Backfill: a family's range answer dealt to its twins ({result['when']}, CPU s, best of "
             f"{args.repeat})", "", "| twins (series) | index (the sidecar's) | scan (every twin × every series) |",
             "|---|---|---|"]
    for r in rows:
        scan_cell = f"{r['scan_cpu_s']:.4f}" if r["scan_cpu_s"] is not None else "not run"
        lines.append(f"| {r['twins']:,} | {r['index_cpu_s']:.4f} | {scan_cell} |")
    (OUT / "backfill_match.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

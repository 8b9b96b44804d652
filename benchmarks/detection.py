"""NAB standard score of ``twin-sidecar detect`` on the real NAB series, and the cost of AnomalyBank.update.

    python benchmarks/detection.py [--data-dir ../shared/data/nab/data] [--skip-speed]

Runs the real command (``twin-sidecar detect --input DIR --output TMP --prefix twin_``, in process) over
every file of the data directory, scores the output with the official standalone scorer
(``../shared/tools/nab_score.py``, one threshold for the whole corpus, as NAB does), and writes
``benchmarks/results/detection.json`` (the scorer's full report plus run facts) and ``detection.md``.

The speed part times ``AnomalyBank.update`` alone on 40,000 series per tick (the service's size), in CPU time,
which is the fairer number on a shared machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sidecar import cli
from sidecar.engine.anomaly import AnomalyBank

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PUBLISHED = [("ARTime", 67.7), ("Numenta HTM", 66.5), ("CAD OSE", 61.6), ("KNN CAD", 54.7),
             ("Random Cut Forest", 52.0), ("windowed Gaussian", 24.3)]


def run_detect(data_dir: Path, out_dir: Path) -> float:
    t0 = time.perf_counter()
    rc = cli.main(["detect", "--input", str(data_dir), "--output", str(out_dir), "--prefix", "twin_"])
    if rc != 0:
        raise SystemExit(f"twin-sidecar detect failed with exit code {rc}")
    return time.perf_counter() - t0


def nab_score(scorer: Path, data_dir: Path, windows: Path, results: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(scorer), "--data-dir", str(data_dir), "--windows", str(windows),
                          "--results", str(results), "--json"], check=True, capture_output=True, text=True)
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def update_cost(n_series: int, ticks: int, seed: int = 0) -> dict[str, float]:
    """CPU seconds per tick of AnomalyBank.update over all series, after a warm-up longer than the bank's."""
    bank = AnomalyBank()
    idx = bank.add(n_series)
    rng = np.random.default_rng(seed)
    nan = np.full(n_series, np.nan)
    level = rng.uniform(1.0, 100.0, n_series)
    warm = 20
    cpu = 0.0
    for i in range(warm + ticks):
        y = level + rng.normal(0.0, 1.0, n_series)
        t = np.full(n_series, 1.7e9 + 15.0 * i)
        c0 = time.process_time()
        bank.update(idx, t, y, nan, nan, nan, nan)
        if i >= warm:
            cpu += time.process_time() - c0
    per_tick = cpu / ticks
    return {"series": float(n_series), "ticks": float(ticks), "cpu_s_per_tick": per_tick,
            "cpu_us_per_series": per_tick / n_series * 1e6}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def markdown(report: dict[str, Any], facts: dict[str, Any]) -> str:
    std = report["profiles"]["standard"]
    lines = [
        "# Anomaly detection on NAB (realAWSCloudwatch + realKnownCause)",
        "",
        f"Measured {facts['date']} on {facts['machine']} with `python benchmarks/detection.py`.",
        "",
        f"- **NAB standard score: {std['normalized_score']:.2f}** (0 = never fires, 100 = perfect), "
        f"raw {std['raw_score']:.3f}, one threshold for the corpus: {std['threshold']:.6g}",
        f"- windows detected: {std['windows_detected']} of {std['windows_detected'] + std['windows_missed']}; "
        f"false-positive rows: {std['fp']}",
        f"- files: {report['files']}, rows: {report['rows']} ({report['scored_rows']} scored)",
        f"- wall time of `twin-sidecar detect` over all files: {facts['detect_wall_s']:.1f} s "
        "(whole engine: forecaster, divergence and anomaly bank)",
    ]
    if "speed" in facts:
        sp = facts["speed"]
        lines.append(f"- `AnomalyBank.update` alone, {int(sp['series'])} series per tick: "
                     f"{sp['cpu_s_per_tick'] * 1e3:.1f} ms CPU per tick, {sp['cpu_us_per_series']:.2f} µs per series")
    other = {k: v for k, v in report["profiles"].items() if k != "standard"}
    for name, r in other.items():
        lines.append(f"- profile {name}: {r['normalized_score']:.2f}")
    lines += ["", "Published scores on the same 24 files (standard profile):", "",
              "| detector | score |", "|---|---|", f"| **twin-sidecar** | **{std['normalized_score']:.2f}** |"]
    lines += [f"| {name} | {score} |" for name, score in PUBLISHED]
    lines += ["", "Per file (standard profile, at the corpus threshold):", "",
              "| file | score | windows hit | FP rows |", "|---|---|---|---|"]
    for row in std["per_file"]:
        hit = f"{row['windows_detected']}/{row['windows_detected'] + row['windows_missed']}"
        lines.append(f"| {row['file']} | {row['score']:.3f} | {hit} | {row['fp']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=SHARED / "data" / "nab" / "data")
    ap.add_argument("--windows", type=Path, default=SHARED / "data" / "nab" / "labels" / "combined_windows.json")
    ap.add_argument("--scorer", type=Path, default=SHARED / "tools" / "nab_score.py")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where detection.{json,md} go")
    ap.add_argument("--keep", type=Path, default=None, help="keep the detect output here (default: a temp dir)")
    ap.add_argument("--series", type=int, default=40_000, help="series per tick for the update-cost run")
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--skip-speed", action="store_true")
    a = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="detect-") as tmp:
        results = a.keep or Path(tmp)
        wall = run_detect(a.data_dir, results)
        report = nab_score(a.scorer, a.data_dir, a.windows, results)
    facts: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                             "detect_wall_s": wall, "data_dir": str(a.data_dir)}
    if not a.skip_speed:
        facts["speed"] = update_cost(a.series, a.ticks)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "detection.json").write_text(json.dumps({"run": facts, "nab": report}, indent=2) + "\n")
    md = markdown(report, facts)
    (a.out / "detection.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Offline replay (``twin-sidecar forecast`` / ``detect``): CPU time per row and peak memory, both paths.

Generates ``timestamp,value`` CSVs (one sample a minute: a daily wave, a slow trend and noise), then measures,
each in its own process (peak RSS from the process's VmHWM):

- ``read``: the whole big file through the replay's reader (``CsvStream``: parse, check, chunk), no engine;
- ``forecast`` and ``detect --sequential`` on the first ``--speed-rows`` rows: the exact chain, one engine tick
  per row (the anchor, in the same run);
- ``forecast`` and ``detect`` (segmented, the default) on the whole ``--long-rows`` file: CPU per row and peak
  RSS;
- ``forecast`` on the whole big file for ``--soak-s`` seconds (then interrupted): peak RSS while it streams it.

``--code DIR`` runs another checkout's ``sidecar`` package (e.g. an older commit exported with ``git archive``)
for a before/after comparison; a checkout without ``CsvStream`` is measured reading with ``replay.load``, one
without ``--sequential`` runs its only path for both. Writes ``benchmarks/results/replay_speed[-LABEL].{json,md}``.

    python3 benchmarks/replay_speed.py [--rows 10000000] [--long-rows 2000000] [--speed-rows 20000] [--soak-s 60]
        [--code DIR --label before]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

READ = """
import sys
from sidecar import replay
if hasattr(replay, "CsvStream"):
    n = sum(c.line.size for c in replay.CsvStream(sys.argv[1]).chunks())
else:
    n = len(replay.load(sys.argv[1]))
print(n)
"""


def generate(path: Path, rows: int, seed: int = 18) -> None:
    """``rows`` samples a minute apart from 2024-01-01, written in blocks (the generator's memory stays small)."""
    rng = np.random.default_rng(seed)
    t0 = 1_704_067_200
    with open(path, "w") as f:
        f.write("timestamp,value\n")
        for start in range(0, rows, 1_000_000):
            k = np.arange(start, min(rows, start + 1_000_000))
            y = 50 + 20 * np.sin(2 * np.pi * k / 1440) + 1e-5 * k + rng.normal(0, 2, k.size)
            f.write("".join(f"{t},{v:.3f}\n" for t, v in zip((t0 + 60 * k).tolist(), y.tolist(), strict=True)))


def _hwm_kib(pid: int) -> int:
    """The process's peak resident set so far (VmHWM; 0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(argv: list[str], code: Path, *, limit_s: float | None = None) -> dict[str, float]:
    """Run ``python3 ARGV`` with ``code`` first on the path; wall seconds, CPU seconds and peak RSS (MiB, the
    process's VmHWM polled every 50 ms: ``ru_maxrss`` would carry the parent's peak across the exec),
    optionally interrupted (SIGINT) after ``limit_s``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # run from / : "python -c" and "-m" put the working directory first on sys.path, ahead of PYTHONPATH, and
    # a checkout as the working directory would be measured instead of ``code``
    # a job started in the background (nohup ... &) ignores SIGINT, and so would the child: restore it
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd="/", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    peak, interrupted = 0, False
    while proc.poll() is None:
        peak = max(peak, _hwm_kib(proc.pid))
        if limit_s is not None and not interrupted and time.perf_counter() - t0 > limit_s:
            proc.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0 and not interrupted:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak / 1024.0, "interrupted": float(interrupted)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the big file (10 M: about 200 MB)")
    ap.add_argument("--long-rows", type=int, default=2_000_000, help="rows of the file replayed whole, segmented")
    ap.add_argument("--speed-rows", type=int, default=20_000, help="rows replayed sequentially for the anchor")
    ap.add_argument("--soak-s", type=float, default=60.0, help="seconds of forecast on the big file for its RSS")
    ap.add_argument("--code", default=str(ROOT), help="checkout whose sidecar package is measured")
    ap.add_argument("--label", default="", help="results file suffix (e.g. before)")
    ap.add_argument("--data", default=None, help="directory for the generated files (default: a temporary one)")
    ap.add_argument("--generate", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        generate(Path(a.generate[0]), int(a.generate[1]))
        return 0
    code = Path(a.code).resolve()
    has_flag = "--sequential" in (code / "sidecar" / "cli.py").read_text()
    seq_flag = ["--sequential"] if has_flag else []

    with tempfile.TemporaryDirectory(prefix="replay-speed-") as tmp:
        data = Path(a.data) if a.data else Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        big = data / f"series-{a.rows}.csv"
        long = data / f"series-{a.long_rows}.csv"
        small = data / f"series-{a.speed_rows}.csv"
        for path, rows in ((big, a.rows), (long, a.long_rows), (small, a.speed_rows)):
            if not path.exists():     # in a process of its own: this one stays small
                subprocess.run([sys.executable, __file__, "--generate", str(path), str(rows)], check=True)
        out = Path(tmp) / "out.csv"
        res: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {_cpu()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "numpy": np.__version__, "code": str(code),
            "rows": a.rows, "file_mib": big.stat().st_size / 2**20, "speed_rows": a.speed_rows,
            "long_rows": a.long_rows, "long_file_mib": long.stat().st_size / 2**20,
            "load_average_at_start": os.getloadavg()[0]}
        res["read"] = run(["-c", READ, str(big)], code)
        for cmd in ("forecast", "detect"):
            r = run(["-m", "sidecar.cli", cmd, "--input", str(small), "--output", str(out), *seq_flag], code)
            r["ms_per_row"] = 1000.0 * r["wall_s"] / a.speed_rows
            r["cpu_ms_per_row"] = 1000.0 * r["cpu_s"] / a.speed_rows
            res[f"{cmd}_sequential"] = r
            if has_flag:
                r = run(["-m", "sidecar.cli", cmd, "--input", str(long), "--output", str(out)], code)
                r["ms_per_row"] = 1000.0 * r["wall_s"] / a.long_rows
                r["cpu_ms_per_row"] = 1000.0 * r["cpu_s"] / a.long_rows
                res[f"{cmd}_segmented"] = r
        res["forecast_soak"] = run(["-m", "sidecar.cli", "forecast", "--input", str(big), "--output", str(out)], code,
                                   limit_s=a.soak_s)
        res["load_average_at_end"] = os.getloadavg()[0]
    name = "replay_speed" + (f"-{a.label}" if a.label else "")
    dest = ROOT / "benchmarks" / "results" / name
    dest.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    dest.with_suffix(".md").write_text(_markdown(res, a.label))
    print(_markdown(res, a.label))
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _markdown(r: dict[str, Any], label: str) -> str:
    soak = r["forecast_soak"]
    rows = [f"| read the whole file ({r['file_mib']:.0f} MiB) | {r['rows']:,} | {r['read']['wall_s']:.1f} s | "
            f"{r['read']['cpu_s']:.1f} s | {1e6 * r['read']['cpu_s'] / r['rows']:.2f} µs | "
            f"{r['read']['peak_rss_mib']:.0f} MiB |"]
    for cmd in ("forecast", "detect"):
        for path, n in (("sequential", r["speed_rows"]), ("segmented", r["long_rows"])):
            m = r.get(f"{cmd}_{path}")
            if m:
                rows.append(f"| {cmd} ({path}) | {n:,} | {m['wall_s']:.1f} s | {m['cpu_s']:.1f} s | "
                            f"{m['cpu_ms_per_row']:.3f} ms | {m['peak_rss_mib']:.0f} MiB |")
    ratios = [f"{cmd} {r[f'{cmd}_sequential']['cpu_ms_per_row'] / r[f'{cmd}_segmented']['cpu_ms_per_row']:.1f}x"
              for cmd in ("forecast", "detect") if f"{cmd}_segmented" in r]
    return "\n".join([
        f"# Replay speed and memory{f' ({label})' if label else ''} ({r['date']})", "",
        f"{r['machine']}, Python {r['python']}, numpy {r['numpy']}", "",
        f"Load average at the start: {r['load_average_at_start']:.1f}, at the end: "
        f"{r.get('load_average_at_end', float('nan')):.1f} (the machine is shared: CPU time is the steadier measure)",
        "", "| what | rows | wall | CPU | CPU per row | peak RSS |", "|---|---|---|---|---|---|", *rows,
        f"| forecast on the whole file, {soak['wall_s']:.0f} s{' (interrupted)' if soak['interrupted'] else ''} | "
        f"{r['rows']:,} | | {soak['cpu_s']:.1f} s | | {soak['peak_rss_mib']:.0f} MiB |",
        "", f"Segmented against sequential, CPU per row: {', '.join(ratios) or 'n/a'}.", "",
        f"Code measured: `{r['code']}`.", ""])


if __name__ == "__main__":
    sys.exit(main())

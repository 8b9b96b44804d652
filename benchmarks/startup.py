"""Start-up at scale with backfill, at the default settings: are the probes answered throughout, and when is it ready?

One real Prometheus holds the last hour of a toy exporter (N instances × 4 gauges, 15 s, written as TSDB blocks by
``promtool`` as ``scale.py`` does) and keeps scraping it. The sidecar starts on one ``discover`` rule (one shared
query per metric, 4 horizons, SQLite) with nothing else set: ``prometheus.timeout`` 10 s, ``backfill`` 1 h, the
default limits. From the moment the process is spawned, ``/healthz`` and ``/readyz`` are each polled every 0.5 s
with a 1 s client timeout (the kubelet's default ``timeoutSeconds``); every answer's latency is kept.

Measured: seconds to the first ``/healthz`` 200 and to ``/readyz`` 200, the slowest ``/healthz`` answer and how
many polls failed or took over 1 s after the first 200, the backfill's own log line (queries, failed, series,
samples, the window used and, when ``backfill_max_samples`` shrank it, the window asked). The chart's startup
probe allows 2 s × 30 = 60 s on ``/healthz`` (``deploy/helm/twin-sidecar/values.yaml``).

    python3 benchmarks/startup.py --twins 10000 [--runs 2]

Writes ``benchmarks/results/startup.json`` and ``.md``. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale
from scale import HORIZONS, METRICS, history_blocks, proc_mem_mb, scalar, stop_all

from sidecar.demo.prometheus import LocalPrometheus, free_port, prometheus_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
POLL_S = 0.5
PROBE_TIMEOUT_S = 1.0
STARTUP_BUDGET_S = 2 * 30      # the chart's startup probe: periodSeconds x failureThreshold


def default_config(prom_url: str, listen: str, workdir: Path) -> dict[str, Any]:
    """The rules a user would write for this fleet, nothing tuned: timeouts, backfill and limits are defaults."""
    return {
        "prometheus": {"url": prom_url},
        "interval": "15s",
        "server": {"listen": listen},
        "storage": {"path": str(workdir / "twins.db")},
        "twins": [{"name": "toy", "discover": "toy_cpu", "name_labels": ["svc"],
                   "horizons": list(HORIZONS), "metrics": dict(METRICS)}],
    }


class Prober(threading.Thread):
    """Polls one path every POLL_S from the start; keeps (seconds since start, status or None, latency)."""

    def __init__(self, url: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.url, self.t0 = url, t0
        self.rows: list[tuple[float, int | None, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            status: int | None
            try:
                with urllib.request.urlopen(self.url, timeout=PROBE_TIMEOUT_S) as r:
                    r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except (OSError, TimeoutError):
                status = None
            took = time.monotonic() - start
            self.rows.append((start - self.t0, status, took))
            self.stop.wait(max(0.0, POLL_S - took))

    def first_ok(self) -> float:
        return next((t for t, s, _ in self.rows if s == 200), math.nan)

    def after_first_ok(self) -> list[tuple[float, int | None, float]]:
        t = self.first_ok()
        return [r for r in self.rows if r[0] >= t] if math.isfinite(t) else []


def run_one(twins: int, settle_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="twin-startup-"))
    procs: list[subprocess.Popen[bytes]] = []
    prom: LocalPrometheus | None = None
    try:
        toy_port = free_port()
        toy_address = f"127.0.0.1:{toy_port}"
        procs.append(subprocess.Popen([sys.executable, scale.__file__, "toy", "--port", str(toy_port),
                                       "--twins", str(twins)], start_new_session=True))
        t_hist = time.monotonic()
        history_blocks(twins, toy_address, time.time(), work)
        print(f"{time.strftime('%H:%M:%S')} {twins} twins: history written in {time.monotonic() - t_hist:.0f} s",
              flush=True)
        prom = LocalPrometheus(prometheus_config({"toy": [toy_address]}, scrape_interval="15s"), startup_timeout=300)
        d = prom.prepare()
        shutil.copytree(work / "data", d / "data", dirs_exist_ok=True)
        prom.start()
        while scalar(prom.url, "count(toy_cpu)") != twins:       # the live scrape is in, beside the hour
            time.sleep(2)
        side_port = free_port()
        base = f"http://127.0.0.1:{side_port}"
        cfg_path = work / "sidecar.yaml"
        cfg_path.write_text(yaml.safe_dump(default_config(prom.url, f"127.0.0.1:{side_port}", work)))
        log_path = work / "sidecar.log"
        t0 = time.monotonic()
        with open(log_path, "ab") as log:
            side = subprocess.Popen([str(Path(sys.executable).parent / "twin-sidecar"), "run", "--config",
                                     str(cfg_path), "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs.append(side)
        health, ready = Prober(f"{base}/healthz", t0), Prober(f"{base}/readyz", t0)
        health.start()
        ready.start()
        deadline = t0 + 900
        while not math.isfinite(ready.first_ok()) and time.monotonic() < deadline and side.poll() is None:
            time.sleep(1)
        time.sleep(settle_s)            # probes through the first rounds after ready too
        health.stop.set()
        ready.stop.set()
        health.join()
        ready.join()
        lines = log_path.read_text(errors="replace").splitlines()
        backfill: dict[str, Any] = {}
        warnings: list[str] = []
        for ln in lines:
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if rec.get("message") == "backfill done" or rec.get("msg") == "backfill done":
                backfill = {k: rec.get(k) for k in ("queries", "failed", "series", "samples", "window_s",
                                                     "window_asked_s", "backfill_max_samples", "fetch_s", "replay_s")}
            if str(rec.get("level", "")).upper() in ("WARNING", "ERROR"):
                warnings.append(ln[:300])
        h_after = health.after_first_ok()
        rss, hwm = proc_mem_mb(side.pid) if side.poll() is None else (math.nan, math.nan)
        return {
            "twins": twins,
            "healthz_first_ok_s": round(health.first_ok(), 2),
            "readyz_first_ok_s": round(ready.first_ok(), 2),
            "healthz_polls_after_first_ok": len(h_after),
            "healthz_failed_after_first_ok": sum(1 for _, s, _ in h_after if s != 200),
            "healthz_over_1s_after_first_ok": sum(1 for _, _, took in h_after if took >= PROBE_TIMEOUT_S),
            "healthz_max_latency_ms": round(max((took for _, _, took in h_after), default=math.nan) * 1e3, 1),
            "healthz_p99_latency_ms": round(_quantile([took for _, _, took in h_after], 0.99) * 1e3, 1),
            "readyz_max_latency_ms": round(max((took for _, _, took in ready.rows), default=math.nan) * 1e3, 1),
            "backfill": backfill, "warnings": warnings[-8:],
            "sidecar_rss_mb": round(rss, 1), "sidecar_peak_rss_mb": round(hwm, 1),
            "exited": side.poll(),
        }
    finally:
        stop_all(procs)
        if prom is not None:
            prom.stop()
        shutil.rmtree(work, ignore_errors=True)


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _window(b: dict[str, Any]) -> str:
    """The backfill window used, and the one asked when the sample budget shrank it."""
    used = b.get("window_s")
    if used is None:
        return "?"
    asked = b.get("window_asked_s")
    return f"{used:g} s" + (f" ({asked:g} s; budget {b.get('backfill_max_samples'):,})" if asked is not None else "")


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    out = [f"# Start-up with backfill at the default settings ({res['measured_at']})", "",
           f"`{res['argv']}` on {m['host']} ({m['cpus']} CPUs, Python {m['python']}), load average at the start "
           f"{m['load_start']}. One real Prometheus holding the last hour of N instances × 4 gauges; the sidecar "
           "on one `discover` rule with nothing tuned (timeout 10 s, backfill 1 h, default limits); `/healthz` and "
           f"`/readyz` polled every {POLL_S} s with a {PROBE_TIMEOUT_S:.0f} s timeout from the spawn. The chart's "
           f"startup probe allows {STARTUP_BUDGET_S} s.", "",
           "| twins | run | /healthz first 200 | /readyz first 200 | /healthz after: polls, failed, ≥ 1 s | "
           "/healthz max (p99) | backfill: queries, failed, series, samples | window used (asked) | fetch, replay | "
           "RSS (peak) | in budget |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        b = r["backfill"]
        ok = (r["healthz_first_ok_s"] <= STARTUP_BUDGET_S and r["healthz_failed_after_first_ok"] == 0
              and r["healthz_over_1s_after_first_ok"] == 0 and r["readyz_first_ok_s"] <= STARTUP_BUDGET_S)
        out.append(
            f"| {r['twins']:,} | {r['run']} | {r['healthz_first_ok_s']} s | {r['readyz_first_ok_s']} s | "
            f"{r['healthz_polls_after_first_ok']}, {r['healthz_failed_after_first_ok']}, "
            f"{r['healthz_over_1s_after_first_ok']} | {r['healthz_max_latency_ms']} ms "
            f"({r['healthz_p99_latency_ms']} ms) | {b.get('queries')}, {b.get('failed')}, {b.get('series')}, "
            f"{b.get('samples')} | {_window(b)} | {b.get('fetch_s')} s, {b.get('replay_s')} s | "
            f"{r['sidecar_rss_mb']} MB ({r['sidecar_peak_rss_mb']}) | "
            f"{'yes' if ok else 'no'} |")
    warn = [w for r in res["runs"] for w in r["warnings"]]
    if warn:
        out += ["", "Sidecar warnings (last of each run):", "", "```", *warn, "```"]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twins", type=int, nargs="+", default=[10_000])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--settle-s", type=float, default=45.0, help="probing goes on this long after ready")
    ap.add_argument("--output", type=Path, default=RESULTS / "startup")
    a = ap.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    runs = []
    for twins in a.twins:
        for k in range(a.runs):
            r = run_one(twins, a.settle_s)
            r["run"] = k
            print(json.dumps(r), flush=True)
            runs.append(r)
    res = {"benchmark": "startup", "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "argv": "python3 benchmarks/startup.py " + " ".join(sys.argv[1:]),
           "machine": {"host": platform.node(), "cpus": len(__import__("os").sched_getaffinity(0)),
                       "python": platform.python_version(), "load_start": load},
           "runs": runs}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = render(res)
    a.output.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End to end at scale: is the sidecar cheaper than the PromQL it replaces?  (benchmark, issue 17)

One run, side by side, with three real Prometheus servers (``/usr/bin/prometheus``) scraping the same toy
exporter (N instances × 4 gauges, values a function of the 15 s step, so every server stores the same
samples) every 15 s, each preloaded with the last hour of those samples (``promtool``):

- **P0** scrapes the toy exporter only: the baseline;
- **P1** scrapes the toy exporter and the sidecar, and answers the sidecar's queries (one ``discover`` rule,
  one shared query per metric, 15 s interval, SQLite): P1 − P0 is what the sidecar costs Prometheus
  (its queries and ingesting its export);
- **P2** scrapes the toy exporter and evaluates the 16 recording rules a user would write instead,
  ``predict_linear(x[1h], h)`` for 4 horizons × 4 metrics: P2 − P0 is what the rules cost Prometheus.

CPU time of each process comes from ``/proc/<pid>/stat`` over the same windows (the machine is shared, so the
ratios inside one window are what count); the sidecar's rounds from its own ``twin_sync_duration_seconds``.
The goal: sidecar CPU + (P1 − P0) ≤ 1/10 of (P2 − P0). Writes ``benchmarks/results/scale.{json,md}``.

    python3 benchmarks/scale.py --twins 1000 10000 [--windows 4] [--window-s 120] [--warmup-s 180]

``python3 benchmarks/scale.py toy --port P --twins N`` is the toy exporter itself (started by the run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sidecar.demo.prometheus import LocalPrometheus, free_port, prometheus_config

HERE = Path(__file__).resolve().parent
STEP = 15.0
GAUGES = ("toy_cpu", "toy_memory", "toy_latency_ms", "toy_error_rate")
METRICS = dict(zip(("cpu_usage", "memory_usage", "request_latency_ms", "error_rate"), GAUGES, strict=True))
HORIZONS = {"5m": 300, "15m": 900, "30m": 1800, "1h": 3600}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROMTOOL = os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")


# ------------------------------------------------------------------------------------------ the toy exporter


def toy_values(twins: int, k: int) -> np.ndarray:
    """(twins, 4) values at step ``k``: a level per instance, a daily wave and noise drawn from ``k``."""
    idx = np.arange(twins)
    base = np.stack([20 + (idx * 37 % 50), 30 + (idx * 13 % 40), 50 + (idx * 7 % 200),
                     0.001 + (idx % 10) * 0.002], axis=1).astype(float)
    wave = 1.0 + 0.2 * np.sin(2 * np.pi * (k * STEP / 86_400.0 + idx[:, None] / max(twins, 1)))
    noise = 1.0 + 0.05 * np.random.default_rng(k).standard_normal((twins, 4))
    v = base * wave * noise
    v[:, 0:2] = np.clip(v[:, 0:2], 0, 100)
    v[:, 3] = np.clip(v[:, 3], 0, 1)
    return v


def toy_lines(twins: int, k: int, suffix: str = "") -> list[str]:
    """The exposition lines of step ``k``, a family at a time; ``suffix`` follows each value (a timestamp)."""
    v = toy_values(twins, k)
    out: list[str] = []
    for j, name in enumerate(GAUGES):
        out.extend(f'{name}{{svc="s{i:05d}"{{extra}}}} {v[i, j]:.4f}{suffix}' for i in range(twins))
    return out


def serve_toy(port: int, twins: int) -> None:
    cache: dict[int, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            k = int(time.time() // STEP)
            body = cache.get(k)
            if body is None:
                lines = [ln.replace("{extra}", "") for ln in toy_lines(twins, k)]
                body = ("\n".join(lines) + "\n").encode()
                cache.clear()
                cache[k] = body
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def history_blocks(twins: int, toy_address: str, now: float, into: Path) -> None:
    """The toy exporter's last hour as the three servers would have scraped it, as TSDB blocks (promtool)."""
    src = into / "history.om"
    k_now = int(now // STEP)
    extra = f',instance="{toy_address}",job="toy"'
    with open(src, "w") as f:
        per_step = [toy_lines(twins, k, f" {k * STEP:.0f}") for k in range(k_now - 240, k_now)]
        for j, name in enumerate(GAUGES):
            f.write(f"# TYPE {name} gauge\n")
            for i in range(twins):
                row = j * twins + i
                f.write("".join(lines[row].replace("{extra}", extra) + "\n" for lines in per_step))
        f.write("# EOF\n")
    (into / "data").mkdir()
    out = subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(src), str(into / "data")],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"promtool: {out.stderr.strip() or out.stdout}")
    src.unlink()


def rules_text() -> str:
    rules = [{"record": f"{g}:predict_linear_{h}", "expr": f"predict_linear({g}[1h], {s})"}
             for g in GAUGES for h, s in HORIZONS.items()]
    return yaml.safe_dump({"groups": [{"name": "predict_linear", "interval": "15s", "rules": rules}]})


# ------------------------------------------------------------------------------------------ the processes


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def proc_mem_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                fields[key] = int(val.split()[0]) / 1024
    return fields.get("VmRSS", math.nan), fields.get("VmHWM", math.nan)


def instant(url: str, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=60) as resp:
        return list(json.loads(resp.read())["data"]["result"])


def scalar(url: str, query: str) -> float:
    r = instant(url, query)
    return float(r[0]["value"][1]) if r else math.nan


def sidecar_config(prom_url: str, listen: str, workdir: Path,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "prometheus": {"url": prom_url, "timeout": "60s", "self_labels": {"job": "twin-sidecar"},
                       **({"headers": dict(headers)} if headers else {})},
        "interval": "15s",
        "backfill": "0s",
        "server": {"listen": listen},
        "storage": {"path": str(workdir / "twins.db")},
        "twins": [{"name": "toy", "discover": "toy_cpu", "name_labels": ["svc"],
                   "horizons": list(HORIZONS), "metrics": dict(METRICS)}],
    }


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def run_one(twins: int, windows: int, window_s: float, warmup_s: float,
            headers: dict[str, str] | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="twin-scale-"))
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[LocalPrometheus] = []
    try:
        toy_port = free_port()
        toy_address = f"127.0.0.1:{toy_port}"
        procs.append(subprocess.Popen([sys.executable, __file__, "toy", "--port", str(toy_port),
                                       "--twins", str(twins)], start_new_session=True))
        t0 = time.monotonic()
        history_blocks(twins, toy_address, time.time(), work)
        _log(f"{twins} twins: history blocks written in {time.monotonic() - t0:.0f} s")
        side_port = free_port()
        side_address = f"127.0.0.1:{side_port}"
        jobs: list[dict[str, list[str]]] = [{"toy": [toy_address]},
                                            {"toy": [toy_address], "twin-sidecar": [side_address]},
                                            {"toy": [toy_address]}]
        for i, job in enumerate(jobs):
            cfg = prometheus_config(job, scrape_interval="15s", rule_files=["rules.yaml"] if i == 2 else ())
            srv = LocalPrometheus(cfg, startup_timeout=300, files={"rules.yaml": rules_text()} if i == 2 else None)
            d = srv.prepare()
            shutil.copytree(work / "data", d / "data", dirs_exist_ok=True)
            servers.append(srv.start())
        p0, p1, p2 = servers
        cfg_path = work / "sidecar.yaml"
        cfg_path.write_text(yaml.safe_dump(sidecar_config(p1.url, side_address, work, headers)))
        with open(work / "sidecar.log", "ab") as log:
            side = subprocess.Popen([str(Path(sys.executable).parent / "twin-sidecar"), "run", "--config",
                                     str(cfg_path), "--log-format", "text"], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs.append(side)
        deadline = time.monotonic() + 1800
        while scalar(p1.url, 'twin_twins{job="twin-sidecar"}') != twins:
            if side.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the sidecar never reached its twins: "
                                   + (work / "sidecar.log").read_text()[-2000:])
            time.sleep(5)
        _log(f"{twins} twins: all twins up after {time.monotonic() - t0:.0f} s; warming up {warmup_s:.0f} s")
        time.sleep(warmup_s)
        pids = {"sidecar": side.pid, "p0": _pid(p0), "p1": _pid(p1), "p2": _pid(p2)}
        rows: list[dict[str, float]] = []
        for w in range(windows):
            c0 = {k: proc_cpu_s(p) for k, p in pids.items()}
            r0 = scalar(p1.url, "twin_sync_duration_seconds_count")
            s0 = scalar(p1.url, "twin_sync_duration_seconds_sum")
            m0 = time.monotonic()
            time.sleep(window_s)
            dt = time.monotonic() - m0
            c1 = {k: proc_cpu_s(p) for k, p in pids.items()}
            r1 = scalar(p1.url, "twin_sync_duration_seconds_count")
            s1 = scalar(p1.url, "twin_sync_duration_seconds_sum")
            rounds = r1 - r0
            prom_rounds = dt / STEP
            cpu = {k: c1[k] - c0[k] for k in pids}
            row = {
                "sidecar_cpu_per_round_s": cpu["sidecar"] / rounds if rounds > 0 else math.nan,
                "rounds": rounds, "window_s": dt,
                "round_wall_s": (s1 - s0) / rounds if rounds > 0 else math.nan,
                "p0_cpu_per_round_s": cpu["p0"] / prom_rounds,
                "p1_cpu_per_round_s": cpu["p1"] / prom_rounds,
                "p2_cpu_per_round_s": cpu["p2"] / prom_rounds,
            }
            row["prom_ingest_extra_s"] = row["p1_cpu_per_round_s"] - row["p0_cpu_per_round_s"]
            row["prom_rules_extra_s"] = row["p2_cpu_per_round_s"] - row["p0_cpu_per_round_s"]
            row["ratio"] = ((row["sidecar_cpu_per_round_s"] + row["prom_ingest_extra_s"])
                            / row["prom_rules_extra_s"])
            rows.append(row)
            _log(f"{twins} twins window {w + 1}/{windows}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
        rss, hwm = proc_mem_mb(side.pid)
        exported = scalar(p1.url, 'scrape_samples_scraped{job="twin-sidecar"}')
        scrape_s = scalar(p1.url, 'scrape_duration_seconds{job="twin-sidecar"}')
        prom_rss = {k: proc_mem_mb(pids[k])[0] for k in ("p0", "p1", "p2")}
        log_tail = (work / "sidecar.log").read_text(errors="replace").splitlines()
        warnings = [ln for ln in log_tail if " WARNING " in ln or " ERROR " in ln][-10:]
        series = twins * len(METRICS)
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        return {
            "twins": twins, "series": series, "windows": rows, "median": med,
            "sidecar_us_per_series": med["sidecar_cpu_per_round_s"] / series * 1e6,
            "sidecar_rss_mb": rss, "sidecar_peak_rss_mb": hwm, "bytes_per_series": rss * 2**20 / series,
            "exported_series": exported, "sidecar_scrape_s": scrape_s, "prometheus_rss_mb": prom_rss,
            "sidecar_warnings": warnings,
        }
    finally:
        stop_all(procs)
        for srv in servers:
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, newest first, each given two minutes to exit before SIGKILL."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()


def _pid(srv: LocalPrometheus) -> int:
    assert srv.proc is not None
    return srv.proc.pid


def _span(rows: list[dict[str, float]], key: str, fmt: str = "{:.3f}") -> str:
    vals = [r[key] for r in rows]
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def write_results(results: list[dict[str, Any]], argv: str, out_dir: Path) -> str:
    machine = (f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores shared with other work, "
               f"Python {platform.python_version()}, numpy {np.__version__}")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out_dir / "scale.json").write_text(json.dumps({"when": stamp, "machine": machine, "command": argv,
                                                     "results": results}, indent=1))
    md = [f"# Scale, end to end ({stamp})", "", f"`{argv}` on {machine}.", "",
          "Three real Prometheus 2.42 servers scrape the same toy exporter (4 gauges per instance) every 15 s, "
          "each holding the last hour: P0 only that, P1 also the sidecar (and answers its queries: one `discover` "
          "rule, one shared query per metric, 4 horizons, SQLite), P2 also the 16 recording rules "
          "`predict_linear(x[1h], h)` (4 horizons × 4 metrics). CPU per 15 s round from /proc over the same "
          "windows; ranges are over the windows. *Ratio*: (sidecar + P1 − P0) ÷ (P2 − P0); the goal is ≤ 0.10.", "",
          "| twins (series) | sidecar CPU per round | µs per series | round wall time | sidecar RSS (peak) | "
          "bytes per series | exported series | Prometheus: sidecar's queries + ingest | Prometheus: 16 rules | "
          "ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        w = r["windows"]
        us = [x["sidecar_cpu_per_round_s"] / r["series"] * 1e6 for x in w]
        md.append(f"| {r['twins']:,} ({r['series']:,}) | {_span(w, 'sidecar_cpu_per_round_s')} s | "
                  f"{min(us):.1f}–{max(us):.1f} | {_span(w, 'round_wall_s', '{:.2f}')} s | "
                  f"{r['sidecar_rss_mb']:.0f} MB ({r['sidecar_peak_rss_mb']:.0f}) | "
                  f"{r['bytes_per_series'] / 1024:.1f} KB | {r['exported_series']:,.0f} | "
                  f"{_span(w, 'prom_ingest_extra_s')} s | {_span(w, 'prom_rules_extra_s')} s | "
                  f"{_span(w, 'ratio', '{:.2f}')} |")
    md += ["", "Baseline P0 per round: " + "; ".join(
        f"{r['twins']:,} twins {_span(r['windows'], 'p0_cpu_per_round_s')} s" for r in results) + ".", ""]
    for r in results:
        if r["sidecar_warnings"]:
            md += [f"Sidecar warnings at {r['twins']:,} twins (last 10):", "", "```",
                   *r["sidecar_warnings"], "```", ""]
    text = "\n".join(md)
    (out_dir / "scale.md").write_text(text)
    return text


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "toy":
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--twins", type=int, required=True)
        a = ap.parse_args()
        serve_toy(a.port, a.twins)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--windows", type=int, default=4, help="measured windows per fleet size")
    ap.add_argument("--window-s", type=float, default=120.0, help="seconds per measured window")
    ap.add_argument("--warmup-s", type=float, default=180.0, help="seconds after every twin is up")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--query-header", action="append", default=[], metavar="NAME=VALUE",
                    help="a header on the sidecar's queries (prometheus.headers), e.g. Accept-Encoding=identity")
    a = ap.parse_args()
    headers = dict(h.split("=", 1) for h in a.query_header)
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    results = [run_one(n, a.windows, a.window_s, a.warmup_s, headers) for n in a.twins]
    argv = "python3 benchmarks/scale.py " + " ".join(sys.argv[1:])
    print(write_results(results, argv, Path(a.out_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

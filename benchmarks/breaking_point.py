"""Does the fitted capacity model predict where a real service breaks?  (benchmark, issue 6)

Per run:
1. start the demo service (``demo_service.py``: a CPU-bound handler on a fixed worker pool)
   and a real Prometheus scraping it every second (``sidecar.testing.PrometheusServer``);
2. drive a low, varying open-loop (Poisson) load for ``--fit-s`` seconds: a new rate every
   20 s, drawn between ``--fit-low`` and ``--fit-high`` req/s;
3. read the twin's metrics from Prometheus (range queries, 5 s step), sync them into a real
   ``Engine`` twin and ask ``Engine.simulate`` for the ``load_test`` breaking point;
4. really ramp the load (+6% every ``--step-s`` seconds, open loop) until a limit of the twin
   is breached — client-side p99 latency > 1000 ms, errors > 5% or CPU > 95% over a step —
   and compare.

Load only ever goes to 127.0.0.1, and is bounded: at most ``--max-inflight`` requests in
flight, ``--max-steps`` ramp steps, 30 s client timeout. Machine load (other processes'
CPU, from /proc) is recorded for every phase, because the machine is shared.

    python benchmarks/breaking_point.py --runs 3 --output benchmarks/results/breaking_point.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from sidecar.config import PrometheusConfig
from sidecar.engine.core import Engine
from sidecar.prometheus import PrometheusClient
from sidecar.testing import PrometheusServer, free_port

log = logging.getLogger("breaking_point")
HERE = Path(__file__).resolve().parent
WINDOW = "15s"
QUERIES = {
    "request_rate": f'sum(rate(demo_requests_total{{job="demo"}}[{WINDOW}]))',
    "cpu_usage": f'100 * rate(process_cpu_seconds_total{{job="demo"}}[{WINDOW}])',
    "request_latency_ms": (f'1000 * histogram_quantile(0.99, sum by (le) '
                           f'(rate(demo_request_duration_seconds_bucket{{job="demo"}}[{WINDOW}])))'),
    "request_latency_mean_ms": (f'1000 * sum(rate(demo_request_duration_seconds_sum{{job="demo"}}[{WINDOW}])) '
                                f'/ sum(rate(demo_request_duration_seconds_count{{job="demo"}}[{WINDOW}]))'),
    "error_rate": (f'(sum(rate(demo_requests_total{{job="demo",code!="200"}}[{WINDOW}])) or vector(0)) '
                   f'/ sum(rate(demo_requests_total{{job="demo"}}[{WINDOW}]))'),
    "memory_usage": '100 * process_resident_memory_bytes{job="demo"} / (512 * 1024 * 1024)',
}
LIMITS = {"cpu_usage": 95.0, "memory_usage": 90.0, "request_latency_ms": 1000.0, "error_rate": 0.05}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------ CPU accounting


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class CpuMeter:
    """Who used the machine's CPU during a phase: the demo, this process (load generator), the rest."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)

    def begin(self) -> None:
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        busy, total = system_cpu()
        out = {"busy": busy, "total": total, "self": own_cpu_s(), "wall": time.monotonic()}
        for name, pid in self.pids.items():
            try:
                out[name] = proc_cpu_s(pid)
            except OSError:
                out[name] = math.nan
        return out

    def end(self) -> dict[str, float]:
        now = self._read()
        d = {k: now[k] - self.start[k] for k in now}
        cores = d["total"] / d["wall"]
        res = {"cores": cores, "machine_busy_pct": 100 * d["busy"] / d["total"],
               "loadgen_cores": d["self"] / d["wall"]}
        for name in self.pids:
            res[f"{name}_cores"] = d[name] / d["wall"]
        res["others_cores"] = (d["busy"] - d["self"] - sum(d[n] for n in self.pids)) / d["wall"]
        res["loadavg1"] = os.getloadavg()[0]
        return res


# ------------------------------------------------------------------------------------------ load generator


class LoadGenerator:
    """Open-loop Poisson arrivals on loopback; latency counted from the scheduled arrival time."""

    def __init__(self, url: str, *, max_inflight: int, timeout_s: float, seed: int) -> None:
        self.url = url
        self.max_inflight = max_inflight
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.rng = np.random.default_rng(seed)
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.records: list[tuple[float, float, bool]] = []     # (arrival, latency s or nan, ok)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadGenerator:
        conn = aiohttp.TCPConnector(limit=self.max_inflight, force_close=False)
        self.session = aiohttp.ClientSession(connector=conn, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=35)
        assert self.session is not None
        await self.session.close()

    async def _one(self, arrival: float) -> None:
        loop = asyncio.get_running_loop()
        assert self.session is not None
        self.inflight += 1
        try:
            async with self.session.get(self.url) as resp:
                await resp.read()
                ok = resp.status == 200
            self.records.append((arrival, loop.time() - arrival, ok))
        except (TimeoutError, aiohttp.ClientError):
            self.records.append((arrival, math.nan, False))
        finally:
            self.inflight -= 1

    async def drive(self, rate: float, duration: float) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        end = t + duration
        while True:
            t += float(self.rng.exponential(1.0 / rate))
            if t >= end:
                break
            delay = t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.inflight >= self.max_inflight:
                self.records.append((t, math.nan, False))      # the client gives up: counted as an error
                continue
            task = asyncio.create_task(self._one(t))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        delay = end - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def window(self, start: float, end: float) -> dict[str, float]:
        """Requests that arrived in [start, end): rate, client p99 latency (ms), error share."""
        rec = [r for r in self.records if start <= r[0] < end]
        n = len(rec)
        if n == 0:
            return {"rate": 0.0, "p99_ms": math.nan, "errors": 0.0, "n": 0}
        lat = np.array([r[1] if r[2] else math.inf for r in rec])
        pending = sum(1 for t in self.tasks if not t.done())
        return {"rate": n / (end - start), "p99_ms": float(np.quantile(lat, 0.99, method="inverted_cdf")) * 1000,
                "errors": sum(1 for r in rec if not r[2]) / n, "n": n, "pending_now": pending}


# ------------------------------------------------------------------------------------------ one run


async def fetch_history(prom_url: str, start: float, end: float, step: float) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    async with PrometheusClient(PrometheusConfig(url=prom_url)) as client:
        for name, q in QUERIES.items():
            m = await client.query_range(q, start, end, step)
            if len(m) == 0:
                continue
            v = m.values[0]
            ok = np.isfinite(v)
            out[name] = (m.times[ok], v[ok])
    return out


def predict(history: dict[str, tuple[Any, Any]], workers: int, at: float, seed: int) -> dict[str, Any]:
    """The product path: sync the observed samples into an Engine twin and ask it for the load test."""
    engine = Engine()
    t0 = min(float(t[0]) for t, _ in history.values())
    engine.create_twin("demo", at=t0 - 1, system_type="web_service", limits=LIMITS)
    times = sorted({float(x) for t, _ in history.values() for x in t})
    lookup = {name: dict(zip(t.tolist(), v.tolist(), strict=True)) for name, (t, v) in history.items()}
    for ts in times:
        sample = {name: lookup[name][ts] for name in lookup if ts in lookup[name]}
        if sample:
            engine.sync("demo", sample, at=ts)
    return engine.simulate("demo", {"type": "load_test", "max_multiplier": 50}, at=at, seed=seed,
                           replicas=1, workers=workers)


async def run_once(args: argparse.Namespace, run: int) -> dict[str, Any]:
    port = free_port()
    demo = subprocess.Popen([sys.executable, str(HERE / "demo_service.py"), "--port", str(port),
                             "--workers", str(args.workers), "--service-ms", str(args.service_ms),
                             "--io-ms", str(args.io_ms), "--work", args.work],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: os.nice(args.nice)) if args.nice else None)
    prom = PrometheusServer(scrape_targets=[f"127.0.0.1:{port}"], job_name="demo", scrape_interval="1s")
    result: dict[str, Any] = {"run": run, "seed": args.seed + run}
    try:
        prom.start()
        prom.wait_for_series('demo_requests_total{job="demo"}', timeout=60)
        assert prom.proc is not None
        meter = CpuMeter({"demo": demo.pid, "prometheus": prom.proc.pid})
        url = f"http://127.0.0.1:{port}/work"
        rng = np.random.default_rng(args.seed + 1000 + run)
        async with LoadGenerator(url, max_inflight=args.max_inflight, timeout_s=30.0,
                                 seed=args.seed + run) as gen:
            # -- fit phase: low, varying load
            meter.begin()
            fit_start = time.time()
            segments = max(1, int(args.fit_s // 20))
            rates = rng.uniform(args.fit_low, args.fit_high, segments)
            for r in rates:
                await gen.drive(float(r), 20.0)
            fit_end = time.time()
            result["fit_machine"] = meter.end()
            result["fit_rates"] = [round(float(r), 2) for r in rates]
            await asyncio.sleep(3.0)                  # last scrapes
            history = await fetch_history(prom.url, fit_start + 20, fit_end, 5.0)
            t_pred = time.process_time()
            sim = predict(history, args.workers, fit_end, args.seed + run)
            result["predict_cpu_s"] = time.process_time() - t_pred
            result["samples"] = {k: len(v[0]) for k, v in history.items()}
            # what the model saw, so a later model can be replayed against the same data offline
            result["history"] = {k: [np.asarray(v[0]).tolist(), np.asarray(v[1]).tolist()]
                                 for k, v in history.items()}
            result["prediction"] = {k: sim[k] for k in ("breaking_point", "model_fit", "failure_probability")}
            result["recommendations"] = sim["recommendations"]
            bp = sim["breaking_point"]
            log.info("run %d predicted: %s (fit: %s)", run, json.dumps(bp), sim["model_fit"]["reason"])
            # -- real ramp: +6% a step until a limit is breached; near saturation the steps are longer, so the
            # queue reaches the steady state the model predicts (a 20 s step leaves it still building)
            rate = args.fit_high if args.start_rate is None else args.start_rate
            meter.begin()
            loop = asyncio.get_running_loop()
            steps: list[dict[str, Any]] = []
            broke: dict[str, Any] | None = None
            pending_step: tuple[float, float, float, float] | None = None
            demo_pid = demo.pid
            near = False

            def judge(start: float, end: float, nominal: float, cpu: float) -> dict[str, Any]:
                length = end - start
                settle = length / 3 if length > args.step_s * 1.5 else 0.0   # a long step is judged on its end
                w = gen.window(start + settle, end)
                breached = []
                if not w["p99_ms"] <= LIMITS["request_latency_ms"]:
                    breached.append("latency")
                if w["errors"] > LIMITS["error_rate"]:
                    breached.append("errors")
                if cpu > LIMITS["cpu_usage"]:
                    breached.append("cpu")
                return {"nominal_rate": nominal, **w, "cpu_pct": cpu, "breached": breached, "seconds": length,
                        "judged_from_s": settle}

            def close_to_a_limit(st: dict[str, Any]) -> bool:
                return bool(st["p99_ms"] > args.near * LIMITS["request_latency_ms"]
                            or st["errors"] > args.near * LIMITS["error_rate"]
                            or st["cpu_pct"] > args.near_cpu)

            for _ in range(args.max_steps):
                length = args.settle_s if near else args.step_s
                s, w0 = loop.time(), time.monotonic()
                c0 = proc_cpu_s(demo_pid)
                c_settled: float | None = None
                if length > args.step_s * 1.5:      # CPU over the judged part of the step only
                    await gen.drive(rate, length / 3)
                    c_settled, w_settled = proc_cpu_s(demo_pid), time.monotonic()
                    await gen.drive(rate, length - length / 3)
                else:
                    await gen.drive(rate, length)
                if c_settled is not None:
                    cpu = 100 * (proc_cpu_s(demo_pid) - c_settled) / (time.monotonic() - w_settled)
                else:
                    cpu = 100 * (proc_cpu_s(demo_pid) - c0) / (time.monotonic() - w0)
                current = (s, loop.time(), rate, cpu)
                if pending_step is not None:          # judge the previous step once its requests finished
                    st = judge(*pending_step)
                    steps.append(st)
                    if st["breached"]:
                        broke = st
                        break
                    near = near or close_to_a_limit(st)
                pending_step = current
                rate *= 1.06
            if broke is None and pending_step is not None:
                await asyncio.sleep(min(35.0, args.step_s))
                st = judge(*pending_step)
                steps.append(st)
                broke = st if st["breached"] else None
            result["ramp_machine"] = meter.end()
        result["ramp"] = steps
        if broke is not None:
            i = steps.index(broke)
            last_ok = steps[i - 1]["rate"] if i > 0 else None
            result["measured"] = {"rate": broke["rate"], "last_ok_rate": last_ok, "bottleneck": broke["breached"],
                                  "crossing": crossing(steps, i)}
        else:
            result["measured"] = None
    finally:
        prom.stop()
        demo.terminate()
        try:
            demo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=5)
    return result


def crossing(steps: list[dict[str, Any]], i: int) -> float:
    """Where the breached limit was crossed, between the last passing step and the first breaching one
    (step ``i``); the lowest crossing when several limits broke. p99 is interpolated on a log scale and
    errors linearly; CPU is extrapolated from the passing steps' trend (their last three), because CPU
    saturates with the pool, so a breaching step's CPU understates how far past the limit it was."""
    bad = steps[i]
    ok = steps[i - 1] if i > 0 else None
    if ok is None or not bad["rate"] > ok["rate"]:
        return float(bad["rate"])
    r0, r1 = float(ok["rate"]), float(bad["rate"])
    found = []
    for name in bad["breached"]:
        if name == "cpu":
            pts = steps[max(0, i - 3):i]
            x = np.array([st["rate"] for st in pts], dtype=float)
            y = np.array([st["cpu_pct"] for st in pts], dtype=float)
            if x.size >= 2 and float(np.ptp(x)) > 0:
                slope, icpt = np.polyfit(x, y, 1)
                if slope > 0:
                    found.append(min(max(float((LIMITS["cpu_usage"] - icpt) / slope), r0), r1))
                    continue
        limit, y0, y1 = {
            "latency": (math.log(LIMITS["request_latency_ms"]), math.log(max(ok["p99_ms"], 1e-3)),
                        math.log(max(bad["p99_ms"], 1e-3))),
            "errors": (LIMITS["error_rate"], ok["errors"], bad["errors"]),
            "cpu": (LIMITS["cpu_usage"], ok["cpu_pct"], bad["cpu_pct"]),
        }[name]
        if math.isfinite(y1) and y1 > y0:
            found.append(r0 + (r1 - r0) * min(max((limit - y0) / (y1 - y0), 0.0), 1.0))
        else:
            found.append(math.sqrt(r0 * r1))
    return float(min(found)) if found else r1


# ------------------------------------------------------------------------------------------ report


def _cpu_ms_per_request(r: dict[str, Any]) -> tuple[float | None, float | None]:
    """The demo's CPU time per request in the fit (the fitted CPU law's slope) and in the ramp (median over
    its steps): when they differ, the service itself got faster or slower between fit and test (a shared
    host's cores change speed with their neighbours' load), which no fit of the past can foresee."""
    b = r["prediction"]["model_fit"]["params"].get("cpu_pct_per_unit_rate")
    fit = 10.0 * b if b else None
    per = [10.0 * st["cpu_pct"] / st["rate"] for st in r.get("ramp", []) if st.get("rate", 0) > 1.0]
    return fit, (float(np.median(per)) if per else None)


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    bp = r["prediction"]["breaking_point"]
    meas = r["measured"]
    pred = bp["request_rate"]
    lo, hi = bp["request_rate_interval"] or (None, None)
    out: dict[str, Any] = {"run": r["run"], "predicted": pred, "interval": [lo, hi], "bottleneck": bp["bottleneck"],
                           "trustworthy": r["prediction"]["model_fit"]["trustworthy"],
                           "capacity": r["prediction"]["model_fit"]["params"]["capacity"],
                           "cpu_ms": _cpu_ms_per_request(r)}
    if meas is not None and pred is not None:
        steps = r["ramp"]
        broke = next((j for j, st in enumerate(steps) if st["breached"]), None)
        m = crossing(steps, broke) if broke is not None else meas["rate"]
        first, last_ok = meas["rate"], meas["last_ok_rate"]
        out.update(measured=m, first_breach=first, last_ok=last_ok, measured_bottleneck="+".join(meas["bottleneck"]),
                   error_pct=100 * (pred - m) / m,
                   inside=(lo is not None and lo <= m and (hi is None or m <= hi)),
                   bracket=(lo is not None and lo <= first and (hi is None or (last_ok or first) <= hi)))
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> str:
    rows = [summarise(r) for r in results]
    per_request = args.service_ms + args.io_ms
    saved = path.with_name(f"{path.stem}_{args.label}.json")
    finished = saved.stat().st_mtime if args.report_only and saved.exists() else time.time()
    lines = [
        f"<!-- section: {args.label} -->",
        f"## Configuration `{args.label}`",
        "",
        f"Command: `python benchmarks/breaking_point.py --label {args.label} --runs {args.runs} "
        f"--workers {args.workers} --service-ms {args.service_ms:g} --io-ms {args.io_ms:g} --work {args.work} "
        f"--fit-s {args.fit_s:g} --fit-low {args.fit_low:g} --fit-high {args.fit_high:g} --step-s {args.step_s:g} "
        f"--settle-s {args.settle_s:g} --near {args.near:g} --near-cpu {args.near_cpu:g}"
        + (f" --nice {args.nice}" if args.nice else "") + "`  ",
        f"Finished: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(finished))}; "
        f"machine: {os.cpu_count()} cores, shared "
        "with other sessions' work at the same time (their CPU use is in the last column and the load table).",
        "",
        f"Demo service: aiohttp, {args.workers} worker thread(s), {args.service_ms:g} ms of CPU"
        + (" time (burned until the thread's CPU clock advanced that much)" if args.work == "cpu-time" else
           " (a fixed number of iterations)")
        + (f" + {args.io_ms:g} ms blocking wait" if args.io_ms else "")
        + (f", running at nice {args.nice} (a CPU share guaranteed against the neighbours, like a pod's CPU "
           "request)" if args.nice else "")
        + f" per request (nominal capacity {1000 * args.workers / per_request:.0f} req/s if every worker had a core "
        "to itself). Prometheus scrapes it every 1 s. Fit: open-loop Poisson load, a new rate every 20 s between "
        f"{args.fit_low:g} and {args.fit_high:g} req/s, for {args.fit_s:g} s; the metrics are read back as range "
        "queries (5 s step, 15 s rate windows), synced into an `Engine` twin (replicas 1, workers "
        f"{args.workers}) and `Engine.simulate(load_test)` gives the prediction. Measured: an open-loop ramp from "
        f"{args.start_rate or args.fit_high:g} req/s, +6% every {args.step_s:g} s; once a step comes close to a "
        f"limit (p99 > {args.near * LIMITS['request_latency_ms']:.0f} ms, errors > "
        f"{100 * args.near * LIMITS['error_rate']:g}% or CPU > {args.near_cpu:g}%) every step lasts "
        f"{args.settle_s:g} s and is judged on its last two thirds, so the queue has reached the steady state the "
        "model predicts. A step breaks when its client-side p99 > 1000 ms, errors > 5% or demo CPU > 95% (the "
        "twin's limits).",
        "",
        "| run | fitted capacity (req/s) | trust | predicted break (req/s) | 90% interval | predicted bottleneck "
        "| measured break (req/s) | last OK – first breaking step | measured bottleneck | error | inside "
        "| others' CPU fit/ramp (cores) | CPU ms per request fit/ramp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: Any, nd: int = 1) -> str:
        return "—" if x is None else f"{x:.{nd}f}"

    errs = []
    inside = bracket = 0
    for r, s in zip(results, rows, strict=True):
        errs.append(abs(s["error_pct"]) if "error_pct" in s else math.nan)
        inside += bool(s.get("inside"))
        bracket += bool(s.get("bracket"))
        lines.append(
            f"| {s['run']} | {f(s['capacity'])} | {'yes' if s['trustworthy'] else 'no'} | {f(s['predicted'])} "
            f"| {f(s['interval'][0])}–{f(s['interval'][1])} | {s['bottleneck']} | {f(s.get('measured'))} "
            f"| {f(s.get('last_ok'))} – {f(s.get('first_breach'))} | {s.get('measured_bottleneck', '—')} "
            f"| {f(s.get('error_pct'))}% | {'yes' if s.get('inside') else 'no'} "
            f"| {r['fit_machine']['others_cores']:.2f} / "
            f"{r['ramp_machine']['others_cores']:.2f} | {f(s['cpu_ms'][0])} / {f(s['cpu_ms'][1])} |")
    finite = [e for e in errs if math.isfinite(e)]
    lines += [
        "",
        f"**Summary:** {inside}/{len(rows)} measured breaking points inside the predicted 90% interval "
        f"({bracket}/{len(rows)} where the bracket [last OK step, first breaching step] meets it); absolute error "
        f"of the point estimate: mean {np.mean(finite):.1f}%, max {np.max(finite):.1f}% (goal ≤ 20%)."
        if finite else "**Summary:** no run produced both a prediction and a measurement.",
        "",
        "Error = (predicted − measured) / measured. The measured breaking point is where the breached limit was "
        "crossed, interpolated between the last passing and the first breaching step (p99 on a log scale, CPU and "
        "errors linearly).",
        "",
        "### Machine load per run",
        "",
        "| run | phase | machine busy % | demo cores | load generator cores | Prometheus cores | others' cores "
        "| loadavg(1m) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for phase in ("fit", "ramp"):
            m = r[f"{phase}_machine"]
            lines.append(f"| {r['run']} | {phase} | {m['machine_busy_pct']:.0f} | {m['demo_cores']:.2f} "
                         f"| {m['loadgen_cores']:.2f} | {m['prometheus_cores']:.2f} | {m['others_cores']:.2f} "
                         f"| {m['loadavg1']:.2f} |")
    lines += ["", "### Model fit per run", ""]
    for r in results:
        mf = r["prediction"]["model_fit"]
        lines.append(f"- run {r['run']}: trustworthy={mf['trustworthy']} ({mf['reason']}); "
                     f"params {json.dumps(mf['params'])}; samples {json.dumps(r['samples'])}; "
                     f"simulate CPU {r['predict_cpu_s']:.2f} s")
    lines += ["", "### Ramp steps per run (achieved rate req/s: client p99, errors, demo CPU)", ""]
    for r in results:
        steps = "; ".join(f"{s['rate']:.1f}: {s['p99_ms']:.0f} ms, {100 * s['errors']:.1f}%, {s['cpu_pct']:.0f}%"
                          for s in r["ramp"])
        lines.append(f"- run {r['run']}: {steps}")
    lines.append(f"<!-- end: {args.label} -->")
    section = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Breaking point: predicted vs measured\n"
    begin, end = f"<!-- section: {args.label} -->", f"<!-- end: {args.label} -->"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    if not args.report_only:
        saved.write_text(json.dumps(results, indent=1, default=float))
    return section


def autogroup_enabled() -> bool:
    """With the kernel's autogroup scheduling on, nice only ranks processes of one session against each other:
    a demo at nice −10 then still shares the cores equally with another session's busy process."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.output)
    if args.nice and autogroup_enabled() and not args.report_only:
        log.warning("sched_autogroup_enabled is 1: --nice %d does not protect the demo from other sessions' "
                    "processes (as root: echo 0 > /proc/sys/kernel/sched_autogroup_enabled)", args.nice)
    if args.report_only:
        data = json.loads(out.with_name(f"{out.stem}_{args.label}.json").read_text())
        report(data, args, out)
        return
    results = []
    for run in range(args.runs):
        log.info("run %d/%d", run + 1, args.runs)
        res = await run_once(args, run)
        results.append(res)
        log.info("run %d: %s", run, json.dumps(summarise(res)))
        report(results, args, Path(args.output))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="cpu-bound", help="section of the results file this run writes")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--service-ms", type=float, default=20.0)
    p.add_argument("--io-ms", type=float, default=0.0)
    p.add_argument("--nice", type=int, default=0,
                   help="scheduling priority of the demo (e.g. -10: like a pod with a guaranteed CPU request)")
    p.add_argument("--fit-s", type=float, default=300.0)
    p.add_argument("--fit-low", type=float, default=5.0)
    p.add_argument("--fit-high", type=float, default=25.0)
    p.add_argument("--step-s", type=float, default=20.0)
    p.add_argument("--settle-s", type=float, default=60.0,
                   help="step length once a step came close to a limit (judged on its last two thirds)")
    p.add_argument("--near", type=float, default=0.4,
                   help="'close to a limit': p99 or errors above this share of their limit")
    p.add_argument("--near-cpu", type=float, default=75.0, help="'close to a limit': demo CPU above this %%")
    p.add_argument("--start-rate", type=float, default=None, help="first ramp step (default: --fit-high)")
    p.add_argument("--work", choices=("cpu-time", "fixed"), default="cpu-time",
                   help="the demo's work per request (see demo_service.py)")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--max-inflight", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the section of --label from its saved JSON, without running anything")
    p.add_argument("--output", default=str(HERE / "results" / "breaking_point.md"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

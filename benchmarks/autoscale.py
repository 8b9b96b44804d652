"""Does scaling on twin_recommended_replicas beat a reactive HPA?  A closed loop on this machine (issue 19).

Per run, for each trace (NAB ``elb_request_count_8c0756``: requests per 5 minutes on a load balancer;
``nyc_taxi``: taxi demand per 30 minutes), at a random place in it:

1. a real HTTP service (``serve``, a subprocess) hosts one deployment per policy. A deployment is a set of
   replicas, each a pool of ``WORKERS`` workers whose service time is mostly waiting (a log-normal sleep, so
   2 shared cores suffice); a request goes to a random ready replica (kube-proxy's choice) and queues for a
   worker there. A controller changes the replica count at run time over HTTP; a new replica serves only
   after ``STARTUP_S`` (a pod's start-up). Removed replicas finish what they hold.
2. an open-loop Poisson load follows the trace, compressed in time by ``COMPRESSION`` (every time constant
   below is the Kubernetes default divided by it: one benchmark second is 20 real seconds), scaled so the
   segment's peak needs about 6 replicas at 70 % utilisation. Each policy's deployment gets the same trace.
3. a real Prometheus scrapes the service and the sidecar every second; the real sidecar (``twin-sidecar
   run``) twins each trace's (b) deployment with horizons of 15 s and 30 s (5 and 10 minutes compressed),
   ``max_replicas``, and a scale-down stabilisation of 15 s (5 minutes).
4. three controllers, each on its own deployment, all of them the HPA algorithm (tolerance 0.1, scale-up
   at most +100 % or +4 pods per sync, scale-down stabilisation 5 minutes, sync every 15 s, compressed):
   (a) ``hpa``: average utilisation (busy worker time / workers over 1 minute, what CPU is for a CPU-bound
   service) at a 70 % target, unready pods counted at 0 % when scaling up; (b) ``twin``: KEDA's prometheus
   trigger on ``twin_recommended_replicas{horizon="15s"}``, AverageValue target 1, polled every 30 s
   (compressed); absent (the sidecar withholds it) means the HPA keeps its count; (c) ``linear``: the same
   trigger on ``predict_linear`` of the request rate over the last 10 minutes, 5 minutes ahead, with a
   target of 70 % of one replica's capacity.
   A warm-up (the trace before the measured segment) runs every deployment under (a), so the sidecar has
   history with load variation and each deployment starts the measurement from the same state.
5. measured: minutes (of real time, i.e. windows of 60 s / COMPRESSION) in which the service's p99 latency
   (its own histogram, queue included, read from Prometheus) exceeded ``SLO_MS``, and replica-minutes (every
   replica that exists, ready or starting, costs). The client-side p99 (a failed or timed-out request counts
   as over) is kept beside it: on a shared machine it also carries the load generator's own delays.

    python benchmarks/autoscale.py --runs 3 --output benchmarks/results/autoscale.md

Only 127.0.0.1. Machine load (CPU of other processes, from /proc) is recorded with every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("autoscale")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NAB = ROOT.parent / "shared" / "data" / "nab" / "data"
TRACES = {"elb": NAB / "realAWSCloudwatch" / "elb_request_count_8c0756.csv",
          "taxi": NAB / "realKnownCause" / "nyc_taxi.csv"}
POLICIES = ("hpa", "twin", "linear")
#: Policies on twin_recommended_replicas; "twincpu" is a ScaledObject with the twin's trigger and the HPA's
#: utilisation trigger side by side, as the README advises (the HPA KEDA makes takes the higher of the two).
TWIN_POLICIES = ("twin", "twincpu")
ALL_POLICIES = (*POLICIES, "twincpu")

#: One benchmark second stands for this many real seconds: traces, horizons and controllers alike.
COMPRESSION = 20.0
WORKERS = 4                           # per replica
SERVICE_S = 0.5                       # mean service time (mostly waiting): one replica carries 8 req/s
SERVICE_SIGMA = 0.25                  # log-normal shape of the service time
STARTUP_S = 90.0 / COMPRESSION        # a new replica serves after 90 s (real)
SLO_MS = 2000.0                       # p99 latency objective (about 80 % utilisation)
TARGET_UTILISATION = 0.7
PEAK_REPLICAS = 6.0                   # the segment's peak needs this many replicas at the target utilisation
MIN_REPLICAS, MAX_REPLICAS = 1, 20
HPA_SYNC_S = 15.0 / COMPRESSION
HPA_TOLERANCE = 0.1
SCALE_DOWN_WINDOW_S = 300.0 / COMPRESSION
KEDA_POLL_S = 30.0 / COMPRESSION
MINUTE_S = 60.0 / COMPRESSION         # one real minute: the SLO window
RATE_WINDOW = "3s"                    # 1 minute (real) of rate()
HORIZON = "15s"                       # 5 minutes (real) ahead: more than a replica's start-up plus a poll
CLIENT_TIMEOUT_S = 100.0 / COMPRESSION
MAX_IN_FLIGHT = 3000                  # per deployment: beyond, a request counts as failed without being sent


# ------------------------------------------------------------------------------------------------ traces


def load_trace(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the first row, value) of a NAB csv, sorted, repeated timestamps dropped."""
    rows: list[tuple[float, float]] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                t = datetime.fromisoformat(row["timestamp"]).timestamp()
                rows.append((t, float(row["value"])))
            except (KeyError, ValueError):
                continue
    arr = np.asarray(sorted(rows), dtype=np.float64)
    keep = np.concatenate([[True], np.diff(arr[:, 0]) > 0])
    arr = arr[keep]
    return arr[:, 0] - arr[0, 0], arr[:, 1]


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of a trace as a request rate over benchmark time (piecewise linear between its rows)."""

    name: str
    start_real_s: float               # offset into the trace (real seconds)
    times: np.ndarray                 # benchmark seconds from the segment's start
    rates: np.ndarray                 # req/s

    def rate(self, t: float) -> float:
        return float(np.interp(t, self.times, self.rates))


def segment(name: str, t: np.ndarray, v: np.ndarray, start_real_s: float, length_s: float,
            peak_rps: float) -> Segment:
    """``length_s`` benchmark seconds of the trace from ``start_real_s``, scaled so its peak is ``peak_rps``."""
    end = start_real_s + length_s * COMPRESSION
    inside = (t >= start_real_s) & (t <= end)
    ts = np.concatenate([[start_real_s], t[inside], [end]])
    vs = np.interp(ts, t, v)
    vs = np.maximum(vs, 0.0)
    scale = peak_rps / max(float(vs.max()), 1e-9)
    return Segment(name, start_real_s, (ts - start_real_s) / COMPRESSION, vs * scale)


# ------------------------------------------------------------------------------------------------ controllers


def hpa_behaviour(current: int, raw: int, history: list[tuple[float, int]], now: float,
                  window_s: float = SCALE_DOWN_WINDOW_S) -> int:
    """The HPA's behaviour around a raw recommendation: a scale-down takes the highest recommendation of the
    stabilisation window (default 5 minutes), a scale-up at most doubles or adds 4 pods per sync; within bounds."""
    history.append((now, raw))
    while history and now - history[0][0] > window_s:
        history.pop(0)
    desired = raw
    if raw < current:
        desired = min(current, max(r for _, r in history))
    elif raw > current:
        desired = min(raw, max(2 * current, current + 4))
    return int(min(max(desired, MIN_REPLICAS), MAX_REPLICAS))


def utilisation_raw(current: int, ready: int, utilisation: float) -> int:
    """The HPA's replica count for a resource metric at TARGET_UTILISATION (``utilisation`` over ready pods).

    As its replica calculator: ready pods alone decide, except that when the ratio says scale up and pods are
    still starting, those count at 0 % (a scale-up under way is not repeated) and the count holds if the
    ratio then falls within the tolerance or turns.
    """
    if not math.isfinite(utilisation) or ready <= 0:
        return current
    ratio = utilisation / TARGET_UTILISATION
    if ratio > 1.0 and current > ready:
        ratio = utilisation * ready / current / TARGET_UTILISATION
        if ratio <= 1.0 + HPA_TOLERANCE:
            return current
        return math.ceil(ratio * current)
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    return max(1, math.ceil(ratio * ready))


def average_value_raw(current: int, metric: float, target: float) -> int:
    """The HPA's replica count for an External metric with an AverageValue target (what KEDA creates)."""
    if not math.isfinite(metric):
        return current                 # no metric: the HPA keeps the count
    ratio = metric / (target * max(current, 1))
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    return max(1, math.ceil(metric / target))


def server_breach_minutes(p99_ms: Sequence[float]) -> tuple[int, int]:
    """(windows whose server-side p99 exceeds the SLO, windows with requests): NaN (no request) is no window."""
    x = np.asarray(p99_ms, dtype=np.float64)
    seen = ~np.isnan(x)
    return int((x[seen] > SLO_MS).sum()), int(seen.sum())


async def server_p99(session: Any, prom: str, dep: str, t0_unix: float, start: float, end: float) -> list[float]:
    """The service's own p99 (its histogram: queue and service, no client or network) per real minute."""
    q = (f'1000 * histogram_quantile(0.99, sum by (le) (increase(svc_request_duration_seconds_bucket'
         f'{{dep="{dep}"}}[{MINUTE_S:g}s])))')
    params = {"query": q, "start": f"{t0_unix + start + MINUTE_S:.3f}", "end": f"{t0_unix + end:.3f}",
              "step": f"{MINUTE_S:g}"}
    async with session.get(f"{prom}/api/v1/query_range", params=params) as resp:
        body = await resp.json()
    result = body.get("data", {}).get("result", [])
    if not result:
        return []
    return [float(v) for _, v in result[0]["values"]]


def breach_minutes(sent: np.ndarray, latency_ms: np.ndarray, start: float, end: float) -> tuple[int, int]:
    """(windows of one real minute whose p99 latency exceeds the SLO, windows with requests)."""
    edges = np.arange(start, end + 1e-9, MINUTE_S)
    over = total = 0
    for lo, hi in itertools.pairwise(edges):
        pick = latency_ms[(sent >= lo) & (sent < hi)]
        if pick.size == 0:
            continue
        total += 1
        over += bool(np.quantile(pick, 0.99, method="inverted_cdf") > SLO_MS)
    return over, total


def replica_minutes(times: np.ndarray, replicas: np.ndarray, start: float, end: float) -> float:
    """Real minutes × replicas (step function between samples) over [start, end]."""
    keep = (times >= start) & (times <= end)
    t, r = times[keep], replicas[keep]
    if t.size < 2:
        return math.nan
    return float(np.sum(r[:-1] * np.diff(t)) * COMPRESSION / 60.0)


# ------------------------------------------------------------------------------------------------ the service


@dataclass(slots=True)
class Replica:
    ready_at: float
    pool: asyncio.Semaphore


@dataclass(slots=True)
class Deployment:
    replicas: list[Replica] = field(default_factory=list)

    def ready(self, now: float) -> list[Replica]:
        return [r for r in self.replicas if r.ready_at <= now]

    def scale(self, n: int, now: float, startup_s: float) -> None:
        n = max(1, n)
        while len(self.replicas) < n:
            self.replicas.append(Replica(now + startup_s, asyncio.Semaphore(WORKERS)))
        while len(self.replicas) > n:
            # as the ReplicaSet controller: a pod not ready yet goes first, then the newest
            unready = [i for i, r in enumerate(self.replicas) if r.ready_at > now]
            self.replicas.pop(unready[-1] if unready else len(self.replicas) - 1)


def serve(port: int, deployments: Sequence[str], startup_s: float) -> None:
    """The service process (``serve`` subcommand): /work/{dep}, /scale/{dep}?replicas=n, /state, /metrics."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    reg = CollectorRegistry()
    requests = Counter("svc_requests", "Requests served", ["dep", "code"], registry=reg)
    duration = Histogram("svc_request_duration_seconds", "Time in the service, queue included", ["dep"],
                         buckets=tuple(round(0.01 * 1.15 ** k, 5) for k in range(62)), registry=reg)
    busy = Counter("svc_busy_seconds", "Worker-seconds spent serving", ["dep"], registry=reg)
    ready_g = Gauge("svc_replicas_ready", "Replicas ready", ["dep"], registry=reg)
    spec_g = Gauge("svc_replicas", "Replicas that exist (ready or starting)", ["dep"], registry=reg)
    deps = {d: Deployment() for d in deployments}
    rng = random.Random(1)
    mu = math.log(SERVICE_S) - SERVICE_SIGMA ** 2 / 2

    async def work(request: web.Request) -> web.Response:
        dep = request.match_info["dep"]
        d = deps.get(dep)
        if d is None:
            raise web.HTTPNotFound()
        t0 = time.monotonic()
        ready = d.ready(t0)
        if not ready:
            requests.labels(dep, "503").inc()
            return web.Response(status=503, text="no ready replica")
        rep = rng.choice(ready)
        async with rep.pool:
            s = rng.lognormvariate(mu, SERVICE_SIGMA)
            await asyncio.sleep(s)
        busy.labels(dep).inc(s)
        duration.labels(dep).observe(time.monotonic() - t0)
        requests.labels(dep, "200").inc()
        return web.Response(text="ok")

    async def scale(request: web.Request) -> web.Response:
        d = deps[request.match_info["dep"]]
        # ?ready=1 at the start: the replicas a service already runs when the benchmark begins
        d.scale(int(request.query["replicas"]), time.monotonic(), 0.0 if request.query.get("ready") else startup_s)
        return web.json_response({"replicas": len(d.replicas)})

    def refresh() -> dict[str, Any]:
        now = time.monotonic()
        out = {}
        for name, d in deps.items():
            ready = len(d.ready(now))
            ready_g.labels(name).set(ready)
            spec_g.labels(name).set(len(d.replicas))
            out[name] = {"ready": ready, "replicas": len(d.replicas)}
        return out

    async def state(request: web.Request) -> web.Response:
        return web.json_response(refresh())

    async def metrics(request: web.Request) -> web.Response:
        refresh()
        return web.Response(body=generate_latest(reg), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def main() -> None:
        now = time.monotonic()
        for d in deps.values():
            d.scale(1, now - startup_s, startup_s)
        app = web.Application()
        app.add_routes([web.get("/work/{dep}", work), web.post("/scale/{dep}", scale), web.get("/state", state),
                        web.get("/metrics", metrics)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------ the driver


def free_port() -> int:
    from sidecar.testing import free_port as fp
    return fp()


def spawn(cmd: list[str], logfile: Path) -> subprocess.Popen[bytes]:
    with logfile.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def sidecar_rules(prom_url: str, port: int, db: Path, deps: Sequence[str], scale_quantile: float | None = None) -> str:
    """The rules file: one twin per (b) deployment, everything compressed like the traces; ``scale_quantile``
    None leaves the rules' default."""
    twins = []
    for dep in deps:
        sel = f'dep="{dep}"'
        twins.append({
            "name": dep,
            "metrics": {
                "request_latency_ms": f"1000 * histogram_quantile(0.99, sum by (le) "
                                      f"(rate(svc_request_duration_seconds_bucket{{{sel}}}[{RATE_WINDOW}])))",
                "request_latency_mean_ms": f"1000 * sum(rate(svc_request_duration_seconds_sum{{{sel}}}"
                                           f"[{RATE_WINDOW}])) / sum(rate(svc_request_duration_seconds_count"
                                           f"{{{sel}}}[{RATE_WINDOW}]))",
                "replicas": f"svc_replicas_ready{{{sel}}}",
            },
            "request_rate": f"sum(rate(svc_requests_total{{{sel}}}[{RATE_WINDOW}]))",
            "limits": {"request_latency_ms": SLO_MS},
            "workers": WORKERS, "min_replicas": MIN_REPLICAS, "max_replicas": MAX_REPLICAS,
            "scale_down_stabilisation": f"{SCALE_DOWN_WINDOW_S:g}s",
            "horizons": [HORIZON, "30s"],
            **({"scale_quantile": scale_quantile} if scale_quantile is not None else {}),
        })
    rules = {"prometheus": {"url": prom_url, "timeout": "2s"}, "interval": "1s", "backfill": "0s",
             "server": {"listen": f"127.0.0.1:{port}"}, "storage": {"path": str(db)}, "twins": twins}
    return json.dumps(rules, indent=1)


@dataclass(slots=True)
class Lane:
    """One deployment under one policy, fed one trace."""

    dep: str
    policy: str
    seg: Segment
    sent: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    in_flight: int = 0
    spec: int = 1
    history: list[tuple[float, int]] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)     # (t, replicas, ready)
    decisions: list[tuple[float, int]] = field(default_factory=list)
    advice: list[list[Any]] = field(default_factory=list)       # twin lanes: what the sidecar advised at each poll
    twin_missing: int = 0
    twin_seen: int = 0


async def prom_value(session: Any, url: str, query: str) -> float:
    async with session.get(f"{url}/api/v1/query", params={"query": query}) as resp:
        body = await resp.json()
    result = body.get("data", {}).get("result", [])
    if not result:
        return math.nan
    return float(result[0]["value"][1])


def controller_queries(lane: Lane) -> dict[str, str]:
    sel = f'dep="{lane.dep}"'
    return {
        "utilisation": f"sum(rate(svc_busy_seconds_total{{{sel}}}[{RATE_WINDOW}])) / "
                       f"({WORKERS} * sum(svc_replicas_ready{{{sel}}}))",
        "twin": f'twin_recommended_replicas{{twin="{lane.dep}",horizon="{HORIZON}"}}',
        "linear": f"predict_linear(sum(rate(svc_requests_total{{{sel}}}[{RATE_WINDOW}]))[30s:1s], "
                  f"{300 / COMPRESSION:g})",
    }


async def control(lane: Lane, session: Any, prom: str, svc: str, policy: Callable[[], str], t0: float,
                  end: float, twin_hpa_window_s: float = SCALE_DOWN_WINDOW_S, sidecar: str | None = None) -> None:
    """The lane's controller until ``end``: the HPA on utilisation, or KEDA's on its metric (``policy()`` says
    which is in force: the warm-up runs every lane under the HPA)."""
    q = controller_queries(lane)
    per_replica_target = TARGET_UTILISATION * WORKERS / SERVICE_S
    while time.monotonic() < end:
        mode = policy()
        now = time.monotonic() - t0
        async with session.get(f"{svc}/state") as resp:
            state = (await resp.json())[lane.dep]
        ready = int(state["ready"])
        try:
            if mode == "hpa":
                raw = utilisation_raw(lane.spec, ready, await prom_value(session, prom, q["utilisation"]))
            elif mode in TWIN_POLICIES:
                metric = await prom_value(session, prom, q["twin"])
                lane.twin_seen += 1
                lane.twin_missing += not math.isfinite(metric)
                raw = average_value_raw(lane.spec, metric, 1.0)
                if mode == "twincpu":
                    raw = max(raw, utilisation_raw(lane.spec, ready, await prom_value(session, prom,
                                                                                       q["utilisation"])))
                if sidecar is not None:
                    lane.advice.append([round(now, 2), *await advice_row(session, sidecar, lane.dep)])
            else:
                raw = average_value_raw(lane.spec, max(await prom_value(session, prom, q["linear"]), 0.0),
                                        per_replica_target)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("controller query failed: %s", exc)
            raw = lane.spec
        window = twin_hpa_window_s if mode in TWIN_POLICIES else SCALE_DOWN_WINDOW_S
        desired = hpa_behaviour(lane.spec, raw, lane.history, now, window)
        if desired != lane.spec:
            async with session.post(f"{svc}/scale/{lane.dep}", params={"replicas": str(desired)}) as resp:
                await resp.read()
            lane.spec = desired
            lane.decisions.append((now, desired))
        await asyncio.sleep(HPA_SYNC_S if mode == "hpa" else KEDA_POLL_S)


async def advice_row(session: Any, sidecar: str, dep: str) -> list[Any]:
    """(raw, stabilised replicas, request rate sized for) at the lane's horizon, one replica's capacity, service
    time (ms) and variability from the twin's advice: why the twin asked for what it asked."""
    import aiohttp

    try:
        async with session.get(f"{sidecar}/api/v1/twins/{dep}") as resp:
            body = (await resp.json()).get("replicas") or {}
    except (aiohttp.ClientError, OSError, ValueError):
        body = {}
    h = next((x for x in body.get("horizons", []) if x.get("horizon_s") == float(HORIZON.rstrip("s"))), {})
    per = (body.get("fit") or {}).get("per_replica") or {}
    return [h.get("replicas"), h.get("replicas_stabilised"), h.get("request_rate_upper"), per.get("capacity"),
            per.get("service_time_ms"), per.get("variability")]


async def load(lane: Lane, session: Any, svc: str, t0: float, end: float, seed: int) -> None:
    """Open-loop Poisson arrivals at the segment's rate; each request's client-side latency is kept."""
    import aiohttp

    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    tasks: set[asyncio.Task[None]] = set()

    async def one(sent: float) -> None:
        lane.in_flight += 1
        try:
            async with session.get(f"{svc}/work/{lane.dep}", timeout=timeout) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        finally:
            lane.in_flight -= 1
        lane.sent.append(sent)
        lane.latency_ms.append(1000.0 * (time.monotonic() - t0 - sent) if ok else math.inf)

    while (now := time.monotonic()) < end:
        rate = lane.seg.rate(now - t0)
        await asyncio.sleep(rng.expovariate(rate) if rate > 0.01 else 0.1)
        if rate <= 0.01:
            continue
        sent = time.monotonic() - t0
        if lane.in_flight >= MAX_IN_FLIGHT:
            lane.sent.append(sent)
            lane.latency_ms.append(math.inf)
            continue
        task = asyncio.create_task(one(sent))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)


async def sample(lanes: Sequence[Lane], session: Any, svc: str, t0: float, end: float) -> None:
    while time.monotonic() < end:
        async with session.get(f"{svc}/state") as resp:
            state = await resp.json()
        now = time.monotonic() - t0
        for lane in lanes:
            lane.samples.append((now, int(state[lane.dep]["replicas"]), int(state[lane.dep]["ready"])))
        await asyncio.sleep(0.25)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def own_tree_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of the given processes, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (float(fields[11]) + float(fields[12])) / tick
    return total


async def run_once(args: argparse.Namespace, run: int, workdir: Path) -> dict[str, Any]:
    """One run: every trace at its own random place, every policy on its own deployment, at once."""
    import aiohttp

    from sidecar.testing import PrometheusServer

    rng = np.random.default_rng(1000 + run)
    warm_s, measure_s = args.warmup_s, args.measure_s
    segs: dict[str, Segment] = {}
    for name in args.traces:
        t, v = load_trace(TRACES[name])
        length_real = (warm_s + measure_s) * COMPRESSION
        start = float(rng.uniform(0.0, float(t[-1]) - length_real))
        peak = PEAK_REPLICAS * TARGET_UTILISATION * WORKERS / SERVICE_S
        segs[name] = segment(name, t, v, start, warm_s + measure_s, peak)
    lanes = [Lane(f"{name}-{p}", p, segs[name]) for name in args.traces for p in args.policies]
    rundir = workdir / f"run{run}"
    rundir.mkdir(parents=True, exist_ok=True)
    svc_port, side_port = free_port(), free_port()
    svc_url = f"http://127.0.0.1:{svc_port}"
    service = spawn([sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(svc_port),
                     "--deployments", ",".join(lane.dep for lane in lanes)], rundir / "service.log")
    prom = PrometheusServer(scrape_configs=[
        {"job_name": "svc", "scrape_interval": "1s", "static_configs": [{"targets": [f"127.0.0.1:{svc_port}"]}]},
        {"job_name": "sidecar", "scrape_interval": "1s",
         "static_configs": [{"targets": [f"127.0.0.1:{side_port}"]}]}], scrape_interval="1s").start()
    rules = rundir / "rules.yaml"
    rules.write_text(sidecar_rules(prom.url, side_port, rundir / "sidecar.db",
                                   [lane.dep for lane in lanes if lane.policy in TWIN_POLICIES], args.scale_quantile))
    sidecar = spawn([str(Path(sys.executable).parent / "twin-sidecar"), "run", "--config", str(rules)],
                    rundir / "sidecar.log")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{svc_url}/state") as r1, \
                            session.get(f"http://127.0.0.1:{side_port}/readyz") as r2:
                        if r1.status == 200 and r2.status in (200, 503):
                            break
                await asyncio.sleep(0.2)
            for lane in lanes:          # the replicas the segment's first load needs, already running
                per_replica = TARGET_UTILISATION * WORKERS / SERVICE_S
                lane.spec = max(MIN_REPLICAS, math.ceil(lane.seg.rate(0.0) / per_replica))
                async with session.post(f"{svc_url}/scale/{lane.dep}",
                                        params={"replicas": str(lane.spec), "ready": "1"}) as resp:
                    await resp.read()
            busy0, total0 = machine_cpu()
            pids = [service.pid, sidecar.pid, prom.proc.pid if prom.proc else 0]
            cpu0 = own_tree_cpu_s(pids)
            t0 = time.monotonic()
            t0_unix = time.time()
            measure_from = t0 + warm_s
            end = t0 + warm_s + measure_s

            def policy_of(lane: Lane) -> Callable[[], str]:
                return lambda: "hpa" if time.monotonic() < measure_from else lane.policy
            side_url = f"http://127.0.0.1:{side_port}"
            jobs = [control(lane, session, prom.url, svc_url, policy_of(lane), t0, end, args.twin_hpa_scale_down_s,
                            side_url if lane.policy in TWIN_POLICIES else None)
                    for lane in lanes]
            jobs += [load(lane, session, svc_url, t0, end, seed=run * 100 + i) for i, lane in enumerate(lanes)]
            jobs.append(sample(lanes, session, svc_url, t0, end))
            await asyncio.gather(*jobs)
            busy1, total1 = machine_cpu()
            cpu1 = own_tree_cpu_s(pids)
            async with session.get(f"http://127.0.0.1:{side_port}/api/v1/twins") as resp:
                twins = await resp.json()
            await asyncio.sleep(2.0)            # the last window's scrape
            server = {lane.dep: await server_p99(session, prom.url, lane.dep, t0_unix, warm_s, warm_s + measure_s)
                      for lane in lanes}
            advice = {}
            for lane in lanes:
                if lane.policy in TWIN_POLICIES:
                    async with session.get(f"http://127.0.0.1:{side_port}/api/v1/twins/{lane.dep}") as resp:
                        advice[lane.dep] = (await resp.json()).get("replicas")
    finally:
        stop(sidecar)
        stop(service)
        prom.stop()
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"run": run, "warmup_s": warm_s, "measure_s": measure_s,
                           "machine_busy_share": round((busy1 - busy0) / max(total1 - total0, 1.0), 3),
                           "benchmark_cpu_share": round((cpu1 - cpu0) / (warm_s + measure_s) / cores, 3),
                           "twins": twins.get("count"), "lanes": [], "advice_at_end": advice,
                           "scale_quantile": quantile_of(args)}
    for lane in lanes:
        sent, lat = np.asarray(lane.sent), np.asarray(lane.latency_ms)
        st = np.asarray([s[0] for s in lane.samples])
        reps = np.asarray([s[1] for s in lane.samples], dtype=np.float64)
        over, windows = server_breach_minutes(server[lane.dep])
        client_over, client_windows = breach_minutes(sent, lat, warm_s, warm_s + measure_s)
        meas = (sent >= warm_s) & (sent < warm_s + measure_s)
        out["lanes"].append({
            "trace": lane.seg.name, "policy": lane.policy, "segment_start_real_s": lane.seg.start_real_s,
            "breach_minutes": over, "minutes": windows, "client_breach_minutes": client_over,
            "client_minutes": client_windows, "server_p99_ms": [round(x, 1) for x in server[lane.dep]],
            "replica_minutes": round(replica_minutes(st, reps, warm_s, warm_s + measure_s), 2),
            "requests": int(meas.sum()), "failed": int(np.isinf(lat[meas]).sum()),
            "p99_ms": round(float(np.quantile(lat[meas], 0.99)), 1) if meas.any() else None,
            "decisions": len([d for d in lane.decisions if d[0] >= warm_s]),
            "twin_metric_absent_share": round(lane.twin_missing / lane.twin_seen, 3) if lane.twin_seen else None,
            "replicas": [[round(a, 2), int(b), int(c)] for a, b, c in lane.samples[::12]],   # (t, existing, ready)
            # (t, raw, stabilised, rate sized for, capacity of one replica, service time ms, variability)
            "advice": lane.advice,
        })
    return out


# ------------------------------------------------------------------------------------------------ report


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per trace and policy: breach minutes and replica-minutes summed over runs, and the ratios to the HPA."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        for lane in r["lanes"]:
            cell = table.setdefault(lane["trace"], {}).setdefault(lane["policy"], {
                "breach_minutes": 0.0, "minutes": 0.0, "replica_minutes": 0.0, "runs": 0.0})
            cell["breach_minutes"] += lane["breach_minutes"]
            cell["minutes"] += lane["minutes"]
            cell["replica_minutes"] += lane["replica_minutes"]
            cell["runs"] += 1
    total: dict[str, dict[str, float]] = {}
    for per in table.values():
        for p, c in per.items():
            t = total.setdefault(p, {"breach_minutes": 0.0, "minutes": 0.0, "replica_minutes": 0.0, "runs": 0.0})
            for k in t:
                t[k] += c[k]
    table["all"] = total
    for per in table.values():
        base = per.get("hpa")
        for c in per.values():
            if base:
                c["breach_vs_hpa"] = c["breach_minutes"] / base["breach_minutes"] if base["breach_minutes"] else \
                    (0.0 if c["breach_minutes"] == 0 else math.inf)
                c["replica_minutes_vs_hpa"] = c["replica_minutes"] / base["replica_minutes"]
    return table


def quantile_of(args: argparse.Namespace) -> float:
    """The forecast quantile the twin's recommendation sized for in these runs (the rules' default unless given)."""
    from sidecar.engine.replicas import DEFAULT_QUANTILE
    q = getattr(args, "scale_quantile", None)
    return float(q) if q is not None else DEFAULT_QUANTILE


def sized_for(results: Sequence[dict[str, Any]]) -> str:
    """The quantile(s) the runs' twins sized for (runs before ``scale_quantile`` sized for the upper bound, 0.95)."""
    return "/".join(f"{q:g}" for q in sorted({float(r.get("scale_quantile", 0.95)) for r in results}))


def goal_met(cell: dict[str, float]) -> bool:
    return cell.get("breach_vs_hpa", math.inf) <= 0.5 and cell.get("replica_minutes_vs_hpa", math.inf) <= 1.1


def report(results: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    table = summarise(results)
    policies = list(dict.fromkeys(lane["policy"] for r in results for lane in r["lanes"])) or list(POLICIES)
    lines = [f"# Closed-loop autoscaling benchmark ({datetime.now().strftime('%Y-%m-%d %H:%M')} UTC, "
             f"{os.cpu_count()} shared cores)", "",
             f"`python benchmarks/autoscale.py --runs {args.runs}"
             + (f" --first-run {args.first_run}" if getattr(args, "first_run", 0) else "")
             + f" --warmup-s {args.warmup_s:g} --measure-s "
             f"{args.measure_s:g} --twin-hpa-scale-down-s {args.twin_hpa_scale_down_s:g}"
             + (f" --scale-quantile {args.scale_quantile:g}" if getattr(args, "scale_quantile", None) else "")
             + f"`; twin sized for the forecast's {sized_for(results)} quantile; time compressed "
             f"{COMPRESSION:g}x (one benchmark second = {COMPRESSION:g} real "
             f"seconds), {WORKERS} workers per replica, service time {SERVICE_S * 1000:g} ms (log-normal, mostly "
             f"waiting), start-up {STARTUP_S * COMPRESSION:g} s, SLO p99 <= {SLO_MS:g} ms per real minute. "
             "Minutes and replica-minutes are real (compressed back).", "",
             "| trace | policy | SLO-breach minutes | replica-minutes | breach vs HPA | replica-min vs HPA | goal |",
             "|---|---|---:|---:|---:|---:|---|"]
    for trace, per in table.items():
        for p in policies:
            c = per.get(p)
            if c is None:
                continue
            goal = "—" if p == "hpa" else ("met" if goal_met(c) else "not met")
            lines.append(f"| {trace} | {p} | {c['breach_minutes']:g} / {c['minutes']:g} | "
                         f"{c['replica_minutes']:.0f} | {c.get('breach_vs_hpa', math.nan):.2f} | "
                         f"{c.get('replica_minutes_vs_hpa', math.nan):.2f} | {goal} |")
    lines += ["", "Per run (breach minutes / replica-minutes; machine busy share of all cores during the run):", "",
              "| run | machine busy | " + " | ".join(f"{t} {p}" for t in args.traces for p in policies) + " |",
              "|---|---:|" + "---:|" * (len(args.traces) * len(policies))]
    for r in results:
        cells = {(lane["trace"], lane["policy"]): lane for lane in r["lanes"]}
        lines.append(f"| {r['run']} | {r['machine_busy_share']:.0%} | " + " | ".join(
            f"{cells[(t, p)]['breach_minutes']} / {cells[(t, p)]['replica_minutes']:.0f}"
            for t in args.traces for p in policies) + " |")
    absent = [lane["twin_metric_absent_share"] for r in results for lane in r["lanes"]
              if lane["twin_metric_absent_share"] is not None]
    if absent:
        lines += ["", f"twin_recommended_replicas was absent (withheld by the sidecar) in "
                      f"{100 * float(np.mean(absent)):.0f}% of the twin controller's polls (mean over lanes)."]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    results = []
    out_json = Path(args.output).with_suffix(".json")
    for run in range(args.first_run, args.first_run + args.runs):
        log.info("run %d", run)
        results.append(await run_once(args, run, workdir))
        out_json.write_text(json.dumps({"args": vars(args), "results": results}, separators=(",", ":")))
        Path(args.output).write_text(report(results, args))
        print(report(results, args), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--deployments", required=True)
    s.add_argument("--startup-s", type=float, default=STARTUP_S)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--traces", nargs="+", default=list(TRACES), choices=list(TRACES))
    ap.add_argument("--warmup-s", type=float, default=180.0)
    ap.add_argument("--measure-s", type=float, default=360.0)
    ap.add_argument("--workdir", default="/tmp/autoscale-bench")
    ap.add_argument("--output", default=str(HERE / "results" / "autoscale.md"))
    ap.add_argument("--twin-hpa-scale-down-s", type=float, default=SCALE_DOWN_WINDOW_S,
                    help="scale-down stabilisation of the HPA KEDA makes for the twin policy (benchmark seconds; "
                         "default 15 = 300 s real, the HPA's own default and what the chart renders: the "
                         "configuration that met the goal; 0 leaves it to the sidecar's own window, which did not)")
    ap.add_argument("--scale-quantile", type=float, default=None,
                    help="the twin rule's scale_quantile (default: the rules' default; 0.95 is the upper bound of the "
                         "forecast's 90 %% interval, what the recommendation sized for before scale_quantile)")
    ap.add_argument("--first-run", type=int, default=0, help="index of the first run (its random segments)")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(ALL_POLICIES),
                    help="the lanes per trace (hpa is the anchor every ratio is against); twincpu: the twin's and "
                         "the utilisation trigger in one ScaledObject")
    ap.add_argument("--report-only", nargs="+", metavar="JSON",
                    help="write --output from the results of these earlier runs, running nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "serve":
        serve(args.port, args.deployments.split(","), args.startup_s)
        return
    if args.report_only:
        results = [r for path in args.report_only for r in json.loads(Path(path).read_text())["results"]]
        args.runs = len(results)
        Path(args.output).write_text(report(results, args))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

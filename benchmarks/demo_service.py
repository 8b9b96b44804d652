"""Demo service with a known capacity limit, for the breaking-point benchmark (benchmark-only).

An aiohttp app whose handler burns CPU (PBKDF2, which releases the GIL) in a pool of
``--workers`` threads, optionally followed by a blocking wait (``--io-ms``, a synchronous
downstream call): a fixed-size worker pool, so its capacity is about workers / (CPU time + wait).

``--work cpu-time`` (the default) burns until the worker thread has used ``--service-ms`` of
CPU time, so the capacity is known exactly whatever the host does: on a shared virtual machine
a fixed amount of work costs 15–25% more or less CPU time from one minute to the next (the
neighbours' load changes the core's speed), which moved the capacity of ``--work fixed``
(a fixed number of PBKDF2 iterations, calibrated at start) between the fit and the ramp by more
than the model's own error. CPU time is also what a Kubernetes CPU limit meters. The event loop stays responsive, so the
request-duration histogram includes the time a request waits for a free worker — the
queueing the capacity model predicts. Above ``--max-queue`` waiting requests it sheds
load with 503, so overload shows as errors as well as latency.

    python benchmarks/demo_service.py --port 8099 --workers 1 --service-ms 20

Exposes ``GET /work`` and Prometheus ``GET /metrics`` (``demo_requests_total{code}``,
``demo_request_duration_seconds``, ``demo_queue_depth`` and the default process metrics,
among them ``process_cpu_seconds_total``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    process_collector,
)

log = logging.getLogger(__name__)

BUCKETS = tuple(round(0.001 * 1.2**k, 6) for k in range(0, 51))   # 1 ms … ~9 s, 20% apart


def calibrate(service_ms: float) -> int:
    """PBKDF2 iterations that take ``service_ms`` of CPU (thread CPU time: unaffected by other load)."""
    n = 2000
    for _ in range(5):
        t = time.thread_time()
        hashlib.pbkdf2_hmac("sha256", b"demo", b"salt", n)
        spent = time.thread_time() - t
        if spent > 0.02:
            break
        n *= 4
    best = []
    for _ in range(5):
        t = time.thread_time()
        hashlib.pbkdf2_hmac("sha256", b"demo", b"salt", n)
        best.append(time.thread_time() - t)
    return max(1, int(n * (service_ms / 1000.0) / sorted(best)[len(best) // 2]))


def build_app(workers: int, service_ms: float, max_queue: int, io_ms: float = 0.0,
              work_mode: str = "cpu-time") -> web.Application:
    registry = CollectorRegistry()
    process_collector.ProcessCollector(registry=registry)
    requests = Counter("demo_requests", "Requests served, by status code", ["code"], registry=registry)
    duration = Histogram("demo_request_duration_seconds", "Arrival to response, queueing included",
                         buckets=BUCKETS, registry=registry)
    depth = Gauge("demo_queue_depth", "Requests waiting for or holding a worker", registry=registry)
    iterations = calibrate(service_ms)
    chunk = max(1, iterations // 40)            # ~0.5 ms of CPU: the cpu-time loop overshoots by at most that
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-worker")
    state = {"inflight": 0}
    log.info("demo service: %d worker(s), %.1f ms CPU (%s) + %.1f ms blocking wait per request "
             "(%d PBKDF2 iterations), max queue %d", workers, service_ms, work_mode, io_ms, iterations, max_queue)

    def burn() -> None:
        if work_mode == "cpu-time":
            end = time.thread_time() + service_ms / 1000.0
            while time.thread_time() < end:
                hashlib.pbkdf2_hmac("sha256", b"demo", b"salt", chunk)
        else:
            hashlib.pbkdf2_hmac("sha256", b"demo", b"salt", iterations)
        if io_ms > 0:
            time.sleep(io_ms / 1000.0)          # a synchronous downstream call: holds the worker, no CPU

    async def work(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        if state["inflight"] >= max_queue:
            requests.labels(code="503").inc()
            return web.Response(status=503, text="overloaded")
        state["inflight"] += 1
        depth.set(state["inflight"])
        try:
            await asyncio.get_running_loop().run_in_executor(pool, burn)
        finally:
            state["inflight"] -= 1
            depth.set(state["inflight"])
        duration.observe(time.perf_counter() - t0)
        requests.labels(code="200").inc()
        return web.Response(text="ok")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/work", work)
    app.router.add_get("/metrics", metrics)
    for code in ("200", "503"):
        requests.labels(code=code)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--service-ms", type=float, default=20.0)
    p.add_argument("--io-ms", type=float, default=0.0, help="blocking wait per request in the worker")
    p.add_argument("--max-queue", type=int, default=200)
    p.add_argument("--work", choices=("cpu-time", "fixed"), default="cpu-time",
                   help="cpu-time: burn --service-ms of thread CPU time; fixed: a calibrated number of iterations")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(build_app(a.workers, a.service_ms, a.max_queue, a.io_ms, a.work), host="127.0.0.1", port=a.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()

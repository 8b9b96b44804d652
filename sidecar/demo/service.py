"""A small web service with real metrics whose load changes over time: what the demo's twin watches.

It serves ``/work`` (spends real CPU, waits longer the busier it is, fails
more often when overloaded) and drives its own traffic at a rate that
follows a slow wave with a 3× spike every few minutes, so the sidecar has
something to forecast. Everything it exports is measured, not invented:

* ``process_cpu_seconds_total``, ``process_resident_memory_bytes`` (prometheus-client's process collector)
* ``demo_http_request_duration_seconds`` — histogram of ``/work`` latency
* ``demo_http_requests_total{code}`` — requests by status code (503 when overloaded)
* ``demo_cache_bytes`` / ``demo_cache_limit_bytes`` — a cache that really holds memory, grows with traffic
  and is flushed every ``cache_flush_s`` (a leak a restart "fixes"), so the memory forecast has a trend
* ``demo_inflight_requests``, ``demo_target_rps`` — load right now and the driver's target rate

Run it alone: ``python -m sidecar.demo.service --port 8081``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import time

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, process_collector

BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class DemoService:
    """The service and its own load driver; all shapes are functions of time since start."""

    def __init__(self, *, base_rps: float = 15.0, wave_period_s: float = 600.0, spike_every_s: float = 300.0,
                 spike_len_s: float = 60.0, spike_factor: float = 3.0, cpu_ms: float = 1.5,
                 capacity: int = 24, cache_limit_bytes: int = 64 * 2**20, cache_flush_s: float = 480.0,
                 seed: int = 0) -> None:
        self.base_rps = base_rps
        self.wave_period_s = wave_period_s
        self.spike_every_s = spike_every_s
        self.spike_len_s = spike_len_s
        self.spike_factor = spike_factor
        self.cpu_ms = cpu_ms
        self.capacity = capacity
        self.cache_limit = cache_limit_bytes
        self.cache_flush_s = cache_flush_s
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.inflight = 0
        self._cache: list[bytes] = []
        self._cache_bytes = 0
        self._last_flush = self.started
        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        self.latency = Histogram("demo_http_request_duration_seconds", "Latency of /work.",
                                 registry=self.registry, buckets=BUCKETS)
        self.requests = Counter("demo_http_requests", "Requests to /work by status code.", ["code"],
                                registry=self.registry)
        self.cache_gauge = Gauge("demo_cache_bytes", "Bytes held by the cache.", registry=self.registry)
        Gauge("demo_cache_limit_bytes", "Cache size limit.", registry=self.registry).set(cache_limit_bytes)
        self.inflight_gauge = Gauge("demo_inflight_requests", "Requests in progress.", registry=self.registry)
        self.target_gauge = Gauge("demo_target_rps", "Request rate the load driver aims for.",
                                  registry=self.registry)
        for c in ("200", "503"):
            self.requests.labels(c)

    # ------------------------------------------------------------------ load shape

    def target_rps(self, elapsed: float) -> float:
        wave = 1.0 + 0.5 * math.sin(2 * math.pi * elapsed / self.wave_period_s)
        in_spike = (elapsed % self.spike_every_s) >= self.spike_every_s - self.spike_len_s
        return self.base_rps * wave * (self.spike_factor if in_spike else 1.0)

    # ------------------------------------------------------------------ handlers

    async def work(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        code = 500
        self.inflight += 1
        self.inflight_gauge.set(self.inflight)
        try:
            busy = self.inflight / self.capacity
            end = time.perf_counter() + self.cpu_ms / 1000.0
            x = 0
            while time.perf_counter() < end:        # real CPU, so process_cpu_seconds_total moves
                x += 1
            # queueing: latency grows steeply as the service fills up
            await asyncio.sleep(0.015 + 0.05 * busy ** 2 + self.rng.expovariate(200.0))
            self._grow_cache()
            if busy > 1.0 and self.rng.random() < min(0.5, (busy - 1.0)):
                code = 503
            else:
                code = 200 if self.rng.random() > 0.002 else 503
            return web.Response(status=code, text="ok\n" if code == 200 else "overloaded\n")
        finally:
            self.inflight -= 1
            self.inflight_gauge.set(self.inflight)
            self.latency.observe(time.perf_counter() - t0)
            self.requests.labels(str(code)).inc()

    def _grow_cache(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self.cache_flush_s or self._cache_bytes >= self.cache_limit:
            self._cache.clear()
            self._cache_bytes = 0
            self._last_flush = now
        chunk = bytes(12 * 1024)
        self._cache.append(chunk)
        self._cache_bytes += len(chunk)
        self.cache_gauge.set(self._cache_bytes)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/work", self.work)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    # ------------------------------------------------------------------ load driver

    async def drive(self, url: str, stop: asyncio.Event) -> None:
        """Poisson arrivals at ``target_rps(t)``; at most ``4 × capacity`` requests in flight."""
        limit = asyncio.Semaphore(4 * self.capacity)
        pending: set[asyncio.Task[None]] = set()
        async with ClientSession(connector=TCPConnector(limit=4 * self.capacity),
                                 timeout=ClientTimeout(total=10)) as session:

            async def one() -> None:
                async with limit:
                    with contextlib.suppress(Exception):
                        async with session.get(url) as resp:
                            await resp.read()

            while not stop.is_set():
                rate = self.target_rps(time.monotonic() - self.started)
                self.target_gauge.set(rate)
                await asyncio.sleep(self.rng.expovariate(rate))
                task = asyncio.create_task(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            for task in list(pending):
                task.cancel()


async def serve(port: int, *, host: str = "127.0.0.1", drive: bool = True, base_rps: float = 15.0,
                spike_every_s: float = 300.0) -> None:
    """Serve until SIGTERM/SIGINT."""
    import signal

    svc = DemoService(base_rps=base_rps, spike_every_s=spike_every_s)
    runner = web.AppRunner(svc.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    driver = asyncio.create_task(svc.drive(f"http://{host}:{port}/work", stop)) if drive else None
    print(f"demo service on http://{host}:{port} (/work, /metrics)", flush=True)
    await stop.wait()
    if driver is not None:
        await driver
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sidecar.demo.service")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--base-rps", type=float, default=15.0)
    parser.add_argument("--no-drive", action="store_true", help="serve only; send no traffic of its own")
    parser.add_argument("--spike-every", type=float, default=300.0, help="seconds between traffic spikes")
    args = parser.parse_args()
    asyncio.run(serve(args.port, drive=not args.no_drive, base_rps=args.base_rps,
                      spike_every_s=args.spike_every))


if __name__ == "__main__":
    main()

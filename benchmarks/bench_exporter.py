"""Scrape cost of /metrics at scale: a view of N series × 4 horizons, rendered as a scrape would.

    python benchmarks/bench_exporter.py --series 40000 --twins 10000 --repeat 3

Prints wall and CPU time of the first scrape of a view, of a repeated scrape of the same view (cached), and
of prometheus-client's own generate_latest for comparison (--stock). CPU time is the fairer number on a
shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.engine.view import EngineView
from sidecar.exporter import install_exporter, render, sync_duration_histogram
from sidecar.status import ServiceStatus


def big_view(n_series: int, n_twins: int, seed: int) -> EngineView:
    rng = np.random.default_rng(seed)
    per = n_series // n_twins
    metrics = [f"metric_{j}" for j in range(per)]
    names = [f"service-{i:05d}" for i in range(n_twins)]
    st = tuple(t for t in names for _ in metrics)
    sm = tuple(m for _ in names for m in metrics)
    s, h = len(st), 4
    mean = rng.uniform(0, 100, (s, h))
    eta = np.where(rng.uniform(size=s) < 0.05, rng.uniform(60, 3600, s), np.nan)
    return EngineView(
        at=1.7e9, horizons_s=np.array([300.0, 900.0, 1800.0, 3600.0]), series_twin=st, series_metric=sm,
        last_value=rng.uniform(0, 100, s), forecast_mean=mean, forecast_lower=mean - 3,
        forecast_upper=mean + 3,
        confidence=rng.uniform(0, 1, (s, h)), expected=rng.uniform(0, 100, s),
        divergence_ratio=rng.normal(0, 0.2, s), severity=rng.integers(0, 5, s).astype(np.int8),
        anomaly=rng.uniform(0, 1, s), limit=np.full(s, 95.0), breach_eta_s=eta, twin_names=tuple(names),
        health=rng.uniform(0, 100, n_twins), drift=rng.uniform(size=n_twins) < 0.1,
        last_sync=np.full(n_twins, 1.7e9), series_last_sample=np.full(s, 1.7e9))


async def _http(view: EngineView) -> None:
    """Scrape /metrics of the real app over loopback, as Prometheus would (OpenMetrics, gzip) and plainly."""
    import aiohttp
    from aiohttp import web

    from sidecar.engine.twin import TwinEngine
    from sidecar.server import build_app
    from sidecar.testing import free_port

    facade = TwinEngine()
    facade.engine.view = lambda: view  # type: ignore[method-assign]  # benchmark only: a prebuilt big view
    app = build_app(facade=facade, status=ServiceStatus(source_up=True), registry=CollectorRegistry(),
                    engine_lock=asyncio.Lock(), auth_token=None, max_body_bytes=4096)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            for label, headers in (("OpenMetrics+gzip (first)", {"Accept": accept, "Accept-Encoding": "gzip"}),
                                   ("OpenMetrics+gzip (again)", {"Accept": accept, "Accept-Encoding": "gzip"}),
                                   ("text, no gzip", {"Accept-Encoding": "identity"})):
                w0 = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp:
                    body = await resp.read()
                print(f"HTTP scrape {label}: {time.perf_counter() - w0:.3f}s wall, {len(body) / 1e6:.1f} MB "
                      f"on the wire")
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=40_000)
    ap.add_argument("--twins", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stock", action="store_true", help="also time prometheus-client's generate_latest")
    ap.add_argument("--http", action="store_true", help="also time real scrapes of /metrics on 127.0.0.1")
    args = ap.parse_args()
    views = [big_view(args.series, args.twins, seed) for seed in range(args.repeat)]
    current = [views[0]]
    registry = CollectorRegistry()
    install_exporter(registry, view=lambda: current[0], status=ServiceStatus(source_up=True))
    sync_duration_histogram(registry).observe(0.5)
    for i, view in enumerate(views):
        current[0] = view
        w0, c0 = time.perf_counter(), time.process_time()
        body = render(registry)
        w1, c1 = time.perf_counter(), time.process_time()
        render(registry)
        w2, c2 = time.perf_counter(), time.process_time()
        lines = body.count(b"\n") - body.count(b"\n#")
        print(f"view {i}: first scrape {w1 - w0:.3f}s wall / {c1 - c0:.3f}s CPU, same view again "
              f"{w2 - w1:.3f}s wall / {c2 - c1:.3f}s CPU; {lines} samples, {len(body) / 1e6:.1f} MB")
    if args.http:
        asyncio.run(_http(views[-1]))
    if args.stock:
        w0, c0 = time.perf_counter(), time.process_time()
        generate_latest(registry)
        print(f"prometheus-client generate_latest: {time.perf_counter() - w0:.3f}s wall / "
              f"{time.process_time() - c0:.3f}s CPU")


if __name__ == "__main__":
    main()

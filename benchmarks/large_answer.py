"""Does a large Prometheus answer hold the event loop (and so the probes)?  (benchmark, issue 17)

A real Prometheus scrapes one target exposing ``--series`` gauges; the sidecar's client asks for all of them
in one instant query while a probe coroutine measures the event loop's lag every 10 ms (what ``/healthz``
would feel). Done with the answer decoded in a worker thread (the client's default past ``OFF_LOOP_BYTES``) and,
for comparison, on the loop (the threshold raised past the answer). Writes
``benchmarks/results/large_answer.md``.

    python3 benchmarks/large_answer.py [--series 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from pathlib import Path

import sidecar.prometheus as prometheus
from sidecar.config import PrometheusConfig
from sidecar.errors import SourceError
from sidecar.prometheus import PrometheusClient
from sidecar.testing import MetricsTarget, PrometheusServer


async def one(url: str, series: int) -> tuple[float, float, int]:
    """(longest loop lag, wall time of the query, series returned)."""
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t0 - 0.01)

    async with PrometheusClient(PrometheusConfig(url=url, timeout_s=120.0)) as client:
        task = asyncio.create_task(probe())
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        vec = await client.query("big_gauge", at=time.time())
        wall = time.monotonic() - t0
        done.set()
        await task
    return max(lags), wall, len(vec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "large_answer.md"))
    a = ap.parse_args()
    body = "# TYPE big_gauge gauge\n" + "".join(f'big_gauge{{i="{i}"}} {i * 0.5}\n' for i in range(a.series))
    rows: dict[str, list[tuple[float, float, int]]] = {"worker thread": [], "event loop": []}
    with MetricsTarget() as target, PrometheusServer(scrape_targets=[target.address], scrape_interval="15s",
                                                     startup_timeout=120) as prom:
        target.set_raw(body)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if asyncio.run(one(prom.url, a.series))[2] >= a.series:     # every series scraped
                    break
            except SourceError:
                pass
            time.sleep(2)
        threshold = prometheus.OFF_LOOP_BYTES
        for _ in range(a.repeat):
            prometheus.OFF_LOOP_BYTES = threshold
            rows["worker thread"].append(asyncio.run(one(prom.url, a.series)))
            prometheus.OFF_LOOP_BYTES = 2**62
            rows["event loop"].append(asyncio.run(one(prom.url, a.series)))
        prometheus.OFF_LOOP_BYTES = threshold
    md = [f"# A large answer and the event loop ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
          f"`python3 benchmarks/large_answer.py --series {a.series} --repeat {a.repeat}` on {platform.machine()}, "
          f"Python {platform.python_version()}, shared with other work: one instant query answered by a real "
          f"Prometheus with {a.series:,} series; a probe measures the event loop's lag every 10 ms.", "",
          "| decoded in | longest loop lag (each run) | query wall time (median) | series |", "|---|---|---|---|"]
    for label, rs in rows.items():
        md.append(f"| {label} | {', '.join(f'{r[0] * 1000:.0f} ms' for r in rs)} | "
                  f"{statistics.median(r[1] for r in rs):.2f} s | {rs[0][2]:,} |")
    text = "\n".join(md) + "\n"
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU time of dealing a round's shared answers out to a family's twins (``collect/deal.py``).  (benchmark, issue 17)

A real ``Scheduler`` (engine, roster, streaks, loop guard) makes N twins from one ``discover`` answer
(``svc`` naming label, 4 shared metric queries, as ``benchmarks/scale.py`` runs them); then the round's 4
answers of N series each, in a shuffled order, are dealt ``--rounds`` times. No query is sent: the answers
are built in memory, so this times the dealing alone. Writes ``benchmarks/results/deal_round.md`` (appends a
row with ``--label``).

    python3 benchmarks/deal_round.py [--twins 1000 10000] [--rounds 20] [--label before]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from pathlib import Path

import numpy as np

from sidecar.collect.fanout import Job, Outcome
from sidecar.collect.scheduler import Scheduler
from sidecar.config import parse_config
from sidecar.engine.core import Engine
from sidecar.prometheus import InstantVector, PrometheusClient
from sidecar.status import ServiceStatus

METRICS = {"cpu_usage": "toy_cpu", "memory_usage": "toy_memory", "request_latency_ms": "toy_latency_ms",
           "error_rate": "toy_error_rate"}
RULES = ("prometheus: {url: 'http://127.0.0.1:9'}\n"
         "twins:\n  - name: toy\n    discover: toy_cpu\n    name_labels: [svc]\n    metrics: {"
         + ", ".join(f"{m}: {q}" for m, q in METRICS.items()) + "}\n")


def answer(query: str, twins: int, at: float, rng: np.random.Generator) -> InstantVector:
    order = rng.permutation(twins)
    labels = tuple({"__name__": query, "svc": f"s{i:05d}", "job": "toy"} for i in order)
    return InstantVector(query, at, labels, rng.uniform(0, 100, twins))


async def one(twins: int, rounds: int) -> tuple[float, int]:
    config = parse_config(RULES)
    client = PrometheusClient(config.prometheus)
    try:
        sched = Scheduler(config, Engine(), client, ServiceStatus(config_loaded=True))
        rng = np.random.default_rng(1)
        at = 1_700_000_000.0
        await sched.roster.reconcile(at, {"toy": answer("toy_cpu", twins, at, rng)})
        dealer = sched._round.dealer
        raw = [(Job("", m, q, rule="toy"), Outcome("", m, result=answer(q, twins, at, rng), query=q))
               for m, q in METRICS.items()]
        dealt = dealer.deal(raw, [], True)           # warm
        c = time.process_time()
        for _ in range(rounds):
            dealt = dealer.deal(raw, [], True)
        return (time.process_time() - c) / rounds, len(dealt.slots)
    finally:
        await client.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "deal_round.md"))
    a = ap.parse_args()
    out = Path(a.out)
    if not out.exists():
        out.write_text("# Dealing a round's shared answers (`benchmarks/deal_round.py`)\n\n"
                       f"{platform.machine()}, 2 cores shared with other work, Python {platform.python_version()}, "
                       f"numpy {np.__version__}. CPU time per round from `time.process_time`.\n\n"
                       "| when (UTC) | label | twins (series) | CPU per round | µs per series |\n"
                       "|---|---|---|---|---|\n")
    rows = []
    for n in a.twins:
        cpu, samples = asyncio.run(one(n, a.rounds))
        assert samples == 4 * n, samples
        rows.append(f"| {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} | {a.label} | {n:,} ({4 * n:,}) | "
                    f"{cpu * 1000:.1f} ms | {cpu / (4 * n) * 1e6:.2f} |")
        print(rows[-1], flush=True)
    with out.open("a") as f:
        f.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

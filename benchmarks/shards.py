"""Twins across shards on one machine: N twins split over K sidecar processes (benchmark, issue 17).

One real Prometheus scrapes a toy exporter (N instances, one gauge ``toy_cpu{svc}``, a new value every 15 s)
every 15 s; K sidecar processes (``python -m sidecar.app``, shard i of K from ``TWIN_SIDECAR_SHARD_INDEX`` /
``_COUNT``, one replica name) run one ``discover`` rule over it with one shared query, 15 s interval, all on
one PostgreSQL schema. Measured per shard: twins, seconds from start to ready (first round done), CPU per round
and round wall time over a window (``/proc/<pid>/stat``, the sidecar's own ``twin_sync_duration_seconds``),
RSS and peak RSS, and the seconds SIGTERM takes (the model-state save included). Checked: every twin on exactly
one shard (``/api/v1/twins`` of each). Writes ``benchmarks/results/shards-<N>x<K>.{json,md}``.

    python3 benchmarks/shards.py --twins 30000 --shards 3 [--window-s 60]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from scale import proc_cpu_s, proc_mem_mb

from sidecar.config import SHARD_COUNT_ENV, SHARD_INDEX_ENV
from sidecar.demo.prometheus import LocalPrometheus, free_port, prometheus_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEP = 15.0
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Toy:
    """``toy_cpu{svc="s000001"}`` for ``twins`` instances, values moving with the 15 s step."""

    def __init__(self, twins: int) -> None:
        self.twins = twins
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def body(self) -> bytes:
        k = int(time.time() // STEP)
        lines = [f'toy_cpu{{svc="s{i:06d}"}} {20 + (i * 37 % 50) + ((i + k) % 7):.1f}' for i in range(self.twins)]
        return ("# TYPE toy_cpu gauge\n" + "\n".join(lines) + "\n").encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        toy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = toy.body()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def get(url: str, timeout: float = 120.0) -> bytes:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return gzip.decompress(raw) if resp.headers.get("Content-Encoding") == "gzip" else raw


def sync_counts(url: str) -> tuple[float, float]:
    """(rounds, seconds) of ``twin_sync_duration_seconds`` on the sidecar's /metrics."""
    count = total = math.nan
    for line in get(f"{url}/metrics").decode().splitlines():
        if line.startswith("twin_sync_duration_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("twin_sync_duration_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
    return count, total


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


async def _schema(action: str, name: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f'{action} SCHEMA {"IF EXISTS " if action == "DROP" else ""}"{name}"'
                           f'{" CASCADE" if action == "DROP" else ""}')
    finally:
        await conn.close()


def run(twins: int, shards: int, window_s: float) -> dict[str, Any]:
    import asyncio

    work = Path(tempfile.mkdtemp(prefix="twin-shards-"))
    schema = f"bench_shards_{uuid.uuid4().hex[:10]}"
    asyncio.run(_schema("CREATE", schema))
    toy = Toy(twins)
    prom = LocalPrometheus(prometheus_config({"toy": [f"127.0.0.1:{toy.port}"]}, scrape_interval="15s"),
                           startup_timeout=120).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        prom.wait_for_series(f"count(toy_cpu) >= {twins}", timeout=120)
        sep = "&" if "?" in PG_URL else "?"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_SIDECAR_")}
        env.update({"DATABASE_URL": f"{PG_URL}{sep}search_path={schema}", "TWIN_SIDECAR_REPLICA": "bench",
                    SHARD_COUNT_ENV: str(shards)})
        urls = []
        t0 = time.monotonic()
        for i in range(shards):
            port = free_port()
            urls.append(f"http://127.0.0.1:{port}")
            rules = work / f"rules-{i}.yaml"
            rules.write_text(yaml.safe_dump({
                "prometheus": {"url": prom.url, "timeout": "60s"}, "interval": "15s", "backfill": "0s",
                "server": {"listen": f"127.0.0.1:{port}"},
                "storage": {"model_state_interval": "1h"},
                "limits": {"max_twins": twins, "max_series": twins},
                "twins": [{"name": "toy", "discover": "toy_cpu", "name_labels": ["svc"],
                           "metrics": {"cpu_usage": "toy_cpu"}}],
            }))
            with open(work / f"shard-{i}.log", "ab") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "sidecar.app", "--config", str(rules)],
                                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              env={**env, SHARD_INDEX_ENV: f"bench-{i}"}))
        ready_s: list[float] = [math.nan] * shards
        while any(math.isnan(r) for r in ready_s):
            for i, url in enumerate(urls):
                if math.isnan(ready_s[i]) and ready(url):
                    ready_s[i] = time.monotonic() - t0
                assert procs[i].poll() is None, (work / f"shard-{i}.log").read_text()[-2000:]
            assert time.monotonic() - t0 < 900, "not ready in 15 minutes"
            time.sleep(0.5)
        _log(f"{twins} twins / {shards} shards: ready after {', '.join(f'{r:.0f}' for r in ready_s)} s")
        time.sleep(2 * STEP)                       # a couple of rounds past the first
        c0 = [proc_cpu_s(p.pid) for p in procs]
        s0 = [sync_counts(u) for u in urls]
        c0b = [proc_cpu_s(p.pid) for p in procs]   # the scrape above is not the rounds' cost
        time.sleep(window_s)
        c1 = [proc_cpu_s(p.pid) for p in procs]
        s1 = [sync_counts(u) for u in urls]
        mem = [proc_mem_mb(p.pid) for p in procs]
        names: list[list[str]] = []
        for u in urls:
            listed = json.loads(get(f"{u}/api/v1/twins"))
            names.append([t["name"] for t in listed["twins"]])
        every = [n for ns in names for n in ns]
        rows = []
        for i in range(shards):
            rounds = s1[i][0] - s0[i][0]
            rows.append({
                "shard": i, "twins": len(names[i]), "ready_s": round(ready_s[i], 1), "rounds": rounds,
                "cpu_per_round_s": (c1[i] - c0b[i]) / rounds if rounds > 0 else math.nan,
                "round_wall_s": (s1[i][1] - s0[i][1]) / rounds if rounds > 0 else math.nan,
                "rss_mb": round(mem[i][0]), "peak_rss_mb": round(mem[i][1]),
                "metrics_scrape_cpu_s": round(c0b[i] - c0[i], 2)})
        stop0 = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
        stop_s = time.monotonic() - stop0
        saved, unsaved = [], []
        for i in range(shards):
            recs = [json.loads(line) for line in (work / f"shard-{i}.log").read_text().splitlines()
                    if line.startswith("{")]
            saved.append(sum(r.get("twins", 0) for r in recs if r.get("msg") == "model state saved"))
            unsaved.append(sum(r.get("unsaved", 0) for r in recs if r.get("msg", "").startswith(
                "model state save incomplete")))
        result = {
            "twins": twins, "shards": shards, "window_s": window_s, "rows": rows,
            "every_twin_once": len(every) == len(set(every)) == twins,
            "twins_listed": len(every), "distinct": len(set(every)),
            "stop_s": round(stop_s, 1), "exit_codes": codes,
            "shutdown_models_saved": saved, "shutdown_models_unsaved": unsaved,
            "prometheus_rss_mb": round(proc_mem_mb(prom.proc.pid)[0]) if prom.proc is not None else None,
            "load_avg": os.getloadavg(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        _log(json.dumps(result))
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        prom.stop()
        toy.server.shutdown()
        asyncio.run(_schema("DROP", schema))
        shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict[str, Any]) -> str:
    out = [f"# {r['twins']:,} twins over {r['shards']} shards "
           f"({r['date']}, {r['machine']}, load {r['load_avg'][0]:.1f})",
           "", "One metric per twin (a shared query), 15 s interval, one PostgreSQL, one Prometheus. "
           f"Every twin on exactly one shard: **{r['every_twin_once']}** ({r['distinct']:,} distinct of "
           f"{r['twins_listed']:,} listed). SIGTERM to exit, all shards at once: {r['stop_s']} s, exit codes "
           f"{r['exit_codes']}; twins' models saved at shutdown {r['shutdown_models_saved']}, left to the last "
           f"periodic save (the 15 s shutdown save's deadline passed) {r['shutdown_models_unsaved']}.", "",
           "| shard | twins | ready after | CPU per round | round wall | RSS | peak RSS |",
           "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        out.append(f"| {row['shard']} | {row['twins']:,} | {row['ready_s']:.0f} s | {row['cpu_per_round_s']:.2f} s | "
                   f"{row['round_wall_s']:.2f} s | {row['rss_mb']:,} MB | {row['peak_rss_mb']:,} MB |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twins", type=int, default=30000)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--window-s", type=float, default=60.0)
    a = ap.parse_args()
    r = run(a.twins, a.shards, a.window_s)
    out = HERE / "results" / f"shards-{a.twins}x{a.shards}"
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

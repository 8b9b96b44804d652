"""``twin-sidecar demo``: the product's main job, for real, on one machine.

Starts the demo service (``sidecar.demo.service``, its own process, driving
its own changing traffic), a real Prometheus scraping it and the sidecar,
and the sidecar itself pointed at that Prometheus, all on free loopback ports
with their files in one temporary directory. Prints what to open, then every
``table_every_s`` a compact table read from the sidecar's own API and
/metrics: health, forecasts with their bounds, time to a limit, and the
standing what-if scenarios. Ctrl-C stops everything and removes the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..app import Service, start_service
from ..config import load_config
from ..logs import setup_logging
from .prometheus import INSTALL_HINT, LocalPrometheus, free_port, prometheus_available, prometheus_config

RULES = Path(__file__).with_name("rules.yaml")
MAIN_TWIN = "demo-api"


def run_demo(*, duration_s: float | None = None, table_every_s: float = 15.0, out: TextIO | None = None,
             log_format: str = "text") -> int:
    """Run the demo until Ctrl-C (or for ``duration_s``); 0 when it ran and cleaned up, 1 if it could not."""
    stream = out or sys.stdout
    if not prometheus_available():
        print(f"The demo needs a real Prometheus and none was found at /usr/bin/prometheus.\n"
              f"Install it with:\n\n    {INSTALL_HINT}\n", file=stream)
        return 1
    return asyncio.run(_demo(duration_s, table_every_s, stream, log_format))


async def _demo(duration_s: float | None, table_every_s: float, out: TextIO, log_format: str) -> int:
    setup_logging(log_format, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="twin-demo-"))
    demo_port, sidecar_port = free_port(), free_port()
    demo_proc: subprocess.Popen[bytes] | None = None
    prom: LocalPrometheus | None = None
    service: Service | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with open(workdir / "demo-service.log", "wb") as log:
            demo_proc = subprocess.Popen([sys.executable, "-m", "sidecar.demo.service", "--port", str(demo_port)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        await _wait_http(f"http://127.0.0.1:{demo_port}/healthz", demo_proc)
        prom = LocalPrometheus(prometheus_config(
            {"demo": [f"127.0.0.1:{demo_port}"], "twin-sidecar": [f"127.0.0.1:{sidecar_port}"]},
            scrape_interval="2s"))
        await asyncio.to_thread(prom.start)
        rules = yaml.safe_load(RULES.read_text())
        rules["prometheus"]["url"] = prom.url
        rules["server"]["listen"] = f"127.0.0.1:{sidecar_port}"
        rules["storage"]["path"] = str(workdir / "twin-sidecar.db")
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config = load_config(workdir / "rules.yaml")
        service = await start_service(config)
        _banner(out, prom.url, service.url, demo_port, workdir)
        await _show(service, prom.url, out, stop, duration_s, table_every_s)
        return 0
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"demo failed: {exc}", file=out)
        return 1
    finally:
        print("\nstopping the demo ...", file=out, flush=True)
        if service is not None:
            await service.shutdown()
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        if demo_proc is not None and demo_proc.poll() is None:
            demo_proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(demo_proc.wait, 10)
            except subprocess.TimeoutExpired:
                demo_proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print("stopped; temporary files removed.", file=out, flush=True)


async def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the demo service exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:g}s")


def _graph(prom_url: str, *exprs: str) -> str:
    params: dict[str, str] = {}
    for i, e in enumerate(exprs):
        params.update({f"g{i}.expr": e, f"g{i}.tab": "0", f"g{i}.range_input": "30m"})
    return f"{prom_url}/graph?{urllib.parse.urlencode(params)}"


def _banner(out: TextIO, prom_url: str, sidecar_url: str, demo_port: int, workdir: Path) -> None:
    cpu = _graph(prom_url, 'twin_forecast{twin="demo-api",metric="cpu_usage"}',
                 '100 * rate(process_cpu_seconds_total{job="demo"}[30s])')
    lines = [
        "",
        "Digital Twin Sidecar demo: a real service, a real Prometheus, and the sidecar — all on this machine.",
        "",
        f"  demo service       http://127.0.0.1:{demo_port}/metrics   (traffic follows a wave, 3x spike every 5 min)",
        f"  Prometheus         {prom_url}   (scrapes the demo service and the sidecar every 2 s)",
        f"  sidecar /metrics   {sidecar_url}/metrics",
        f"  sidecar API        {sidecar_url}/api/v1/twins/{MAIN_TWIN}",
        f"  OpenAPI            {sidecar_url}/api/v1/openapi.json",
        "",
        "Open in a browser (Prometheus graphs of what the sidecar exports):",
        f"  CPU: actual vs forecast  {cpu}",
        f"  health score             {_graph(prom_url, 'twin_health_score')}",
        f"  time to memory limit     {_graph(prom_url, 'twin_breach_eta_seconds')}",
        "",
        "What to look at: forecasts need a minute of data to warm up; then watch the 1m/5m forecasts follow",
        "the traffic wave, memory's time-to-limit shrink as the cache grows (it is flushed every 8 min),",
        "and health and P(fail) move during a spike. Ctrl-C stops everything.",
        f"(files: {workdir})",
        "",
    ]
    print("\n".join(lines), file=out, flush=True)


async def _show(service: Service, prom_url: str, out: TextIO, stop: asyncio.Event, duration_s: float | None,
                every_s: float) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=service.url, timeout=5.0) as api:
        while not stop.is_set():
            wait = every_s
            if duration_s is not None:
                left = duration_s - (time.monotonic() - started)
                if left <= 0:
                    return
                wait = min(wait, left)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            try:
                print(await _table(api), file=out, flush=True)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                print(f"(could not read the sidecar: {exc})", file=out, flush=True)


def _fmt(v: Any, width: int = 8, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—".rjust(width)
    return f"{float(v):.{digits}f}".rjust(width)


def _eta(v: Any) -> str:
    if v is None:
        return "—"
    s = float(v)
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


async def _table(api: httpx.AsyncClient) -> str:
    """A compact view of the main twin, from the sidecar's own API and /metrics."""
    status = (await api.get(f"/api/v1/twins/{MAIN_TWIN}")).raise_for_status().json()
    twins = (await api.get("/api/v1/twins")).raise_for_status().json()
    sims: dict[str, dict[str, float]] = {}
    metrics_text = (await api.get("/metrics")).raise_for_status().text
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name in ("twin_simulation_failure_probability", "twin_simulation_breaking_multiplier",
                        "twin_simulation_fit_trustworthy"):
            for s in fam.samples:
                if s.labels.get("twin") == MAIN_TWIN:
                    sims.setdefault(s.labels.get("scenario", ""), {})[fam.name] = s.value
    preds = status.get("state_predictions") or []
    horizons = [p["horizon_seconds"] for p in preds]
    hz = [f"{int(h // 60)}m" if h >= 60 else f"{int(h)}s" for h in horizons]
    now = time.strftime("%H:%M:%S")
    n_twins = len(twins) if isinstance(twins, list) else len(twins.get("twins", []))
    lines = [f"{now}  {MAIN_TWIN}: health {status['health_score']:.1f} ({status['health_status']}), "
             f"drift {'YES' if status['drift_detected'] else 'no'}, "
             f"{len(status.get('divergence_alerts') or [])} divergence alert(s); {n_twins} twin(s) in all"]
    header = f"  {'metric':<20}{'now':>8}{'expected':>9}" + "".join(f"{'fc ' + h:>22}" for h in hz) + \
             f"{'severity':>10}  time to limit"
    lines.append(header)
    for name, m in sorted(status.get("metrics", {}).items()):
        row = f"  {name:<20}{_fmt(m.get('value'))}{_fmt(m.get('expected'), 9)}"
        for p in preds:
            f = (p.get("metrics") or {}).get(name) or {}
            cell = f"{_fmt(f.get('predicted'), 0)} [{_fmt(f.get('lower'), 0)}–{_fmt(f.get('upper'), 0)}]"
            row += cell.rjust(22)
        row += f"{m.get('severity', ''):>10}  {_eta(m.get('breach_eta_seconds'))}"
        lines.append(row)
    others = [t for t in (twins.get("twins", []) if isinstance(twins, dict) else twins)
              if t.get("name") != MAIN_TWIN]
    for t in others:
        lines.append(f"  twin {t['name']}: health {t['health_score']:.1f} ({t['health_status']}), "
                     f"drift {'YES' if t['drift_detected'] else 'no'}, {t['active_alerts']} alert(s)")
    lines.extend(scenario_lines(sims))
    return "\n".join(lines) + "\n"


def scenario_lines(sims: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per standing scenario from its exported gauges; a probability from an untrusted fit says so."""
    lines = []
    for scenario, vals in sorted(sims.items()):
        p = vals.get("twin_simulation_failure_probability")
        mult = vals.get("twin_simulation_breaking_multiplier")
        text = f"  what-if {scenario}: P(fail) {p:.2f}" if p is not None else f"  what-if {scenario}:"
        if mult is not None:
            text += f", breaks at {mult:.1f}x today's traffic"
        if vals.get("twin_simulation_fit_trustworthy") == 0.0:
            text += " (capacity fit not trustworthy yet: a guess)"
        lines.append(text)
    return lines

"""``twin-sidecar demo``: the product's main job, for real, on one machine.

Starts the demo service (``sidecar.demo.service``, its own process, driving
its own changing traffic), a real Prometheus scraping it and the sidecar,
and the sidecar itself pointed at that Prometheus, all on free loopback ports
with their files in one temporary directory. Prints what to open, then every
``table_every_s`` a compact table read from the sidecar's own API and
/metrics: health, forecasts with their bounds, time to a limit, and the
standing what-if scenarios. Ctrl-C stops everything and removes the files.

The table says no more than the sidecar knows: each metric is printed with
the precision its limit needs (the error rate as a percentage with two
decimals: against a 5 % limit, 0.0 says nothing), health is cut, not rounded,
to one decimal (49.96 is critical and reads 49.9, never 50.0), and a what-if
result from a capacity fit the sidecar does not trust shows no probability
or breaking point, only why the fit is untrusted. It fits in 120 columns.
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
import textwrap
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ..app import Service, start_service
from ..config import load_config
from ..logs import setup_logging
from ..units import horizon_label
from .prometheus import INSTALL_HINT, LocalPrometheus, free_port, prometheus_available, prometheus_config

RULES = Path(__file__).with_name("rules.yaml")
MAIN_TWIN = "demo-api"


class _Out:
    """The demo's output. Once its reader has gone (``twin-sidecar demo | head``: a closed pipe) lines are
    dropped and ``gone`` is set, so the demo stops and still stops everything it started."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.gone = asyncio.Event()

    def say(self, text: str) -> None:
        if self.gone.is_set():
            return
        try:
            print(text, file=self.stream, flush=True)
        except (BrokenPipeError, ValueError):     # ValueError: the stream was closed
            self.gone.set()


def run_demo(*, duration_s: float | None = None, table_every_s: float = 15.0, out: TextIO | None = None,
             log_format: str = "text") -> int:
    """Run the demo until Ctrl-C (or for ``duration_s``); 0 when it ran and cleaned up, 1 if it could not."""
    said = _Out(out or sys.stdout)
    if not prometheus_available():
        said.say(f"The demo needs a real Prometheus and none was found at /usr/bin/prometheus.\n"
                 f"Install it with:\n\n    {INSTALL_HINT}\n")
        return 1
    rc = asyncio.run(_demo(duration_s, table_every_s, said, log_format))
    if said.gone.is_set():      # everything is stopped: the CLI's way out for a closed stdout
        raise BrokenPipeError("the demo's output was closed")
    return rc


async def _demo(duration_s: float | None, table_every_s: float, out: _Out, log_format: str) -> int:
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
    reader_gone = asyncio.create_task(out.gone.wait())
    reader_gone.add_done_callback(lambda _: stop.set())
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
        out.say(f"demo failed: {exc}")
        return 1
    finally:
        reader_gone.cancel()
        out.say("\nstopping the demo ...")
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
        out.say("stopped; temporary files removed.")


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


def _banner(out: _Out, prom_url: str, sidecar_url: str, demo_port: int, workdir: Path) -> None:
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
    out.say("\n".join(lines))


async def _show(service: Service, prom_url: str, out: _Out, stop: asyncio.Event, duration_s: float | None,
                every_s: float) -> None:
    started = time.monotonic()
    scenarios = [(sc.name, dict(sc.scenario)) for sc in service.config.scenarios if sc.twin in (MAIN_TWIN, "all")]
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
                out.say(await _table(api, scenarios))
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                out.say(f"(could not read the sidecar: {exc})")


#: Widest a table line may be.
TABLE_WIDTH = 120


@dataclass(frozen=True, slots=True)
class _Units:
    """How one metric's numbers are printed: ``scale`` times the value, ``digits`` decimals."""

    scale: float = 1.0
    digits: int = 1
    suffix: str = ""

    def __call__(self, v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "—"
        return f"{float(v) * self.scale:.{self.digits}f}"


def units_for(metric: str, limit: Any) -> _Units:
    """The error rate as a percentage with 2 decimals; any other metric with enough decimals to show its limit to
    3 significant digits (1 at least: 60 -> 1, 0.05 -> 4), or 1 without a limit."""
    if metric == "error_rate":
        return _Units(scale=100.0, digits=2, suffix=" %")
    if isinstance(limit, int | float) and math.isfinite(limit) and limit > 0:
        return _Units(digits=int(min(max(2 - math.floor(math.log10(limit)), 1), 6)))
    return _Units()


def health_text(score: float) -> str:
    """One decimal, cut rather than rounded, so the number never crosses the band it is in: 49.96 (critical,
    below 50) reads 49.9, not 50.0."""
    return f"{math.floor(float(score) * 10.0) / 10.0:.1f}"


def _eta(v: Any) -> str:
    if v is None:
        return "—"
    s = float(v)
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


async def _table(api: httpx.AsyncClient, scenarios: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> str:
    """A compact view of the main twin, from the sidecar's own API and /metrics."""
    status = (await api.get(f"/api/v1/twins/{MAIN_TWIN}")).raise_for_status().json()
    twins = (await api.get("/api/v1/twins")).raise_for_status().json()
    sims: dict[str, dict[str, float]] = {}
    metrics_text = (await api.get("/metrics")).raise_for_status().text
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name in _SCENARIO_FAMILIES:
            for sample in fam.samples:
                if sample.labels.get("twin") == MAIN_TWIN:
                    sims.setdefault(sample.labels.get("scenario", ""), {})[fam.name] = sample.value
    preds = status.get("state_predictions") or []
    hz = [horizon_label(p["horizon_seconds"]) for p in preds]
    now = time.strftime("%H:%M:%S")
    n_twins = len(twins) if isinstance(twins, list) else len(twins.get("twins", []))
    lines = [f"{now}  {MAIN_TWIN}: health {health_text(status['health_score'])} ({status['health_status']}), "
             f"drift {'YES' if status['drift_detected'] else 'no'}, "
             f"{len(status.get('divergence_alerts') or [])} divergence alert(s); {n_twins} twin(s) in all"]
    rows = [["metric", "now", "expected", *(f"fc {h}" for h in hz), "severity", "to limit"]]
    for name, m in sorted(status.get("metrics", {}).items()):
        u = units_for(name, m.get("limit"))
        row = [name + u.suffix, u(m.get("value")), u(m.get("expected"))]
        for p in preds:
            f = (p.get("metrics") or {}).get(name) or {}
            lo, hi = u(f.get("lower")), u(f.get("upper"))
            row.append(f"{u(f.get('predicted'))} [{'—' if lo == hi == '—' else f'{lo}–{hi}'}]")
        rows.append([*row, str(m.get("severity", "")), _eta(m.get("breach_eta_seconds"))])
    lines += _columns(rows)
    others = [t for t in (twins.get("twins", []) if isinstance(twins, dict) else twins)
              if t.get("name") != MAIN_TWIN]
    for t in others:
        lines.append(f"  twin {t['name']}: health {health_text(t['health_score'])} ({t['health_status']}), "
                     f"drift {'YES' if t['drift_detected'] else 'no'}, {t['active_alerts']} alert(s)")
    for name, scenario in scenarios or [(k, {}) for k in sorted(sims)]:
        lines += textwrap.wrap(await _what_if(api, name, scenario, sims.get(name, {})), TABLE_WIDTH,
                               subsequent_indent=" " * 6, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


_SCENARIO_FAMILIES = ("twin_simulation_failure_probability", "twin_simulation_breaking_multiplier",
                      "twin_simulation_fit_trustworthy")


async def _what_if(api: httpx.AsyncClient, name: str, scenario: Mapping[str, Any], vals: Mapping[str, float]) -> str:
    """One standing scenario's line: its probability and breaking point only from a fit the sidecar trusts
    (``twin_simulation_fit_trustworthy`` 1, as the alert requires); otherwise why not, as the simulate
    route's ``model_fit.reason`` gives it; and no number at all before the scenario has a result."""
    p = vals.get("twin_simulation_failure_probability")
    mult = vals.get("twin_simulation_breaking_multiplier")
    if p is None:
        return f"  what-if {name}: no result yet (too little data, or the scenario has not run)"
    if vals.get("twin_simulation_fit_trustworthy") != 1.0:
        return f"  what-if {name}: P(fail) — (fit untrusted: {await _fit_reason(api, scenario)})"
    text = f"  what-if {name}: P(fail) {p:.2f}"
    return text + (f", breaks at {mult:.1f}x today's traffic" if mult is not None else "")


async def _fit_reason(api: httpx.AsyncClient, scenario: Mapping[str, Any]) -> str:
    """Why the capacity fit behind a scenario is not trusted, from the simulate route (it changes nothing)."""
    if not scenario:
        return "reason unknown"
    try:
        resp = await api.post(f"/api/v1/twins/{MAIN_TWIN}/simulate", json=dict(scenario))
        fit = resp.raise_for_status().json().get("model_fit") or {}
    except (httpx.HTTPError, ValueError):
        return "reason unavailable"
    return str(fit.get("reason") or "reason unknown")


def _columns(rows: list[list[str]]) -> list[str]:
    """Rows as aligned text columns: the first left-aligned, the rest right-aligned, the last left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1], strict=True)), r[-1]]
        out.append(("  " + "  ".join(cells)).rstrip())
    return out

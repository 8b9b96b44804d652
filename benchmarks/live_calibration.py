"""Calibration of the 90 % intervals on live data a real host produced: a node under a stress-ng schedule.

    python3 benchmarks/live_calibration.py collect --data-dir DIR --minutes 100   # wall-clock time
    python3 benchmarks/live_calibration.py score --data-dir DIR                   # a few minutes

``collect`` starts, all on 127.0.0.1, a real node exporter (cpu, meminfo, loadavg), the demo service
(``python3 -m sidecar.demo.service``, driving its own traffic) and a real Prometheus scraping both every
15 s with its TSDB in ``DIR/prometheus`` (kept), and runs a stress-ng schedule (at most one CPU worker;
memory held by one ``--vm-hang 0`` worker that touches its pages once and then sleeps): idle stretches,
CPU steps up and down, a slow ramp, memory steps taken and released, so the node's CPU %, memory % and
load1 have level shifts, ramps and idle drops. The schedule, as planned and as run, is written to
``DIR/schedule.json`` (rewritten after every step, so a collection still running can be scored).
Everything stops by itself after N minutes (the stress-ng runs carry their own ``--timeout``, and every
child is told to die with its parent).

``score`` starts Prometheus again on the same TSDB (no scraping), or uses the collection's own Prometheus
while it still runs, and for each query (node CPU %, memory %, load1 and the demo-api queries of
``sidecar/demo/rules.yaml``) runs ``twin-sidecar backtest --prometheus URL --query Q --start S --end E
--step 15s --json --score-from S+30min``: every sample is replayed, only forecasts made after the first
half hour are scored, each inside its metric's domain (``--bounds``, as the twin gives its bank). Writes
``benchmarks/results/live_calibration.json`` and ``.md``: per query and
horizon the coverage of the 90 % interval (goal 0.85-0.95), the scored count and MASE against the last value.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
NODE_EXPORTER_BIN = os.environ.get("NODE_EXPORTER_BIN", "/usr/bin/prometheus-node-exporter")
STRESS_BIN = os.environ.get("STRESS_NG_BIN", "stress-ng")
SCRAPE_INTERVAL_S = 15
WARMUP_S = 1800.0           # forecasts made in the first half hour are not scored

#: The schedule for a 100-minute collection, (minutes, kind, cpu load % of one worker, memory held); a
#: collection of N minutes runs it scaled by N/100. "ramp" goes from the first load to the second in steps.
TEMPLATE: tuple[tuple[float, str, tuple[int, ...], str | None], ...] = (
    (8, "idle", (), None),
    (8, "cpu", (10,), None),
    (10, "cpu", (60,), None),           # step up
    (6, "cpu", (5,), None),             # step down
    (6, "idle", (), None),
    (8, "mem", (0,), "500M"),           # memory step, then released
    (5, "idle", (), None),
    (15, "ramp", (10, 80), None),       # slow ramp
    (6, "cpu", (20,), None),            # sudden drop after the ramp
    (8, "mem", (30,), "900M"),          # memory and CPU together
    (6, "idle", (), None),
    (7, "cpu", (45,), None),
    (7, "idle", (), None),
)
RAMP_STEP_S = 30.0


def node_queries() -> dict[str, str]:
    return {
        "node_cpu_percent": '100 * (1 - avg(rate(node_cpu_seconds_total{mode="idle"}[1m])))',
        "node_memory_percent": "100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)",
        "node_load1": "node_load1",
    }


#: each query's domain, as the twin gives its bank (a percentage 0-100, an error rate 0-1, else not below 0)
BOUNDS = {"node_cpu_percent": "0,100", "node_memory_percent": "0,100", "node_load1": "0,",
          "demo_cpu_usage": "0,100", "demo_memory_usage": "0,100", "demo_error_rate": "0,1"}


def demo_queries() -> dict[str, str]:
    """The demo-api twin's queries as sidecar/demo/rules.yaml has them today."""
    rules = yaml.safe_load((ROOT / "sidecar" / "demo" / "rules.yaml").read_text())
    for twin in rules.get("twins", []):
        if twin.get("name") == "demo-api":
            return {f"demo_{k}": " ".join(str(v).split()) for k, v in twin["metrics"].items()}
    raise SystemExit("no demo-api twin in sidecar/demo/rules.yaml")


# ----------------------------------------------------------------------------------------- the schedule
@dataclass(frozen=True)
class Step:
    offset_s: float          # from the start of the schedule
    duration_s: float
    segment: int             # index into the template
    kind: str
    cpu_load: int            # % of one worker (0: no CPU worker)
    vm_bytes: str | None     # memory held, stress-ng spelling

    def command(self) -> list[str] | None:
        """The stress-ng command line of this step, None when idle."""
        if self.cpu_load <= 0 and self.vm_bytes is None:
            return None
        cmd = [STRESS_BIN, "--quiet"]
        if self.cpu_load > 0:
            cmd += ["--cpu", "1", "--cpu-load", str(self.cpu_load)]
        if self.vm_bytes is not None:
            cmd += ["--vm", "1", "--vm-bytes", self.vm_bytes, "--vm-hang", "0"]
        # a safety net: it ends by itself a little after its step even if the collector is gone
        return [*cmd, "--timeout", f"{int(self.duration_s) + 20}s"]


def plan(total_s: float) -> list[Step]:
    """The template scaled to `total_s` seconds, ramps split into steps of about RAMP_STEP_S (scaled too)."""
    scale = total_s / (sum(m for m, *_ in TEMPLATE) * 60.0)
    steps: list[Step] = []
    t = 0.0
    for i, (minutes, kind, loads, vm) in enumerate(TEMPLATE):
        dur = minutes * 60.0 * scale
        if kind == "ramp":
            n = max(2, round(dur / (RAMP_STEP_S * max(scale, 0.1))))
            a, b = loads
            for k in range(n):
                steps.append(Step(t + k * dur / n, dur / n, i, kind, round(a + (b - a) * k / (n - 1)), vm))
        else:
            steps.append(Step(t, dur, i, kind, loads[0] if loads else 0, vm))
        t += dur
    return steps


# ----------------------------------------------------------------------------------------- processes
def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the collector dies (even by SIGKILL), and its own group."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    os.setsid()


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM to the process' own group (stress-ng forks workers), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start_prometheus(pdir: Path, jobs: dict[str, list[str]], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real Prometheus on a free loopback port, TSDB in pdir/data (kept), scraping `jobs` every 15 s."""
    (pdir / "data").mkdir(parents=True, exist_ok=True)
    cfg = {"global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                      "scrape_timeout": "10s"},
           "scrape_configs": [{"job_name": j, "static_configs": [{"targets": ts}]} for j, ts in jobs.items()]}
    (pdir / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for _ in range(5):
        port = free_port()
        proc = spawn([PROMETHEUS_BIN, f"--config.file={pdir / 'prometheus.yml'}",
                      f"--storage.tsdb.path={pdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                      "--storage.tsdb.retention.time=3650d", "--log.level=warn"], log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/-/ready", proc)
            return proc, url
        except RuntimeError:
            stop(proc)
    raise RuntimeError(f"Prometheus did not start; see {log}")


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
    return {"host": platform.node(), "nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": cpu, "mem_total_mib": mem_kb // 1024, "python": platform.python_version(),
            "kernel": platform.release()}


# ----------------------------------------------------------------------------------------- collect
def collect(data_dir: Path, minutes: float) -> int:
    if shutil.which(STRESS_BIN) is None:
        raise SystemExit(f"{STRESS_BIN} not found (apt-get install stress-ng)")
    data_dir.mkdir(parents=True, exist_ok=True)
    sched_path = data_dir / "schedule.json"
    if sched_path.exists():
        old = json.loads(sched_path.read_text())
        if old.get("ended_at") is None and _alive(old.get("collector_pid")):
            raise SystemExit(f"a collection is still running into {data_dir} (pid {old['collector_pid']})")
    total_s = minutes * 60.0
    steps = plan(total_s)
    procs: list[subprocess.Popen[bytes]] = []
    stress: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    record: dict[str, Any] = {}
    try:
        ne_port = free_port()
        node = spawn([NODE_EXPORTER_BIN, f"--web.listen-address=127.0.0.1:{ne_port}", "--collector.disable-defaults",
                      "--collector.cpu", "--collector.meminfo", "--collector.loadavg", "--log.level=warn"],
                     data_dir / "node_exporter.log")
        procs.append(node)
        wait_http(f"http://127.0.0.1:{ne_port}/metrics", node)
        demo_port = free_port()
        demo = spawn([sys.executable, "-m", "sidecar.demo.service", "--port", str(demo_port)],
                     data_dir / "demo_service.log")
        procs.append(demo)
        wait_http(f"http://127.0.0.1:{demo_port}/metrics", demo)
        prom, url = start_prometheus(data_dir / "prometheus",
                                     {"node": [f"127.0.0.1:{ne_port}"], "demo": [f"127.0.0.1:{demo_port}"]},
                                     data_dir / "prometheus.log")
        procs.append(prom)
        t0_wall, t0 = time.time(), time.monotonic()
        record = {
            "version": 1, "minutes": minutes, "scrape_interval_s": SCRAPE_INTERVAL_S,
            "started_at": t0_wall, "started_at_iso": iso(t0_wall),
            "planned_end": t0_wall + total_s, "planned_end_iso": iso(t0_wall + total_s),
            "ended_at": None, "ended_at_iso": None, "collector_pid": os.getpid(),
            "prometheus": {"url": url, "pid": prom.pid, "tsdb": "prometheus/data"},
            "node_exporter": f"127.0.0.1:{ne_port}", "demo_service": f"127.0.0.1:{demo_port}",
            "machine": machine(),
            "plan": [{"offset_s": round(s.offset_s, 1), "duration_s": round(s.duration_s, 1), "kind": s.kind,
                      "cpu_load": s.cpu_load, "vm_bytes": s.vm_bytes, "at": iso(t0_wall + s.offset_s)}
                     for s in steps],
            "ran": [],
        }
        _write(sched_path, record)
        print(f"collecting {minutes:g} min from {record['started_at_iso']} into {data_dir}; Prometheus {url}",
              flush=True)
        for s in steps:
            while not stopping and time.monotonic() - t0 < s.offset_s:
                time.sleep(min(1.0, s.offset_s - (time.monotonic() - t0)))
            if stopping:
                break
            stop(stress)
            stress = None
            cmd = s.command()
            if cmd is not None:
                stress = spawn(cmd, data_dir / "stress.log")
            now = time.time()
            record["ran"].append({"at": now, "at_iso": iso(now), "kind": s.kind, "cpu_load": s.cpu_load,
                                  "vm_bytes": s.vm_bytes, "command": cmd})
            _write(sched_path, record)
            print(f"{iso(now)} {s.kind:5s} cpu {s.cpu_load:3d}% mem {s.vm_bytes or '-'}", flush=True)
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args!r} exited with {p.returncode}")
        while not stopping and time.monotonic() - t0 < total_s:
            time.sleep(min(1.0, total_s - (time.monotonic() - t0)))
    finally:
        stop(stress)
        for p in reversed(procs):
            stop(p)
        if record:
            end = time.time()
            record.update(ended_at=end, ended_at_iso=iso(end), interrupted=stopping)
            _write(sched_path, record)
            print(f"collection ended {record['ended_at_iso']}", flush=True)
    return 0


def _write(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------- score
@contextlib.contextmanager
def prometheus_for(data_dir: Path, record: dict[str, Any], url: str | None) -> Iterator[str]:
    """The collection's own Prometheus while it runs, else a new one on the same TSDB without scraping."""
    if url:
        yield url
        return
    if record.get("ended_at") is None and _alive(record.get("collector_pid")):
        yield record["prometheus"]["url"]
        return
    pdir = data_dir / "prometheus"
    log = data_dir / "prometheus-score.log"
    proc, purl = start_prometheus(pdir, {}, log)
    try:
        yield purl
    finally:
        stop(proc)


def backtest(url: str, query: str, start: float, end: float, score_from: float, bounds: str) -> dict[str, Any]:
    exe = shutil.which("twin-sidecar")
    cmd = [exe] if exe else [sys.executable, "-m", "sidecar.cli"]
    cmd += ["backtest", "--prometheus", url, "--query", query, "--start", repr(start), "--end", repr(end),
            "--step", f"{SCRAPE_INTERVAL_S}s", "--json", "--score-from", repr(score_from), f"--bounds={bounds}"]
    t0 = time.monotonic()
    cpu0 = _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return {"error": (out.stderr.strip() or out.stdout.strip())[-500:], "command": cmd}
    rep: dict[str, Any] = json.loads(out.stdout)
    rep["wall_s"] = round(time.monotonic() - t0, 2)
    rep["cpu_s"] = round(_children_cpu() - cpu0, 2)
    return rep


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished children, from /proc/self/stat (cutime, cstime)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def score(data_dir: Path, url: str | None, out: Path, warmup_s: float = WARMUP_S) -> int:
    record = json.loads((data_dir / "schedule.json").read_text())
    start = float(record["started_at"])
    end = float(record["ended_at"] or time.time())
    score_from = start + warmup_s
    queries = {**node_queries(), **demo_queries()}
    results: dict[str, Any] = {}
    with prometheus_for(data_dir, record, url) as purl:
        for name, q in queries.items():
            print(f"backtest {name}: {q}", file=sys.stderr, flush=True)
            bounds = BOUNDS.get(name, "0,")
            results[name] = {"query": q, "bounds": bounds, **backtest(purl, q, start, end, score_from, bounds)}
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    res = {
        "benchmark": "live_calibration", "measured_at": iso(time.time()), "machine": machine(),
        "git_commit": git.stdout.strip(), "data_dir": str(data_dir),
        "collection": {k: record.get(k) for k in ("started_at_iso", "ended_at_iso", "planned_end_iso", "minutes")},
        "start": start, "end": end, "score_from": score_from, "warmup_minutes": warmup_s / 60,
        "collected_minutes": round((end - start) / 60, 1),
        "complete": record.get("ended_at") is not None and not record.get("interrupted", False),
        "goal_coverage": [0.85, 0.95], "schedule": record.get("plan"), "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, allow_nan=False) + "\n")
    md = render(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _f(x: object, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, int | float) else "n/a"


def _hz(s: float) -> str:
    return f"{int(s // 60)} min" if s % 60 == 0 else f"{s:g} s"


def consistent(h: dict[str, Any], lo: float, hi: float) -> bool | None:
    """Whether the coverage's own 90 % interval (the backtest's block bootstrap) reaches the goal's range: the
    data cannot tell such a query's intervals from ones calibrated within the goal. None without an interval."""
    a, b = h.get("coverage_low"), h.get("coverage_high")
    if not (isinstance(a, float) and isinstance(b, float)):
        return None
    return a <= hi and b >= lo


def pooled(results: dict[str, Any], lo: float, hi: float) -> dict[float, tuple[int, float, int, int, int]]:
    """Per horizon: forecasts scored, of them inside the interval, queries within the goal, queries scored,
    queries whose coverage interval reaches the goal."""
    out: dict[float, tuple[int, float, int, int, int]] = {}
    for r in results.values():
        for h in r.get("horizons", []):
            n, inside, good, total, fits = out.get(h["horizon_s"], (0, 0.0, 0, 0, 0))
            cov = h["coverage"]
            if h["scored"] and isinstance(cov, float):
                n, inside, total = n + h["scored"], inside + cov * h["scored"], total + 1
                good += lo <= cov <= hi
                fits += bool(consistent(h, lo, hi))
            out[h["horizon_s"]] = (n, inside, good, total, fits)
    return out


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    c = res["collection"]
    lines = [
        "# Live calibration of the 90 % intervals (node under stress-ng, demo service)",
        "",
        f"Measured {res['measured_at']} on {m['host']} ({m['nproc']} CPUs, {m['cpu_model']}, "
        f"{m['mem_total_mib']} MiB, Python {m['python']}), commit {res['git_commit']}, by "
        "`python3 benchmarks/live_calibration.py score`.",
        f"Data: {res['collected_minutes']} min collected from {c['started_at_iso']} "
        f"({'complete' if res['complete'] else 'partial: collection still running or interrupted'}; "
        f"planned {c['minutes']} min), scraped every {SCRAPE_INTERVAL_S} s, replayed at step 15 s; only forecasts "
        f"made from {iso(res['score_from'])} (start + {res.get('warmup_minutes', 30):g} min) are scored. "
        "Goal: coverage 0.85-0.95.",
        "",
        "Each coverage comes with its 90 % interval from the backtest (Jeffreys' for about two independent outcomes "
        "per horizon of scored time: forecasts made 15 s apart share most of their future, so a 60-minute horizon "
        "scored for 40 minutes holds about one). \"consistent\": that interval reaches 0.85-0.95.",
        "",
        "| query | horizon | scored | ~independent | coverage | its 90 % interval | in goal | consistent | "
        "MASE/last | mean width |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lo, hi = res["goal_coverage"]
    for name, r in res["results"].items():
        if "error" in r:
            lines.append(f"| {name} | - | - | - | error: {r['error'].splitlines()[-1][:120]} | | | | | |")
            continue
        for h in r["horizons"]:
            cov = h["coverage"]
            ok = "yes" if isinstance(cov, float) and lo <= cov <= hi else ("n/a" if cov is None else "no")
            fit = {True: "yes", False: "no", None: "n/a"}[consistent(h, lo, hi)]
            band = (f"{h['coverage_low']:.2f}-{h['coverage_high']:.2f}"
                    if isinstance(h.get("coverage_low"), float) else "n/a")
            lines.append(f"| {name} | {_hz(h['horizon_s'])} | {h['scored']} | {_f(h.get('independent'), '.1f')} | "
                         f"{_f(cov, '.3f')} | {band} | {ok} | {fit} | "
                         f"{_f(h['mase_last'], '.3f')} | {_f(h['mean_width'], '.4g')} |")
    lines += ["", "All queries pooled (coverage weighted by the scored count):", "",
              "| horizon | scored | coverage | queries in goal | queries consistent with it |", "|---|---|---|---|---|"]
    for hz, (n, inside, good, total, fits) in sorted(pooled(res["results"], lo, hi).items()):
        lines.append(f"| {_hz(hz)} | {n} | {_f(inside / n if n else None, '.3f')} | {good} of {total} | "
                     f"{fits} of {total} |")
    lines += ["", "Queries:", ""]
    lines += [f"* `{name}`: `{r['query']}` (bounds {r.get('bounds', 'none')})" for name, r in res["results"].items()]
    lines += ["", "Schedule (stress-ng, at most one CPU worker; offsets from the start):", "",
              "| from | minutes | kind | CPU load of one worker | memory held |", "|---|---|---|---|---|"]
    rows: list[tuple[float, float, str, str, str]] = []
    for s in res["schedule"] or []:
        if s["kind"] == "ramp" and rows and rows[-1][2] == "ramp":
            o, d, k, a, v = rows[-1]
            rows[-1] = (o, d + s["duration_s"], k, f"{a.split(' ')[0]} -> {s['cpu_load']} %", v)
        else:
            rows.append((s["offset_s"], s["duration_s"], s["kind"], f"{s['cpu_load']} %", s["vm_bytes"] or "-"))
    lines += [f"| {o / 60:.1f} min | {d / 60:.1f} | {k} | {a} | {v} |" for o, d, k, a, v in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="run node exporter, demo service, Prometheus and the stress schedule")
    c.add_argument("--data-dir", required=True, type=Path)
    c.add_argument("--minutes", required=True, type=float)
    s = sub.add_parser("score", help="backtest every query on the collected data")
    s.add_argument("--data-dir", required=True, type=Path)
    s.add_argument("--prometheus", help="use this Prometheus (default: the collection's, or a new one on its TSDB)")
    s.add_argument("--warmup-minutes", type=float, default=WARMUP_S / 60,
                   help="score forecasts made this long after the start (default %(default)g)")
    s.add_argument("--output", type=Path, default=RESULTS / "live_calibration",
                   help="results path without suffix (default %(default)s)")
    a = p.parse_args(argv)
    if a.cmd == "collect":
        return collect(a.data_dir.resolve(), a.minutes)
    return score(a.data_dir.resolve(), a.prometheus, a.output, a.warmup_minutes * 60)


if __name__ == "__main__":
    sys.exit(main())

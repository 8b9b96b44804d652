"""Test-only helpers: a real Prometheus and a scrape target whose values a test sets.

Not used by the service. Integration tests (ours and other helpers') start a
real ``/usr/bin/prometheus`` on a free loopback port with a given scrape
config in a temporary directory, rather than mocking its HTTP API: what the
sidecar must survive is what a real Prometheus answers.

Example::

    with MetricsTarget() as target, PrometheusServer(scrape_targets=[target.address]) as prom:
        target.set("demo_temperature", 21.5, room="lab")
        prom.wait_for_series('demo_temperature{room="lab"}')
        ...  # point the code under test at prom.url

``PrometheusServer`` can also preload history (``history=`` OpenMetrics text,
written as TSDB blocks with ``promtool``), so a backfill can be tested
without waiting an hour.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
PROMTOOL_BIN = os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")


def free_port() -> int:
    """A loopback port nobody listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_available() -> bool:
    return os.access(PROMETHEUS_BIN, os.X_OK)


class PrometheusServer:
    """A real Prometheus on ``127.0.0.1:<free port>`` with its own temporary storage.

    ``scrape_targets`` (``host:port`` strings) become one job (``job_name``)
    scraped every ``scrape_interval``; ``scrape_configs`` replaces that with
    full scrape configs. ``history`` is OpenMetrics text (ending in ``# EOF``)
    loaded as TSDB blocks before start.
    """

    def __init__(self, *, scrape_targets: Sequence[str] = (), job_name: str = "test",
                 scrape_configs: Sequence[Mapping[str, Any]] | None = None, scrape_interval: str = "1s",
                 history: str | None = None, startup_timeout: float = 30.0) -> None:
        self.scrape_interval = scrape_interval
        default: list[Mapping[str, Any]] = [
            {"job_name": job_name, "static_configs": [{"targets": list(scrape_targets)}]}]
        self.scrape_configs: list[Mapping[str, Any]] = (
            list(scrape_configs) if scrape_configs is not None else default if scrape_targets else [])
        self.history = history
        self.startup_timeout = startup_timeout
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PrometheusServer:
        if not prometheus_available():
            raise RuntimeError(f"{PROMETHEUS_BIN} not found; install it with: apt-get install -y prometheus")
        self.dir = Path(tempfile.mkdtemp(prefix="twin-prom-"))
        (self.dir / "data").mkdir()
        self._write_config()
        if self.history is not None:
            self._load_history(self.history)
        last_error = ""
        for _ in range(5):                    # a free port can be taken between probe and bind: retry
            self.port = free_port()
            log = open(self.dir / "prometheus.log", "wb")   # noqa: SIM115 (kept open for the process)
            self.proc = subprocess.Popen(
                [PROMETHEUS_BIN, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--web.enable-lifecycle", "--storage.tsdb.retention.time=1d", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            try:
                self._wait_ready()
                return self
            except RuntimeError as exc:
                last_error = str(exc)
                self._kill()
        self.stop()
        raise RuntimeError(f"Prometheus did not start: {last_error}")

    def stop(self) -> None:
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, n: int = 20) -> str:
        if self.dir is None or not (self.dir / "prometheus.log").exists():
            return ""
        return "\n".join((self.dir / "prometheus.log").read_text(errors="replace").splitlines()[-n:])

    # configuration -----------------------------------------------------------------------------

    def _write_config(self) -> None:
        assert self.dir is not None
        every = self.scrape_interval
        cfg = {"global": {"scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every},
               "scrape_configs": [dict(c) for c in self.scrape_configs]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    def set_scrape_targets(self, targets: Sequence[str], *, job_name: str = "test") -> None:
        """Replace the scrape targets and reload (targets coming and going, as in Kubernetes)."""
        self.scrape_configs = ([{"job_name": job_name, "static_configs": [{"targets": list(targets)}]}]
                               if targets else [])
        self._write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def _load_history(self, openmetrics: str) -> None:
        assert self.dir is not None
        src = self.dir / "history.om"
        src.write_text(openmetrics if openmetrics.rstrip().endswith("# EOF") else openmetrics + "# EOF\n")
        out = subprocess.run([PROMTOOL_BIN, "tsdb", "create-blocks-from", "openmetrics", str(src),
                              str(self.dir / "data")], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"promtool could not load the history: {out.stderr.strip() or out.stdout}")

    # waiting -----------------------------------------------------------------------------------

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"not ready after {self.startup_timeout}s: {self.log_tail()}")

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query (for assertions in tests): the raw ``data.result`` list."""
        params = {"query": promql, **({"time": repr(at)} if at is not None else {})}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, *, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``promql`` returns at least ``count`` series (scrapes take a moment)."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if len(result) >= count:
                return result
            time.sleep(0.2)
        raise TimeoutError(f"{promql!r} returned {len(result)} series, wanted {count}, after {timeout}s")


class MetricsTarget:
    """A scrape target on a free loopback port whose gauge values the test sets.

    Runs in a thread (no event loop needed), serves ``/metrics`` in the text
    format. ``fail_with(503)`` makes scrapes fail, ``set_raw`` serves any body.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._raw: str | None = None
        self._status = 200
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)

    def remove(self, name: str, **labels: str) -> None:
        with self._lock:
            self._values.pop((name, tuple(sorted(labels.items()))), None)

    def set_raw(self, body: str | None) -> None:
        with self._lock:
            self._raw = body

    def fail_with(self, status: int) -> None:
        with self._lock:
            self._status = status

    def render(self) -> tuple[int, str]:
        with self._lock:
            if self._raw is not None:
                return self._status, self._raw
            names = sorted({n for n, _ in self._values})
            lines: list[str] = []
            for name in names:
                lines.append(f"# TYPE {name} gauge")
                for (n, labels), v in sorted(self._values.items()):
                    if n != name:
                        continue
                    lbl = ",".join(f'{k}="{_escape(val)}"' for k, val in labels)
                    lines.append(f"{name}{{{lbl}}} {_num(v)}" if lbl else f"{name} {_num(v)}")
            return self._status, "\n".join(lines) + "\n"

    def start(self) -> MetricsTarget:
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = target.render()
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-target", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MetricsTarget:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _num(v: float) -> str:
    """The exposition format's spelling of non-finite values."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@contextlib.contextmanager
def prometheus_with_target() -> Iterator[tuple[PrometheusServer, MetricsTarget]]:
    """The common pair: one settable target scraped every second by a real Prometheus."""
    with MetricsTarget() as target, PrometheusServer(scrape_targets=[target.address]) as prom:
        yield prom, target


def openmetrics_history(series: Mapping[str, Sequence[tuple[float, float]]],
                        *, help_type: str = "gauge") -> str:
    """OpenMetrics text for ``PrometheusServer(history=...)``: ``{'name{l="v"}': [(unix_s, value), ...]}``."""
    families: dict[str, list[str]] = {}
    for selector, points in series.items():
        name = selector.split("{", 1)[0]
        lines = families.setdefault(name, [])
        for ts, value in points:
            lines.append(f"{selector} {_num(value)} {ts:.3f}")
    out: list[str] = []
    for name, lines in families.items():
        out.append(f"# TYPE {name} {help_type}")
        out.extend(lines)
    out.append("# EOF")
    return "\n".join(out) + "\n"

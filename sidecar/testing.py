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
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .demo.prometheus import LocalPrometheus, LocalServer, free_port, prometheus_available, prometheus_config

PROMTOOL_BIN = os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")
ALERTMANAGER_BIN = os.environ.get("ALERTMANAGER_BIN", "/usr/bin/prometheus-alertmanager")

__all__ = ["AlertmanagerServer", "MetricsTarget", "PrometheusServer", "alertmanager_available", "free_port",
           "openmetrics_history", "prometheus_available", "prometheus_with_target"]


class PrometheusServer(LocalPrometheus):
    """A real Prometheus on ``127.0.0.1:<free port>`` with its own temporary storage.

    ``scrape_targets`` (``host:port`` strings) become one job (``job_name``)
    scraped every ``scrape_interval``; ``scrape_configs`` replaces that with
    full scrape configs. ``history`` is OpenMetrics text (ending in ``# EOF``)
    loaded as TSDB blocks with ``promtool`` before start. ``rules`` (a rule file's
    text) is evaluated every ``scrape_interval`` and its alerts go to ``alertmanagers``.
    """

    def __init__(self, *, scrape_targets: Sequence[str] = (), job_name: str = "test",
                 scrape_configs: Sequence[Mapping[str, Any]] | None = None, scrape_interval: str = "1s",
                 history: str | None = None, startup_timeout: float = 30.0, rules: str | None = None,
                 alertmanagers: Sequence[str] = ()) -> None:
        cfg = prometheus_config({job_name: list(scrape_targets)}, scrape_interval=scrape_interval,
                                rule_files=["rules.yaml"] if rules is not None else ())
        if scrape_configs is not None:
            cfg["scrape_configs"] = [dict(c) for c in scrape_configs]
        if alertmanagers:
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
        super().__init__(cfg, startup_timeout=startup_timeout,
                         files={"rules.yaml": rules} if rules is not None else None)
        self.scrape_interval = scrape_interval
        self.history = history

    def prepare(self) -> Path:
        fresh = self.dir is None
        d = super().prepare()
        if fresh and self.history is not None:
            self._load_history(self.history)
        return d

    def start(self) -> PrometheusServer:
        super().start()
        return self

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def set_scrape_targets(self, targets: Sequence[str], *, job_name: str = "test") -> None:
        """Replace the scrape targets and reload (targets coming and going, as in Kubernetes)."""
        self.reload(prometheus_config({job_name: list(targets)}, scrape_interval=self.scrape_interval))

    def _load_history(self, openmetrics: str) -> None:
        assert self.dir is not None
        src = self.dir / "history.om"
        src.write_text(openmetrics if openmetrics.rstrip().endswith("# EOF") else openmetrics + "# EOF\n")
        out = subprocess.run([PROMTOOL_BIN, "tsdb", "create-blocks-from", "openmetrics", str(src),
                              str(self.dir / "data")], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"promtool could not load the history: {out.stderr.strip() or out.stdout}")


def alertmanager_available() -> bool:
    return os.access(ALERTMANAGER_BIN, os.X_OK)


class AlertmanagerServer(LocalServer):
    """A real Alertmanager on a free loopback port with ``config``; clustering off (it would otherwise listen
    on 0.0.0.0:9094), state in the temporary directory. ``alerts()`` reads ``/api/v2/alerts``."""

    binary = ALERTMANAGER_BIN
    install_hint = "sudo apt-get install -y prometheus-alertmanager"
    log_name = "alertmanager.log"

    def __init__(self, config: Mapping[str, Any], *, startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.config = dict(config)

    def write_config(self) -> None:
        assert self.dir is not None
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(self.config, sort_keys=False))

    def command(self, d: Path) -> list[str]:
        return [self.binary, f"--config.file={d / 'alertmanager.yml'}", f"--storage.path={d / 'data'}",
                f"--web.listen-address={self.address}", "--cluster.listen-address=", "--log.level=warn"]

    def start(self) -> AlertmanagerServer:
        super().start()
        return self

    def __enter__(self) -> AlertmanagerServer:
        return self.start()


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


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0, poll: float = 0.05) -> None:
    """Wait until a sidecar started as a process answers ``/readyz`` with 200 (AssertionError if it exits)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sidecar exited early"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise TimeoutError("the sidecar never became ready")

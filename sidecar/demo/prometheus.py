"""A real Prometheus on loopback for the demo (and, through ``sidecar.testing``, for tests).

``prometheus_config`` writes the scrape config; ``LocalPrometheus`` runs
``/usr/bin/prometheus`` on a free 127.0.0.1 port with its storage in a
temporary directory and removes it all on ``stop``.

Example::

    cfg = prometheus_config({"demo": ["127.0.0.1:8081"], "twin-sidecar": ["127.0.0.1:9464"]})
    with LocalPrometheus(cfg) as prom:
        print(prom.url)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
INSTALL_HINT = "sudo apt-get install -y prometheus"


def free_port() -> int:
    """A loopback port nobody listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_available() -> bool:
    return os.access(PROMETHEUS_BIN, os.X_OK)


def prometheus_config(jobs: Mapping[str, Sequence[str]], *, scrape_interval: str = "1s",
                      rule_files: Sequence[str] = ()) -> dict[str, Any]:
    """A Prometheus config scraping ``jobs`` (job name -> ``host:port`` targets) every ``scrape_interval``."""
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "scrape_timeout": scrape_interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}
                           for job, targets in jobs.items() if targets],
    }
    if rule_files:
        cfg["rule_files"] = list(rule_files)
    return cfg


class LocalServer:
    """A server binary on ``127.0.0.1:<free port>`` with its files in a temporary directory, ready when
    ``/-/ready`` answers 200 (Prometheus and Alertmanager both have it); ``stop`` removes everything."""

    binary = ""
    install_hint = ""
    log_name = "server.log"

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def prepare(self) -> Path:
        """Create the directory and write the server's files (subclasses add data before ``start``)."""
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="twin-srv-"))
            (self.dir / "data").mkdir()
        self.write_config()
        return self.dir

    def write_config(self) -> None:
        """Write the files the command line points at."""

    def command(self, d: Path) -> list[str]:
        """The command line, listening on ``self.address``, its state under ``d``."""
        raise NotImplementedError

    def start(self) -> LocalServer:
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"{self.binary} not found; install it with: {self.install_hint}")
        d = self.prepare()
        last_error = ""
        for _ in range(5):                    # a free port can be taken between probe and bind: retry
            self.port = free_port()
            with open(d / self.log_name, "ab") as log:
                self.proc = subprocess.Popen(self.command(d), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                self._wait_ready()
                return self
            except RuntimeError as exc:
                last_error = str(exc)
                self._kill()
        self.stop()
        raise RuntimeError(f"{Path(self.binary).name} did not start: {last_error}")

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

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, n: int = 20) -> str:
        if self.dir is None or not (self.dir / self.log_name).exists():
            return ""
        return "\n".join((self.dir / self.log_name).read_text(errors="replace").splitlines()[-n:])

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


class LocalPrometheus(LocalServer):
    """``/usr/bin/prometheus`` on ``127.0.0.1:<free port>``, its storage in a temporary directory.

    ``files`` (name -> text) are written beside the config, e.g. the rule files it names.
    """

    binary = PROMETHEUS_BIN
    install_hint = INSTALL_HINT
    log_name = "prometheus.log"

    def __init__(self, config: Mapping[str, Any], *, startup_timeout: float = 30.0,
                 retention: str = "1d", files: Mapping[str, str] | None = None) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.config: dict[str, Any] = dict(config)
        self.retention = retention
        self.files = dict(files or {})

    def write_config(self) -> None:
        assert self.dir is not None
        for name, text in self.files.items():
            (self.dir / name).write_text(text)
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.config, sort_keys=False))

    def command(self, d: Path) -> list[str]:
        return [self.binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                f"--web.listen-address={self.address}", "--web.enable-lifecycle",
                f"--storage.tsdb.retention.time={self.retention}", "--log.level=warn"]

    def start(self) -> LocalPrometheus:
        super().start()
        return self

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def reload(self, config: Mapping[str, Any] | None = None) -> None:
        """Write a new config (if given) and tell Prometheus to load it."""
        if config is not None:
            self.config = dict(config)
        self.write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query, synchronously: the raw ``data.result`` list."""
        params = {"query": promql, **({"time": repr(at)} if at is not None else {})}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, *, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``promql`` returns at least ``count`` series (a new target's first scrape takes ~5 s)."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if len(result) >= count:
                return result
            time.sleep(0.2)
        raise TimeoutError(f"{promql!r} returned {len(result)} series, wanted {count}, after {timeout}s")

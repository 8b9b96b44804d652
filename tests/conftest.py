"""Shared fixtures: one real Prometheus per test session, scraping a target the tests control.

Starting Prometheus takes ~0.3 s but its first scrape of a new target takes
~5 s (target updates are batched), so the pair is session-scoped; tests that
need their own targets or a Prometheus they can kill start their own with
``sidecar.testing.PrometheusServer``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

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

"""The session's real Prometheus as the tests see it (the ``prom_env`` fixture in tests/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sidecar.testing import MetricsTarget, PrometheusServer, prometheus_available

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

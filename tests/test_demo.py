"""The demo end to end: the README's first command must start, show the twin changing, and clean up."""

from __future__ import annotations

import io
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import require_prometheus

from sidecar.demo import run_demo
from sidecar.demo.service import DemoService

pytestmark = pytest.mark.integration


def test_demo_runs_shows_the_twin_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    require_prometheus()
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        """The demo's own directories (other demos may run beside this test and have theirs)."""
        path = real_mkdtemp(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    out = io.StringIO()
    assert run_demo(duration_s=25, table_every_s=12, out=out) == 0
    text = out.getvalue()
    assert "sidecar /metrics   http://127.0.0.1:" in text and "Prometheus         http://127.0.0.1:" in text
    tables = re.findall(r"demo-api: health (\d+\.\d)", text)
    assert len(tables) >= 2
    assert re.search(r"cpu_usage\s+\d+\.\d", text)                     # a measured value, not a dash
    assert "twin demo-targets@127.0.0.1:" in text                        # the discovered twin
    assert "stopped; temporary files removed." in text
    assert any(p.name.startswith("twin-demo-") for p in made)
    assert [p for p in made if p.exists()] == []


def test_demo_load_follows_a_wave_with_spikes() -> None:
    svc = DemoService(base_rps=10, wave_period_s=600, spike_every_s=300, spike_len_s=60, spike_factor=3)
    assert svc.target_rps(0.0) == pytest.approx(10.0)
    assert svc.target_rps(150.0) == pytest.approx(15.0)                   # crest of the wave
    assert svc.target_rps(450.0) == pytest.approx(5.0)                    # trough
    wave_at_299 = 1 + 0.5 * math.sin(2 * math.pi * 299 / 600)
    assert svc.target_rps(299.0) == pytest.approx(30.0 * wave_at_299)    # inside the 3x spike

"""Every command stops quietly when its standard output is closed (``twin-sidecar check-config F | head -1``
printed a BrokenPipeError traceback): nothing on stderr, exit 141 (128 + SIGPIPE, as the shell reports any
program a closed pipe stops), and nothing it started left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.prom import PromEnv

from sidecar.cli import EXIT_STDOUT_CLOSED

ROOT = Path(__file__).resolve().parents[2]


def closed_stdout(argv: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run ``twin-sidecar ARGV`` with its stdout a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "sidecar.cli", *argv], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, cwd=ROOT)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


@pytest.fixture
def series_csv(tmp_path: Path) -> Path:
    p = tmp_path / "s.csv"
    t = 1_600_000_000 + 60 * np.arange(400)
    p.write_text("timestamp,value\n" + "".join(f"{a},{50 + 5 * np.sin(a / 3600):.3f}\n" for a in t))
    return p


@pytest.fixture
def rules_file(tmp_path: Path, prom_env: PromEnv) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(f"prometheus: {{url: '{prom_env.url}'}}\nbackfill: 0\nstorage: {{path: '{tmp_path / 'db'}'}}\n"
                 "twins:\n  - name: a\n    metrics: {cpu_usage: 'test_gauge{k=\"a\"}'}\n")
    return p


def test_help_is_quiet() -> None:
    for argv in (["--help"], ["check-config", "--help"], ["forecast", "--help"]):
        rc, err = closed_stdout(argv)
        assert err == "" and rc in (0, EXIT_STDOUT_CLOSED), argv     # argparse drops what it cannot write


def test_offline_commands(series_csv: Path, rules_file: Path, tmp_path: Path) -> None:
    for argv in (["check-config", str(ROOT / "config" / "example.yaml")],
                 ["rules", "--config", str(rules_file), "--runbook-base-url", "https://example.org/README.md"],
                 ["forecast", "--input", str(series_csv), "--output", "-"],
                 ["detect", "--input", str(series_csv), "--output", "-"],
                 ["backtest", "--input", str(series_csv), "--horizons", "5m"],
                 ["backtest", "--input", str(series_csv), "--horizons", "5m", "--json"],
                 ["simulate", "--config", str(rules_file), "--twin", "a", "--scenario", '{"type": "load_test"}']):
        rc, err = closed_stdout(argv)
        assert (rc, err) == (EXIT_STDOUT_CLOSED, ""), argv


def test_through_head_as_a_person_types_it() -> None:
    example = ROOT / "config" / "example.yaml"
    proc = subprocess.run(["bash", "-c", f'"{sys.executable}" -m sidecar.cli check-config "{example}" | head -1'],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.stdout.startswith(f"{example}: OK") and proc.stderr == ""


@pytest.mark.integration
def test_the_demo_stops_everything_it_started() -> None:
    """The demo's table goes to stdout: with no reader it stops as after Ctrl-C (its Prometheus and demo
    service included)."""
    rc, err = closed_stdout(["demo", "--duration", "90"], timeout=120)
    assert (rc, err) == (EXIT_STDOUT_CLOSED, "")
    left = subprocess.run(["pgrep", "-f", "twin-demo-"], capture_output=True, text=True)
    assert left.stdout == "", "the demo left processes running"

"""The /metrics contract lives in one module that loading the rules can read without the exposition code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import contract, loopguard
from sidecar.alerts import PROMETHEUS_METRICS, AlertSettings, _Builder

ROOT = Path(__file__).resolve().parents[2]


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code`` in the repository root."""
    proc = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return set(proc.stdout.split())


def test_importing_the_rules_module_does_not_load_prometheus_client() -> None:
    proc = subprocess.run([sys.executable, "-c",
                           "import sidecar.config, sys; print('prometheus_client' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("code", [
    "from sidecar.config import load_config; load_config('config/example.yaml')",
    "from sidecar.alerts import render_rules; from sidecar.config import load_config; "
    "render_rules(load_config('config/example.yaml'))",
])
def test_loading_the_rules_and_writing_alerts_never_load_the_exposition_code(code: str) -> None:
    """The loop guard checks every query at load against the contract, which needs no prometheus-client."""
    loaded = _modules_after(code)
    assert "sidecar.loopguard" in loaded and "sidecar.contract" in loaded
    assert "prometheus_client" not in loaded and "sidecar.exporter" not in loaded


def test_the_contract_imports_nothing_of_the_package() -> None:
    """Besides the contract, only the package face loads (with its lazy loader): ``sidecar.engine``'s names wait
    until asked for."""
    loaded = _modules_after("import sidecar.contract")
    assert {m for m in loaded if m.startswith("sidecar.")} == {"sidecar.contract", "sidecar.engine",
                                                               "sidecar.engine.lazy"}


def test_names_are_unique_and_indexed() -> None:
    names = [m.name for m in contract.EXPORTED_METRICS]
    assert len(names) == len(set(names)) == len(contract.METRICS_BY_NAME)
    assert all(n.startswith(loopguard.OWN_METRIC_PREFIX) for n in names)
    assert all(m.name.endswith("_total") for m in contract.EXPORTED_METRICS if m.type == "counter")
    assert {m.type for m in contract.EXPORTED_METRICS} == {"gauge", "counter", "histogram"}


def test_the_loop_guard_signature_comes_from_the_contract() -> None:
    assert {"metric", "horizon", "limit", "scenario"} == loopguard.COMPANION_LABELS


def test_alert_rules_select_only_contract_families() -> None:
    b = _Builder(AlertSettings())
    assert b.sel("twin_health_score") == "twin_health_score"
    assert b.sel("up", 'job="x"') == 'up{job="x"}' and {"up"} == PROMETHEUS_METRICS
    with pytest.raises(ValueError, match="not in the /metrics contract"):
        b.sel("twin_health")

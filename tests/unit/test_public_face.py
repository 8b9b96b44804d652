"""``sidecar`` and ``sidecar.engine`` export the design's async facade and its records, loaded on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sidecar
import sidecar.engine
from sidecar.engine import core, records, settings, twin

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "TwinEngine": twin.TwinEngine, "Engine": core.Engine, "EngineSettings": settings.EngineSettings,
    **{n: getattr(records, n) for n in ("SystemMetrics", "DigitalTwin", "StatePrediction", "DivergenceAlert",
                                        "CorrectionRecord", "StateHistoryEntry", "SystemType", "Source",
                                        "Severity")},
}


@pytest.mark.parametrize("package", [sidecar, sidecar.engine])
def test_every_public_name_is_the_defining_modules_own(package: object) -> None:
    assert sorted(package.__all__) == sorted(EXPECTED)  # type: ignore[attr-defined]
    for name, obj in EXPECTED.items():
        assert getattr(package, name) is obj, name
    assert set(EXPECTED) <= set(dir(package))


def test_star_import_and_unknown_names() -> None:
    namespace: dict[str, object] = {}
    exec("from sidecar.engine import *", namespace)
    assert namespace["TwinEngine"] is twin.TwinEngine
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sidecar.engine.nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError):
        exec("from sidecar import nope", {})


def test_the_faces_load_nothing_until_asked() -> None:
    """Importing a record (the rules do) or the package must not load the forecasting models."""
    code = ("import sys, sidecar, sidecar.engine; from sidecar.engine.records import SystemType; "
            "print('sidecar.engine.core' in sys.modules, 'sidecar.engine.twin' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert proc.stdout.split() == ["False", "False"]

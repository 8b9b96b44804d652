"""``sidecar.engine.whatif`` exports the what-if's public names, each its defining module's own, loaded on first use."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar.engine.whatif as whatif

ROOT = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize("name", whatif.__all__)
def test_every_public_name_is_its_defining_modules_own(name: str) -> None:
    home = importlib.import_module(whatif._HOMES[name], whatif.__name__)
    assert getattr(whatif, name) is getattr(home, name)
    assert name in dir(whatif)


def test_every_exported_home_is_listed_and_an_unknown_name_fails() -> None:
    assert sorted(whatif._HOMES) == sorted(whatif.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        whatif.nope  # type: ignore[attr-defined]  # noqa: B018


def test_checking_a_scenario_loads_neither_numpy_nor_the_capacity_fit() -> None:
    """The rules check a standing scenario's fields with `parse_scenario`; that alone stays light."""
    code = ("import sys; from sidecar.engine.whatif.scenario import parse_scenario; "
            "parse_scenario({'type': 'load_test'}); "
            "print('numpy' in sys.modules, 'sidecar.engine.whatif.capacity' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert proc.stdout.split() == ["False", "False"]

"""The Helm chart rendered by scripts/check_deploy.py, the deploy checks the chart tests reuse."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def check_deploy() -> ModuleType:
    """scripts/check_deploy.py as a module (imported on first use: not every run needs helm)."""
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module("check_deploy")


def render(helm: str, *values: str) -> list[dict[str, Any]]:
    """The chart rendered with these helm arguments, as parsed manifests."""
    docs: list[dict[str, Any]] = check_deploy().render(helm, list(values))[0]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]

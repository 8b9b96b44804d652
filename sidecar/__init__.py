"""Digital Twin Sidecar: a digital twin per service, from Prometheus metrics, exported back on /metrics.

The service is ``twin-sidecar run`` (``sidecar.cli``); as a library, the engine's async facade and its records
are importable from here or from ``sidecar.engine``::

    from sidecar import SystemMetrics, SystemType, TwinEngine

The names load on first use: importing a module of the package (the rules, the contract) never loads the
engine's models. ARCHITECTURE.md says where each concern lives and which module may import which.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import (
        CorrectionRecord,
        DigitalTwin,
        DivergenceAlert,
        Engine,
        EngineSettings,
        Severity,
        Source,
        StateHistoryEntry,
        StatePrediction,
        SystemMetrics,
        SystemType,
        TwinEngine,
    )

__all__ = [
    "CorrectionRecord",
    "DigitalTwin",
    "DivergenceAlert",
    "Engine",
    "EngineSettings",
    "Severity",
    "Source",
    "StateHistoryEntry",
    "StatePrediction",
    "SystemMetrics",
    "SystemType",
    "TwinEngine",
]


def __getattr__(name: str) -> Any:
    """The engine's public names, imported from ``sidecar.engine`` the first time one is asked for (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".engine", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

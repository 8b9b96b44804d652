"""Digital Twin Sidecar: a digital twin per service, from Prometheus metrics, exported back on /metrics.

The service is ``twin-sidecar run`` (``sidecar.cli``); as a library, the engine's async facade and its records
are importable from here or from ``sidecar.engine``::

    from sidecar import SystemMetrics, SystemType, TwinEngine

The names are the engine package's own (``sidecar.engine.__all__``) and load on first use: importing a module
of the package (the rules, the contract) never loads the engine's models. ARCHITECTURE.md says where each
concern lives and which module may import which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import engine as _engine
from .engine import __all__

if TYPE_CHECKING:
    from .engine import *  # noqa: F403  (the names, for type checkers; at run time __getattr__ serves them)


def __getattr__(name: str) -> Any:
    """An engine name, from ``sidecar.engine`` (which imports it from its module the first time, PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(_engine, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

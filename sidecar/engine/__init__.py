"""The twin engine: pure, vectorised, no I/O and no clock reads of its own.

Its public face is the async facade of the original design and the records it hands out::

    from sidecar.engine import SystemMetrics, SystemType, TwinEngine

    engine = TwinEngine()
    twin = await engine.create_twin("checkout-api", SystemType.API_GATEWAY)
    await engine.sync_twin(twin.twin_id, SystemMetrics(cpu_usage=40.0))

``Engine`` is the synchronous core underneath (one ``ingest`` call per query round for every twin), and
``EngineSettings`` its knobs. The names load on first use, so importing one record (the rules do) does not
load the forecasting models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_face

if TYPE_CHECKING:
    from .core import Engine
    from .records import (
        CorrectionRecord,
        DigitalTwin,
        DivergenceAlert,
        Severity,
        Source,
        StateHistoryEntry,
        StatePrediction,
        SystemMetrics,
        SystemType,
    )
    from .settings import EngineSettings
    from .twin import TwinEngine

#: Each public name and the module that defines it.
_HOMES: dict[str, str] = {
    "TwinEngine": ".twin",
    "Engine": ".core",
    "EngineSettings": ".settings",
    **{name: ".records" for name in ("SystemMetrics", "DigitalTwin", "StatePrediction", "DivergenceAlert",
                                     "CorrectionRecord", "StateHistoryEntry", "SystemType", "Source", "Severity")},
}

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

__getattr__, __dir__ = lazy_face(__name__, _HOMES, __all__)

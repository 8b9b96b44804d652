"""The engine: every twin's numbers in arrays, one vectorised tick for all of them.

``Engine.ingest`` is the batch path the service calls once per query round:
a handful of numpy calls over every series, then Python only for the few
things that changed (an alert opening, a health band crossed). ``Engine.sync``
is the per-twin path of the old design, a thin layer over ``ingest``.

The engine is pure: it never reads the clock (every time is handed in as
``at``), never does I/O, and hands what must be persisted out through
``drain()``. A twin can never feed on itself: only observations
(``Source.EXTERNAL``, ``Source.STATE_SYNC``) are ingested.

``Engine`` is the facade over the engine's rooms, each one concern over one shared state
(:mod:`.state`: every array, declared once): :mod:`.twins` (the registry of twins and their series
slots), :mod:`.tick` (the vectorised tick, alerts, corrections, roll-up, the view), :mod:`.reports`
(status, predictions and the other read-only views, the what-if glue), :mod:`.rules` (expected state,
thresholds, limits, horizons, metric rules, snapshots and rollback) and :mod:`.restore` (restore,
merge, model state, quiet replay). The arrays are readable on the engine under their own names
(``engine.fc_mean``, ``engine.health``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from .anomaly import AnomalyBank
from .modelstate import TwinModelState
from .records import (
    CorrectionRecord,
    DigitalTwin,
    Source,
    StateHistoryEntry,
    StatePrediction,
    SystemMetrics,
    SystemType,
    TwinEvent,
    canonical_metric,
)
from .reports import Reports
from .restore import Restore
from .rules import Rules
from .settings import EngineSettings
from .state import ARRAY_STORE, SOURCE_CODES, EngineState
from .tick import PREDICTION_EVERY_S, Tick, TickReport
from .twins import TwinRegistry, stable_twin_id
from .view import EngineView, Outbox

if TYPE_CHECKING:
    from .whatif import SimulationContext

__all__ = ["PREDICTION_EVERY_S", "SOURCE_CODES", "Engine", "TickReport", "stable_twin_id"]


class Engine:
    """All twins of one sidecar; see the module docstring."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.state = st = EngineState.new(settings)
        self.settings = st.settings
        self.series = st.series
        self.bank = st.bank
        self.horizons_s = st.horizons_s
        self.detector = st.detector
        self.corrector = st.corrector
        self.monitor = st.monitor
        self.registry = TwinRegistry(st)
        self.tick = Tick(st, self.registry)
        self.reports = Reports(st, self.registry, self.tick)
        self.rules = Rules(st, self.registry, self.tick)
        self.restorer = Restore(st, self.registry, self.tick, self.rules)

    def __getattr__(self, name: str) -> np.ndarray:
        """The arrays under their own names (``engine.eta``), read from the state that keeps them."""
        store = ARRAY_STORE.get(name)
        if store is None or "state" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        arrays: np.ndarray = getattr(getattr(self.state, store), name)
        return arrays

    @property
    def anomaly(self) -> AnomalyBank:
        return self.state.anomaly

    @anomaly.setter
    def anomaly(self, bank: AnomalyBank) -> None:
        """Another anomaly bank (a benchmark's), set before any series exists so it grows with the engine."""
        self.state.anomaly = bank

    # ------------------------------------------------------------------ twins
    def create_twin(self, name: str, *, at: float, system_type: SystemType | str = SystemType.OTHER,
                    twin_id: str | None = None, initial_state: Mapping[str, Any] | None = None,
                    sync_frequency_seconds: float = 60.0, expected: Mapping[str, float] | None = None,
                    thresholds: Mapping[str, float] | None = None, limits: Mapping[str, float] | None = None,
                    auto_correction: bool = True, labels: Mapping[str, str] | None = None) -> DigitalTwin:
        return self.registry.create_twin(
            name, at=at, system_type=system_type, twin_id=twin_id, initial_state=initial_state,
            sync_frequency_seconds=sync_frequency_seconds, expected=expected, thresholds=thresholds,
            limits=limits, auto_correction=auto_correction, labels=labels)

    def retire_twin(self, twin: str, *, at: float) -> None:
        self.registry.retire_twin(twin, at=at)
        self.tick.refresh_view(at)

    def get(self, twin: str) -> DigitalTwin:
        """The twin by id or name, its record brought up to date with the arrays."""
        return self.reports.get(twin)

    def twins(self) -> list[DigitalTwin]:
        return self.reports.twins()

    def twin_ids(self) -> list[str]:
        """Every twin's id, without bringing records up to date (``twins`` costs ~0.4 ms a twin)."""
        return list(self.state.twins)

    def series_for(self, twin: str, metrics: Sequence[str]) -> np.ndarray:
        return self.registry.series_for(twin, metrics)

    def metric_names(self, twin: str) -> list[str]:
        """The metrics this twin has series for (no history copied: the API checks bodies with it)."""
        return self.registry.metric_names(twin)

    # ------------------------------------------------------------- the tick
    def ingest(self, series: np.ndarray, values: np.ndarray, *, at: float, times: np.ndarray | None = None,
               source: Source | str = Source.EXTERNAL, quiet: bool = False) -> TickReport:
        """One sample per listed series; see the module docstring. ``quiet`` (backfill and restore)
        updates the models but opens no alerts, applies no corrections and emits nothing to store."""
        return self.tick.ingest(series, values, at=at, times=times, source=source, quiet=quiet)

    def sync(self, twin: str, metrics: Mapping[str, float] | SystemMetrics, *, at: float,
             source: Source | str = Source.EXTERNAL) -> dict[str, Any]:
        t = self.registry.lookup(twin)
        try:
            src = Source(source)
        except ValueError:
            raise InputError(f"unknown source {source!r}; valid: {', '.join(s.value for s in Source)}") from None
        if not src.is_observation:
            t.refused_syncs += 1
            return {"error": f"source {src.value!r} is not an observation; a twin never ingests its own "
                             "or simulated output", "twin_id": t.twin_id, "synced": False}
        values = metrics.as_dict() if isinstance(metrics, SystemMetrics) else dict(metrics)
        names = [canonical_metric(k) for k in values]
        vals = np.array([float(v) if isinstance(v, int | float) and not isinstance(v, bool) else np.nan
                         for v in values.values()])
        slots = self.series_for(t.twin_id, names)
        n_corr = len(t.corrections)
        report = self.ingest(slots, vals, at=at, source=src)
        t = self.get(t.twin_id)
        return {
            "twin_id": t.twin_id, "synced": True, "source": src.value, "accepted": report.accepted,
            "dropped": {"nonfinite": report.dropped_nonfinite, "invalid": report.dropped_invalid,
                        "stale": report.dropped_stale},
            "health_score": round(t.health_score, 2), "drift_detected": t.drift_detected,
            "state_predictions": len(t.state_predictions),
            "divergence_alerts": [a.to_dict() for a in t.divergence_alerts],
            "corrections": [c.to_dict() for c in t.corrections[n_corr:]],
        }

    # ----------------------------------------------------------------- rules
    def set_expected_state(self, twin: str, expected: Mapping[str, float | None], *, at: float,
                           reason: str = "manual") -> StateHistoryEntry:
        """Set (a number) or clear (``None``) expected values; returns the snapshot taken before the change
        (the rules are :meth:`.rules.Rules.set_expected_state`'s)."""
        return self.rules.set_expected_state(twin, expected, at=at, reason=reason)

    def configure(self, twin: str, *, at: float, thresholds: Mapping[str, float] | None = None,
                  limits: Mapping[str, float] | None = None, auto_correction: bool | None = None) -> None:
        """Change a twin's rules (a config reload); a no-op change records nothing."""
        self.rules.configure(twin, at=at, thresholds=thresholds, limits=limits, auto_correction=auto_correction)

    def set_horizons(self, twin: str, horizons_s: Sequence[float] | None, *, at: float) -> None:
        """Show only these of the engine's horizons for this twin (None: all of them)."""
        self.rules.set_horizons(twin, horizons_s, at=at)

    def set_metric_rules(self, twin: str, *, directions: Mapping[str, str] | None = None,
                         bounds: Mapping[str, tuple[float | None, float | None]] | None = None, at: float) -> None:
        """The rules file's direction and bounds per metric (:meth:`.rules.Rules.set_metric_rules`)."""
        self.rules.set_metric_rules(twin, directions=directions, bounds=bounds, at=at)

    def rollback(self, twin: str, snapshot: StateHistoryEntry, *, at: float) -> dict[str, Any]:
        return self.rules.rollback(twin, snapshot, at=at)

    def snapshots(self, twin: str) -> list[StateHistoryEntry]:
        return self.rules.snapshots(twin)

    def find_snapshot(self, twin: str, snapshot_id: str) -> StateHistoryEntry | None:
        return self.rules.find_snapshot(twin, snapshot_id)

    # ----------------------------------------------------------------- reads
    def predictions(self, twin: str) -> list[StatePrediction]:
        return self.reports.predictions(twin)

    def status(self, twin: str) -> dict[str, Any]:
        return self.reports.status(twin)

    def list_status(self) -> list[dict[str, Any]]:
        return self.reports.list_status()

    def history(self, twin: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.reports.history(twin)

    def events(self, *, twin: str | None = None, type: str | None = None, since: float | None = None,
               limit: int = 1000) -> list[TwinEvent]:
        return self.reports.events(twin=twin, type=type, since=since, limit=limit)

    def simulate(self, twin: str, scenario: Mapping[str, Any], *, at: float, seed: int = 0,
                 replicas: int | None = None, workers: int | None = None) -> dict[str, Any]:
        return self.reports.simulate(twin, scenario, at=at, seed=seed, replicas=replicas, workers=workers)

    def context(self, twin: str, *, at: float, replicas: int | None = None,
                workers: int | None = None) -> SimulationContext:
        """The twin's history, forecasts and limits as the capacity model reads them (a copy)."""
        return self.reports.context(twin, at=at, replicas=replicas, workers=workers)

    # ------------------------------------------------------------- outputs
    def view(self) -> EngineView:
        """The latest view, brought up to date first when something changed since it was built (call it where
        the engine is not being changed meanwhile: under the service's engine lock)."""
        return self.tick.view()

    def latest_view(self) -> EngineView:
        """The view last built, never rebuilt here: what a reader without the engine lock takes (the exporter's
        scrape thread) while a round or the API changes the engine in another thread. Rebuilding from that
        thread would read the twins while they are being created (arrays of different lengths, families
        skipped, arrays growing under it)."""
        return self.state.view

    @property
    def view_stale(self) -> bool:
        """Something changed since the view was built (``view`` rebuilds it)."""
        return self.state.dirty

    def drain(self) -> Outbox:
        st = self.state
        out = st.outbox
        out.events.extend(st.monitor.take_pending())
        st.outbox = Outbox()
        return out

    # ------------------------------------------------------------- restore
    def restore_twin(self, definition: Mapping[str, Any], *, snapshots: Sequence[StateHistoryEntry] = (),
                     samples: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                     corrections: Sequence[CorrectionRecord] = ()) -> DigitalTwin:
        """Bring a stored twin back (:meth:`.restore.Restore.restore_twin`)."""
        return self.restorer.restore_twin(definition, snapshots=snapshots, samples=samples, corrections=corrections)

    def merge_stored(self, definition: Mapping[str, Any], *, snapshots: Sequence[StateHistoryEntry] = (),
                     corrections: Sequence[CorrectionRecord] = (), at: float) -> bool:
        """A stored twin read only after this one was started afresh (:meth:`.restore.Restore.merge_stored`)."""
        return self.restorer.merge_stored(definition, snapshots=snapshots, corrections=corrections, at=at)

    def republish(self) -> None:
        """Put every twin's definition in the outbox again (after definitions were held back)."""
        self.restorer.republish()

    def backfill(self, samples: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> TickReport:
        """Replay history quietly, one vectorised tick per distinct time."""
        return self.restorer.backfill(samples)

    def export_model_states(self) -> dict[str, bytes]:
        return self.restorer.export_model_states()

    def model_states(self, twin_ids: Sequence[str]) -> dict[str, TwinModelState]:
        return self.restorer.model_states(twin_ids)

    def load_model_states(self, blobs: Mapping[str, bytes]) -> dict[tuple[str, str], float]:
        return self.restorer.load_model_states(blobs)

    def put_model_states(self, states: Sequence[TwinModelState]) -> dict[tuple[str, str], float]:
        return self.restorer.put_model_states(states)

    def restore_history(self, samples: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                        learnt_until: Mapping[tuple[str, str], float]) -> TickReport:
        """Stored samples after a restart (:meth:`.restore.Restore.restore_history`)."""
        return self.restorer.restore_history(samples, learnt_until)

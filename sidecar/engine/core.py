"""The engine: every twin's numbers in arrays, one vectorised tick for all of them.

``Engine.ingest`` is the batch path the service calls once per query round:
a handful of numpy calls over every series, then Python only for the few
things that changed (an alert opening, a health band crossed). ``Engine.sync``
is the per-twin path of the old design, a thin layer over ``ingest``.

The engine is pure: it never reads the clock (every time is handed in as
``at``), never does I/O, and hands what must be persisted out through
``drain()``. A twin can never feed on itself: only observations
(``Source.EXTERNAL``, ``Source.STATE_SYNC``) are ingested.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptSnapshotError, InputError, ScenarioError, UnknownTwinError
from .anomaly import AnomalyBank
from .correct import AutoCorrector
from .diverge import DIRECTION_CODE, DivergenceDetector, advice, divergence_floor
from .expected import canonical_expected, check_expected_metrics, check_expected_values, check_limit_value
from .forecast import HORIZON_AXIS
from .health import drift_flags, format_score, health_band, health_scores, series_penalty
from .history import verified
from .modelstate import (
    FORECAST_CONFIG,
    TwinModelState,
    check_rows,
    put_rows,
    remap_horizons,
    same_but_horizons,
    same_forecast_config,
    take_rows,
)
from .modelstate import decode as decode_model_state
from .modelstate import encode as encode_model_state
from .monitor import Monitor
from .predict import StatePredictor, breach_eta, exceed_probability, hide_unsupported_eta, risk_text, trend_text
from .records import (
    CorrectionRecord,
    DigitalTwin,
    DivergenceAlert,
    EventType,
    MetricForecast,
    Source,
    StateHistoryEntry,
    StatePrediction,
    SystemMetrics,
    SystemType,
    TwinEvent,
    canonical_metric,
    iso,
)
from .regime import REGIMES
from .series import SeriesTable, _grow
from .settings import DEFAULT_CUSTOM_DIRECTION, DEFAULT_DIRECTIONS, DIRECTIONS, DOMAINS, EngineSettings
from .view import EngineView, MetricSamples, Outbox, PredictionRows

log = logging.getLogger(__name__)

SOURCE_CODES: tuple[Source, ...] = tuple(Source)
#: Forecast rows for the store at most this often per series (the tick is every 15 s): the
#: exporter has every tick; the table is an audit trail of what was predicted, not a time series.
PREDICTION_EVERY_S = 300.0


@dataclass(frozen=True, slots=True)
class TickReport:
    at: float
    accepted: int = 0
    dropped_nonfinite: int = 0      # NaN / ±Inf values or times
    dropped_invalid: int = 0        # negative values of metrics that cannot be negative
    dropped_stale: int = 0          # repeated or backward timestamps
    refused: int = 0                # not an observation (internal / simulation source)


def stable_twin_id(name: str, namespace: str = "") -> str:
    """The same name always maps to the same id, so a restart finds its twins again.

    Replicas sharing one database twin the same names; each gets its own ids (its namespace is its replica
    name), so definitions, snapshots, model state and retention never mix between them. The empty namespace
    gives the ids a single replica has always had."""
    key = name if not namespace else f"{namespace}\x00{name}"
    return "twin_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _clean_mapping(values: Mapping[str, Any], what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in values.items():
        if not isinstance(k, str) or not k:
            raise InputError(f"{what}: metric names must be non-empty strings, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InputError(f"{what}: {k} must be a number, got {type(v).__name__}")
        if not math.isfinite(float(v)):
            raise InputError(f"{what}: {k} must be finite, got {v}")
        out[canonical_metric(k)] = float(v)
    return out


def _clean_limits(values: Mapping[str, Any]) -> dict[str, float]:
    """Limits as the rules file takes them: a core metric's at or below 0 (breached by every sample), or a
    percentage's above 100, is refused here too, so a library caller cannot set a breach that never ends."""
    for k, v in values.items():
        check_limit_value(k, v)
    return _clean_mapping(values, "limits")


class Engine:
    """All twins of one sidecar; see the module docstring."""

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = s = settings or EngineSettings()
        self.series = SeriesTable(s.history_size)
        self.predictor = StatePredictor(s.horizons_s, level=s.level, model=s.model)
        self.horizons_s = self.predictor.horizons_s
        self.anomaly = AnomalyBank()
        self.detector = DivergenceDetector()
        self.corrector = AutoCorrector()
        self.monitor = Monitor(s.event_buffer)
        self._twins: dict[str, DigitalTwin] = {}
        self._by_name: dict[str, str] = {}
        self._twin_slot: dict[str, int] = {}
        self._slot_twin: list[str | None] = []
        self._free_twin_slots: list[int] = []
        self._seq = itertools.count(1)
        self._outbox = Outbox()
        self._names_cache: tuple[tuple[str, ...], tuple[str, ...], np.ndarray] | None = None
        self._view = EngineView.empty(self.horizons_s)
        self._last_at = float("nan")
        self._dirty = False                      # quiet ingests left rollup and view stale
        self._key_arrays: tuple[np.ndarray, np.ndarray] | None = None   # slot -> twin id / metric
        self._used_slots: set[int] = set()       # slots that have held a series (reuse must reset them)
        h = len(self.horizons_s)
        cap = self.series.capacity
        # per-series state
        self.manual_expected = np.full(cap, np.nan)
        self.threshold = np.full(cap, np.nan)
        self.limit = np.full(cap, np.nan)
        self.expected = np.full(cap, np.nan)
        self.div_ratio = np.full(cap, np.nan)
        self.div_pct = np.full(cap, np.nan)
        self.severity = np.zeros(cap, np.int8)
        self.direction = np.zeros(cap, np.int8)          # +1 divergence above hurts, -1 below, 0 both
        self.harmful = np.ones(cap, bool)                # the last sample lies on the side that hurts
        self.run_len = np.zeros(cap, np.int64)
        self.anomaly_score = np.full(cap, np.nan)
        self.fc_mean = np.full((cap, h), np.nan)
        self.fc_lower = np.full((cap, h), np.nan)
        self.fc_upper = np.full((cap, h), np.nan)
        self.fc_conf = np.full((cap, h), np.nan)
        self.fc_model = np.zeros((cap, h), np.int8)
        self.fc_regime = np.ones((cap, h), np.int8)      # regime.REGIMES code per horizon
        self.slope = np.full(cap, np.nan)
        self.eta = np.full(cap, np.nan)
        self.alert_open = np.zeros(cap, bool)
        self.alert_sev = np.zeros(cap, np.int8)
        self.last_pred_emit = np.full(cap, -np.inf)
        self.hshow = np.ones((cap, h), bool)     # horizons the series' twin asked for (the rest stay unshown)
        self._horizon_mask: dict[str, np.ndarray] = {}   # twin id -> (H,) bool; absent: every horizon
        # twin id -> (metric -> direction, metric -> (low, high)): the rules file's, like the horizons
        self._metric_rules: dict[str, tuple[dict[str, str], dict[str, tuple[float, float]]]] = {}
        self._alerts: dict[int, DivergenceAlert] = {}
        # twin id -> the expected-state keys set or cleared since this engine started (None: the whole state
        # replaced, by a rollback); what a merge of the stored state after an outage must not overwrite
        self._expected_touched: dict[str, set[str] | None] = {}
        # per-twin state
        tcap = 16
        self.health = np.full(tcap, 100.0)
        self.band = np.zeros(tcap, np.int8)
        self.drift = np.zeros(tcap, bool)
        self.risk_count = np.zeros(tcap, np.int64)
        self.last_sync = np.full(tcap, np.nan)
        self.sync_count = np.zeros(tcap, np.int64)
        self.source_count = np.zeros((tcap, len(SOURCE_CODES)), np.int64)   # accepted syncs per source
        self.last_source = np.full(tcap, -1, np.int8)

    # ------------------------------------------------------------------ twins
    def create_twin(self, name: str, *, at: float, system_type: SystemType | str = SystemType.OTHER,
                    twin_id: str | None = None, initial_state: Mapping[str, Any] | None = None,
                    sync_frequency_seconds: float = 60.0, expected: Mapping[str, float] | None = None,
                    thresholds: Mapping[str, float] | None = None, limits: Mapping[str, float] | None = None,
                    auto_correction: bool = True, labels: Mapping[str, str] | None = None) -> DigitalTwin:
        if not isinstance(name, str) or not name:
            raise InputError("twin name must be a non-empty string")
        if name in self._by_name:
            raise InputError(f"a twin named {name!r} already exists ({self._by_name[name]})")
        try:
            stype = SystemType(system_type)
        except ValueError as e:
            raise InputError(f"unknown system_type {system_type!r}; valid: "
                             f"{', '.join(t.value for t in SystemType)}") from e
        tid = twin_id or stable_twin_id(name, self.settings.id_namespace)
        if tid in self._twins:
            raise InputError(f"twin id {tid} already exists")
        # values only: a new twin has no series to look names up in (the rules file checked them against its rule)
        initial_expected = canonical_expected(check_expected_values(expected or {}, allow_null=False))[0]
        twin = DigitalTwin(
            twin_id=tid, source_system=name, system_type=stype, created_at=at,
            sync_frequency_seconds=float(sync_frequency_seconds), initial_state=dict(initial_state or {}),
            expected_state=initial_expected or None,
            thresholds=_clean_mapping(thresholds or {}, "thresholds"),
            limits=_clean_limits(limits or {}),
            auto_correction_enabled=bool(auto_correction), labels=dict(labels or {}))
        self._register(twin)
        self._snapshot(twin, "created", at)
        self._outbox.twins.append(twin)
        self.monitor.emit(tid, EventType.TWIN_CREATED, "info", f"twin {name} created", at)
        self._touch(at)
        log.info("twin created", extra={"twin": name, "twin_id": tid})
        return twin

    def _touch(self, at: float) -> None:
        """Something changed outside a tick: rebuild the view when it is next read."""
        self._last_at = at if not math.isfinite(self._last_at) else max(self._last_at, at)
        self._dirty = True

    def _register(self, twin: DigitalTwin) -> None:
        if self._free_twin_slots:
            slot = self._free_twin_slots.pop()
            self._slot_twin[slot] = twin.twin_id
        else:
            slot = len(self._slot_twin)
            self._slot_twin.append(twin.twin_id)
            if slot >= self.health.shape[0]:
                n = 2 * self.health.shape[0]
                self.health = _grow(self.health, n, 100.0)
                self.band = _grow(self.band, n, 0)
                self.drift = _grow(self.drift, n, False)
                self.risk_count = _grow(self.risk_count, n, 0)
                self.last_sync = _grow(self.last_sync, n, np.nan)
                self.sync_count = _grow(self.sync_count, n, 0)
                self.source_count = _grow(self.source_count, n, 0)
                self.last_source = _grow(self.last_source, n, -1)
        self.health[slot], self.band[slot], self.drift[slot] = 100.0, 0, False
        self.risk_count[slot], self.last_sync[slot], self.sync_count[slot] = 0, np.nan, 0
        self.source_count[slot], self.last_source[slot] = 0, -1
        self._twins[twin.twin_id] = twin
        self._by_name[twin.source_system] = twin.twin_id
        self._twin_slot[twin.twin_id] = slot

    def retire_twin(self, twin: str, *, at: float) -> None:
        t = self._lookup(twin)
        self._snapshot(t, "retired", at)
        slots = self.series.slots_of(t.twin_id)
        self.series.remove(slots)
        for s in slots:
            self._alerts.pop(s, None)
        tslot = self._twin_slot.pop(t.twin_id)
        self._slot_twin[tslot] = None
        self._free_twin_slots.append(tslot)
        del self._twins[t.twin_id]
        del self._by_name[t.source_system]
        self._horizon_mask.pop(t.twin_id, None)
        self._metric_rules.pop(t.twin_id, None)
        self._expected_touched.pop(t.twin_id, None)
        self._names_cache = self._key_arrays = None
        self._outbox.retired.append(t.twin_id)
        self.monitor.emit(t.twin_id, EventType.TWIN_RETIRED, "info", f"twin {t.source_system} retired", at)
        self._refresh_view(at)

    def get(self, twin: str) -> DigitalTwin:
        """The twin by id or name, its record brought up to date with the arrays."""
        t = self._lookup(twin)
        self._refresh_twin(t)
        return t

    def _lookup(self, twin: str) -> DigitalTwin:
        tid = twin if twin in self._twins else self._by_name.get(twin)
        if tid is None:
            raise UnknownTwinError(f"no twin {twin!r}")
        return self._twins[tid]

    def twins(self) -> list[DigitalTwin]:
        return [self.get(tid) for tid in list(self._twins)]

    # ----------------------------------------------------------------- series
    def series_for(self, twin: str, metrics: Sequence[str]) -> np.ndarray:
        t = self._lookup(twin)
        tslot = self._twin_slot[t.twin_id]
        out = np.empty(len(metrics), np.int64)
        for i, m in enumerate(metrics):
            name = canonical_metric(m)
            slot, new = self.series.add(t.twin_id, name, tslot)
            if new:
                self._init_slot(slot, t, name)
            out[i] = slot
        return out

    def _init_slot(self, slot: int, twin: DigitalTwin, metric: str) -> None:
        """A fresh slot (from the banks' amortised growth) is already empty; a reused one is reset."""
        self._ensure_capacity()
        if self.predictor.bank.size < self.series.capacity:       # keep the banks' slots aligned
            self.predictor.add(self.series.capacity - self.predictor.bank.size)
        if self.anomaly.size < self.series.capacity:
            self.anomaly.add(self.series.capacity - self.anomaly.size)
        if slot in self._used_slots:                               # a reused slot: forget its past
            self._reset_slot(slot)
        self._used_slots.add(slot)
        self._apply_config_slot(slot, twin, metric)
        self._names_cache = self._key_arrays = None

    def _reset_slot(self, slot: int) -> None:
        idx = np.array([slot])
        self.predictor.reset(idx)
        self.anomaly.reset(idx)
        for a in (self.expected, self.div_ratio, self.div_pct, self.anomaly_score, self.slope, self.eta):
            a[slot] = np.nan
        for a2 in (self.fc_mean, self.fc_lower, self.fc_upper, self.fc_conf):
            a2[slot] = np.nan
        self.fc_model[slot] = 0
        self.fc_regime[slot] = 1
        self.harmful[slot] = True
        self.severity[slot] = 0
        self.run_len[slot] = 0
        self.alert_open[slot] = False
        self.alert_sev[slot] = 0
        self.last_pred_emit[slot] = -np.inf
        self._alerts.pop(slot, None)

    def _ensure_capacity(self) -> None:
        cap = self.series.capacity
        if self.manual_expected.shape[0] >= cap:
            return
        for name, fill in (("manual_expected", np.nan), ("threshold", np.nan), ("limit", np.nan),
                           ("expected", np.nan), ("div_ratio", np.nan), ("div_pct", np.nan),
                           ("severity", 0), ("direction", 0), ("harmful", True), ("fc_regime", 1),
                           ("run_len", 0), ("anomaly_score", np.nan), ("fc_mean", np.nan),
                           ("fc_lower", np.nan), ("fc_upper", np.nan), ("fc_conf", np.nan), ("fc_model", 0),
                           ("slope", np.nan), ("eta", np.nan), ("alert_open", False), ("alert_sev", 0),
                           ("last_pred_emit", -np.inf), ("hshow", True)):
            setattr(self, name, _grow(getattr(self, name), cap, fill))

    def _apply_config_slot(self, slot: int, twin: DigitalTwin, metric: str) -> None:
        s = self.settings
        self.threshold[slot] = twin.thresholds.get(metric, s.thresholds.get(metric, s.custom_threshold))
        self.limit[slot] = twin.limits.get(metric, s.limits.get(metric, np.nan))
        exp = (twin.expected_state or {}).get(metric)
        self.manual_expected[slot] = np.nan if exp is None else exp
        self.hshow[slot] = self._horizon_mask.get(twin.twin_id, True)
        directions, bounds = self._metric_rules.get(twin.twin_id, ({}, {}))
        self.direction[slot] = DIRECTION_CODE[directions.get(metric, DEFAULT_DIRECTIONS.get(metric,
                                                                                             DEFAULT_CUSTOM_DIRECTION))]
        low, high = bounds.get(metric, DOMAINS.get(metric, (-math.inf, math.inf)))
        self.predictor.bank.set_domain([slot], [low], [high])

    def _apply_config(self, twin: DigitalTwin) -> None:
        for slot in self.series.slots_of(twin.twin_id):
            key = self.series.keys[slot]
            assert key is not None
            self._apply_config_slot(slot, twin, key[1])

    # ------------------------------------------------------------- the tick
    def ingest(self, series: np.ndarray, values: np.ndarray, *, at: float, times: np.ndarray | None = None,
               source: Source | str = Source.EXTERNAL, quiet: bool = False) -> TickReport:
        """One sample per listed series; see the module docstring. ``quiet`` (backfill and restore)
        updates the models but opens no alerts, applies no corrections and emits nothing to store."""
        src = Source(source)
        idx = np.asarray(series, np.int64).ravel()
        y = np.asarray(values, np.float64).ravel()
        if y.shape != idx.shape:
            raise InputError(f"ingest: {idx.size} series but {y.size} values")
        t = np.full(idx.size, float(at)) if times is None else np.asarray(times, np.float64).ravel()
        if t.shape != idx.shape:
            raise InputError(f"ingest: {idx.size} series but {t.size} times")
        if not src.is_observation:
            return TickReport(at=at, refused=int(idx.size))
        if idx.size == 0:
            return TickReport(at=at)
        if idx.min() < 0 or idx.max() >= len(self.series) or not self.series.active[idx].all():
            raise InputError("ingest: unknown or retired series slot")
        if np.unique(idx).size != idx.size:            # a slot twice in one call: the last one wins
            _, first_rev = np.unique(idx[::-1], return_index=True)
            keep = np.sort(idx.size - 1 - first_rev)
            idx, y, t = idx[keep], y[keep], t[keep]
        finite = np.isfinite(y) & np.isfinite(t)
        invalid = finite & self.series.nonneg[idx] & (y < 0)
        stale = finite & ~invalid & (t <= self.series.last_t[idx])
        ok = finite & ~invalid & ~stale
        report = TickReport(at=at, accepted=int(ok.sum()), dropped_nonfinite=int((~finite).sum()),
                            dropped_invalid=int(invalid.sum()), dropped_stale=int(stale.sum()))
        if not ok.all():
            idx, y, t = idx[ok], y[ok], t[ok]
        if idx.size:
            self._absorb(idx, t, y, at, src, quiet)
        return report

    def _absorb(self, idx: np.ndarray, t: np.ndarray, y: np.ndarray, at: float, src: Source,
                quiet: bool) -> None:
        self.series.append(idx, t, y)
        exp = self.predictor.update(idx, t, y)
        scores = self.anomaly.score_and_learn(idx, t, y, exp.expected, exp.lower, exp.upper, exp.scale,
                                              exp.learned)
        self.anomaly_score[idx] = scores.score
        manual_e = self.manual_expected[idx]
        manual = np.isfinite(manual_e)
        e = np.where(manual, manual_e, exp.expected)
        div = self.detector.compute(y, e, exp.lower, exp.upper, manual, self.threshold[idx],
                                    divergence_floor(exp.scale, self.limit[idx], exp.tail), exp.tail,
                                    scores.surprise, self.direction[idx])
        self.expected[idx] = e
        self.div_ratio[idx] = div.ratio
        self.div_pct[idx] = div.percent
        self.severity[idx] = div.severity
        self.harmful[idx] = div.harmful
        self.run_len[idx] = np.where(div.diverging, self.run_len[idx] + 1, 0)
        fc = self.predictor.forecast(idx)        # inside each metric's domain (the bank clips to it)
        self.fc_mean[idx], self.fc_lower[idx], self.fc_upper[idx] = fc.mean, fc.lower, fc.upper
        self.fc_conf[idx], self.fc_model[idx], self.slope[idx] = fc.confidence, fc.model, fc.slope_per_s
        if fc.regime is not None:
            self.fc_regime[idx] = fc.regime
        path = np.where(np.isfinite(fc.mean), fc.mean, y[:, None])
        eta = breach_eta(y, path, self.horizons_s, self.limit[idx])
        eta = hide_unsupported_eta(eta, y, path, self.horizons_s, self.limit[idx])
        if self._horizon_mask:                   # a twin with fewer horizons looks only as far as its longest
            longest = np.where(self.hshow[idx], self.horizons_s[None, :], 0.0).max(axis=1)
            with np.errstate(invalid="ignore"):
                eta = np.where(eta <= longest, eta, np.nan)
        self.eta[idx] = eta

        tslots = self.series.twin_slot[idx]
        touched = np.unique(tslots)
        np.fmax.at(self.last_sync, tslots, t)
        self.sync_count[touched] += 1
        self._last_at = at if not math.isfinite(self._last_at) else max(self._last_at, at)
        if quiet:                                # replay/backfill: roll up and build the view on read
            self._dirty = True
            return
        self._alerts_and_corrections(idx, y, e, div.diverging, div.percent, div.severity, manual, at)
        self._twin_rollup(at, quiet=False)
        self._emit_samples(idx, t, y)
        self._emit_predictions(idx, at)
        code = SOURCE_CODES.index(src)
        self.source_count[touched, code] += 1
        self.last_source[touched] = code
        self._refresh_view(at)

    def _alerts_and_corrections(self, idx: np.ndarray, y: np.ndarray, e: np.ndarray, diverging: np.ndarray,
                                pct: np.ndarray, sev: np.ndarray, manual: np.ndarray, at: float) -> None:
        was_open = self.alert_open[idx]
        opened = diverging & ~was_open
        escalated = diverging & was_open & (sev > self.alert_sev[idx]) & (sev >= 3)
        closed = ~diverging & was_open
        for i in np.nonzero(closed)[0].tolist():
            self._alerts.pop(int(idx[i]), None)
        for i in np.nonzero(diverging & was_open & ~escalated)[0].tolist():   # keep the open alert current
            a = self._alerts.get(int(idx[i]))
            if a is not None:
                a.actual_value, a.expected_value = float(y[i]), float(e[i])
                a.divergence_percent = round(float(pct[i]), 3)
                a.severity = self.detector.severity_of(float(pct[i])).value
                a.timestamp = iso(at)
        for i in np.nonzero(opened | escalated)[0].tolist():
            slot = int(idx[i])
            key = self.series.keys[slot]
            assert key is not None
            twin = self._twins[key[0]]
            prev = self._alerts.get(slot)
            alert = self.detector.alert(
                alert_id=prev.alert_id if prev else f"div_{uuid.uuid4().hex[:8]}", twin_id=twin.twin_id,
                metric=key[1], expected=float(e[i]), actual=float(y[i]), percent=float(pct[i]),
                severity_code=int(sev[i]), manual=bool(manual[i]), at=at)
            self._alerts[slot] = alert
            if sev[i] >= 3:
                self.monitor.emit(twin.twin_id, EventType.DIVERGENCE,
                                  "critical" if sev[i] == 4 else "warning",
                                  f"{twin.source_system}: {key[1]} {alert.actual_value:g} vs expected "
                                  f"{alert.expected_value:g} ({alert.divergence_percent:.0f}%, {alert.severity})",
                                  at, {"metric": key[1], "alert_id": alert.alert_id})
            if opened[i]:
                self._correct(twin, alert, at)
        self.alert_open[idx] = diverging
        self.alert_sev[idx] = np.where(diverging, np.maximum(self.alert_sev[idx] * was_open, sev), 0)

    def _correct(self, twin: DigitalTwin, alert: DivergenceAlert, at: float) -> None:
        decision = self.corrector.decide(alert, correction_id=f"corr_{uuid.uuid4().hex[:8]}",
                                         enabled=twin.auto_correction_enabled, at=at)
        if decision.new_expected is not None:
            self._snapshot(twin, f"auto_correction: {decision.record.details}", at)
            new = dict(twin.expected_state or {})
            new[alert.metric] = round(decision.new_expected, 6)
            twin.expected_state = new
            self._touch_expected(twin.twin_id, [alert.metric])
            self._apply_config(twin)
            self._outbox.twins.append(twin)
        self._record_correction(twin, decision.record)
        if decision.record.applied:
            self.monitor.emit(twin.twin_id, EventType.CORRECTION, "info", decision.record.details, at,
                              {"correction_id": decision.record.correction_id})

    def _record_correction(self, twin: DigitalTwin, rec: CorrectionRecord) -> None:
        twin.corrections.append(rec)
        if len(twin.corrections) > self.settings.correction_memory:
            del twin.corrections[: len(twin.corrections) - self.settings.correction_memory]
        self._outbox.corrections.append(rec)

    def _twin_rollup(self, at: float, quiet: bool) -> None:
        n = len(self._slot_twin)
        act = self.series.active[: len(self.series)]
        tslot = np.where(act, self.series.twin_slot[: len(self.series)], -1)
        last = self.series.last_v[: len(self.series)]
        lim = self.limit[: len(self.series)]
        # a divergence the harmless way is shown (low) but costs no health
        sev = np.where(self.harmful[: len(self.series)], self.severity[: len(self.series)], 0)
        pen = series_penalty(last, lim, sev)
        health = health_scores(pen, tslot, n)
        band = health_band(health)
        drift = drift_flags(self.run_len[: len(self.series)], tslot, n, self.settings.drift_samples)
        with np.errstate(invalid="ignore"):
            risky = (self.fc_mean[: len(self.series)] >= lim[:, None]).sum(axis=1)
        ok = tslot >= 0
        risk = np.bincount(tslot[ok], weights=risky[ok], minlength=n)[:n].astype(np.int64)
        if not quiet:
            self._transitions(health, band, drift, risk, at)
        self.health[:n], self.band[:n], self.drift[:n], self.risk_count[:n] = health, band, drift, risk

    def _transitions(self, health: np.ndarray, band: np.ndarray, drift: np.ndarray, risk: np.ndarray,
                     at: float) -> None:
        n = health.shape[0]
        for ts in np.nonzero(band != self.band[:n])[0].tolist():
            tid = self._slot_twin[ts]
            if tid is None:
                continue
            name, h = self._twins[tid].source_system, float(health[ts])
            if band[ts] == 2:
                self.monitor.emit(tid, EventType.HEALTH_CRITICAL, "critical",
                                  f"{name}: health {format_score(h)} is below 50", at, {"health_score": h})
            elif band[ts] == 1:
                self.monitor.emit(tid, EventType.HEALTH_WARNING, "warning",
                                  f"{name}: health {format_score(h)} is below 70", at, {"health_score": h})
            else:
                self.monitor.emit(tid, EventType.HEALTH_RECOVERED, "info",
                                  f"{name}: health {format_score(h)} recovered", at, {"health_score": h})
        for ts in np.nonzero(drift != self.drift[:n])[0].tolist():
            tid = self._slot_twin[ts]
            if tid is None:
                continue
            name = self._twins[tid].source_system
            if drift[ts]:
                self.monitor.emit(tid, EventType.DRIFT_DETECTED, "warning",
                                  f"{name}: sustained divergence from the expected state", at)
            else:
                self.monitor.emit(tid, EventType.DRIFT_CLEARED, "info", f"{name}: drift cleared", at)
        for ts in np.nonzero((risk > 3) & (self.risk_count[:n] <= 3))[0].tolist():
            tid = self._slot_twin[ts]
            if tid is not None:
                self.monitor.emit(tid, EventType.RISK_WARNING, "warning",
                                  f"{self._twins[tid].source_system}: {int(risk[ts])} active risk predictions",
                                  at, {"active_risk_predictions": int(risk[ts])})

    def _emit_samples(self, idx: np.ndarray, t: np.ndarray, y: np.ndarray) -> None:
        if self._key_arrays is None or self._key_arrays[0].size < len(self.series):
            keys = self.series.keys
            self._key_arrays = (np.array([k[0] if k else "" for k in keys], dtype=object),
                                np.array([k[1] if k else "" for k in keys], dtype=object))
        tw, me = self._key_arrays
        self._outbox.samples.append(MetricSamples(twin_id=tw[idx], metric=me[idx], timestamp=t.copy(),
                                                  value=y.copy()))

    def _emit_predictions(self, idx: np.ndarray, at: float) -> None:
        due = idx[(at - self.last_pred_emit[idx]) >= PREDICTION_EVERY_S]
        due = due[np.isfinite(self.fc_mean[due]).any(axis=1)]
        if due.size == 0:
            return
        self.last_pred_emit[due] = at
        h = self.horizons_s.size
        mean, lo, hi = self.fc_mean[due], self.fc_lower[due], self.fc_upper[due]
        lim = np.repeat(self.limit[due][:, None], h, axis=1)
        p = exceed_probability(mean, lo, hi, lim, self.settings.level)
        if self._key_arrays is None or self._key_arrays[0].size < len(self.series):
            self._emit_samples(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))   # builds the name arrays
        assert self._key_arrays is not None
        tw, me = self._key_arrays
        with np.errstate(invalid="ignore"):
            crossing = np.isfinite(lim) & np.isfinite(mean) & (mean >= lim)
        risk = np.full(mean.shape, "", dtype=object)
        for r, j in zip(*np.nonzero(crossing), strict=True):        # only the few forecasts over a limit
            risk[r, j] = risk_text(str(me[due[r]]), float(lim[r, j]), float(self.horizons_s[j]))
        keep = self.hshow[due].ravel()
        self._outbox.predictions.append(PredictionRows(
            twin_id=np.repeat(tw[due], h)[keep], metric=np.repeat(me[due], h)[keep],
            made_at=np.full(due.size * h, at)[keep], horizon_s=np.tile(self.horizons_s, due.size)[keep],
            predicted=mean.ravel()[keep], lower=lo.ravel()[keep], upper=hi.ravel()[keep],
            failure_probability=p.ravel()[keep], risk_factor=risk.ravel()[keep]))

    # ------------------------------------------------------------ per twin
    def sync(self, twin: str, metrics: Mapping[str, float] | SystemMetrics, *, at: float,
             source: Source | str = Source.EXTERNAL) -> dict[str, Any]:
        t = self._lookup(twin)
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

    def set_expected_state(self, twin: str, expected: Mapping[str, float | None], *, at: float,
                           reason: str = "manual") -> StateHistoryEntry:
        """Set (a number) or clear (``None``) expected values; returns the snapshot taken before the change.

        The rules are :mod:`.expected`'s (the API and the rules file ask the same ones): every value is
        checked, then every name against the metrics the twin has series for; a refusal is an
        ``ExpectedStateError`` naming the key and value, and changes nothing (not even a snapshot).
        """
        t = self._lookup(twin)
        checked = check_expected_values(expected)
        check_expected_metrics(checked, set(self.metric_names(t.twin_id)), set(t.expected_state or ()))
        return self._set_expected(t, checked, at=at, reason=reason)

    def _set_expected(self, t: DigitalTwin, checked: Mapping[str, float | None], *, at: float,
                      reason: str) -> StateHistoryEntry:
        """Apply entries whose values are checked; names are the caller's affair (the store's own state)."""
        values, clear = canonical_expected(checked)
        self._touch_expected(t.twin_id, [*values, *clear])
        snap = self._snapshot(t, f"set_expected_state ({reason})", at)
        new = dict(t.expected_state or {})
        new.update(values)
        for k in clear:
            new.pop(k, None)
        t.expected_state = new or None
        self._apply_config(t)
        self._outbox.twins.append(t)
        self._refresh_view(at)
        return snap

    def _touch_expected(self, twin_id: str, keys: Sequence[str] | None) -> None:
        """Remember expected-state keys changed since the start (``None``: the whole state replaced)."""
        if keys is None:
            self._expected_touched[twin_id] = None
            return
        touched = self._expected_touched.setdefault(twin_id, set())
        if touched is not None:
            touched.update(keys)

    def configure(self, twin: str, *, at: float, thresholds: Mapping[str, float] | None = None,
                  limits: Mapping[str, float] | None = None, auto_correction: bool | None = None) -> None:
        """Change a twin's rules (a config reload); a no-op change records nothing."""
        t = self._lookup(twin)
        new_th = _clean_mapping(thresholds, "thresholds") if thresholds is not None else t.thresholds
        new_li = _clean_limits(limits) if limits is not None else t.limits
        new_ac = t.auto_correction_enabled if auto_correction is None else bool(auto_correction)
        if (new_th, new_li, new_ac) == (t.thresholds, t.limits, t.auto_correction_enabled):
            return
        self._snapshot(t, "configuration changed", at)
        t.thresholds, t.limits, t.auto_correction_enabled = new_th, new_li, new_ac
        self._apply_config(t)
        self._outbox.twins.append(t)
        self._refresh_view(at)

    def set_horizons(self, twin: str, horizons_s: Sequence[float] | None, *, at: float) -> None:
        """Show only these of the engine's horizons for this twin (None: all of them).

        The engine forecasts the union of every twin's horizons (one bank, one layout); a twin that asked
        for fewer gets only those in its view rows, status and stored predictions, and its time to a limit
        only within its own longest horizon. It is the rules file's choice, not twin state: not snapshotted.
        """
        t = self._lookup(twin)
        if horizons_s is None:
            self._horizon_mask.pop(t.twin_id, None)
        else:
            asked = np.asarray(list(horizons_s), np.float64).reshape(-1)
            mask = np.isin(self.horizons_s, asked)
            unknown = sorted(set(asked.tolist()) - set(self.horizons_s.tolist()))
            if unknown or not mask.any():
                raise InputError(f"horizons {unknown or list(asked)} of twin {t.source_system!r} are not among "
                                 f"the engine's horizons {self.horizons_s.tolist()}")
            if mask.all():
                self._horizon_mask.pop(t.twin_id, None)
            else:
                self._horizon_mask[t.twin_id] = mask
        self._apply_config(t)
        self._touch(at)

    def set_metric_rules(self, twin: str, *, directions: Mapping[str, str] | None = None,
                         bounds: Mapping[str, tuple[float | None, float | None]] | None = None, at: float) -> None:
        """The rules file's direction (which way a divergence hurts) and bounds (the values a custom metric can
        take) per metric. Like the horizons, the file's choice and not twin state: re-applied at every start."""
        t = self._lookup(twin)
        dirs: dict[str, str] = {}
        for m, d in (directions or {}).items():
            if d not in DIRECTIONS:
                raise InputError(f"direction of {m}: expected one of {', '.join(DIRECTIONS)}, got {d!r}")
            dirs[canonical_metric(m)] = d
        doms: dict[str, tuple[float, float]] = {}
        for m, (lo, hi) in (bounds or {}).items():
            name = canonical_metric(m)
            if name in DOMAINS:
                raise InputError(f"bounds of {name}: a core metric's domain is fixed ({DOMAINS[name]})")
            low = -math.inf if lo is None else float(lo)
            high = math.inf if hi is None else float(hi)
            if math.isnan(low) or math.isnan(high) or not low < high:
                raise InputError(f"bounds of {name}: expected [low, high] with low < high, got [{lo}, {hi}]")
            doms[name] = (low, high)
        if dirs or doms:
            self._metric_rules[t.twin_id] = (dirs, doms)
        else:
            self._metric_rules.pop(t.twin_id, None)
        self._apply_config(t)
        self._touch(at)

    def rollback(self, twin: str, snapshot: StateHistoryEntry, *, at: float) -> dict[str, Any]:
        t = self._lookup(twin)
        if snapshot.twin_id != t.twin_id:
            raise InputError(f"snapshot {snapshot.snapshot_id} belongs to another twin")
        verified(snapshot)
        if not snapshot.can_rollback_to:
            raise InputError(f"snapshot {snapshot.snapshot_id} is marked as not a rollback target")
        state = snapshot.state_snapshot
        before = self._snapshot(t, f"rollback to {snapshot.snapshot_id}", at)
        exp = state.get("expected_state")
        t.expected_state = dict(exp) if exp else None
        self._touch_expected(t.twin_id, None)
        t.thresholds = dict(state.get("thresholds") or {})
        t.limits = dict(state.get("limits") or {})
        t.auto_correction_enabled = bool(state.get("auto_correction_enabled", True))
        if state.get("system_type"):
            t.system_type = SystemType(state["system_type"])
        t.sync_frequency_seconds = float(state.get("sync_frequency_seconds", t.sync_frequency_seconds))
        self._apply_config(t)
        self._outbox.twins.append(t)
        self.monitor.emit(t.twin_id, EventType.ROLLBACK, "info",
                          f"{t.source_system} rolled back to {snapshot.snapshot_id}", at,
                          {"snapshot_id": snapshot.snapshot_id, "undo_snapshot_id": before.snapshot_id})
        self._refresh_view(at)
        return {"success": True, "twin_id": t.twin_id, "snapshot_id": snapshot.snapshot_id,
                "restored_from": iso(snapshot.timestamp), "undo_snapshot_id": before.snapshot_id,
                "expected_state": t.expected_state}

    def snapshots(self, twin: str) -> list[StateHistoryEntry]:
        return list(self._lookup(twin).state_history)

    def find_snapshot(self, twin: str, snapshot_id: str) -> StateHistoryEntry | None:
        for e in self._lookup(twin).state_history:
            if e.snapshot_id == snapshot_id:
                return e
        return None

    def _snapshot(self, twin: DigitalTwin, reason: str, at: float) -> StateHistoryEntry:
        """Record the twin's state as it is now, before the change named by ``reason``."""
        entry = StateHistoryEntry.create(
            snapshot_id=f"snap_{uuid.uuid4().hex[:16]}", twin_id=twin.twin_id, timestamp=at,
            state_snapshot=twin.definition(), metrics=self._current_metrics(twin),
            health_score=float(self.health[self._twin_slot[twin.twin_id]]), change_reason=reason)
        twin.state_history.append(entry)
        excess = len(twin.state_history) - self.settings.snapshot_memory
        if excess > 0:
            del twin.state_history[:excess]
        self._outbox.snapshots.append(entry)
        return entry

    # ----------------------------------------------------------------- reads
    def _current_metrics(self, twin: DigitalTwin) -> dict[str, float]:
        out: dict[str, float] = {}
        for slot in sorted(self.series.slots_of(twin.twin_id)):
            key = self.series.keys[slot]
            v = self.series.last_v[slot]
            if key is not None and np.isfinite(v):
                out[key[1]] = float(v)
        return out

    def _refresh_twin(self, t: DigitalTwin) -> None:
        """Copy the array state of one twin into its record (done on read, not per tick)."""
        if self._dirty:
            self.view()
        ts = self._twin_slot[t.twin_id]
        t.health_score = float(self.health[ts])
        t.drift_detected = bool(self.drift[ts])
        ls = self.last_sync[ts]
        t.last_sync = float(ls) if np.isfinite(ls) else None
        t.metrics_count = int(self.sync_count[ts])
        t.sync_counts = {str(SOURCE_CODES[i]): int(c) for i, c in enumerate(self.source_count[ts].tolist()) if c}
        code = int(self.last_source[ts])
        t.last_source = str(SOURCE_CODES[code]) if code >= 0 else None
        t.current_metrics = self._current_metrics(t)
        t.divergence_alerts = [self._alerts[s] for s in sorted(self.series.slots_of(t.twin_id))
                               if s in self._alerts]
        t.state_predictions = self._predictions(t)

    def _predictions(self, t: DigitalTwin) -> list[StatePrediction]:
        slots = sorted(self.series.slots_of(t.twin_id), key=lambda s: self.series.keys[s] or ("", ""))
        if not slots:
            return []
        trends: list[str] = []
        for s in slots:
            key = self.series.keys[s]
            assert key is not None
            txt = trend_text(key[1], float(self.slope[s]), float(self.series.last_v[s]))
            if txt:
                trends.append(txt)
        names = self.predictor.bank.model_names
        preds: list[StatePrediction] = []
        shown = self._horizon_mask.get(t.twin_id)
        for j, h in enumerate(self.horizons_s.tolist()):
            if shown is not None and not shown[j]:
                continue
            values: dict[str, float] = {}
            per: dict[str, MetricForecast] = {}
            confs: list[float] = []
            risks: list[str] = []
            for s in slots:
                key = self.series.keys[s]
                assert key is not None
                m = float(self.fc_mean[s, j])
                warm = math.isfinite(m)
                if not warm:
                    m = float(self.series.last_v[s])   # not warm yet: the last value, no bounds
                if not math.isfinite(m):
                    continue
                values[key[1]] = m
                conf = float(self.fc_conf[s, j]) if warm else 0.0
                confs.append(conf if math.isfinite(conf) else 0.0)
                per[key[1]] = MetricForecast(predicted=m, lower=float(self.fc_lower[s, j]),
                                             upper=float(self.fc_upper[s, j]), confidence=confs[-1],
                                             model=names[int(self.fc_model[s, j])] if warm else "last",
                                             regime=REGIMES[int(self.fc_regime[s, j])] if warm else REGIMES[1])
                eta = float(self.eta[s])
                lim = float(self.limit[s])
                if math.isfinite(eta) and math.isfinite(lim) and eta <= h:
                    risks.append(risk_text(key[1], lim, eta))
            preds.append(StatePrediction(
                prediction_time=iso((t.last_sync or t.created_at) + h), horizon_seconds=h,
                predicted_metrics=SystemMetrics.from_dict(values),
                confidence=round(float(np.mean(confs)), 4) if confs else 0.0,
                contributing_trends=list(trends), risk_factors=risks, metrics=per))
        return preds

    def predictions(self, twin: str) -> list[StatePrediction]:
        return list(self.get(twin).state_predictions)

    def status(self, twin: str) -> dict[str, Any]:
        t = self.get(twin)
        band = {0: "healthy", 1: "warning", 2: "critical"}[int(self.band[self._twin_slot[t.twin_id]])]
        metrics: dict[str, Any] = {}
        for slot in sorted(self.series.slots_of(t.twin_id), key=lambda s: self.series.keys[s] or ("", "")):
            key = self.series.keys[slot]
            assert key is not None

            def num(v: float) -> float | None:
                return float(v) if math.isfinite(v) else None

            sev = int(self.severity[slot])
            value, expected = float(self.series.last_v[slot]), float(self.expected[slot])
            harmful = bool(self.harmful[slot])
            direction = {1: "up", -1: "down", 0: "both"}[int(self.direction[slot])]
            metrics[key[1]] = {
                "value": num(value),
                "expected": num(expected),
                "direction": direction,
                "divergence_harmful": harmful if sev else None,
                "advice": advice(key[1], harmful, value > expected) if sev else None,
                "expected_source": "manual" if np.isfinite(self.manual_expected[slot]) else "learned",
                "divergence_percent": num(self.div_pct[slot]), "divergence_ratio": num(self.div_ratio[slot]),
                "severity": str(["none", "low", "medium", "high", "critical"][int(self.severity[slot])]),
                "anomaly_score": num(self.anomaly_score[slot]), "limit": num(self.limit[slot]),
                "threshold_percent": num(self.threshold[slot]),
                "breach_eta_seconds": num(self.eta[slot]),
                "samples": int(self.series.count[slot]),
            }
        active_risks = int(self.risk_count[self._twin_slot[t.twin_id]])
        return {
            "twin_id": t.twin_id, "name": t.source_system, "source_system": t.source_system,
            "system_type": str(t.system_type), "labels": dict(t.labels), "created_at": iso(t.created_at),
            "last_sync": iso(t.last_sync) if t.last_sync is not None else None,
            "last_source": t.last_source, "sync_counts": dict(t.sync_counts), "refused_syncs": t.refused_syncs,
            "metrics_count": t.metrics_count, "health_score": round(t.health_score, 2), "health_status": band,
            "drift_detected": t.drift_detected, "current_metrics": dict(t.current_metrics),
            "expected_state": dict(t.expected_state) if t.expected_state else None,
            "auto_correction_enabled": t.auto_correction_enabled,
            "thresholds": dict(t.thresholds), "limits": dict(t.limits),
            "metrics": metrics,
            "state_predictions": [p.to_dict() for p in t.state_predictions],
            "active_predictions": sum(1 for p in t.state_predictions if p.risk_factors),
            "active_risk_predictions": active_risks,
            "divergence_alerts": [a.to_dict() for a in t.divergence_alerts],
            "corrections": [c.to_dict() for c in t.corrections[-20:]],
            "snapshots": len(t.state_history),
            "latest_snapshot_id": t.state_history[-1].snapshot_id if t.state_history else None,
        }

    def list_status(self) -> list[dict[str, Any]]:
        out = []
        for tid in list(self._twins):
            t = self._twins[tid]
            ts = self._twin_slot[tid]
            ls = self.last_sync[ts]
            out.append({"twin_id": tid, "name": t.source_system, "system_type": str(t.system_type),
                        "health_score": round(float(self.health[ts]), 2),
                        "health_status": {0: "healthy", 1: "warning", 2: "critical"}[int(self.band[ts])],
                        "drift_detected": bool(self.drift[ts]),
                        "last_sync": iso(float(ls)) if np.isfinite(ls) else None,
                        "active_alerts": sum(1 for s in self.series.slots_of(tid) if s in self._alerts),
                        "labels": dict(t.labels)})
        return out

    def metric_names(self, twin: str) -> list[str]:
        """The metrics this twin has series for (no history copied: the API checks bodies with it)."""
        t = self._lookup(twin)
        return [k[1] for slot in self.series.slots_of(t.twin_id) if (k := self.series.keys[slot]) is not None]

    def history(self, twin: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        t = self._lookup(twin)
        out = {}
        for slot in self.series.slots_of(t.twin_id):
            key = self.series.keys[slot]
            if key is not None:
                out[key[1]] = self.series.history(slot)
        return out

    def events(self, *, twin: str | None = None, type: str | None = None, since: float | None = None,
               limit: int = 1000) -> list[TwinEvent]:
        tid = self._lookup(twin).twin_id if twin is not None else None
        return self.monitor.query(twin=tid, type=type, since=since, limit=limit)

    # ------------------------------------------------------------- outputs
    def view(self) -> EngineView:
        if self._dirty:
            self._twin_rollup(self._last_at, quiet=True)
            self._refresh_view(self._last_at)
        return self._view

    def drain(self) -> Outbox:
        out = self._outbox
        out.events.extend(self.monitor.take_pending())
        self._outbox = Outbox()
        return out

    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
        if self._names_cache is None:
            act = np.nonzero(self.series.active[: len(self.series)])[0]
            keys = [self.series.keys[i] for i in act.tolist()]
            self._names_cache = (
                tuple(self._twins[k[0]].source_system for k in keys if k),
                tuple(k[1] for k in keys if k), act)
        return self._names_cache

    def _refresh_view(self, at: float) -> None:
        twins_n, metrics_n, act = self._names()
        tslots = [self._twin_slot[tid] for tid in self._twins]
        ts = np.asarray(tslots, np.int64)
        ls = self.last_sync[ts] if ts.size else np.zeros(0)
        self._last_at = at if not math.isfinite(self._last_at) else max(self._last_at, at)
        self._dirty = False
        fc = [a[act] for a in (self.fc_mean, self.fc_lower, self.fc_upper, self.fc_conf)]
        if self._horizon_mask:                   # some twin shows fewer horizons: hide the others' values
            show = self.hshow[act]
            fc = [np.where(show, a, np.nan) for a in fc]
        self._view = EngineView(
            at=self._last_at, horizons_s=self.horizons_s, series_twin=twins_n, series_metric=metrics_n,
            last_value=self.series.last_v[act], forecast_mean=fc[0],
            forecast_lower=fc[1], forecast_upper=fc[2],
            confidence=fc[3], expected=self.expected[act], divergence_ratio=self.div_ratio[act],
            severity=self.severity[act], anomaly=self.anomaly_score[act], limit=self.limit[act],
            breach_eta_s=self.eta[act],
            twin_names=tuple(self._twins[tid].source_system for tid in self._twins),
            health=self.health[ts] if ts.size else np.zeros(0),
            drift=self.drift[ts] if ts.size else np.zeros(0, bool), last_sync=ls,
            series_last_sample=self.series.last_t[act])

    # -------------------------------------------------------------- what-if
    def simulate(self, twin: str, scenario: Mapping[str, Any], *, at: float, seed: int = 0,
                 replicas: int | None = None, workers: int | None = None) -> dict[str, Any]:
        from .simulate import CORE_DOMAINS, SimulationContext, run_scenario

        t = self._lookup(twin)
        if not isinstance(scenario, Mapping):
            raise ScenarioError("scenario must be an object with a 'type'")
        times: dict[str, np.ndarray] = {}
        values: dict[str, np.ndarray] = {}
        mean: dict[str, np.ndarray] = {}
        lower: dict[str, np.ndarray] = {}
        upper: dict[str, np.ndarray] = {}
        limits: dict[str, float] = {}
        for slot in self.series.slots_of(t.twin_id):
            key = self.series.keys[slot]
            assert key is not None
            times[key[1]], values[key[1]] = self.series.history(slot)
            mean[key[1]], lower[key[1]], upper[key[1]] = (self.fc_mean[slot].copy(), self.fc_lower[slot].copy(),
                                                          self.fc_upper[slot].copy())
            if np.isfinite(self.limit[slot]):
                limits[key[1]] = float(self.limit[slot])
        # only the twin's own metrics: a default limit for a metric it does not report would invent one
        for k, v in self.settings.limits.items():
            if k in times:
                limits.setdefault(k, float(t.limits.get(k, v)))
        domains = {m: CORE_DOMAINS[m] for m in times if m in CORE_DOMAINS}
        domains.update({m: b for m, b in self._metric_rules.get(t.twin_id, ({}, {}))[1].items() if m in times})
        sizing = t.initial_state
        if replicas is None and isinstance(sizing.get("replicas"), int):
            replicas = int(sizing["replicas"])
        if workers is None and isinstance(sizing.get("workers"), int):
            workers = int(sizing["workers"])
        ctx = SimulationContext(twin_id=t.twin_id, now=at, limits=limits, times=times, values=values,
                                horizons_s=self.horizons_s.copy(), forecast_mean=mean, forecast_lower=lower,
                                forecast_upper=upper, replicas=replicas, workers=workers, domains=domains)
        result = run_scenario(ctx, scenario, seed=seed).to_dict()
        result["twin_id"] = t.twin_id
        result["source"] = Source.SIMULATION.value   # never ingested: sync refuses this source
        return result

    # ------------------------------------------------------------- restore
    def restore_twin(self, definition: Mapping[str, Any], *, snapshots: Sequence[StateHistoryEntry] = (),
                     samples: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                     corrections: Sequence[CorrectionRecord] = ()) -> DigitalTwin:
        """Bring a stored twin back: definition, verified snapshots, corrections, and recent samples
        replayed quietly so forecasts resume at once. Corrupt snapshots are skipped (and logged)."""
        try:
            name = str(definition["source_system"])
            tid = str(definition["twin_id"])
            twin = DigitalTwin(
                twin_id=tid, source_system=name, system_type=SystemType(definition.get("system_type", "other")),
                created_at=float(definition.get("created_at", 0.0)),
                sync_frequency_seconds=float(definition.get("sync_frequency_seconds", 60.0)),
                initial_state=dict(definition.get("initial_state") or {}),
                expected_state=dict(definition["expected_state"]) if definition.get("expected_state") else None,
                thresholds=dict(definition.get("thresholds") or {}), limits=dict(definition.get("limits") or {}),
                auto_correction_enabled=bool(definition.get("auto_correction_enabled", True)),
                labels=dict(definition.get("labels") or {}))
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"stored twin definition is malformed: {e}") from e
        if tid in self._twins or name in self._by_name:
            raise InputError(f"twin {name!r} ({tid}) already exists")
        self._register(twin)
        good: list[StateHistoryEntry] = []
        for snap in sorted(snapshots, key=lambda s: s.timestamp):
            try:
                good.append(verified(snap))
            except CorruptSnapshotError:
                log.error("corrupt snapshot skipped on restore",
                          extra={"twin_id": tid, "snapshot_id": snap.snapshot_id})
        twin.state_history = good[-self.settings.snapshot_memory:]
        twin.corrections = list(corrections)[-self.settings.correction_memory:]
        if samples:
            self.backfill({(tid, m): v for m, v in samples.items()})
        self._refresh_view(float(twin.created_at) if not math.isfinite(self._last_at) else self._last_at)
        return twin

    def merge_stored(self, definition: Mapping[str, Any], *, snapshots: Sequence[StateHistoryEntry] = (),
                     corrections: Sequence[CorrectionRecord] = (), at: float) -> bool:
        """A stored twin read only after this one was started afresh (the store was down at start).

        Its older snapshots and corrections join the history, and its stored expected state is taken
        back key by key: a key set or cleared since the start (through the API or a correction) keeps its
        newer value or absence, every other key gets its stored value back (a partial change made during
        the outage adds to the stored state instead of replacing it). After a rollback since the start the
        whole state is the newer one. Returns whether any stored value was taken back.
        """
        t = self._lookup(str(definition.get("twin_id", "")) or str(definition.get("source_system", "")))
        known = {e.snapshot_id for e in t.state_history}
        older: list[StateHistoryEntry] = []
        for snap in snapshots:
            if snap.snapshot_id in known:
                continue
            try:
                older.append(verified(snap))
            except CorruptSnapshotError:
                log.error("corrupt snapshot skipped on merge", extra={"twin_id": t.twin_id,
                                                                     "snapshot_id": snap.snapshot_id})
        t.state_history = sorted(older + t.state_history, key=lambda e: e.timestamp)[-self.settings.snapshot_memory:]
        seen = {c.correction_id for c in t.corrections}
        t.corrections = (sorted([c for c in corrections if c.correction_id not in seen], key=lambda c: c.timestamp)
                         + t.corrections)[-self.settings.correction_memory:]
        stored = check_expected_values(dict(definition.get("expected_state") or {}))
        touched = self._expected_touched.get(t.twin_id, set())
        if not stored or touched is None:
            return False
        current = t.expected_state or {}
        back = {k: v for k, v in stored.items() if k not in touched}
        merged = {**back, **{k: v for k, v in current.items() if k in touched}}
        if not back or merged == current:
            return False
        # the engine's own state coming back, not a request: its metrics may not have series yet this run
        changes: dict[str, float | None] = {**back, **{k: None for k in current if k not in merged}}
        touched_before = set(touched)
        self._set_expected(t, changes, at=at, reason="restored from the store after an outage")
        self._expected_touched[t.twin_id] = touched_before      # taking the stored state back is no change
        return True

    def republish(self) -> None:
        """Put every twin's definition in the outbox again (after definitions were held back)."""
        self._outbox.twins.extend(self._twins.values())

    def backfill(self, samples: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> TickReport:
        """Replay history quietly (startup backfill from Prometheus, restore from the store): grouped by
        timestamp across all series, in time order, so it costs one vectorised tick per distinct time."""
        slots, ts, ys = [], [], []
        for (twin, metric), (t_arr, y_arr) in samples.items():
            t_arr = np.asarray(t_arr, np.float64).ravel()
            y_arr = np.asarray(y_arr, np.float64).ravel()
            if t_arr.shape != y_arr.shape:
                raise InputError(f"backfill {twin}/{metric}: {t_arr.size} times but {y_arr.size} values")
            slot = int(self.series_for(twin, [metric])[0])
            slots.append(np.full(t_arr.size, slot, np.int64))
            ts.append(t_arr)
            ys.append(y_arr)
        if not slots:
            return TickReport(at=float("nan"))
        s_all, t_all, y_all = np.concatenate(slots), np.concatenate(ts), np.concatenate(ys)
        keep = np.isfinite(t_all)
        s_all, t_all, y_all = s_all[keep], t_all[keep], y_all[keep]
        if not t_all.size:
            return TickReport(at=float("nan"))
        order = np.argsort(t_all, kind="stable")
        s_all, t_all, y_all = s_all[order], t_all[order], y_all[order]
        bounds = np.flatnonzero(np.diff(t_all)) + 1
        acc = nonf = inv = stale = 0
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, t_all.size], strict=True):
            r = self.ingest(s_all[a:b], y_all[a:b], at=float(t_all[a]), quiet=True)
            acc, nonf = acc + r.accepted, nonf + r.dropped_nonfinite
            inv, stale = inv + r.dropped_invalid, stale + r.dropped_stale
        return TickReport(at=float(t_all[-1]) if t_all.size else float("nan"), accepted=acc,
                          dropped_nonfinite=nonf, dropped_invalid=inv, dropped_stale=stale)

    # ------------------------------------------------------------- model state
    def export_model_states(self) -> dict[str, bytes]:
        """Every twin's learnt model rows (`modelstate`), by twin id; series that saw nothing are left out."""
        return {tid: encode_model_state(st) for tid, st in self.model_states(list(self._twins)).items()}

    def model_states(self, twin_ids: Sequence[str]) -> dict[str, TwinModelState]:
        """These twins' learnt model rows, decoded (what `export_model_states` encodes; the scheduler keeps a
        retired twin's in memory). Twins without a series that saw a sample are left out."""
        fs = self.predictor.bank.state_dict()
        an = self.anomaly.state_dict()
        config = {k: np.array(fs[k]) for k in FORECAST_CONFIG}
        out: dict[str, TwinModelState] = {}
        for tid in twin_ids:
            named = [(s, k[1]) for s in self.series.slots_of(tid)
                     if self.series.count[s] > 0 and (k := self.series.keys[s]) is not None]
            if not named:
                continue
            rows = np.asarray([s for s, _ in named], np.int64)
            out[tid] = TwinModelState(tid, tuple(str(m) for _, m in named), self.series.last_t[rows].copy(),
                                      config, take_rows(fs, rows, FORECAST_CONFIG), take_rows(an, rows))
        return out

    def load_model_states(self, blobs: Mapping[str, bytes]) -> dict[tuple[str, str], float]:
        """Put saved model rows back for twins that exist. Returns, per (twin id, metric), the time up to
        which the rows had learnt: samples up to then must not pass through the models again
        (`restore_history`). A blob that does not fit this engine is skipped whole and logged."""
        states: list[TwinModelState] = []
        for tid, blob in blobs.items():
            if tid not in self._twins:
                continue
            try:
                st = decode_model_state(blob)
                if st.twin_id != tid:
                    raise InputError(f"model state belongs to twin {st.twin_id}")
            except InputError as exc:
                log.error("stored model state unreadable: relearning", extra={"twin_id": tid, "error": str(exc)})
                continue
            states.append(st)
        return self.put_model_states(states)

    def put_model_states(self, states: Sequence[TwinModelState]) -> dict[tuple[str, str], float]:
        """Decoded rows (`model_states`, or blobs `load_model_states` read) put back for twins that exist;
        returns what `load_model_states` does. Rows that do not fit this engine are skipped whole and logged."""
        states = [st for st in states if st.twin_id in self._twins]
        if not states:
            return {}
        placed = [(st, self.series_for(st.twin_id, list(st.metrics))) for st in states]   # may grow the banks
        fs = self.predictor.bank.state_dict()
        an = self.anomaly.state_dict()
        config = {k: fs[k] for k in FORECAST_CONFIG}
        learnt: dict[tuple[str, str], float] = {}
        for st, rows in placed:
            try:
                part = st.forecast
                if not same_forecast_config(st.forecast_config, config):
                    if not same_but_horizons(st.forecast_config, config):
                        raise InputError("saved by other forecast models, level or queue")
                    # other horizons (one twin's rule changed the set): keep the shared ones and every model
                    part = remap_horizons(part, take_rows(fs, rows, FORECAST_CONFIG),
                                          st.forecast_config["horizons_s"], config["horizons_s"], HORIZON_AXIS)
                check_rows(fs, rows, part, FORECAST_CONFIG)
                check_rows(an, rows, st.anomaly)
            except InputError as exc:
                log.warning("stored model state does not fit: relearning", extra={
                    "twin_id": st.twin_id, "error": str(exc)})
                continue
            put_rows(fs, rows, part)
            put_rows(an, rows, st.anomaly)
            self.series.last_t[rows] = np.fmax(self.series.last_t[rows], st.learnt_until)
            learnt.update({(st.twin_id, m): float(t) for m, t in zip(st.metrics, st.learnt_until, strict=True)})
        if learnt:
            self.predictor.bank.load_state_dict(fs)
            self.anomaly.load_state_dict(an)
        return learnt

    def restore_history(self, samples: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                        learnt_until: Mapping[tuple[str, str], float]) -> TickReport:
        """Stored samples after a restart: those the loaded model rows already absorbed only rejoin the
        series' history (for the API and the capacity fit); later ones replay through the models."""
        later: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        slots, ts, ys, cuts = [], [], [], []
        for key, (t_arr, y_arr) in samples.items():
            t_arr = np.asarray(t_arr, np.float64).ravel()
            y_arr = np.asarray(y_arr, np.float64).ravel()
            if t_arr.shape != y_arr.shape:
                raise InputError(f"restore {key[0]}/{key[1]}: {t_arr.size} times but {y_arr.size} values")
            cut = learnt_until.get(key, -math.inf)
            old = (t_arr <= cut) & np.isfinite(t_arr) & np.isfinite(y_arr)
            if old.any():
                slot = int(self.series_for(key[0], [key[1]])[0])
                slots.append(np.full(int(old.sum()), slot, np.int64))
                ts.append(t_arr[old])
                ys.append(y_arr[old])
                cuts.append((slot, cut))
            later[key] = (t_arr[t_arr > cut], y_arr[t_arr > cut])
        if slots:
            s_all, t_all, y_all = np.concatenate(slots), np.concatenate(ts), np.concatenate(ys)
            order = np.lexsort((t_all, s_all))
            s_all, t_all, y_all = s_all[order], t_all[order], y_all[order]
            first = np.r_[0, np.flatnonzero(np.diff(s_all)) + 1]
            rank = np.arange(s_all.size) - np.repeat(first, np.diff(np.r_[first, s_all.size]))
            for r in range(int(rank.max()) + 1):     # one sample per slot per call, oldest first
                at_r = rank == r
                self.series.append(s_all[at_r], t_all[at_r], y_all[at_r])
            for slot, cut in cuts:
                self.series.last_t[slot] = max(float(self.series.last_t[slot]), cut)
        return self.backfill(later)

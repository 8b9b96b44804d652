"""The twin registry: twins created, looked up and retired; their series' slots; their rules put into the arrays.

A twin has a slot in the per-twin arrays and one series slot per metric; a reused slot forgets its past
before it is handed out again. Every change a person can undo is preceded by a snapshot (:meth:`snapshot`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CapacityError, InputError, UnknownTwinError
from .diverge import DIRECTION_CODE
from .expected import canonical_expected, check_expected_values, check_limit_value
from .models_base import grown_capacity, release_freed
from .records import DigitalTwin, EventType, StateHistoryEntry, SystemType, canonical_metric
from .settings import DEFAULT_CUSTOM_DIRECTION, DEFAULT_DIRECTIONS, DOMAINS
from .state import EngineState

log = logging.getLogger("sidecar.engine.core")   # the engine's logger, as before its rooms were split


def stable_twin_id(name: str, namespace: str = "") -> str:
    """The same name always maps to the same id, so a restart finds its twins again.

    Replicas sharing one database twin the same names; each gets its own ids (its namespace is its replica
    name), so definitions, snapshots, model state and retention never mix between them. The empty namespace
    gives the ids a single replica has always had."""
    key = name if not namespace else f"{namespace}\x00{name}"
    return "twin_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def clean_mapping(values: Mapping[str, Any], what: str) -> dict[str, float]:
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


def clean_limits(values: Mapping[str, Any]) -> dict[str, float]:
    """Limits as the rules file takes them: a core metric's at or below 0 (breached by every sample), or a
    percentage's above 100, is refused here too, so a library caller cannot set a breach that never ends."""
    for k, v in values.items():
        check_limit_value(k, v)
    return clean_mapping(values, "limits")


class TwinRegistry:
    """Twins and their slots; see the module docstring."""

    def __init__(self, state: EngineState) -> None:
        self.st = state

    # ------------------------------------------------------------------ twins
    def create_twin(self, name: str, *, at: float, system_type: SystemType | str = SystemType.OTHER,
                    twin_id: str | None = None, initial_state: Mapping[str, Any] | None = None,
                    sync_frequency_seconds: float = 60.0, expected: Mapping[str, float] | None = None,
                    thresholds: Mapping[str, float] | None = None, limits: Mapping[str, float] | None = None,
                    auto_correction: bool = True, labels: Mapping[str, str] | None = None) -> DigitalTwin:
        st = self.st
        if not isinstance(name, str) or not name:
            raise InputError("twin name must be a non-empty string")
        if name in st.by_name:
            raise InputError(f"a twin named {name!r} already exists ({st.by_name[name]})")
        self._check_capacity(name, at)
        try:
            stype = SystemType(system_type)
        except ValueError as e:
            raise InputError(f"unknown system_type {system_type!r}; valid: "
                             f"{', '.join(t.value for t in SystemType)}") from e
        tid = twin_id or stable_twin_id(name, st.settings.id_namespace)
        if tid in st.twins:
            raise InputError(f"twin id {tid} already exists")
        # values only: a new twin has no series to look names up in (the rules file checked them against its rule)
        initial_expected = canonical_expected(check_expected_values(expected or {}, allow_null=False))[0]
        twin = DigitalTwin(
            twin_id=tid, source_system=name, system_type=stype, created_at=at,
            sync_frequency_seconds=float(sync_frequency_seconds), initial_state=dict(initial_state or {}),
            expected_state=initial_expected or None,
            thresholds=clean_mapping(thresholds or {}, "thresholds"),
            limits=clean_limits(limits or {}),
            auto_correction_enabled=bool(auto_correction), labels=dict(labels or {}))
        self.register(twin)
        self.snapshot(twin, "created", at)
        st.outbox.twins.append(twin)
        st.monitor.emit(tid, EventType.TWIN_CREATED, "info", f"twin {name} created", at)
        st.refusing = False
        st.touch(at)
        log.info("twin created", extra={"twin": name, "twin_id": tid})
        return twin

    def _check_capacity(self, name: str, at: float) -> None:
        """Refuse a new twin past ``max_twins``, or once ``max_series`` series exist: counted every time, told
        (a warning and a ``twin_refused`` event) once per episode, i.e. until a new twin is accepted again."""
        st = self.st
        s = st.settings
        series = int(np.count_nonzero(st.series.active[: len(st.series)]))
        if s.max_twins is not None and len(st.twins) >= s.max_twins:
            limit, message = "max_twins", f"limits.max_twins ({s.max_twins:,}) reached"
        elif s.max_series is not None and series >= s.max_series:
            limit, message = "max_series", f"limits.max_series ({s.max_series:,}) reached ({series:,} series)"
        else:
            return
        st.twins_refused[limit] = st.twins_refused.get(limit, 0) + 1
        if not st.refusing:
            st.refusing = True
            log.warning("new twins refused", extra={"twin": name, "limit": limit, "twins": len(st.twins),
                                                    "series": series, "reason": message})
            st.monitor.emit(stable_twin_id(name, s.id_namespace), EventType.TWIN_REFUSED, "warning",
                            f"twin {name} refused: {message}; further new twins are refused until there is room",
                            at, {"limit": limit, "twins": len(st.twins), "series": series})
            st.touch(at)
        raise CapacityError(f"twin {name!r} refused: {message}", limit=limit)

    def register(self, twin: DigitalTwin) -> None:
        st = self.st
        if st.free_twin_slots:
            slot = st.free_twin_slots.pop()
            st.slot_twin[slot] = twin.twin_id
        else:
            slot = len(st.slot_twin)
            st.slot_twin.append(twin.twin_id)
            if slot >= st.twin_rows.rows:
                st.twin_rows.grow(grown_capacity(st.twin_rows.rows, slot + 1))
        st.twin_rows.reset(slot)
        st.twins[twin.twin_id] = twin
        st.by_name[twin.source_system] = twin.twin_id
        st.twin_slot[twin.twin_id] = slot

    def retire_twin(self, twin: str, *, at: float) -> None:
        """Forget the twin and its series (the caller rebuilds the view)."""
        st = self.st
        t = self.lookup(twin)
        self.snapshot(t, "retired", at)
        slots = st.series.slots_of(t.twin_id)
        st.series.remove(slots)
        for s in slots:
            st.alerts.pop(s, None)
        tslot = st.twin_slot.pop(t.twin_id)
        st.slot_twin[tslot] = None
        st.free_twin_slots.append(tslot)
        del st.twins[t.twin_id]
        del st.by_name[t.source_system]
        st.horizon_mask.pop(t.twin_id, None)
        st.metric_rules.pop(t.twin_id, None)
        st.expected_touched.pop(t.twin_id, None)
        st.forget_names()
        st.outbox.retired.append(t.twin_id)
        st.monitor.emit(t.twin_id, EventType.TWIN_RETIRED, "info", f"twin {t.source_system} retired", at)

    def lookup(self, twin: str) -> DigitalTwin:
        """The twin by id or name, as it is (the arrays not copied into its record)."""
        tid = twin if twin in self.st.twins else self.st.by_name.get(twin)
        if tid is None:
            raise UnknownTwinError(f"no twin {twin!r}")
        return self.st.twins[tid]

    def metric_names(self, twin: str) -> list[str]:
        """The metrics this twin has series for (no history copied: the API checks bodies with it)."""
        t = self.lookup(twin)
        series = self.st.series
        return [k[1] for slot in series.slots_of(t.twin_id) if (k := series.keys[slot]) is not None]

    def current_metrics(self, twin: DigitalTwin) -> dict[str, float]:
        out: dict[str, float] = {}
        series = self.st.series
        for slot in sorted(series.slots_of(twin.twin_id)):
            key = series.keys[slot]
            v = series.last_v[slot]
            if key is not None and np.isfinite(v):
                out[key[1]] = float(v)
        return out

    def snapshot(self, twin: DigitalTwin, reason: str, at: float) -> StateHistoryEntry:
        """Record the twin's state as it is now, before the change named by ``reason``."""
        st = self.st
        entry = StateHistoryEntry.create(
            snapshot_id=f"snap_{uuid.uuid4().hex[:16]}", twin_id=twin.twin_id, timestamp=at,
            state_snapshot=twin.definition(), metrics=self.current_metrics(twin),
            health_score=float(st.twin_rows.health[st.twin_slot[twin.twin_id]]), change_reason=reason)
        twin.state_history.append(entry)
        excess = len(twin.state_history) - st.settings.snapshot_memory
        if excess > 0:
            del twin.state_history[:excess]
        st.outbox.snapshots.append(entry)
        return entry

    # ----------------------------------------------------------------- series
    def series_for(self, twin: str, metrics: Sequence[str]) -> np.ndarray:
        t = self.lookup(twin)
        tslot = self.st.twin_slot[t.twin_id]
        out = np.empty(len(metrics), np.int64)
        for i, m in enumerate(metrics):
            name = canonical_metric(m)
            slot, new = self.st.series.add(t.twin_id, name, tslot)
            if new:
                self.init_slot(slot, t, name)
            out[i] = slot
        return out

    def init_slot(self, slot: int, twin: DigitalTwin, metric: str) -> None:
        """A fresh slot (from the banks' amortised growth) is already empty; a reused one is reset."""
        st = self.st
        cap = st.series.capacity
        st.rows.grow(cap)
        grew = st.bank.size < cap
        if grew:                               # keep the banks' slots aligned
            st.bank.add(cap - st.bank.size)
        if st.anomaly.size < cap:
            grew = True
            st.anomaly.add(cap - st.anomaly.size)
        if grew:
            release_freed()                    # the stores just grew: their old arrays' pages go back
        if slot in st.used_slots:                        # a reused slot: forget its past
            idx = np.array([slot])
            st.bank.reset(idx)
            st.anomaly.reset(idx)
            st.rows.reset(slot)
            st.alerts.pop(slot, None)
        st.used_slots.add(slot)
        self.apply_config_slot(slot, twin, metric)
        st.forget_names()

    def apply_config_slot(self, slot: int, twin: DigitalTwin, metric: str) -> None:
        st = self.st
        s, rows = st.settings, st.rows
        rows.threshold[slot] = twin.thresholds.get(metric, s.thresholds.get(metric, s.custom_threshold))
        rows.limit[slot] = twin.limits.get(metric, s.limits.get(metric, np.nan))
        exp = (twin.expected_state or {}).get(metric)
        rows.manual_expected[slot] = np.nan if exp is None else exp
        rows.hshow[slot] = st.horizon_mask.get(twin.twin_id, True)
        directions, bounds = st.metric_rules.get(twin.twin_id, ({}, {}))
        rows.direction[slot] = DIRECTION_CODE[directions.get(metric, DEFAULT_DIRECTIONS.get(metric,
                                                                                             DEFAULT_CUSTOM_DIRECTION))]
        low, high = bounds.get(metric, DOMAINS.get(metric, (-math.inf, math.inf)))
        st.bank.set_domain([slot], [low], [high])

    def apply_config(self, twin: DigitalTwin) -> None:
        for slot in self.st.series.slots_of(twin.twin_id):
            key = self.st.series.keys[slot]
            assert key is not None
            self.apply_config_slot(slot, twin, key[1])

"""A twin's rules: its expected state, thresholds and limits, horizons and metric rules; snapshots and rollback.

Twin state (expected state, thresholds, limits, auto-correction) changes only after a snapshot of how it was,
so every change can be rolled back. The rules file's horizons and metric rules (direction, bounds) are not
twin state: they are re-applied at every start and never snapshotted. Each change goes into the arrays at
once (``TwinRegistry.apply_config``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .expected import canonical_expected, check_expected_metrics, check_expected_values
from .history import verified
from .records import DigitalTwin, EventType, StateHistoryEntry, SystemType, canonical_metric, iso
from .settings import DIRECTIONS, DOMAINS
from .state import EngineState
from .tick import Tick
from .twins import TwinRegistry, clean_limits, clean_mapping


class Rules:
    """Changes to a twin's rules; see the module docstring."""

    def __init__(self, state: EngineState, registry: TwinRegistry, tick: Tick) -> None:
        self.st = state
        self.registry = registry
        self.tick = tick

    def set_expected_state(self, twin: str, expected: Mapping[str, float | None], *, at: float,
                           reason: str = "manual") -> StateHistoryEntry:
        """Set (a number) or clear (``None``) expected values; returns the snapshot taken before the change.

        The rules are :mod:`.expected`'s (the API and the rules file ask the same ones): every value is
        checked, then every name against the metrics the twin has series for; a refusal is an
        ``ExpectedStateError`` naming the key and value, and changes nothing (not even a snapshot).
        """
        t = self.registry.lookup(twin)
        checked = check_expected_values(expected)
        check_expected_metrics(checked, set(self.registry.metric_names(t.twin_id)), set(t.expected_state or ()))
        return self.set_expected(t, checked, at=at, reason=reason)

    def set_expected(self, t: DigitalTwin, checked: Mapping[str, float | None], *, at: float,
                     reason: str) -> StateHistoryEntry:
        """Apply entries whose values are checked; names are the caller's affair (the store's own state)."""
        values, clear = canonical_expected(checked)
        self.st.touch_expected(t.twin_id, [*values, *clear])
        snap = self.registry.snapshot(t, f"set_expected_state ({reason})", at)
        new = dict(t.expected_state or {})
        new.update(values)
        for k in clear:
            new.pop(k, None)
        t.expected_state = new or None
        self.registry.apply_config(t)
        self.st.outbox.twins.append(t)
        self.tick.refresh_view(at)
        return snap

    def configure(self, twin: str, *, at: float, thresholds: Mapping[str, float] | None = None,
                  limits: Mapping[str, float] | None = None, auto_correction: bool | None = None) -> None:
        """Change a twin's rules (a config reload); a no-op change records nothing."""
        t = self.registry.lookup(twin)
        new_th = clean_mapping(thresholds, "thresholds") if thresholds is not None else t.thresholds
        new_li = clean_limits(limits) if limits is not None else t.limits
        new_ac = t.auto_correction_enabled if auto_correction is None else bool(auto_correction)
        if (new_th, new_li, new_ac) == (t.thresholds, t.limits, t.auto_correction_enabled):
            return
        self.registry.snapshot(t, "configuration changed", at)
        t.thresholds, t.limits, t.auto_correction_enabled = new_th, new_li, new_ac
        self.registry.apply_config(t)
        self.st.outbox.twins.append(t)
        self.tick.refresh_view(at)

    def set_horizons(self, twin: str, horizons_s: Sequence[float] | None, *, at: float) -> None:
        """Show only these of the engine's horizons for this twin (None: all of them).

        The engine forecasts the union of every twin's horizons (one bank, one layout); a twin that asked
        for fewer gets only those in its view rows, status and stored predictions, and its time to a limit
        only within its own longest horizon. It is the rules file's choice, not twin state: not snapshotted.
        """
        st = self.st
        t = self.registry.lookup(twin)
        if horizons_s is None:
            st.horizon_mask.pop(t.twin_id, None)
        else:
            asked = np.asarray(list(horizons_s), np.float64).reshape(-1)
            mask = np.isin(st.horizons_s, asked)
            unknown = sorted(set(asked.tolist()) - set(st.horizons_s.tolist()))
            if unknown or not mask.any():
                raise InputError(f"horizons {unknown or list(asked)} of twin {t.source_system!r} are not among "
                                 f"the engine's horizons {st.horizons_s.tolist()}")
            if mask.all():
                st.horizon_mask.pop(t.twin_id, None)
            else:
                st.horizon_mask[t.twin_id] = mask
        self.registry.apply_config(t)
        st.touch(at)

    def set_metric_rules(self, twin: str, *, directions: Mapping[str, str] | None = None,
                         bounds: Mapping[str, tuple[float | None, float | None]] | None = None, at: float) -> None:
        """The rules file's direction (which way a divergence hurts) and bounds (the values a custom metric can
        take) per metric. Like the horizons, the file's choice and not twin state: re-applied at every start."""
        t = self.registry.lookup(twin)
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
            self.st.metric_rules[t.twin_id] = (dirs, doms)
        else:
            self.st.metric_rules.pop(t.twin_id, None)
        self.registry.apply_config(t)
        self.st.touch(at)

    # ------------------------------------------------------------- snapshots
    def rollback(self, twin: str, snapshot: StateHistoryEntry, *, at: float) -> dict[str, Any]:
        t = self.registry.lookup(twin)
        if snapshot.twin_id != t.twin_id:
            raise InputError(f"snapshot {snapshot.snapshot_id} belongs to another twin")
        verified(snapshot)
        if not snapshot.can_rollback_to:
            raise InputError(f"snapshot {snapshot.snapshot_id} is marked as not a rollback target")
        state = snapshot.state_snapshot
        before = self.registry.snapshot(t, f"rollback to {snapshot.snapshot_id}", at)
        exp = state.get("expected_state")
        t.expected_state = dict(exp) if exp else None
        self.st.touch_expected(t.twin_id, None)
        t.thresholds = dict(state.get("thresholds") or {})
        t.limits = dict(state.get("limits") or {})
        t.auto_correction_enabled = bool(state.get("auto_correction_enabled", True))
        if state.get("system_type"):
            t.system_type = SystemType(state["system_type"])
        t.sync_frequency_seconds = float(state.get("sync_frequency_seconds", t.sync_frequency_seconds))
        self.registry.apply_config(t)
        self.st.outbox.twins.append(t)
        self.st.monitor.emit(t.twin_id, EventType.ROLLBACK, "info",
                             f"{t.source_system} rolled back to {snapshot.snapshot_id}", at,
                             {"snapshot_id": snapshot.snapshot_id, "undo_snapshot_id": before.snapshot_id})
        self.tick.refresh_view(at)
        return {"success": True, "twin_id": t.twin_id, "snapshot_id": snapshot.snapshot_id,
                "restored_from": iso(snapshot.timestamp), "undo_snapshot_id": before.snapshot_id,
                "expected_state": t.expected_state}

    def snapshots(self, twin: str) -> list[StateHistoryEntry]:
        return list(self.registry.lookup(twin).state_history)

    def find_snapshot(self, twin: str, snapshot_id: str) -> StateHistoryEntry | None:
        for e in self.registry.lookup(twin).state_history:
            if e.snapshot_id == snapshot_id:
                return e
        return None

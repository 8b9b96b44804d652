"""A twin coming back: its stored definition, snapshots and corrections, its learnt model rows, its samples.

At a start the service restores each stored twin (``restore_twin``), puts its saved model rows back
(``load_model_states``) and replays only the samples those rows had not yet seen (``restore_history``); the
replay is quiet (``Tick.ingest(quiet=True)``), one vectorised tick per distinct time (``backfill``), so
forecasts resume at once and nothing already stored is emitted again. A stored twin read only after the
service started afresh joins its history (``merge_stored``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CorruptSnapshotError, InputError
from .anomaly import renormed
from .expected import check_expected_values
from .forecast import HORIZON_AXIS, MODEL_AXIS
from .history import verified
from .modelstate import (
    FORECAST_CONFIG,
    TwinModelState,
    check_rows,
    names_of,
    put_rows,
    remap_horizons,
    remap_models,
    same_forecast_config,
    same_level_and_queue,
    take_rows,
    widen_rows,
)
from .modelstate import decode as decode_model_state
from .modelstate import encode as encode_model_state
from .records import CorrectionRecord, DigitalTwin, StateHistoryEntry, SystemType
from .rules import Rules
from .state import EngineState
from .tick import Tick, TickReport
from .twins import TwinRegistry

log = logging.getLogger("sidecar.engine.core")   # the engine's logger, as before its rooms were split


class Restore:
    """Restore, merge, model state and quiet replay; see the module docstring."""

    def __init__(self, state: EngineState, registry: TwinRegistry, tick: Tick, rules: Rules) -> None:
        self.st = state
        self.registry = registry
        self.tick = tick
        self.rules = rules

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
        if tid in self.st.twins or name in self.st.by_name:
            raise InputError(f"twin {name!r} ({tid}) already exists")
        self.registry.register(twin)
        good: list[StateHistoryEntry] = []
        for snap in sorted(snapshots, key=lambda s: s.timestamp):
            try:
                good.append(verified(snap))
            except CorruptSnapshotError:
                log.error("corrupt snapshot skipped on restore",
                          extra={"twin_id": tid, "snapshot_id": snap.snapshot_id})
        twin.state_history = good[-self.st.settings.snapshot_memory:]
        twin.corrections = list(corrections)[-self.st.settings.correction_memory:]
        if samples:
            self.backfill({(tid, m): v for m, v in samples.items()})
        self.tick.refresh_view(float(twin.created_at) if not math.isfinite(self.st.last_at) else self.st.last_at)
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
        t = self.registry.lookup(str(definition.get("twin_id", "")) or str(definition.get("source_system", "")))
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
        t.state_history = sorted(older + t.state_history, key=lambda e: e.timestamp)[-self.st.settings.snapshot_memory:]
        seen = {c.correction_id for c in t.corrections}
        t.corrections = (sorted([c for c in corrections if c.correction_id not in seen], key=lambda c: c.timestamp)
                         + t.corrections)[-self.st.settings.correction_memory:]
        stored = check_expected_values(dict(definition.get("expected_state") or {}))
        touched = self.st.expected_touched.get(t.twin_id, set())
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
        self.rules.set_expected(t, changes, at=at, reason="restored from the store after an outage")
        self.st.expected_touched[t.twin_id] = touched_before      # taking the stored state back is no change
        return True

    def republish(self) -> None:
        """Put every twin's definition in the outbox again (after definitions were held back)."""
        self.st.outbox.twins.extend(self.st.twins.values())

    def backfill(self, samples: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> TickReport:
        """Replay history quietly (startup backfill from Prometheus, restore from the store): grouped by
        timestamp across all series, in time order, so it costs one vectorised tick per distinct time."""
        slots, ts, ys = [], [], []
        for (twin, metric), (t_arr, y_arr) in samples.items():
            t_arr = np.asarray(t_arr, np.float64).ravel()
            y_arr = np.asarray(y_arr, np.float64).ravel()
            if t_arr.shape != y_arr.shape:
                raise InputError(f"backfill {twin}/{metric}: {t_arr.size} times but {y_arr.size} values")
            slot = int(self.registry.series_for(twin, [metric])[0])
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
            r = self.tick.ingest(s_all[a:b], y_all[a:b], at=float(t_all[a]), quiet=True)
            acc, nonf = acc + r.accepted, nonf + r.dropped_nonfinite
            inv, stale = inv + r.dropped_invalid, stale + r.dropped_stale
        return TickReport(at=float(t_all[-1]) if t_all.size else float("nan"), accepted=acc,
                          dropped_nonfinite=nonf, dropped_invalid=inv, dropped_stale=stale)

    # ------------------------------------------------------------- model state
    def export_model_states(self) -> dict[str, bytes]:
        """Every twin's learnt model rows (`modelstate`), by twin id; series that saw nothing are left out."""
        return {tid: encode_model_state(st) for tid, st in self.model_states(list(self.st.twins)).items()}

    def model_states(self, twin_ids: Sequence[str]) -> dict[str, TwinModelState]:
        """These twins' learnt model rows, decoded (what `export_model_states` encodes; the scheduler keeps a
        retired twin's in memory). Twins without a series that saw a sample are left out."""
        fs = self.st.bank.state_dict(copy=False)     # views: only these twins' rows are copied
        an = self.st.anomaly.state_dict(copy=False)
        config = {k: np.array(fs[k]) for k in FORECAST_CONFIG}
        out: dict[str, TwinModelState] = {}
        for tid in twin_ids:
            named = [(s, k[1]) for s in self.st.series.slots_of(tid)
                     if self.st.series.count[s] > 0 and (k := self.st.series.keys[s]) is not None]
            if not named:
                continue
            rows = np.asarray([s for s, _ in named], np.int64)
            out[tid] = TwinModelState(tid, tuple(str(m) for _, m in named), self.st.series.last_t[rows].copy(),
                                      config, take_rows(fs, rows, FORECAST_CONFIG), take_rows(an, rows))
        return out

    def load_model_states(self, blobs: Mapping[str, bytes]) -> dict[tuple[str, str], float]:
        """Put saved model rows back for twins that exist. Returns, per (twin id, metric), the time up to
        which the rows had learnt: samples up to then must not pass through the models again
        (`restore_history`). A blob that does not fit this engine is skipped whole and logged."""
        states: list[TwinModelState] = []
        for tid, blob in blobs.items():
            if tid not in self.st.twins:
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
        states = [st for st in states if st.twin_id in self.st.twins]
        if not states:
            return {}
        placed = [(st, self.registry.series_for(st.twin_id, list(st.metrics))) for st in states]   # may grow the banks
        fs = self.st.bank.state_dict()
        an = self.st.anomaly.state_dict()
        config = {k: fs[k] for k in FORECAST_CONFIG}
        learnt: dict[tuple[str, str], float] = {}
        for st, rows in placed:
            try:
                part = self.st.bank.upgrade_saved(st.forecast)     # rows saved in an earlier layout
                saved = st.forecast_config
                if not same_forecast_config(saved, config):
                    if not same_level_and_queue(saved, config):
                        raise InputError("saved at another interval level or queue length")
                    if names_of(saved) != names_of(config):
                        # another version's models: each model both have keeps what it learnt
                        part = remap_models(part, take_rows(fs, rows, FORECAST_CONFIG), names_of(saved),
                                            names_of(config), MODEL_AXIS)
                    if not np.array_equal(np.asarray(saved["horizons_s"], np.float64),
                                          np.asarray(config["horizons_s"], np.float64)):
                        # other horizons (one twin's rule changed the set): keep the shared ones and every model
                        part = remap_horizons(part, take_rows(fs, rows, FORECAST_CONFIG), saved["horizons_s"],
                                              config["horizons_s"], HORIZON_AXIS)
                check_rows(fs, rows, part, FORECAST_CONFIG)
                # features added since it was saved; histograms saved as float64 brought into float32's range
                anomaly_part = widen_rows(an, rows, renormed(st.anomaly))
                check_rows(an, rows, anomaly_part)
            except InputError as exc:
                log.warning("stored model state does not fit: relearning", extra={
                    "twin_id": st.twin_id, "error": str(exc)})
                continue
            put_rows(fs, rows, part)
            put_rows(an, rows, anomaly_part)
            self.st.series.last_t[rows] = np.fmax(self.st.series.last_t[rows], st.learnt_until)
            learnt.update({(st.twin_id, m): float(t) for m, t in zip(st.metrics, st.learnt_until, strict=True)})
        if learnt:
            self.st.bank.load_state_dict(fs)
            self.st.anomaly.load_state_dict(an)
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
                slot = int(self.registry.series_for(key[0], [key[1]])[0])
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
                self.st.series.append(s_all[at_r], t_all[at_r], y_all[at_r])
            for slot, cut in cuts:
                self.st.series.last_t[slot] = max(float(self.st.series.last_t[slot]), cut)
        return self.backfill(later)

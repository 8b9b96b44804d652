"""The tick: one vectorised pass over every series that got a sample, and what it leaves behind.

``Tick.ingest`` checks a batch (one sample per series), ``absorb`` runs the models, anomaly scores and
divergence over all of it in a handful of numpy calls, then Python only for the few things that changed:
an alert opening or escalating, a correction, a health band or drift crossed. The twin roll-up (health,
drift, risk) and the immutable ``EngineView`` are rebuilt after every loud tick, and on the next read after
quiet ones (backfill and restore). Samples and forecasts due for the store go to the outbox.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .diverge import divergence_floor, harmful_side
from .health import drift_flags, format_score, health_band, health_scores, series_penalty
from .predict import breach_eta, exceed_probability, hide_unsupported_eta, risk_text
from .records import CorrectionRecord, DigitalTwin, DivergenceAlert, EventType, Source, iso
from .state import SOURCE_CODES, EngineState
from .twins import TwinRegistry
from .view import EngineView, MetricSamples, PredictionRows

#: Forecast rows for the store at most this often per series by default (``EngineSettings.forecast_store_every_s``;
#: the tick is every 15 s): the exporter has every tick; the table is an audit trail of what was predicted, not a
#: time series.
PREDICTION_EVERY_S = 300.0

#: Spreads the series' first forecast rows over the period (the golden ratio's fraction: evenly, whatever the count).
_PHASE_STEP = 0.6180339887498949


@dataclass(frozen=True, slots=True)
class TickReport:
    at: float
    accepted: int = 0
    dropped_nonfinite: int = 0      # NaN / ±Inf values or times
    dropped_invalid: int = 0        # negative values of metrics that cannot be negative
    dropped_stale: int = 0          # repeated or backward timestamps
    refused: int = 0                # not an observation (internal / simulation source)


class Tick:
    """The batch path; see the module docstring."""

    def __init__(self, state: EngineState, registry: TwinRegistry) -> None:
        self.st = state
        self.registry = registry

    def ingest(self, series: np.ndarray, values: np.ndarray, *, at: float, times: np.ndarray | None = None,
               source: Source | str = Source.EXTERNAL, quiet: bool = False) -> TickReport:
        """One sample per listed series. ``quiet`` (backfill and restore) updates the models but opens no
        alerts, applies no corrections and emits nothing to store."""
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
        table = self.st.series
        if idx.min() < 0 or idx.max() >= len(table) or not table.active[idx].all():
            raise InputError("ingest: unknown or retired series slot")
        if np.unique(idx).size != idx.size:            # a slot twice in one call: the last one wins
            _, first_rev = np.unique(idx[::-1], return_index=True)
            keep = np.sort(idx.size - 1 - first_rev)
            idx, y, t = idx[keep], y[keep], t[keep]
        finite = np.isfinite(y) & np.isfinite(t)
        invalid = finite & table.nonneg[idx] & (y < 0)
        stale = finite & ~invalid & (t <= table.last_t[idx])
        ok = finite & ~invalid & ~stale
        report = TickReport(at=at, accepted=int(ok.sum()), dropped_nonfinite=int((~finite).sum()),
                            dropped_invalid=int(invalid.sum()), dropped_stale=int(stale.sum()))
        if not ok.all():
            idx, y, t = idx[ok], y[ok], t[ok]
        if idx.size:
            self.absorb(idx, t, y, at, src, quiet)
        return report

    def absorb(self, idx: np.ndarray, t: np.ndarray, y: np.ndarray, at: float, src: Source, quiet: bool) -> None:
        st, r = self.st, self.st.rows
        st.series.append(idx, t, y)
        exp = st.bank.update(idx, t, y)
        scores = st.anomaly.score_and_learn(idx, t, y, exp.expected, exp.lower, exp.upper, exp.scale,
                                            exp.learned)
        r.anomaly_score[idx] = scores.score
        manual_e = r.manual_expected[idx]
        manual = np.isfinite(manual_e)
        e = np.where(manual, manual_e, exp.expected)
        div = st.detector.compute(y, e, exp.lower, exp.upper, manual, r.threshold[idx],
                                  divergence_floor(exp.scale, r.limit[idx], exp.tail), exp.tail,
                                  scores.surprise, r.direction[idx])
        r.expected[idx] = e
        r.div_ratio[idx] = div.ratio
        r.div_pct[idx] = div.percent
        r.severity[idx] = div.severity
        r.run_len[idx] = np.where(div.diverging, r.run_len[idx] + 1, 0)
        fc = st.bank.forecast(idx)          # inside each metric's domain (the bank clips to it)
        r.fc_mean[idx], r.fc_lower[idx], r.fc_upper[idx] = fc.mean, fc.lower, fc.upper
        r.fc_conf[idx], r.fc_model[idx], r.slope[idx] = fc.confidence, fc.model, fc.slope_per_s
        if fc.regime is not None:
            r.fc_regime[idx] = fc.regime
        path = np.where(np.isfinite(fc.mean), fc.mean, y[:, None])
        eta = breach_eta(y, path, st.horizons_s, r.limit[idx])
        eta = hide_unsupported_eta(eta, y, path, st.horizons_s, r.limit[idx], st.bank.pending_run(idx) < 0)
        if st.horizon_mask:                      # a twin with fewer horizons looks only as far as its longest
            longest = np.where(r.hshow[idx], st.horizons_s[None, :], 0.0).max(axis=1)
            with np.errstate(invalid="ignore"):
                eta = np.where(eta <= longest, eta, np.nan)
        r.eta[idx] = eta

        tr = st.twin_rows
        tslots = st.series.twin_slot[idx]
        touched = np.unique(tslots)
        np.fmax.at(tr.last_sync, tslots, t)
        tr.sync_count[touched] += 1
        st.advance(at)
        if quiet:                                # replay/backfill: roll up and build the view on read
            st.dirty = True
            return
        self.alerts_and_corrections(idx, y, e, div.diverging, div.percent, div.severity, manual, at)
        self.rollup(at, quiet=False)
        self.emit_samples(idx, t, y)
        self.emit_predictions(idx, at)
        code = SOURCE_CODES.index(src)
        tr.source_count[touched, code] += 1
        tr.last_source[touched] = code
        self.refresh_view(at)

    def alerts_and_corrections(self, idx: np.ndarray, y: np.ndarray, e: np.ndarray, diverging: np.ndarray,
                               pct: np.ndarray, sev: np.ndarray, manual: np.ndarray, at: float) -> None:
        st, r = self.st, self.st.rows
        was_open = r.alert_open[idx]
        opened = diverging & ~was_open
        escalated = diverging & was_open & (sev > r.alert_sev[idx]) & (sev >= 3)
        closed = ~diverging & was_open
        for i in np.nonzero(closed)[0].tolist():
            st.alerts.pop(int(idx[i]), None)
        for i in np.nonzero(diverging & was_open & ~escalated)[0].tolist():   # keep the open alert current
            a = st.alerts.get(int(idx[i]))
            if a is not None:
                a.actual_value, a.expected_value = float(y[i]), float(e[i])
                a.divergence_percent = round(float(pct[i]), 3)
                a.severity = st.detector.severity_of(float(pct[i])).value
                a.timestamp = iso(at)
        for i in np.nonzero(opened | escalated)[0].tolist():
            slot = int(idx[i])
            key = st.series.keys[slot]
            assert key is not None
            twin = st.twins[key[0]]
            prev = st.alerts.get(slot)
            alert = st.detector.alert(
                alert_id=prev.alert_id if prev else f"div_{uuid.uuid4().hex[:8]}", twin_id=twin.twin_id,
                metric=key[1], expected=float(e[i]), actual=float(y[i]), percent=float(pct[i]),
                severity_code=int(sev[i]), manual=bool(manual[i]), at=at)
            st.alerts[slot] = alert
            if sev[i] >= 3:
                st.monitor.emit(twin.twin_id, EventType.DIVERGENCE,
                                "critical" if sev[i] == 4 else "warning",
                                f"{twin.source_system}: {key[1]} {alert.actual_value:g} vs expected "
                                f"{alert.expected_value:g} ({alert.divergence_percent:.0f}%, {alert.severity})",
                                at, {"metric": key[1], "alert_id": alert.alert_id})
            if opened[i]:
                self.correct(twin, alert, at)
        r.alert_open[idx] = diverging
        r.alert_sev[idx] = np.where(diverging, np.maximum(r.alert_sev[idx] * was_open, sev), 0)

    def correct(self, twin: DigitalTwin, alert: DivergenceAlert, at: float) -> None:
        st = self.st
        decision = st.corrector.decide(alert, correction_id=f"corr_{uuid.uuid4().hex[:8]}",
                                       enabled=twin.auto_correction_enabled, at=at)
        if decision.new_expected is not None:
            self.registry.snapshot(twin, f"auto_correction: {decision.record.details}", at)
            new = dict(twin.expected_state or {})
            new[alert.metric] = round(decision.new_expected, 6)
            twin.expected_state = new
            st.touch_expected(twin.twin_id, [alert.metric])
            self.registry.apply_config(twin)
            st.outbox.twins.append(twin)
        self.record_correction(twin, decision.record)
        if decision.record.applied:
            st.monitor.emit(twin.twin_id, EventType.CORRECTION, "info", decision.record.details, at,
                            {"correction_id": decision.record.correction_id})

    def record_correction(self, twin: DigitalTwin, rec: CorrectionRecord) -> None:
        twin.corrections.append(rec)
        memory = self.st.settings.correction_memory
        if len(twin.corrections) > memory:
            del twin.corrections[: len(twin.corrections) - memory]
        self.st.outbox.corrections.append(rec)

    # --------------------------------------------------------------- roll-up
    def rollup(self, at: float, quiet: bool) -> None:
        st, r, tr = self.st, self.st.rows, self.st.twin_rows
        n = len(st.slot_twin)
        m = len(st.series)
        act = st.series.active[:m]
        tslot = np.where(act, st.series.twin_slot[:m], -1)
        last = st.series.last_v[:m]
        lim = r.limit[:m]
        # a divergence the harmless way is shown (low) but costs no health
        sev = np.where(harmful_side(last, r.expected[:m], r.direction[:m]), r.severity[:m], 0)
        pen = series_penalty(last, lim, sev)
        health = health_scores(pen, tslot, n)
        band = health_band(health)
        drift = drift_flags(r.run_len[:m], tslot, n, st.settings.drift_samples)
        with np.errstate(invalid="ignore"):
            risky = (r.fc_mean[:m] >= lim[:, None]).sum(axis=1)
        ok = tslot >= 0
        risk = np.bincount(tslot[ok], weights=risky[ok], minlength=n)[:n].astype(np.int64)
        if not quiet:
            self.transitions(health, band, drift, risk, at)
        tr.health[:n], tr.band[:n], tr.drift[:n], tr.risk_count[:n] = health, band, drift, risk

    def transitions(self, health: np.ndarray, band: np.ndarray, drift: np.ndarray, risk: np.ndarray,
                    at: float) -> None:
        st, tr = self.st, self.st.twin_rows
        n = health.shape[0]
        for ts in np.nonzero(band != tr.band[:n])[0].tolist():
            tid = st.slot_twin[ts]
            if tid is None:
                continue
            name, h = st.twins[tid].source_system, float(health[ts])
            if band[ts] == 2:
                st.monitor.emit(tid, EventType.HEALTH_CRITICAL, "critical",
                                f"{name}: health {format_score(h)} is below 50", at, {"health_score": h})
            elif band[ts] == 1:
                st.monitor.emit(tid, EventType.HEALTH_WARNING, "warning",
                                f"{name}: health {format_score(h)} is below 70", at, {"health_score": h})
            else:
                st.monitor.emit(tid, EventType.HEALTH_RECOVERED, "info",
                                f"{name}: health {format_score(h)} recovered", at, {"health_score": h})
        for ts in np.nonzero(drift != tr.drift[:n])[0].tolist():
            tid = st.slot_twin[ts]
            if tid is None:
                continue
            name = st.twins[tid].source_system
            if drift[ts]:
                st.monitor.emit(tid, EventType.DRIFT_DETECTED, "warning",
                                f"{name}: sustained divergence from the expected state", at)
            else:
                st.monitor.emit(tid, EventType.DRIFT_CLEARED, "info", f"{name}: drift cleared", at)
        for ts in np.nonzero((risk > 3) & (tr.risk_count[:n] <= 3))[0].tolist():
            tid = st.slot_twin[ts]
            if tid is not None:
                st.monitor.emit(tid, EventType.RISK_WARNING, "warning",
                                f"{st.twins[tid].source_system}: {int(risk[ts])} active risk predictions",
                                at, {"active_risk_predictions": int(risk[ts])})

    # ---------------------------------------------------------------- outbox
    def _key_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        st = self.st
        if st.key_arrays is None or st.key_arrays[0].size < len(st.series):
            keys = st.series.keys
            st.key_arrays = (np.array([k[0] if k else "" for k in keys], dtype=object),
                             np.array([k[1] if k else "" for k in keys], dtype=object))
        return st.key_arrays

    def emit_samples(self, idx: np.ndarray, t: np.ndarray, y: np.ndarray) -> None:
        tw, me = self._key_arrays()
        self.st.outbox.samples.append(MetricSamples(twin_id=tw[idx], metric=me[idx], timestamp=t.copy(),
                                                    value=y.copy()))

    def emit_predictions(self, idx: np.ndarray, at: float) -> None:
        st, r = self.st, self.st.rows
        every = st.settings.forecast_store_every_s
        last = r.last_pred_emit[idx]
        fresh = np.isneginf(last)
        if fresh.any():             # a new series' first row comes at its own phase: no round carries them all
            phase = (idx[fresh] * _PHASE_STEP) % 1.0
            last[fresh] = at - every * (1.0 - phase)
            r.last_pred_emit[idx[fresh]] = last[fresh]
        due = idx[(at - last) >= every]
        due = due[np.isfinite(r.fc_mean[due]).any(axis=1)]
        if due.size == 0:
            return
        r.last_pred_emit[due] = at
        h = st.horizons_s.size
        mean, lo, hi = r.fc_mean[due], r.fc_lower[due], r.fc_upper[due]
        lim = np.repeat(r.limit[due][:, None], h, axis=1)
        p = exceed_probability(mean, lo, hi, lim, st.settings.level)
        tw, me = self._key_arrays()
        with np.errstate(invalid="ignore"):
            crossing = np.isfinite(lim) & np.isfinite(mean) & (mean >= lim)
        risk = np.full(mean.shape, "", dtype=object)
        for i, j in zip(*np.nonzero(crossing), strict=True):        # only the few forecasts over a limit
            risk[i, j] = risk_text(str(me[due[i]]), float(lim[i, j]), float(st.horizons_s[j]))
        keep = r.hshow[due].ravel()
        st.outbox.predictions.append(PredictionRows(
            twin_id=np.repeat(tw[due], h)[keep], metric=np.repeat(me[due], h)[keep],
            made_at=np.full(due.size * h, at)[keep], horizon_s=np.tile(st.horizons_s, due.size)[keep],
            predicted=mean.ravel()[keep], lower=lo.ravel()[keep], upper=hi.ravel()[keep],
            failure_probability=p.ravel()[keep], risk_factor=risk.ravel()[keep]))

    # ------------------------------------------------------------------ view
    def view(self) -> EngineView:
        """The latest view; after quiet ingests or changes outside a tick, rolled up and rebuilt first."""
        st = self.st
        if st.dirty:
            self.rollup(st.last_at, quiet=True)
            self.refresh_view(st.last_at)
        return st.view

    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
        st = self.st
        if st.names_cache is None:
            act = np.nonzero(st.series.active[: len(st.series)])[0]
            keys = [st.series.keys[i] for i in act.tolist()]
            st.names_cache = (
                tuple(st.twins[k[0]].source_system for k in keys if k),
                tuple(k[1] for k in keys if k), act)
        return st.names_cache

    def refresh_view(self, at: float) -> None:
        st, r, tr = self.st, self.st.rows, self.st.twin_rows
        twins_n, metrics_n, act = self._names()
        tids = list(st.twins)                    # names and per-twin arrays from one list of twins
        ts = np.asarray([st.twin_slot[tid] for tid in tids], np.int64)
        ls = tr.last_sync[ts] if ts.size else np.zeros(0)
        st.advance(at)
        st.dirty = False
        fc = [a[act] for a in (r.fc_mean, r.fc_lower, r.fc_upper, r.fc_conf)]
        if st.horizon_mask:                      # some twin shows fewer horizons: hide the others' values
            show = r.hshow[act]
            fc = [np.where(show, a, np.nan) for a in fc]
        st.view = EngineView(
            at=st.last_at, horizons_s=st.horizons_s, series_twin=twins_n, series_metric=metrics_n,
            last_value=st.series.last_v[act], forecast_mean=fc[0],
            forecast_lower=fc[1], forecast_upper=fc[2],
            confidence=fc[3], expected=r.expected[act], divergence_ratio=r.div_ratio[act],
            severity=r.severity[act], anomaly=r.anomaly_score[act], limit=r.limit[act],
            breach_eta_s=r.eta[act],
            twin_names=tuple(st.twins[tid].source_system for tid in tids),
            health=tr.health[ts] if ts.size else np.zeros(0),
            drift=tr.drift[ts] if ts.size else np.zeros(0, bool), last_sync=ls,
            series_last_sample=st.series.last_t[act], twins_refused=dict(st.twins_refused))

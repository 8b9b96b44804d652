"""Replica recommendations, once per round, for every twin whose rule sets ``max_replicas``.

The maths is the engine's (`sidecar/engine/replicas.py`); this loop hands it each twin's history under
the engine lock, keeps the per-twin state the signal needs between rounds (the scale-down window, the
cached capacity fit) and puts the result on the ``ServiceStatus`` for /metrics and the API. The capacity
fit reads the whole history, so it is refreshed every ``REFIT_ROUNDS`` rounds; the forecast it is joined
with is read every round.

A recommendation that is not trustworthy is removed from /metrics (an autoscaler reading an absent metric
keeps its replica count; KEDA uses its ``fallback``), and the API says why.

Example::

    rec = ReplicaRecommender(engine, status, lock, targets=lambda: {"api": rule}, interval_s=15.0)
    await rec.round()                   # or: await rec.run(stop_event)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import TwinRule
from .engine.core import Engine
from .engine.replicas import (
    WIDTH_ROUNDS,
    ReplicaAdvice,
    ReplicaPolicy,
    Stabilised,
    Widths,
    fit_replica,
    half_widths,
    recommend,
    settle_widths,
    stabilise,
)
from .engine.whatif import CapacityFit
from .errors import SidecarError
from .status import ReplicaSignal, ServiceStatus
from .units import horizon_label

log = logging.getLogger(__name__)

#: The capacity fit is refreshed every this many rounds (it reads the whole history; the forecast moves faster).
REFIT_ROUNDS = 4

_Fitted = tuple[CapacityFit | None, int | None, str | None]


@dataclass(slots=True)
class _TwinState:
    window: Stabilised
    widths: Widths = field(default_factory=Widths)
    fitted: _Fitted | None = None
    fitted_at: float = -math.inf
    reason: str | None = None           # the last reason logged, so a reason is logged once per change


class ReplicaRecommender:
    """See the module docstring. ``targets`` returns the live twins by name with their rules."""

    def __init__(self, engine: Engine, status: ServiceStatus, lock: asyncio.Lock,
                 targets: Callable[[], Mapping[str, TwinRule]], *, interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.status = status
        self.lock = lock
        self.targets = targets
        self.interval_s = interval_s
        self.clock = clock
        self._twins: dict[str, _TwinState] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """A round every interval until ``stop`` is set; a failing round is logged and the next one runs."""
        while not stop.is_set():
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica recommendation round failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def round(self, now: float | None = None) -> int:
        """Recommend for every scaled twin; returns how many have a trustworthy recommendation."""
        now = self.clock() if now is None else now
        scaled = {n: r for n, r in self.targets().items() if r.max_replicas is not None}
        for gone in set(self._twins) - set(scaled):
            del self._twins[gone]
        for gone in set(self.status.replica_signals) - set(scaled):
            self.status.replica_signals.pop(gone, None)
        trusted = 0
        for name, rule in scaled.items():
            state = self._twins.setdefault(name, _TwinState(Stabilised()))
            try:
                async with self.lock:
                    advice = await asyncio.to_thread(self._advise, name, rule, state, now)
            except (SidecarError, KeyError) as exc:     # the twin went between listing and reading
                advice = ReplicaAdvice(reason=f"twin not readable: {exc}")
            signal = self._signal(name, rule, state, advice, now)
            self.status.replica_signals[name] = signal
            trusted += bool(signal.replicas)
        return trusted

    def _advise(self, name: str, rule: TwinRule, state: _TwinState, now: float) -> ReplicaAdvice:
        ctx = self.engine.context(name, at=now, replicas=rule.replicas, workers=rule.workers)
        if state.fitted is None or now - state.fitted_at >= REFIT_ROUNDS * self.interval_s:
            state.fitted, state.fitted_at = fit_replica(ctx), now
        assert rule.max_replicas is not None
        policy = ReplicaPolicy(rule.min_replicas, rule.max_replicas, rule.scale_down_stabilisation_s,
                               quantile=rule.scale_quantile, level=self.engine.settings.level)
        widths = None
        if WIDTH_ROUNDS > 0:
            state.widths, widths = settle_widths(state.widths, now, half_widths(ctx), WIDTH_ROUNDS * self.interval_s)
        return recommend(ctx, policy, state.fitted, widths)

    def _signal(self, name: str, rule: TwinRule, state: _TwinState, advice: ReplicaAdvice,
                now: float) -> ReplicaSignal:
        state.window, out = stabilise(state.window, now, advice, rule.scale_down_stabilisation_s)
        if advice.reason != state.reason:
            log.info("replica recommendation trustworthy" if advice.trustworthy
                     else "replica recommendation withheld", extra={"twin": name, "reason": advice.reason})
            state.reason = advice.reason
        body = advice.to_dict()
        trusted_fit = bool(advice.fit.get("trustworthy")) and advice.capacity_rps is not None
        if out is None:
            return ReplicaSignal(capacity_rps=advice.capacity_rps if trusted_fit else None, advice=body)
        own = [i for i, h in enumerate(advice.horizons_s) if h in rule.horizons_s] or \
            list(range(len(advice.horizons_s)))
        for i, entry in enumerate(body["horizons"]):
            entry["replicas_stabilised"] = out[i]
        body["scale_down_stabilisation_s"] = rule.scale_down_stabilisation_s
        body["scale_quantile"] = rule.scale_quantile
        return ReplicaSignal(horizons=tuple(horizon_label(advice.horizons_s[i]) for i in own),
                             replicas=tuple(out[i] for i in own),
                             headroom=tuple(advice.headroom[i] for i in own),
                             capacity_rps=advice.capacity_rps, advice=body)

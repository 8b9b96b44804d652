"""Standing what-if scenarios: re-run on their schedule for every twin they name, results on /metrics.

Each run's failure probability, breaking point and fit verdict go to the status together; a number a run
did not give is removed, so the three exported values always come from the same run. A failing scenario is
told once until it succeeds again; a retired twin's results go with it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

from ..config import ScenarioRule, TwinRule
from ..errors import SidecarError
from .context import Context
from .roster import Roster

log = logging.getLogger(__name__)


class StandingScenarios:
    """The rules file's ``scenarios``, run when due; see the module docstring."""

    def __init__(self, ctx: Context, roster: Roster) -> None:
        self.ctx = ctx
        self.roster = roster
        self._due: dict[str, float] = {}
        self._failing: set[tuple[str, str]] = set()

    async def run(self, now: float | None = None) -> int:
        """Re-run the standing what-if scenarios that are due; returns how many (twin, scenario) runs."""
        now = self.ctx.clock() if now is None else now
        ran = 0
        for sc in self.ctx.config.scenarios:
            if now < self._due.get(sc.name, -math.inf):
                continue
            self._due[sc.name] = now + sc.every_s
            for name, target in list(self.roster.targets.items()):
                if sc.twin != "all" and target.rule.name != sc.twin:
                    continue
                await self._simulate(sc, name, target.rule, now)
                ran += 1
        return ran

    async def _simulate(self, sc: ScenarioRule, twin: str, rule: TwinRule, now: float) -> None:
        key = (twin, sc.name)
        try:
            async with self.ctx.lock:   # one twin at a time: the API waits for one simulation, not all
                result: dict[str, Any] = await asyncio.to_thread(
                    self.ctx.engine.simulate, twin, dict(sc.scenario), at=now, seed=0, replicas=rule.replicas,
                    workers=rule.workers)
        except SidecarError as exc:
            if key not in self._failing:
                self._failing.add(key)
                log.warning("standing scenario failed", extra={"twin": twin, "scenario": sc.name,
                                                               "error": str(exc)})
            self._forget(key)
            return
        self._failing.discard(key)
        self._record(key, result)

    def _record(self, key: tuple[str, str], result: Mapping[str, Any]) -> None:
        """Put one run's numbers on the status; each one this run did not give is removed, so the exported
        probability, breaking point and fit verdict always come from the same run."""
        st = self.ctx.status
        p = result.get("failure_probability")
        if isinstance(p, int | float) and math.isfinite(p):
            st.simulation_failure_probability[key] = float(p)
        else:
            st.simulation_failure_probability.pop(key, None)
        raw_fit = result.get("model_fit")
        fit: Mapping[str, Any] = raw_fit if isinstance(raw_fit, Mapping) else {}
        trusted = fit.get("trustworthy")
        if isinstance(trusted, bool):
            before = st.simulation_fit_trustworthy.get(key)
            if before is not trusted and not (before is None and trusted):
                # the reason is too free-form for a label: one line when a fit is (or turns) untrusted says it
                log.info("standing scenario fit trustworthy" if trusted else "standing scenario fit not trustworthy",
                         extra={"twin": key[0], "scenario": key[1], "reason": str(fit.get("reason", ""))})
            st.simulation_fit_trustworthy[key] = trusted
        else:       # no verdict: absent, and the alert (which needs == 1) stays silent
            st.simulation_fit_trustworthy.pop(key, None)
        bp = result.get("breaking_point")
        mult = bp.get("traffic_multiplier") if isinstance(bp, Mapping) else None
        if isinstance(mult, int | float) and math.isfinite(mult):
            st.simulation_breaking_multiplier[key] = float(mult)
        else:
            st.simulation_breaking_multiplier.pop(key, None)

    def _forget(self, key: tuple[str, str]) -> None:
        """Remove every exported number of this (twin, scenario): its run failed, or the twin is gone."""
        st = self.ctx.status
        st.simulation_failure_probability.pop(key, None)
        st.simulation_fit_trustworthy.pop(key, None)
        st.simulation_breaking_multiplier.pop(key, None)

    def forget_twin(self, twin: str) -> None:
        """A retired twin: every exported scenario number of it goes."""
        st = self.ctx.status
        for key in {k for d in (st.simulation_failure_probability, st.simulation_fit_trustworthy,
                                st.simulation_breaking_multiplier) for k in d if k[0] == twin}:
            self._forget(key)

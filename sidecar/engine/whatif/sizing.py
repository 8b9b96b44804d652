"""Replica sizing for a scenario: which draws breach a limit at a given share of the load per replica, and the
fewest replicas that bring the failure probability under the target.

Only the core metrics the twin has are sized on: a metric projected as its own forecast is not modelled to
move with replicas, so it never decides how many are needed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .context import SimulationContext
from .draws import Draws
from .fit import CapacityFit
from .metrics import F64
from .project import Fault, limits_of, steady

#: Most replicas a recommendation searches, as a multiple of the current count.
MAX_SCALE = 64
#: Failure probability a recommendation aims to bring the scenario under.
TARGET_P = 0.1


def breaches(fit: CapacityFit, d: Draws, limits: Mapping[str, float], lam: F64, lam_ref: F64,
             ref: Mapping[str, F64], share: float, domains: Mapping[str, tuple[float, float]]
              ) -> dict[str, np.ndarray]:
    """Per metric, which draws breach its limit at some time when each replica carries ``share`` of its load.

    Only the core metrics the twin has (``ref``): a metric it lacks, or one projected as its own forecast,
    never decides how many replicas are needed.
    """
    proj = steady(fit, d, lam, lam_ref, ref, Fault(share=share), domains)
    return {m: np.asarray((proj[m] > lim).any(axis=1)) for m, lim in limits.items() if m in proj}


def replicas_needed(fit: CapacityFit, d: Draws, ctx: SimulationContext, lam: F64, lam_ref: F64,
                    ref: Mapping[str, F64], replicas: int, domains: Mapping[str, tuple[float, float]],
                    target: float = TARGET_P) -> int | None:
    """Fewest replicas (same workers each) keeping P(breach) ≤ target at the given loads; None if none helps.

    ``lam``, ``lam_ref`` and ``ref`` are (draws × times) over the scenario, so a limit that is breached by the
    forecast itself (memory growing on its own) correctly shows that more replicas do not help.

    More replicas give each a smaller share of the load, and no projection grows as its share shrinks, so
    whether ``r`` replicas suffice is monotone in ``r``: a bisection finds the fewest in about
    log2(63 × replicas) projections (one per candidate took minutes for tens of thousands of replicas, with
    the engine lock held).
    """
    limits = limits_of(ctx, ref)
    if not limits:
        return None

    def enough(r: int) -> bool:
        breach = np.zeros(d.size, dtype=bool)
        for hit in breaches(fit, d, limits, lam, lam_ref, ref, replicas / r, domains).values():
            breach |= hit
        return bool(breach[1:].mean() <= target and not breach[0])

    lo, hi = replicas, replicas * MAX_SCALE
    if enough(lo):
        return lo
    if not enough(hi):
        return None
    while hi - lo > 1:              # enough(hi) and not enough(lo)
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi

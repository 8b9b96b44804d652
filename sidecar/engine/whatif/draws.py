"""The Monte Carlo draws: the capacity fit's uncertainty sampled once per scenario, row 0 the point estimate.

What is drawn: the fit's parameter uncertainty (least-squares covariance of the CPU law, profile
interval and spread of the binding latency route), the service-time variability (its fitted interval,
or M/D/c … 1.5× M/M/c when the data does not tell), a structural factor on the capacity (6%, 25% when
the fit is not trustworthy), never below the throughput the service demonstrably served
(``CapacityFit.capacity_floor``), and per metric a place inside its forecast interval. The generator is
handed in, so the same seed gives the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .fit import CapacityFit
from .metrics import F64

#: Monte Carlo draws (besides the point estimate in draw 0).
DRAWS = 1000
#: Structural log-sd of the capacity: the model is an approximation even when the fit is good.
STRUCTURAL_SD = 0.06
STRUCTURAL_SD_UNTRUSTED = 0.25
#: How much wider the parameter uncertainty is drawn when the fit is not trustworthy.
UNTRUSTED_WIDEN = 2.5


@dataclass(frozen=True, slots=True)
class Draws:
    """Model parameters, one row per draw (row 0 = the point estimate), shaped (S, 1) to broadcast."""

    capacity: F64
    cpu_slope: F64
    variability: F64
    error_slope: F64
    memory_slope: F64
    z: Mapping[str, F64]          # standard normal per metric: its place inside the forecast interval

    @property
    def size(self) -> int:
        return int(self.capacity.shape[0])


def draw(fit: CapacityFit, metrics: tuple[str, ...], rng: np.random.Generator, n: int = DRAWS,
         forecast_only: tuple[str, ...] = ()) -> Draws:
    """Sample the fit's uncertainty around the binding capacity route.

    ``metrics`` are the core metrics the model projects, ``forecast_only`` the twin's other metrics; each
    gets its place inside its forecast interval (those of ``forecast_only`` drawn last, so that adding a
    custom metric to a twin leaves every other draw as it was).

    Only the route that binds (the smallest capacity) is drawn: another route consistent with it
    measures the same bottleneck, and taking the minimum of two noisy draws of one quantity would
    bias the capacity low; a route clearly above it never binds. The CPU law is drawn through
    (a, b) jointly, so capacity and projected CPU stay consistent when CPU binds.
    """
    widen = 1.0 if fit.trustworthy else UNTRUSTED_WIDEN
    structural = STRUCTURAL_SD if fit.trustworthy else STRUCTURAL_SD_UNTRUSTED
    s = n + 1
    b = np.full(s, fit.cpu_slope)
    a_s = np.full(s, fit.cpu_idle)
    if fit.has_cpu and fit.has_rate:
        cov = np.asarray(fit.cpu_cov) * widen**2
        ab = rng.multivariate_normal([fit.cpu_idle, fit.cpu_slope], cov, size=s, method="eigh")
        ab[0] = (fit.cpu_idle, fit.cpu_slope)
        b = np.maximum(ab[:, 1], fit.cpu_slope * 0.05)
        a_s = np.clip(ab[:, 0], 0.0, 99.0)
    elif fit.has_cpu:
        sd = math.sqrt(max(fit.cpu_cov[1][1], 0.0)) * widen
        b = np.maximum(fit.cpu_slope + rng.normal(0.0, sd, s), fit.cpu_slope * 0.05)
        b[0] = fit.cpu_slope
    sd = fit.candidates[fit.capacity_source][1]
    if fit.capacity_source == "cpu" and fit.has_rate:
        cap = (100.0 - a_s) / b * (fit.capacity / ((100.0 - fit.cpu_idle) / fit.cpu_slope))
    else:
        cap = fit.capacity * np.exp(rng.normal(0.0, sd * widen, s))
    cap_structural = np.exp(rng.normal(0.0, structural, s))
    cap_structural[0] = 1.0
    cap *= cap_structural
    cap[0] = fit.capacity
    cap = np.maximum(cap, fit.capacity_floor)
    variability = rng.uniform(*fit.variability_range, s)
    variability[0] = fit.variability
    err_slope = np.full(s, fit.error_slope)
    mem_slope = fit.memory_slope + rng.normal(0.0, fit.memory_slope_sd * widen, s)
    mem_slope[0] = fit.memory_slope
    z = {}
    for m in metrics:
        zm = rng.normal(0.0, 1.0, s)
        zm[0] = 0.0
        z[m] = zm[:, None]
    # The CPU law is the same approximation as the capacity: CPU per request carries the structural
    # uncertainty too, or a CPU limit would be projected far more precisely than the fit deserves.
    # When CPU binds it moves with the capacity's own factor (CPU at capacity stays 100%); otherwise it
    # gets its own factor, drawn last so every other draw stays as it was.
    if fit.capacity_source == "cpu" and fit.has_rate:
        b = b / cap_structural
    else:
        b_structural = np.exp(rng.normal(0.0, structural, s))
        b_structural[0] = 1.0
        b = b * b_structural
    for m in forecast_only:
        zm = rng.normal(0.0, 1.0, s)
        zm[0] = 0.0
        z[m] = zm[:, None]
    return Draws(cap[:, None], b[:, None], variability[:, None], err_slope[:, None], mem_slope[:, None], z)

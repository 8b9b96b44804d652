"""The M/M/c queue the capacity model stands on: Erlang C, waiting-time quantiles and means.

Pure and vectorised: parameters may be arrays of Monte Carlo draws and rates (draws × grid) arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .metrics import F64

#: Up to this many servers Erlang B is computed by its recursion (exact, cheap); above, by gamma functions.
RECURSION_SERVERS = 32


def erlang_c(servers: F64 | float, offered: F64 | float) -> F64:
    """Probability an arrival waits in M/M/c (Erlang C), for offered load a = λ/μ < c.

    Uses Erlang B = Poisson pmf / Poisson cdf through the regularised incomplete
    gamma function, so it is vectorised and stable for thousands of servers (the
    textbook recursion would need a Python loop per server).
    """
    c = np.asarray(servers, dtype=np.float64)
    a = np.maximum(np.asarray(offered, dtype=np.float64), 1e-300)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        if c.ndim == 0 and float(c) == int(c) and int(c) <= RECURSION_SERVERS:
            # few servers: the Erlang B recursion is exact and much cheaper than the gamma functions
            b = np.ones_like(a)
            for k in range(1, int(c) + 1):
                b = a * b / (k + a * b)
        else:
            log_pmf = c * np.log(a) - a - special.gammaln(c + 1.0)
            cdf = special.gammaincc(c + 1.0, a)
            b = np.where(cdf > 0, np.exp(log_pmf) / np.where(cdf > 0, cdf, 1.0), 1.0)
        rho = a / c
        out = b / (1.0 - rho * (1.0 - b))
    return np.asarray(np.where(rho < 1.0, np.clip(out, 0.0, 1.0), 1.0), dtype=np.float64)


def wait_quantile_s(rate: F64 | float, capacity: F64 | float, servers: F64 | float, p: float,
                    variability: F64 | float = 1.0) -> F64:
    """p-quantile (seconds) of the M/M/c waiting time: P(W > t) = C·exp(−(K − λ)·t).

    ``variability`` scales the wait as in the Allen–Cunneen approximation
    ((Ca² + Cs²)/2 relative to M/M/c), so 0.5 is an M/D/c service and 1 is M/M/c.
    Returns +inf at or above capacity: the steady state does not exist there.
    """
    lam = np.asarray(rate, dtype=np.float64)
    k = np.asarray(capacity, dtype=np.float64)
    c = np.asarray(servers, dtype=np.float64)
    mu = k / c
    with np.errstate(divide="ignore", invalid="ignore"):
        pw = erlang_c(c, lam / mu)
        w = np.log(np.maximum(pw, 1e-300) / (1.0 - p)) / (k - lam)
    w = np.where(pw > 1.0 - p, w, 0.0) * variability
    return np.asarray(np.where(lam < k, w, np.inf), dtype=np.float64)


def mean_wait_s(rate: F64 | float, capacity: F64 | float, servers: F64 | float,
                variability: F64 | float = 1.0) -> F64:
    """Mean M/M/c waiting time (seconds), E[W] = C/(K − λ), scaled by ``variability`` like `wait_quantile_s`.

    Returns +inf at or above capacity.
    """
    lam = np.asarray(rate, dtype=np.float64)
    k = np.asarray(capacity, dtype=np.float64)
    c = np.asarray(servers, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = erlang_c(c, lam / (k / c)) / (k - lam) * variability
    return np.asarray(np.where(lam < k, w, np.inf), dtype=np.float64)


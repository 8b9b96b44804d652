"""Anomaly scores for many series at once: how surprising each new sample is.

The score of a sample is ``1 - p`` where ``p`` is the tail probability of the
recent surprise given how surprising this series usually is: a value of 0.999
means "behaviour this unusual happens about once in a thousand samples for this
series". Three steps, all O(1) per sample and vectorised across series:

1. **Surprise.** Each value is compared with a robust running location and
   scale of the series (Huber-clipped exponentially weighted mean and mean
   absolute deviation, so one outlier cannot drag the baseline), and, when the
   forecaster supplies one, with its expectation and scale. The larger of the
   two normalised errors is the raw surprise ``z``.
2. **Likelihood.** A short average of the raw surprises is compared with their
   long-run mean and spread (Numenta's "anomaly likelihood"): a series that is
   always noisy stops scoring high for its normal noise, and a sustained change
   in level or variance scores high even when each sample alone is unremarkable.
3. **Suppression.** Right after a detection the score is held down for a
   while, so one incident raises one alert, not a burst.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
_A = TypeVar("_A", NDArray[np.float64], NDArray[np.int64])

_FIELDS_F = ("loc", "dev", "zshort", "zmean", "zvar", "last_t", "quiet_until")
_FIELDS_I = ("count",)


class AnomalyBank:
    """Anomaly state for a growing set of series, updated one sample per series per call.

    >>> bank = AnomalyBank()
    >>> idx = bank.add(2)
    >>> nan = np.full(2, np.nan)
    >>> s = bank.update(idx, np.array([0.0, 0.0]), np.array([1.0, 5.0]), nan, nan, nan, nan)
    >>> s.shape
    (2,)
    """

    def __init__(self, *, capacity: int = 16, baseline_samples: float = 288.0,
                 short_samples: float = 6.0, warmup: int = 12,
                 alert_level: float = 0.999, quiet_samples: float = 288.0) -> None:
        self._cap = max(int(capacity), 1)
        self._n = 0
        self._a_long = 1.0 / baseline_samples
        self._a_short = 1.0 / short_samples
        self._warmup = warmup
        self._alert = alert_level
        self._quiet = quiet_samples
        self._f: dict[str, F64] = {k: np.zeros(self._cap) for k in _FIELDS_F}
        self._i: dict[str, I64] = {k: np.zeros(self._cap, dtype=np.int64) for k in _FIELDS_I}

    @property
    def size(self) -> int:
        return self._n

    def add(self, n: int) -> I64:
        """Slots for ``n`` new series; capacity doubles so adding one at a time stays cheap."""
        if n < 0:
            raise ValueError("n must be >= 0")
        need = self._n + n
        if need > self._cap:
            cap = max(need, 2 * self._cap)
            self._f = {k: _grown(v, self._n, cap) for k, v in self._f.items()}
            self._i = {k: _grown(v, self._n, cap) for k, v in self._i.items()}
            self._cap = cap
        idx = np.arange(self._n, need, dtype=np.int64)
        self._n = need
        self.reset(idx)
        return idx

    def reset(self, idx: I64) -> None:
        """Forget everything about these series (e.g. a metric was redefined)."""
        idx = np.asarray(idx, dtype=np.int64)
        for k, v in self._f.items():
            v[idx] = -np.inf if k in ("last_t", "quiet_until") else 0.0
        for c in self._i.values():
            c[idx] = 0

    def update(self, idx: I64, t: F64, y: F64, expected: F64, lower: F64, upper: F64,
               scale: F64) -> F64:
        """Score one new sample per listed series and learn from it; returns scores in [0, 1]."""
        idx = np.asarray(idx, dtype=np.int64)
        t = np.asarray(t, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        f = self._f
        cnt = self._i["count"][idx]
        loc, dev = f["loc"][idx], f["dev"][idx]
        first = cnt == 0
        loc = np.where(first, y, loc)

        # 1. raw surprise against own robust baseline and the forecaster's expectation
        floor = 1e-9 + 1e-6 * np.abs(loc)
        sigma = np.maximum(1.2533 * dev, floor)
        z_own = np.abs(y - loc) / sigma
        with np.errstate(invalid="ignore"):
            z_fc = np.abs(y - np.asarray(expected)) / np.maximum(np.asarray(scale), floor)
        z = np.where(np.isfinite(z_fc), np.fmax(z_own, z_fc), z_own)
        z = np.where(cnt < 2, 0.0, np.minimum(z, 50.0))

        # robust baseline update: clip the innovation at 3 sigma before learning
        err = np.clip(y - loc, -3.0 * sigma, 3.0 * sigma)
        err = np.where(cnt < 2, y - loc, err)
        a = np.maximum(self._a_long, 1.0 / (cnt + 1.0))
        f["loc"][idx] = loc + a * err
        f["dev"][idx] = dev + a * (np.abs(err) - dev)

        # 2. likelihood of the recent average surprise given its long-run distribution
        zs = f["zshort"][idx]
        zs = np.where(first, z, zs + self._a_short * (z - zs))
        zm, zv = f["zmean"][idx], f["zvar"][idx]
        zsd = np.sqrt(np.maximum(zv, 1e-4))
        prob = ndtr((zs - zm) / zsd)
        d = zs - zm
        f["zmean"][idx] = zm + a * d
        f["zvar"][idx] = (1.0 - a) * (zv + a * d * d)
        f["zshort"][idx] = zs
        score = np.where(cnt < self._warmup, 0.0, prob)

        # 3. suppression after a detection
        quiet = t < f["quiet_until"][idx]
        fire = (score >= self._alert) & ~quiet
        score = np.where(quiet, np.minimum(score, self._alert * 0.99), score)
        f["quiet_until"][idx] = np.where(fire, t + self._quiet * _median_step(f["last_t"][idx], t),
                                         f["quiet_until"][idx])
        f["last_t"][idx] = t
        self._i["count"][idx] = cnt + 1
        return np.clip(score, 0.0, 1.0)

    def state_dict(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {k: v[: self._n].copy() for k, v in self._f.items()}
        out.update({k: v[: self._n].copy() for k, v in self._i.items()})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        n = len(state["count"])
        self._cap = max(n, 1)
        self._n = n
        self._f = {k: np.array(state[k], dtype=np.float64) for k in _FIELDS_F}
        self._i = {k: np.array(state[k], dtype=np.int64) for k in _FIELDS_I}


def _grown(v: _A, n: int, cap: int) -> _A:
    out = np.zeros(cap, dtype=v.dtype)
    out[:n] = v[:n]
    return out


def _median_step(last_t: F64, t: F64) -> F64:
    step = t - last_t
    return np.where(np.isfinite(step) & (step > 0), step, 60.0)

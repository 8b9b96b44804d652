"""Forecasting models of the `ForecastBank`, each a set of per-series arrays.

Every model keeps its state in numpy arrays whose first axis is the series slot, so
one call updates or predicts thousands of series without a Python loop per series,
and the bank can grow, reset and persist all models the same way (`Slots`).

A model sees the samples through a `Step` (one new sample for each listed series,
plus what the bank knows about the series' sampling) and answers `predict` for the
horizons in seconds counted from the series' last sample.  Horizons are converted
to steps with the series' own sampling-interval estimate, so irregular sampling
and gaps do not change what "15 minutes ahead" means.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Field:
    """Shape (after the slot axis), dtype and empty value of one state array."""

    tail: tuple[int, ...]
    dtype: type
    fill: float
    optional: bool = False  # a saved state without it (from before the field existed) loads with `fill`


class Slots:
    """Named arrays sharing one slot axis; grown by doubling, reset to their empty value."""

    def __init__(self, fields: dict[str, Field], capacity: int) -> None:
        self.fields = dict(fields)
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((capacity, *f.tail), f.fill, dtype=f.dtype) for name, f in self.fields.items()
        }
        self.capacity = capacity

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        for name, f in self.fields.items():
            new: np.ndarray = np.full((capacity, *f.tail), f.fill, dtype=f.dtype)
            new[: self.capacity] = self.arrays[name]
            self.arrays[name] = new
        self.capacity = capacity

    def reset(self, idx: I64) -> None:
        for name, f in self.fields.items():
            self.arrays[name][idx] = f.fill

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(self.arrays.items())

    def load(self, prefix: str, state: dict[str, np.ndarray], size: int) -> None:
        """Restore from a state dict (keys `prefix + name`) holding the first `size` slots."""
        cap = max(self.capacity, size)
        for name, f in self.fields.items():
            key = prefix + name
            if key not in state:
                if f.optional:
                    self.arrays[name] = np.full((cap, *f.tail), f.fill, dtype=f.dtype)
                    continue
                raise KeyError(key)
            src = np.asarray(state[key])
            if src.shape != (size, *f.tail):
                raise ValueError(f"{key}: shape {src.shape}, expected {(size, *f.tail)}")
            arr: np.ndarray = np.full((cap, *f.tail), f.fill, dtype=f.dtype)
            arr[:size] = src
            self.arrays[name] = arr
        self.capacity = cap

    def dump(self, prefix: str, size: int, *, copy: bool = True) -> dict[str, np.ndarray]:
        """The first ``size`` rows of every array: copies, or views (``copy=False``) for a caller that takes a
        few rows out at once, under the engine lock (a twin's model state), instead of copying every row."""
        return {prefix + name: arr[:size].copy() if copy else arr[:size] for name, arr in self.arrays.items()}


@dataclass(frozen=True, slots=True)
class Step:
    """One new sample per listed series, with what the bank knows of each series' sampling.

    `n_prev` is the number of samples absorbed before this one, `t_prev`/`y_prev` the
    previous sample (undefined when `n_prev == 0`), `dt` the sampling-interval estimate
    including this sample (NaN while unknown) and `gap` marks samples that follow a gap
    much longer than the usual interval, after which trends and short memories are stale.
    """

    idx: I64
    t: F64
    y: F64
    t_prev: F64
    y_prev: F64
    n_prev: I64
    dt: F64
    gap: NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Now:
    """The last absorbed sample of each listed series: forecasts are made from here."""

    idx: I64
    t: F64
    y: F64
    n: I64
    dt: F64


class Model:
    """Base: a family of one or more model variants sharing per-slot state in `self.slots`.

    Variants of a family (e.g. medians over several windows) are computed together, so
    the cost of a call grows with the number of families, not of variants.
    """

    names: tuple[str, ...] = ()
    # True when every forecast only combines observed values (it cannot blow up, so the bank skips
    # its blow-up check); extrapolating models leave it False
    bounded: bool = False

    def __init__(self, capacity: int) -> None:
        self.slots = Slots(self.fields(), capacity)

    def fields(self) -> dict[str, Field]:
        return {}

    def update(self, s: Step) -> None:
        """Absorb one sample for each series of the step."""

    def predict(self, now: Now, h_s: F64) -> F64:
        """Point forecasts (k, V, H) of the V variants for horizons `h_s` (k, H) in seconds after `now.t`.

        NaN where a variant has no forecast yet (e.g. a daily season before a day of history).
        """
        raise NotImplementedError


def steps_ahead(h_s: F64, dt: F64) -> F64:
    """Horizon in samples of the series' own sampling interval (at least 1 step)."""
    d = np.where(np.isfinite(dt) & (dt > 0), dt, np.inf)[:, None]
    return np.maximum(h_s / d, 1.0)


class LastValue(Model):
    """Persistence: the next values equal the last one (the yardstick of MASE)."""

    names = ("last",)
    bounded = True

    def predict(self, now: Now, h_s: F64) -> F64:
        return np.broadcast_to(now.y[:, None, None], (h_s.shape[0], 1, h_s.shape[1])).astype(np.float64)


class LinearRegression(Model):
    """Least squares line over the last `window_s` seconds, as Prometheus' `predict_linear`.

    The window is kept as `buckets` time buckets of partial sums (count, Σt, Σy, Σt², Σty),
    each relative to the bucket's own start time and first value so the sums stay small
    and exact enough in float64 (unix seconds squared would lose all precision).  A new
    sample adds to its bucket; a bucket leaves the window when its time has passed, so
    both adding and expiring are O(1), and memory is fixed whatever the sampling rate.
    Predicting combines the live buckets around the last sample (centred axis) and
    extrapolates the fitted line to `now + h`.
    """

    names = ("linear",)

    def __init__(self, capacity: int, window_s: float = 3600.0, buckets: int = 12) -> None:
        self.window_s = float(window_s)
        self.nb = int(buckets)
        self.width = self.window_s / self.nb
        super().__init__(capacity)

    def fields(self) -> dict[str, Field]:
        b = (self.nb,)
        return {
            "bid": Field(b, np.int64, -1),  # absolute bucket number held by each ring entry
            "y0": Field(b, np.float64, 0.0),  # first value seen in the bucket (y origin)
            "n": Field(b, np.float64, 0.0),
            "st": Field(b, np.float64, 0.0),
            "sy": Field(b, np.float64, 0.0),
            "stt": Field(b, np.float64, 0.0),
            "sty": Field(b, np.float64, 0.0),
        }

    def update(self, s: Step) -> None:
        a = self.slots
        bid = np.floor(s.t / self.width).astype(np.int64)
        pos = bid % self.nb
        i = s.idx
        fresh = a["bid"][i, pos] != bid
        if fresh.any():
            fi, fp = i[fresh], pos[fresh]
            a["bid"][fi, fp] = bid[fresh]
            a["y0"][fi, fp] = s.y[fresh]
            for name in ("n", "st", "sy", "stt", "sty"):
                a[name][fi, fp] = 0.0
        tt = s.t - bid * self.width
        yy = s.y - a["y0"][i, pos]
        a["n"][i, pos] += 1.0
        a["st"][i, pos] += tt
        a["sy"][i, pos] += yy
        a["stt"][i, pos] += tt * tt
        a["sty"][i, pos] += tt * yy

    def fit(self, now: Now) -> tuple[F64, F64, F64, F64]:
        """(count, mean time offset from now, mean value offset from now.y, slope) of the window."""
        a = self.slots
        i = now.idx
        cur = np.floor(now.t / self.width).astype(np.int64)
        bid = a["bid"][i]
        live = (bid > (cur - self.nb)[:, None]) & (bid <= cur[:, None])
        n = np.where(live, a["n"][i], 0.0)
        sft = bid * self.width - now.t[:, None]  # bucket origin relative to now
        sfy = a["y0"][i] - now.y[:, None]
        st, sy = a["st"][i], a["sy"][i]
        St = np.where(live, st + n * sft, 0.0).sum(1)
        Sy = np.where(live, sy + n * sfy, 0.0).sum(1)
        Stt = np.where(live, a["stt"][i] + 2 * sft * st + n * sft * sft, 0.0).sum(1)
        Sty = np.where(live, a["sty"][i] + sfy * st + sft * sy + n * sft * sfy, 0.0).sum(1)
        N = n.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            tm = np.where(N > 0, St / np.maximum(N, 1), 0.0)
            ym = np.where(N > 0, Sy / np.maximum(N, 1), 0.0)
            sxx = Stt - N * tm * tm
            sxy = Sty - N * tm * ym
            ok = (N >= 2) & (sxx > 1e-9 * np.maximum(Stt, 1e-300))
            slope = np.where(ok, sxy / np.where(ok, sxx, 1.0), 0.0)
        return N, tm, ym, slope

    def predict(self, now: Now, h_s: F64) -> F64:
        _, tm, ym, slope = self.fit(now)
        return (now.y[:, None] + ym[:, None] + slope[:, None] * (h_s - tm[:, None]))[:, None, :]

    def slope(self, now: Now) -> F64:
        return self.fit(now)[3]


def build_models(capacity: int) -> list[Model]:
    """The model families of a bank, in a fixed order (variant index = position in the concatenated names)."""
    from sidecar.engine.models_bucket import BucketModels
    from sidecar.engine.models_smooth import DampedTrend, RobustLevel

    return [LastValue(capacity), LinearRegression(capacity), DampedTrend(capacity), RobustLevel(capacity),
            BucketModels(capacity)]

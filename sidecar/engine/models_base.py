"""What every forecasting model of the `ForecastBank` is made of: per-series arrays, a step, a contract.

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

import ctypes
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

#: How much every per-series and per-twin array store of the engine grows when it is full (the banks, the
#: history, the anomaly state, the arrays of ``state.py``): by a quarter, so at most a fifth of a store's rows
#: are unused (doubling leaves up to half: 40,000 series in 65,536 slots) and adding stays amortised O(1).
GROWTH = 1.25


def grown_capacity(capacity: int, need: int) -> int:
    """The capacity a full store grows to so ``need`` rows fit: ``need``, or a quarter more than now."""
    return max(int(need), math.ceil(capacity * GROWTH), capacity + 1)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):       # not glibc (musl, macOS): nothing to hand back this way
        return None
    return fn


_TRIM = _malloc_trim()


def release_freed() -> None:
    """Hand the pages of freed heap blocks back to the system, after the stores grew.

    A store that grows copies its arrays and frees the old ones inside glibc's heap, where their pages stay
    resident (counted in the RSS) until a later allocation happens to reuse them: 2-3 KB a series at 8,000
    to 40,000 series (``memory_breakdown.py``). ``malloc_trim`` returns them; growth is rare (amortised), so
    the call is too, and the tick's own temporaries are left alone."""
    if _TRIM is not None:
        _TRIM(0)


@dataclass(frozen=True, slots=True)
class Field:
    """Shape (after the slot axis), dtype and empty value of one state array."""

    tail: tuple[int, ...]
    dtype: type
    fill: float
    optional: bool = False  # a saved state without it (from before the field existed) loads with `fill`


class Slots:
    """Named arrays sharing one slot axis; grown by `grown_capacity`, reset to their empty value."""

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

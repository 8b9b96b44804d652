"""The forecasting models' registry: every model family of a bank, in a fixed order, and the simple ones.

The families live in their own modules over one shared vocabulary (`models_base`: `Slots`, `Step`, `Now`,
`Model`); this module imports them all and nothing imports it back, so the registry has no cycle. The
vocabulary is re-exported here for the bank, which needs the models and their arrays from one place.
"""

from __future__ import annotations

import numpy as np

from sidecar.engine.models_base import F64, I64, Field, Model, Now, Slots, Step, steps_ahead
from sidecar.engine.models_bucket import BucketModels
from sidecar.engine.models_smooth import DampedTrend, RobustLevel

__all__ = ["F64", "I64", "BucketModels", "DampedTrend", "Field", "LastValue", "LinearRegression", "Model", "Now",
           "RobustLevel", "Slots", "Step", "build_models", "steps_ahead"]


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
            # absolute bucket number held by each ring entry: int32 reaches 2^31 buckets (20,000 years of 5 min)
            "bid": Field(b, np.int32, -1),
            "y0": Field(b, np.float64, 0.0),  # first value seen in the bucket (y origin)
            "n": Field(b, np.float32, 0.0),   # a count: exact in float32 to 2^24 samples a bucket
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
    return [LastValue(capacity), LinearRegression(capacity), DampedTrend(capacity), RobustLevel(capacity),
            BucketModels(capacity)]

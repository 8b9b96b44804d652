"""Exponential smoothing with a damped trend (Gardner & McKenzie), per sample, O(1).

The trend is damped so a forecast levels off instead of running away: the h-step
forecast is `level + trend * (phi + phi^2 + ... + phi^s)` with s the horizon in the
series' own sampling steps, which stays bounded however far ahead one asks.  After a
gap the trend is dropped (it described a past that no longer connects to the present).
"""

from __future__ import annotations

import numpy as np

from sidecar.engine.models import F64, Field, Model, Now, Step, steps_ahead


class DampedTrend(Model):
    """Holt's linear method with a damped trend; one variant per (alpha, beta, phi)."""

    def __init__(self, capacity: int, params: tuple[tuple[float, float, float], ...] = ((0.5, 0.1, 0.9),)
                 ) -> None:
        self.params = np.array(params, dtype=np.float64)
        self.names = tuple(f"holt_{a:g}_{b:g}_{p:g}" for a, b, p in params)
        super().__init__(capacity)

    def fields(self) -> dict[str, Field]:
        v = (len(self.params),)
        return {"level": Field(v, np.float64, np.nan), "trend": Field(v, np.float64, 0.0)}

    def update(self, s: Step) -> None:
        a, b, phi = self.params[:, 0], self.params[:, 1], self.params[:, 2]
        lv, tr = self.slots["level"], self.slots["trend"]
        i = s.idx
        L0, B0 = lv[i], tr[i]
        y = s.y[:, None]
        fresh = ~np.isfinite(L0[:, 0]) | s.gap
        L1 = a * y + (1.0 - a) * (L0 + phi * B0)
        B1 = b * (L1 - L0) + (1.0 - b) * phi * B0
        lv[i] = np.where(fresh[:, None], y, L1)
        tr[i] = np.where(fresh[:, None], 0.0, B1)

    def predict(self, now: Now, h_s: F64) -> F64:
        phi = self.params[:, 2][None, :, None]
        steps = steps_ahead(h_s, now.dt)[:, None, :]
        damp = phi * (1.0 - phi**steps) / (1.0 - phi)
        i = now.idx
        out: F64 = self.slots["level"][i][:, :, None] + self.slots["trend"][i][:, :, None] * damp
        return out

"""Backtest: replaying a series and scoring the forecasts it would have made."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.backtest import format_report, run_backtest
from sidecar.errors import InputError


def test_noisy_level_beats_last_value_and_reports_everything() -> None:
    rng = np.random.default_rng(0)
    n = 1500
    t = 1.4e9 + np.arange(n) * 300.0
    y = 50.0 + rng.normal(size=n)
    seen: list[tuple[int, int]] = []
    rep = run_backtest(t, y, horizons_s=(300.0, 3600.0), progress=lambda d, tot: seen.append((d, tot)),
                       progress_every=500)
    assert seen[-1] == (n, n) and len(seen) == 3
    assert rep.samples == n and rep.dropped == 0
    h5, h60 = rep.horizons
    assert h5.scored > n - 20 and h60.scored > n - 40
    # iid noise: a robust level has about 1/sqrt(2) of the last value's error
    assert 0.6 < h5.mase_last < 0.85 and 0.6 < h60.mase_last < 0.85
    assert h60.mase_linear < 1.0
    assert 0.85 < h5.coverage < 0.95
    assert abs(sum(h5.chosen.values()) - 1.0) < 1e-9
    assert h5.mae == pytest.approx(h5.mase_last * h5.mae_last)
    text = format_report(rep)
    assert "MASE/last" in text and "1h" in text
    assert rep.to_dict()["samples"] == n


def test_forced_last_scores_exactly_one() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(400) * 60.0
    y = rng.normal(size=400).cumsum()
    rep = run_backtest(t, y, horizons_s=(300.0,), model="last")
    assert rep.horizons[0].mase_last == pytest.approx(1.0)
    assert rep.horizons[0].chosen == {"last": 1.0}


def test_bad_rows_are_dropped_and_too_short_is_refused() -> None:
    t = np.array([0.0, 60.0, 60.0, 30.0, 120.0, 180.0, 240.0])
    y = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 5.0, 6.0])
    rep = run_backtest(t, y, horizons_s=(60.0,))
    assert rep.samples == 4 and rep.dropped == 3
    with pytest.raises(InputError):
        run_backtest([0.0, 1.0], [1.0, 2.0])

"""Backtest: replaying a series and scoring the forecasts it would have made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.backtest import format_report, run_backtest
from sidecar.cli import main
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


def test_score_from_scores_only_forecasts_made_from_then_on(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # a level shift in the first half: scored from the middle on, the last value is never worse than before
    t = 1_700_000_000 + np.arange(600) * 60.0
    y = np.where(np.arange(600) < 150, 10.0, 80.0) + np.random.default_rng(2).normal(size=600)
    whole = run_backtest(t, y, horizons_s=(300.0, 900.0))
    late = run_backtest(t, y, horizons_s=(300.0, 900.0), score_from=float(t[300]))
    assert late.samples == whole.samples == 600        # every sample is still replayed
    for w, h, horizon in zip(whole.horizons, late.horizons, (5, 15), strict=True):
        assert h.scored == 300 - horizon and w.scored > 590 - horizon   # made at t[300] .. t[599 - horizon]
        assert h.mae_last < w.mae_last
    assert run_backtest(t, y, horizons_s=(300.0,), score_from=None) == run_backtest(t, y, horizons_s=(300.0,))
    assert run_backtest(t, y, horizons_s=(300.0,), score_from=float(t[-1]) + 1).horizons[0].scored == 0

    csv = tmp_path / "s.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{a:.0f},{b}\n" for a, b in zip(t, y, strict=True)))
    for when in (f"{t[300]:.0f}", "2023-11-15T03:13:20Z"):      # unix seconds and RFC 3339 of the same time
        assert main(["backtest", "--input", str(csv), "--json", "--horizons", "5m,15m", "--score-from", when]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert [h["scored"] for h in rep["horizons"]] == [h.scored for h in late.horizons]
    assert main(["backtest", "--input", str(csv), "--score-from", "yesterday"]) == 2
    assert "--score-from" in capsys.readouterr().err

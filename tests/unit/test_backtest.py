"""Backtest: replaying a series and scoring the forecasts it would have made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidecar.backtest import MIN_SCORED, coverage_interval, format_report, parse_time_option, run_backtest
from sidecar.cli import main
from sidecar.errors import InputError

NOW = 1_764_000_000.0


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
    assert abs(sum(h5.chosen.values()) + h5.fallback - 1.0) < 1e-9
    assert 0.0 < h5.fallback < 0.01          # only the first forecasts, before any model had MIN_SCORED scores
    assert h5.mae == pytest.approx(h5.mase_last * h5.mae_last)
    text = format_report(rep)
    assert "MASE/last" in text and "1h" in text
    assert rep.to_dict()["samples"] == n


def test_coverage_interval_counts_about_two_outcomes_per_horizon_of_scored_time() -> None:
    """400 forecasts 15 s apart: at a 1-minute horizon 200 outcomes pin the share down; at a 1-hour horizon
    (a 100-minute span: about three outcomes) a coverage of 0.72 cannot be told from 0.9."""
    lo, hi = coverage_interval(0.9, 400, 400 * 15.0, 60.0)
    assert 0.85 < lo < 0.9 < hi < 0.94
    lo_h, hi_h = coverage_interval(0.72, 400, 400 * 15.0, 3600.0)
    assert lo_h < 0.72 < 0.95 < hi_h and lo_h < 0.4
    assert coverage_interval(1.0, 400, 400 * 15.0, 60.0)[1] == 1.0       # all held: the top is 1
    assert all(np.isnan(coverage_interval(0.9, 0, 0.0, 60.0)))


def test_the_report_says_when_coverage_rests_on_few_independent_outcomes() -> None:
    rng = np.random.default_rng(2)
    t = 1.4e9 + np.arange(600) * 15.0                      # 2.5 hours at 15 s
    y = 50.0 + rng.normal(size=600)
    rep = run_backtest(t, y, horizons_s=(60.0, 3600.0))
    h1, h60 = rep.horizons
    assert h1.independent > 100 and h60.independent < 5
    assert h60.coverage_low <= h60.coverage <= h60.coverage_high
    text = format_report(rep)
    assert "its 90% interval" in text and "few independent outcomes at 1h" in text


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


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW), ("now-10m", NOW - 600), ("now-2h", NOW - 7200), ("NOW - 1h30m", NOW - 5400),
    ("now+5m", NOW + 300), ("now-90", NOW - 90), ("2026-11-25T14:00:00Z", 1_795_615_200.0),
    ("2026-11-25T15:00:00+01:00", 1_795_615_200.0), ("2026-11-25 14:00:00", 1_795_615_200.0),
    ("1795615200", 1_795_615_200.0), ("1795615200.5", 1_795_615_200.5),
])
def test_times_are_relative_to_now_rfc3339_or_unix_seconds(text: str, expected: float) -> None:
    assert parse_time_option("--start", text, now=NOW) == expected


@pytest.mark.parametrize("text", ["now-", "now-10x", "now-1d-", "yesterday", "", "nan", "inf", "2026-13-01"])
def test_a_bad_time_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(InputError, match=r"^--end ") as err:
        parse_time_option("--end", text, now=NOW)
    assert "\n" not in str(err.value)


def test_horizons_longer_than_the_data_print_no_nan_rows_but_say_so_once() -> None:
    t = NOW + 15.0 * np.arange(48)                       # 12 minutes at 15 s
    rep = run_backtest(t, 50.0 + np.sin(np.arange(48) / 5.0), horizons_s=(300.0, 900.0, 1800.0, 3600.0))
    assert [h.scored > 0 for h in rep.horizons] == [True, False, False, False]
    text = format_report(rep)
    assert "nan" not in text.lower()
    assert text.count("not scored: too little data for 15m, 30m, 1h") == 1
    assert [line.split()[0] for line in text.splitlines() if line.startswith(" ")] == ["horizon", "5m", "5m"]


def test_models_chosen_count_only_models_with_enough_scores_and_name_the_fallback() -> None:
    """On 12 minutes no model has MIN_SCORED scores at 5m while its forecasts can still be scored: every one of
    them is the last value as the fallback, and no model is reported as chosen."""
    rng = np.random.default_rng(3)
    t = NOW + 15.0 * np.arange(48)
    rep = run_backtest(t, 50.0 + rng.normal(size=48), horizons_s=(300.0,))
    (h5,) = rep.horizons
    assert h5.scored > 20 and h5.chosen == {} and h5.fallback == 1.0
    assert f"the last value as the fallback 100% (no model had {MIN_SCORED} scores yet)" in format_report(rep)
    # at 1 s steps models qualify part way through: shares and fallback add up, and both are printed
    t1 = NOW + np.arange(720.0)
    rep1 = run_backtest(t1, 50.0 + rng.normal(size=720), horizons_s=(300.0,))
    (h1,) = rep1.horizons
    assert 0.5 < h1.fallback < 1.0 and h1.chosen
    assert sum(h1.chosen.values()) + h1.fallback == pytest.approx(1.0)
    line = format_report(rep1).splitlines()[-1]
    assert line.split()[0] == "5m" and "as the fallback" in line and next(iter(h1.chosen)) in line


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


def test_bounds_keep_every_interval_inside_the_metrics_domain(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # a CPU % that jumps between idle and saturated: unbounded, its intervals reach far past 0 and 100
    rng = np.random.default_rng(5)
    t = 1_700_000_000 + np.arange(800) * 15.0
    y = np.clip(np.where((np.arange(800) // 60) % 2 == 0, 3.0, 97.0) + rng.normal(size=800), 0.0, 100.0)
    free = run_backtest(t, y, horizons_s=(300.0, 900.0))
    bounded = run_backtest(t, y, horizons_s=(300.0, 900.0), bounds=(0.0, 100.0))
    for f, b in zip(free.horizons, bounded.horizons, strict=True):
        assert b.mean_width <= 100.0 < f.mean_width
        assert b.coverage >= f.coverage - 0.02       # what was cut off lay outside the domain

    csv = tmp_path / "cpu.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{a:.0f},{b}\n" for a, b in zip(t, y, strict=True)))
    assert main(["backtest", "--input", str(csv), "--json", "--horizons", "5m,15m", "--bounds", "0,100"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [h["mean_width"] for h in rep["horizons"]] == pytest.approx([h.mean_width for h in bounded.horizons])
    assert main(["backtest", "--input", str(csv), "--json", "--horizons", "5m", "--bounds", "0,"]) == 0
    capsys.readouterr()
    for bad in ("100,0", "0", "a,b", "nan,1"):
        assert main(["backtest", "--input", str(csv), "--bounds", bad]) == 2
        err = capsys.readouterr().err
        assert "--bounds" in err and len(err.strip().splitlines()) == 1

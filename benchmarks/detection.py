"""NAB standard score of ``twin-sidecar detect`` on the real NAB series, and the cost of AnomalyBank.update.

    python benchmarks/detection.py [--data-dir ../shared/data/nab/data] [--skip-speed] [--holdout]
                                   [--forecast-feature]

Runs the real command (``twin-sidecar detect --input DIR --output TMP --prefix twin_``, in process) over
every file of the data directory, scores the output with the official standalone scorer
(``../shared/tools/nab_score.py``, one threshold for the whole corpus, as NAB does), and writes
``benchmarks/results/detection.json`` (the scorer's full report plus run facts) and ``detection.md``.
The same output is also scored on each half of the files (even and odd positions in name order, each
half with its own threshold): a detector that only works on some of the series shows it there.

The speed part times ``AnomalyBank.update`` alone on 40,000 series per tick (the service's size), in CPU time,
which is the fairer number on a shared machine.

``--holdout`` checks that the parameters are not tuned to these files: each main parameter of AnomalyBank is
halved and doubled, and for random half-splits of the files the setting that scores best on one half is scored
on the other half, next to the default's score there. (This part replays the files through AnomalyBank alone,
without the forecaster, which the default bank does not use.)

``--forecast-feature`` replays the engine once more with ``AnomalyBank(use_forecast=True)`` (the forecaster's
one-step error as an extra feature) and scores it the same way, next to the default.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sidecar import cli, replay
from sidecar.engine.anomaly import AnomalyBank
from sidecar.engine.core import Engine, EngineSettings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
# the detector before its contextual expectation (commit 06b57d6), measured once: `detect` on the shared files
# and AnomalyBank.update's CPU per tick (40000 series, minimum of three runs, on the same loaded machine as
# the figure after it); its per-category and synthetic scores are measured live as ``contextual=False``
BEFORE = {"commit": "06b57d6", "shared": 73.75, "update_ms": 21.5}
# tried on the protocol and not kept (AnomalyBank replay; the last ones' figures are shared / realAWSCloudwatch /
# realKnownCause / synthetic, each with its own threshold, against the kept 74.37 / 71.06 / 79.83 / 59.87)
NOT_KEPT = [
    "a square-root (Anscombe) transform of integer-valued series, to judge counts by Poisson dispersion: shared "
    "74.1 -> 67.4 (both categories about -6), synthetic counts 53.1 -> 50.7",
    "the same hour of the same weekday (168 bins) once it has two weeks: shared 72.8 -> 70.1 (realKnownCause "
    "79.5 -> 74.8), synthetic counts 53.1 -> 44.3; shrunk toward the daily bin by its weeks (2 or 6 weeks' "
    "prior): no better",
    "Huber-clipping the residuals of the context's short window (bursts in count series): shared 72.8 -> 69.5",
    "a prediction-interval widening of the context's spread while a bin has few days: shared -1.4, synthetic +0.9",
    "gating the context by the cycle's strength (spread between bins over spread within): shared -0.3, "
    "synthetic counts -3.3",
    "the context's spread as the expected spread of the spread feature: shared 74.4 -> 72.1, synthetic -1.4",
    "judging a value by the larger of the baseline's and the last short window's spread (a count of 40 after a "
    "run of 0-60): shared -0.8, synthetic +0.7",
    "the contextual distances replacing the plain value and level features instead of adding to them (cheaper): "
    "shared 74.4 -> 67.7, synthetic 59.9 -> 55.3",
    "a context that speaks after three days instead of two: shared 74.4 -> 70.1, synthetic -0.5",
    "only one of the two contextual features: shared 71.4 (distance of the window only) or 73.3 (of the sample "
    "only), synthetic 56.1 or 50.8, against 74.4 and 59.9 with both",
    # measured 2026-12-07 11:10-11:55 UTC (vm, shared), against 74.37 / 71.06 / 79.83 / 59.87
    "the tail beyond what a series has shown fitted per series and feature (the maximum-likelihood power of a "
    "Lomax law over the feature's own decayed history, shrunk toward the fixed power 2 by prior_weight samples; "
    "the extreme-value idea of SPOT) instead of the fixed power 2: 72.70 / 71.38 / 76.24 / 64.20 (counts 46.10, "
    "cycles 77.47; fewer false positives on every injected kind, while nyc_taxi loses a window, 3.93 -> 1.85). "
    "The warning case: chosen on realAWSCloudwatch it loses 3.6 on realKnownCause. Variants: the fitted tail "
    "only where heavier 73.93 / 72.20 / 76.83 / 60.66, only where thinner 71.02 / 69.88 / 74.32 / 62.95, ten "
    "times the shrinkage 72.64 / 70.30 / 76.36 / 63.54, with memory_samples 4000 72.40 / 71.55 / 77.02 / 64.05 "
    "(8000: 70.38 / 71.46 / 71.25 / 63.61), prior_weight 10 70.74 / 69.71 / 74.50 / 64.25, daily_scales 1.5 "
    "73.18 / 72.20 / 76.88 / 62.57",
    "a Pareto (Hill) tail fitted on the exceedances over 3 scales only: 74.12 / 71.01 / 79.50 / 59.89 (over 1.5 "
    "scales: 73.07 / 70.17 / 79.11 / 60.72)",
    "the context's bins split into weekdays and weekends (48 bins; a weekend bin speaks after two weekend days, "
    "the weekday bin until then): 71.87 / 68.79 / 80.01 / 59.65 (counts 35.60, cycles 78.22)",
    "a step feature, the change from the previous sample against its robust typical size (the delta CAD OSE and "
    "KNN CAD encode): 71.39 / 66.62 / 80.55 / 59.71",
    "the daily habit no longer excusing the distance from the context (the context already holds the cycle): "
    "73.67 / 69.96 / 79.69 / 62.63; with daily_scales 1.5 73.88 / 70.11 / 79.98 / 62.81, with 2 "
    "73.79 / 69.96 / 79.98 / 62.62",
    "histograms that never forget (memory_samples 1e12: a conformal p-value over the whole history): "
    "72.08 / 71.25 / 73.55 / 59.97",
    "the extremes relaxing over one histogram memory (2000 samples) instead of ten: 72.45 / 69.22 / 78.38 / 59.81",
    # measured 2026-12-07 16:40-17:15 UTC (vm, shared) on the suite with its held-out-like bases (180 files),
    # against 74.37 / 71.06 / 79.83 / 58.59 (seed 0) and synthetic 49.99 (seed 1), before the count spread
    "the daily habit excusing the distance from the context only by the part the bin's expected shape does not "
    "explain (a strong cycle's habit excused every miss of its peak hours): 74.26 / 70.87 / 79.71 / 59.28 "
    "(counts 45.31, cycles 75.04, held-out-like 56.00 against 58.56); on a second draw (seed 1) 48.98 against 49.99",
    "the context's short window twice as long (24 samples, a day at hourly sampling): 72.45 / 68.08 / 80.02 / "
    "58.86 (held-out-like 56.73)",
    # the same day, against 74.37 / 71.06 / 79.83 / 58.73 (seed 0) before the weekday amplitude (with the count
    # spread below), then against the weekday amplitude as kept (74.53 / 71.06 / 80.25 / 61.23; seed 1: 54.11)
    "a count series (one that has only shown non-negative integers) judging its spread at its window's level, as "
    "a Poisson spread goes with the square root of the level (a quiet night of few events is not a drop in "
    "variance): shared categories unchanged; synthetic 58.59 -> 58.73 (seed 1: 49.99 -> 50.64) on its own, but "
    "61.23 -> 61.19 (seed 1: 54.11 -> 54.84) with the weekday amplitude, held-out-like -1.05 and -0.08, "
    "tweets5m 169 and 145 -> 153 false-positive rows: within the noise, one part fewer",
    "an incident (one alert per incident) lasting at most two days of samples instead of 400 samples (16 days at "
    "hourly sampling, where an early false alarm halves a real anomaly's score): 74.26 / 71.06 / 79.54 / 58.52; "
    "at most one day: 72.34 / 67.95 / 79.50 / 57.99 (more false alarms outweigh the windows regained)",
    "the weekday amplitude learnt from each sample at once instead of from whole days: 74.56 / 71.06 / 80.42 / "
    "60.69 (seed 1: 55.43), but a flat weekday then teaches its own weekday within the day (a flat hourly day "
    "after one week of history scored 0.984, not 0.99)",
    "the weekday amplitude speaking after one day of that weekday instead of two: 74.19 / 71.06 / 79.40 / 60.33",
    "an offset and an amplitude per weekday (a least-squares line, not a factor): 74.45 / 71.06 / 80.05 / 60.36 "
    "(counts 41.65, cycles 76.32, held-out-like 58.25)",
    # measured 2026-12-07 19:15-19:35 UTC (vm, shared), for bursty count series: the first two against
    # 74.53 / 71.06 / 80.25 / 61.23 (counts 39.65, held-out-like 61.12; tweets5m 169 false-positive rows), the
    # others beside the bursts of a count series excused as kept (74.86 / 71.61 / 80.23 / 61.84, counts 41.50,
    # held-out-like 61.63; seed 1: synthetic 54.60 against 54.11)
    "a second calibration of the combined p per series (how often the series' own p has reached as far, over "
    "memory_samples, as a floor under p: the learned tail of its surprise): 72.85 / 68.32 / 80.25 / 61.43 "
    "(counts 40.41, held-out-like 61.20; tweets5m 168 false-positive rows: p is already calibrated per sample, "
    "and a burst at the top of a week's memory is a 1-in-2000 sample), ec2_disk_write_bytes_c0d644 losing a window",
    "the power-law tail beyond what a series has shown stretched by each feature's own largest value (relaxing "
    "like the extremes) beyond 5 or 10 scales: 66.83 / 60.17 / 79.23 / 60.18 and 67.77 / 60.68 / 80.08 / 61.00, "
    "tweets5m false positives unchanged",
    "the excuse of bursts at any hour for every series, not only counts: 71.28 / 68.91 / 75.72 / 60.17 (counts "
    "41.50, held-out-like 57.81); on the value feature only 74.14 / 71.42 / 78.88 / 61.33, on the distance from "
    "the context only 73.29 / 68.36 / 81.08 / 59.79; for counts, on the distance from the context only "
    "74.75 / 71.42 / 80.23 / 61.50 (counts 40.77, held-out-like 61.03)",
    "a count series' bursts counting as 1.5 scales instead of daily_scales (3): 73.78 / 71.61 / 79.52 / 60.37 "
    "(counts 39.30; tweets5m 117 false-positive rows but 13/18 windows); as 6 scales: 74.53 / 71.06 / 80.25 / "
    "60.85 (seed 1: 54.67)",
    "a typical day's largest miss of the context (a mean over days) instead of the one every recent day "
    "reached: 73.78 / 71.61 / 79.52 / 59.91 (counts 43.78, held-out-like 58.67): fewer false positives, more "
    "windows lost (tweets5m 13/18, burst10m 14/18)",
    "only upward bursts excused (above the baseline and the context's expectation, and the day's largest miss "
    "upward): 74.87 / 71.61 / 80.25 / 61.77 (counts 41.21, held-out-like 61.63): the same, a rule more",
    "the distance from the context split by sign into two features, so frequent upward bursts no longer make "
    "a drop (a stop, a flat day in hourly counts) look ordinary: for counts only 74.88 / 71.61 / 80.28 / 61.24 "
    "(counts 40.72, held-out-like 60.64); for every series 72.64 / 68.26 / 79.69 / 62.28 (cycles 78.01 -> "
    "84.04, held-out-like 58.42, square5m 6 -> 28 false-positive rows)",
    "a count series' spread feature one-sided, rises only (a count's spread falls with its level, and a quiet "
    "night scored as a drop in variance): 74.86 / 71.61 / 80.23 / 60.63 (seed 1: 53.73); tweets5m 141 -> 132 "
    "and 129 -> 105 false-positive rows, but a stopped signal 12 -> 11 and 10 -> 8 windows",
]
# how the grid of the protocol is read (the table is measured; this is the rule applied to it)
CHOICE = (
    "Rule for the defaults: a parameter moves only if the move holds up out of sample: better on the category "
    "it was not chosen on and on the synthetic suite, the stand-in for series of other kinds. The defaults sit "
    "where no single halving or doubling does that by more than the noise of the protocol (one synthetic draw "
    "of 50 files moved its score by about ten points from seed to seed, hence two draws; a context that "
    "speaks a day later moved the shared score by four). `daily_scales=1.5` is the warning case: 75.2 on the "
    "shared files, better on both categories, but 2.6 points worse on the synthetic suite (counts and cycles "
    "alike), so it stays at 3. Chosen on realKnownCause alone the detector would drop its context "
    "(realKnownCause is best without it); on realAWSCloudwatch that choice loses 1.5 points and on the synthetic "
    "suite 28. Parameters that no halving or doubling moved are no longer parameters: the power of the tail "
    "beyond what a series has shown (2), how slowly the remembered extremes relax (ten histogram memories; "
    "10000/20000/40000 samples scored 74.25/74.37/74.37 shared and 59.87 synthetic alike) and a memory in days "
    "of its own for the context (one `daily_days` for both time-of-day memories; both were 7, and halving or "
    "doubling the merged one loses on every column: 73.05 / 70.90 / 78.52 / 58.07 and 73.97 / 70.87 / 79.14 / "
    "58.16 for shared / realAWSCloudwatch / realKnownCause / synthetic). The synthetic suite now also holds "
    "80 files of bases shaped like the held-out kinds (`synthHeldoutLike`: bursty tweet-like counts, an hourly "
    "price-like rate, a road occupancy with gaps, a square daily cycle); the first 100 files are unchanged. One "
    "part passed the rule on it: each weekday's amplitude of the daily shape (realKnownCause +0.4, "
    "realAWSCloudwatch unchanged, synthetic 58.59 -> 61.23 and on a second draw, seed 1, 49.99 -> 54.11; the "
    "warning: synthCounts 42.65 -> 39.65 and 29.68 -> 25.22, its hourly weekly counts `clicks1h` losing one "
    "and two windows). One "
    "draw's synthetic score still moves by about nine points from seed to seed (58.6 seed 0, 50.0 seed 1). "
    "For bursty count series one part passed the rule (`bursts`, no new parameter): a count series (one that has "
    "shown only non-negative integers) excuses, at any hour, a burst as large as the largest miss of the context "
    "every recent day has reached, as the daily habit excuses what recurs at its hour: shared 74.53 -> 74.86 "
    "(realAWSCloudwatch 71.06 -> 71.61 through elb_request_count, realKnownCause 80.25 -> 80.23; only the two "
    "count files of the shared set can move), synthetic 61.23 -> 61.84 and on seed 1 54.11 -> 54.60, synthCounts "
    "39.65 -> 41.50 (seed 1: 25.22 -> 27.43), held-out-like 61.12 -> 61.63 (seed 1: 52.87 -> 53.20); "
    "false-positive rows of tweets5m 169 -> 141 (seed 1: 145 -> 129), burst10m 77 -> 72 (102 -> 91), clicks1h "
    "54 -> 46 (41 -> 35), while tweets5m loses one window on each draw. With it the weekday amplitude no longer "
    "costs the counts (synthCounts 39.43 without it, 41.50 with it)."
)
# the detector without its contextual features: the protocol's second row
OFF: dict[str, Any] = {"contextual": False}
# the detector with one daily shape for every day (before the weekday amplitude)
WEEKDAYS_OFF: dict[str, Any] = {"weekdays": False}
# the detector that excuses only what recurs at the same hour (before a count series' bursts at any hour)
BURSTS_OFF: dict[str, Any] = {"bursts": False}
ABLATIONS = [OFF, WEEKDAYS_OFF, BURSTS_OFF]
PUBLISHED = [("ARTime", 67.7), ("Numenta HTM", 66.5), ("CAD OSE", 61.6), ("KNN CAD", 54.7),
             ("Random Cut Forest", 52.0), ("windowed Gaussian", 24.3)]


def run_detect(data_dir: Path, out_dir: Path) -> float:
    t0 = time.perf_counter()
    rc = cli.main(["detect", "--input", str(data_dir), "--output", str(out_dir), "--prefix", "twin_"])
    if rc != 0:
        raise SystemExit(f"twin-sidecar detect failed with exit code {rc}")
    return time.perf_counter() - t0


def forecast_feature_detect(data_dir: Path, windows: Path, out_dir: Path) -> None:
    """``detect``'s output, with an engine whose anomaly bank also scores the forecaster's one-step error."""
    keys = sorted(k for k in json.loads(windows.read_text()) if (data_dir / k).is_file())
    files = [replay.load(data_dir / k) for k in keys]
    eng = Engine(EngineSettings())
    eng.anomaly = AnomalyBank(use_forecast=True)  # before any series exists, so it grows with the engine
    slots = np.empty(len(files), np.int64)
    for i in range(len(files)):
        eng.create_twin(f"nab-{i}", at=0.0)
        slots[i] = eng.series_for(f"nab-{i}", [replay.METRIC])[0]
    scores = [np.zeros(len(f)) for f in files]
    for i, live, accepted in replay._steps(files, eng, slots):
        got = eng.anomaly_score[slots[live]]
        for k, ok, v in zip(live.tolist(), accepted.tolist(), got.tolist(), strict=True):
            scores[k][i] = min(max(v, 0.0), 1.0) if ok and np.isfinite(v) else 0.0
    write_results(out_dir, keys, files, scores)


def write_results(out_dir: Path, keys: list[str], files: list[list[replay.Row]], scores: list[np.ndarray]) -> None:
    for name, f, sc in zip(keys, files, scores, strict=True):
        cat, base = name.split("/")
        dst = out_dir / cat / f"twin_{base}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "w", newline="") as out:
            w = csv.writer(out, lineterminator="\n")
            w.writerow(["timestamp", "value", "anomaly_score"])
            w.writerows([r.stamp, repr(r.value), f"{v:.9f}"] for r, v in zip(f, sc, strict=True))


def half_scores(scorer: Path, data_dir: Path, windows: Path, results: Path, tmp: Path) -> dict[str, float]:
    """Standard score of the same output on the even- and on the odd-positioned files, each its own threshold."""
    wins = json.loads(windows.read_text())
    keys = sorted(k for k in wins if (data_dir / k).is_file())
    out = {}
    for name, half in (("even", keys[0::2]), ("odd", keys[1::2])):
        wf = tmp / f"windows_{name}.json"
        wf.write_text(json.dumps({k: wins[k] for k in half}))
        out[name] = nab_score(scorer, data_dir, wf, results)["profiles"]["standard"]["normalized_score"]
    return out


def nab_score(scorer: Path, data_dir: Path, windows: Path, results: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(scorer), "--data-dir", str(data_dir), "--windows", str(windows),
                          "--results", str(results), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"nab_score.py failed ({out.returncode}): {out.stderr.strip()}")
    report: dict[str, Any] = json.loads(out.stdout)
    return report


# each main parameter of AnomalyBank, halved and doubled, around its default
DEFAULTS: dict[str, float] = {"baseline_samples": 288.0, "short_samples": 12.0, "long_samples": 96.0,
                              "memory_samples": 2000.0, "prior_weight": 20.0, "scale_floor": 0.05,
                              "quiet_samples": 400, "daily_days": 7.0, "daily_scales": 3.0}


def variants() -> list[dict[str, float]]:
    out: list[dict[str, float]] = [{}]
    for name, v in DEFAULTS.items():
        for f in (0.5, 2.0):
            out.append({name: type(v)(v * f)})
    return out


def bank_scores(files: list[list[replay.Row]], params: dict[str, float]) -> list[np.ndarray]:
    """Replay the files through AnomalyBank alone, in lockstep; rows whose time does not advance score 0,
    as in ``detect``."""
    bank = AnomalyBank(**params)  # type: ignore[arg-type]
    idx = bank.add(len(files))
    cols = [np.array([(r.t, r.value) for r in f]) for f in files]
    out = [np.zeros(len(f)) for f in files]
    last = np.full(len(files), -np.inf)
    for i in range(max(len(f) for f in files)):
        live = np.array([k for k, c in enumerate(cols) if i < len(c) and c[i, 0] > last[k]], dtype=np.int64)
        if live.size == 0:
            continue
        ty = np.array([cols[k][i] for k in live.tolist()])
        last[live] = ty[:, 0]
        nan = np.full(live.size, np.nan)
        s = bank.update(idx[live], ty[:, 0], ty[:, 1], nan, nan, nan, nan)
        for k, v in zip(live.tolist(), s.tolist(), strict=True):
            out[k][i] = v
    return out


def holdout(data_dir: Path, windows: Path, scorer: Path, splits: int, seed: int = 0) -> dict[str, Any]:
    keys = sorted(json.loads(windows.read_text()))
    paths = [p for p in sorted(data_dir.glob("*/*.csv")) if f"{p.parent.name}/{p.name}" in keys]
    names = [f"{p.parent.name}/{p.name}" for p in paths]
    files = [replay.load(p) for p in paths]
    all_windows = json.loads(windows.read_text())
    grid = variants()
    rng = np.random.default_rng(seed)
    halves = []
    for _ in range(splits):
        perm = rng.permutation(len(names))
        halves.append(([names[i] for i in perm[: len(names) // 2]], [names[i] for i in perm[len(names) // 2:]]))
    full: list[float] = []
    per_half: list[list[tuple[float, float]]] = []
    with tempfile.TemporaryDirectory(prefix="holdout-") as tmp:
        for params in grid:
            res = Path(tmp) / "results"
            write_results(res, names, files, bank_scores(files, params))
            full.append(nab_score(scorer, data_dir, windows, res)["profiles"]["standard"]["normalized_score"])
            row = []
            for a, b in halves:
                got = []
                for half in (a, b):
                    wf = Path(tmp) / "windows.json"
                    wf.write_text(json.dumps({k: all_windows[k] for k in half}))
                    got.append(nab_score(scorer, data_dir, wf, res)["profiles"]["standard"]["normalized_score"])
                row.append((got[0], got[1]))
            per_half.append(row)
    chosen = []
    for j in range(splits):
        best = int(np.argmax([per_half[g][j][0] for g in range(len(grid))]))
        chosen.append({"chosen_on_A": grid[best] or "defaults", "A": per_half[best][j][0],
                       "B_of_chosen": per_half[best][j][1], "B_of_defaults": per_half[0][j][1]})
    return {"grid": [g or "defaults" for g in grid], "full_corpus": full, "splits": chosen,
            "mean_B_of_chosen": float(np.mean([c["B_of_chosen"] for c in chosen])),
            "mean_B_of_defaults": float(np.mean([c["B_of_defaults"] for c in chosen]))}


def replay_corpus(data_dir: Path, windows: Path) -> tuple[list[str], list[list[replay.Row]]]:
    keys = sorted(k for k in json.loads(windows.read_text()) if (data_dir / k).is_file())
    return keys, [replay.load(data_dir / k) for k in keys]


def subset_score(scorer: Path, data_dir: Path, windows: Path, results: Path, keys: list[str],
                 tmp: Path) -> dict[str, Any]:
    """The standard profile on ``keys`` only, with their own threshold (as a held-out set is scored)."""
    wins = json.loads(windows.read_text())
    wf = tmp / "subset_windows.json"
    wf.write_text(json.dumps({k: wins[k] for k in keys}))
    std: dict[str, Any] = nab_score(scorer, data_dir, wf, results)["profiles"]["standard"]
    return std


def per_kind(std: dict[str, Any], kinds: dict[str, str]) -> dict[str, dict[str, int]]:
    """Windows detected, windows in all and false-positive rows per injected kind, at the suite's threshold."""
    out: dict[str, dict[str, int]] = {}
    for row in std["per_file"]:
        k = kinds.get(row["file"], "?")
        c = out.setdefault(k, {"detected": 0, "windows": 0, "fp": 0, "files": 0})
        c["detected"] += row["windows_detected"]
        c["windows"] += row["windows_detected"] + row["windows_missed"]
        c["fp"] += row["fp"]
        c["files"] += 1
    return out


def protocol(data_dir: Path, windows: Path, scorer: Path, grid: list[dict[str, Any]], seed: int = 0,
             per_category: bool = True, jobs: int = 1) -> dict[str, Any]:
    """The validation protocol: every setting of ``grid`` (the first is the defaults) replayed through
    AnomalyBank alone on the shared files and on the synthetic suite (``jobs`` settings at a time).

    Leave one category out: the setting best on one category is scored on the other, next to the
    defaults there; a setting that helps one category and hurts the other is a warning, not a win. The
    synthetic suite (``benchmarks/synthetic.py``) is scored with its own threshold, per injected kind."""
    cats = sorted({k.split("/")[0] for k in replay_corpus(data_dir, windows)[0]})
    if jobs > 1 and len(grid) > 1:
        from concurrent.futures import ProcessPoolExecutor
        parts = [grid[j::jobs] for j in range(jobs)]
        with ProcessPoolExecutor(jobs) as pool:
            done = list(pool.map(protocol_rows, *zip(*[(data_dir, windows, scorer, g, seed, per_category)
                                                       for g in parts], strict=True)))
        rows = [done[i % jobs][i // jobs] for i in range(len(grid))]
    else:
        rows = protocol_rows(data_dir, windows, scorer, grid, seed, per_category)
    loco = []
    if per_category and len(rows) > 1:
        for fit in cats:
            for other in (c for c in cats if c != fit):
                best = int(np.argmax([r[fit] for r in rows]))
                loco.append({"fit_on": fit, "scored_on": other, "chosen": rows[best]["setting"],
                             "fit_score": rows[best][fit], "held_out_chosen": rows[best][other],
                             "held_out_defaults": rows[0][other]})
    return {"rows": rows, "loco": loco, "categories": cats}


def protocol_rows(data_dir: Path, windows: Path, scorer: Path, grid: list[dict[str, Any]], seed: int,
                  per_category: bool) -> list[dict[str, Any]]:
    """One row of scores per setting: shared files, each category, the synthetic suite and its parts."""
    if str(Path(__file__).parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).parent))
    import synthetic

    keys, files = replay_corpus(data_dir, windows)
    cats = sorted({k.split("/")[0] for k in keys})
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="protocol-") as tmpd:
        tmp = Path(tmpd)
        kinds = synthetic.write_suite(tmp / "synth", seed)
        s_data, s_win = tmp / "synth" / "data", tmp / "synth" / "windows.json"
        s_keys, s_files = replay_corpus(s_data, s_win)
        for params in grid:
            res = tmp / "res"
            write_results(res, keys, files, bank_scores(files, params))
            row: dict[str, Any] = {"setting": params or "defaults",
                                   "shared": nab_score(scorer, data_dir, windows, res)["profiles"]["standard"][
                                       "normalized_score"]}
            if per_category:
                for c in cats:
                    row[c] = subset_score(scorer, data_dir, windows, res, [k for k in keys if k.startswith(c)],
                                          tmp)["normalized_score"]
            sres = tmp / "sres"
            write_results(sres, s_keys, s_files, bank_scores(s_files, params))
            std = nab_score(scorer, s_data, s_win, sres)["profiles"]["standard"]
            row["synthetic"] = std["normalized_score"]
            row["synthetic_kinds"] = per_kind(std, kinds)
            row["synthetic_bases"] = per_kind(std, {k: k.split("/")[1].split("_")[0] for k in kinds})
            for c in sorted({k.split("/")[0] for k in s_keys}):
                row[c] = subset_score(scorer, s_data, s_win, sres, [k for k in s_keys if k.startswith(c)],
                                      tmp)["normalized_score"]
            rows.append(row)
    return rows


def protocol_markdown(p: dict[str, Any]) -> list[str]:
    cats = p["categories"]
    syn = sorted(k for k in p["rows"][0] if k.startswith("synth") and not k.startswith("synthetic"))
    lines = ["", "## Validation protocol: leave one category out, and synthetic series", "",
             "AnomalyBank replayed alone (the engine adds nothing to its score). Each column is scored with its "
             "own threshold, as a held-out set would be.", "",
             "| setting | shared | " + " | ".join(cats) + " | synthetic | " + " | ".join(syn) + " |",
             "|---" * (3 + len(cats) + len(syn)) + "|"]
    for r in p["rows"]:
        lines.append(f"| {r['setting']} | {r['shared']:.2f} | " + " | ".join(f"{r[c]:.2f}" for c in cats)
                     + f" | {r['synthetic']:.2f} | " + " | ".join(f"{r[c]:.2f}" for c in syn) + " |")
    if p["loco"]:
        lines += ["", "Leave one category out: the setting best on one category, scored on the other:", "",
                  "| fit on | chosen | fit score | scored on | held-out (chosen) | held-out (defaults) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c['fit_on']} | {c['chosen']} | {c['fit_score']:.2f} | {c['scored_on']} | "
                  f"{c['held_out_chosen']:.2f} | {c['held_out_defaults']:.2f} |" for c in p["loco"]]
    kinds = p["rows"][0]["synthetic_kinds"]
    off = next((r["synthetic_kinds"] for r in p["rows"] if r["setting"] == OFF), None)
    lines += ["", "Synthetic suite per injected kind (windows detected / windows, false-positive rows, each "
              "at its own suite threshold)" + (", with the defaults and without the contextual expectation "
                                               "(`contextual=False`, the detector before it):" if off else ":"), "",
              "| kind | files | detected | FP rows |"
              + (" detected (no context) | FP rows (no context) |" if off else ""),
              "|---|---|---|---|" + ("---|---|" if off else "")]
    for k, v in kinds.items():
        row = f"| {k} | {v['files']} | {v['detected']}/{v['windows']} | {v['fp']} |"
        if off:
            o = off[k]
            row += f" {o['detected']}/{o['windows']} | {o['fp']} |"
        lines.append(row)
    bases = p["rows"][0].get("synthetic_bases")
    abl = [(a, r["synthetic_bases"]) for a in ABLATIONS for r in p["rows"]
           if r["setting"] == a and "synthetic_bases" in r]
    if bases:
        lines += ["", "Per base series (the same runs): windows detected / windows and false-positive rows, with "
                  "the defaults and with each part off:", "",
                  "| base | files | defaults | " + " | ".join(str(a) for a, _ in abl) + " |",
                  "|---|---|---|" + "---|" * len(abl)]
        for k, v in bases.items():
            lines.append(f"| {k} | {v['files']} | {v['detected']}/{v['windows']}, {v['fp']} | "
                         + " | ".join(f"{b[k]['detected']}/{b[k]['windows']}, {b[k]['fp']}" for _, b in abl) + " |")
    return lines


def bank_class_at(rev: str, tmp: Path) -> type[AnomalyBank]:
    """AnomalyBank as committed at ``rev`` (its module and the engine modules it imports), loaded beside this
    one, so that one run measures both on the same machine at the same time."""
    import importlib.util
    name = "engine_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    pkg = tmp / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for mod in ("anomaly", "timeofday", "models_base"):
        got = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:sidecar/engine/{mod}.py"], capture_output=True,
                             text=True)
        if got.returncode == 0:
            (pkg / f"{mod}.py").write_text(got.stdout)
        elif mod == "anomaly":
            raise SystemExit(f"git show {rev}:sidecar/engine/anomaly.py failed: {got.stderr.strip()}")
    spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    cls: type[AnomalyBank] = importlib.import_module(f"{name}.anomaly").AnomalyBank
    return cls


def cost_against(rev: str, n_series: int, ticks: int, rounds: int = 3) -> dict[str, Any]:
    """``update_cost`` of this bank and of the bank at ``rev``, alternating, the fastest of ``rounds`` each."""
    with tempfile.TemporaryDirectory(prefix="bank-at-") as tmp:
        other = bank_class_at(rev, Path(tmp))
        now, then = [], []
        for _ in range(rounds):
            now.append(update_cost(n_series, ticks)["cpu_s_per_tick"])
            then.append(update_cost(n_series, ticks, bank_cls=other)["cpu_s_per_tick"])
    return {"rev": rev, "series": float(n_series), "ms_now": min(now) * 1e3, "ms_then": min(then) * 1e3,
            "ratio": min(now) / min(then)}


def update_cost(n_series: int, ticks: int, seed: int = 0,
                bank_cls: type[AnomalyBank] = AnomalyBank) -> dict[str, float]:
    """CPU seconds per tick of AnomalyBank.update over all series, after a warm-up longer than the bank's."""
    bank = bank_cls()
    idx = bank.add(n_series)
    rng = np.random.default_rng(seed)
    nan = np.full(n_series, np.nan)
    level = rng.uniform(1.0, 100.0, n_series)
    warm = 20
    cpu = 0.0
    for i in range(warm + ticks):
        y = level + rng.normal(0.0, 1.0, n_series)
        t = np.full(n_series, 1.7e9 + 15.0 * i)
        c0 = time.process_time()
        bank.update(idx, t, y, nan, nan, nan, nan)
        if i >= warm:
            cpu += time.process_time() - c0
    per_tick = cpu / ticks
    return {"series": float(n_series), "ticks": float(ticks), "cpu_s_per_tick": per_tick,
            "cpu_us_per_series": per_tick / n_series * 1e6}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def markdown(report: dict[str, Any], facts: dict[str, Any]) -> str:
    std = report["profiles"]["standard"]
    lines = [
        "# Anomaly detection on NAB (realAWSCloudwatch + realKnownCause)",
        "",
        f"Measured {facts['date']} on {facts['machine']} with `{facts['command']}`.",
        "",
        f"- **NAB standard score: {std['normalized_score']:.2f}** (0 = never fires, 100 = perfect), "
        f"raw {std['raw_score']:.3f}, one threshold for the corpus: {std['threshold']:.6g}",
        f"- windows detected: {std['windows_detected']} of {std['windows_detected'] + std['windows_missed']}; "
        f"false-positive rows: {std['fp']}",
        f"- the same output on half of the files, each half with its own threshold: "
        f"{facts['halves']['even']:.2f} on the even-positioned files, {facts['halves']['odd']:.2f} on the odd ones",
        f"- files: {report['files']}, rows: {report['rows']} ({report['scored_rows']} scored)",
        f"- wall time of `twin-sidecar detect` over all files: {facts['detect_wall_s']:.1f} s "
        "(whole engine: forecaster, divergence and anomaly bank)",
    ]
    if "speed" in facts:
        sp = facts["speed"]
        lines.append(f"- `AnomalyBank.update` alone, {int(sp['series'])} series per tick: "
                     f"{sp['cpu_s_per_tick'] * 1e3:.1f} ms CPU per tick, {sp['cpu_us_per_series']:.2f} µs per series")
    if "cost_against" in facts:
        c = facts["cost_against"]
        lines.append(f"- the same timing of the bank at `{c['rev']}` in the same run (alternating, fastest of three "
                     f"each): {c['ms_then']:.1f} ms against {c['ms_now']:.1f} ms now, ratio {c['ratio']:.2f}")
    if "forecast_feature" in facts:
        fc = facts["forecast_feature"]
        lines.append(f"- with the forecaster's one-step error as an extra feature (`AnomalyBank(use_forecast=True)`, "
                     f"`--forecast-feature`): {fc['all']:.2f} (even {fc['even']:.2f}, odd {fc['odd']:.2f})")
    other = {k: v for k, v in report["profiles"].items() if k != "standard"}
    for name, r in other.items():
        lines.append(f"- profile {name}: {r['normalized_score']:.2f}")
    lines += ["", "Published scores on the same 24 files (standard profile):", "",
              "| detector | score |", "|---|---|", f"| **twin-sidecar** | **{std['normalized_score']:.2f}** |"]
    lines += [f"| {name} | {score} |" for name, score in PUBLISHED]
    lines += ["", "Per file (standard profile, at the corpus threshold):", "",
              "| file | score | windows hit | FP rows |", "|---|---|---|---|"]
    for row in std["per_file"]:
        hit = f"{row['windows_detected']}/{row['windows_detected'] + row['windows_missed']}"
        lines.append(f"| {row['file']} | {row['score']:.3f} | {hit} | {row['fp']} |")
    if "holdout" in facts:
        h = facts["holdout"]
        lines += ["", "## Are the parameters tuned to these files?", "",
                  "AnomalyBank replayed alone (no forecaster), each main parameter halved and doubled. "
                  "Full-corpus score of each setting:", "", "| setting | score |", "|---|---|"]
        lines += [f"| {g} | {v:.2f} |" for g, v in zip(h["grid"], h["full_corpus"], strict=True)]
        lines += ["", f"{len(h['splits'])} random half-splits of the files: the setting best on half A, "
                  "scored on half B, next to the defaults on half B:", "",
                  "| chosen on A | A | B (chosen) | B (defaults) |", "|---|---|---|---|"]
        lines += [f"| {c['chosen_on_A']} | {c['A']:.2f} | {c['B_of_chosen']:.2f} | {c['B_of_defaults']:.2f} |"
                  for c in h["splits"]]
        lines += ["", f"Mean on the held-out halves: {h['mean_B_of_chosen']:.2f} for the setting chosen without "
                  f"them, {h['mean_B_of_defaults']:.2f} for the defaults."]
    if "protocol" in facts:
        rows = facts["protocol"]["rows"]
        off = next((r for r in rows if r["setting"] == OFF), None)
        if off is not None:
            now = rows[0]
            lines += ["", "## Before and after the contextual expectation", "",
                      f"| | before ({BEFORE['commit']}) | after |", "|---|---|---|",
                      f"| NAB standard, shared files (`detect`) | {BEFORE['shared']:.2f} | "
                      f"{std['normalized_score']:.2f} |"]
            lines += [f"| {k} alone (AnomalyBank replay, own threshold) | {off[k]:.2f} | {now[k]:.2f} |"
                      for k in facts["protocol"]["categories"]]
            lines.append(f"| synthetic suite ({sum(v['files'] for v in now['synthetic_kinds'].values())} files) | "
                         f"{off['synthetic']:.2f} | {now['synthetic']:.2f} |")
            if "speed" in facts:  # measured in another run: only a ratio within one run compares
                lines.append(f"| `AnomalyBank.update`, ms CPU per tick ({int(facts['speed']['series'])} series; "
                             "each its own run and machine load) | "
                             f"{BEFORE['update_ms']:.1f} | {facts['speed']['cpu_s_per_tick'] * 1e3:.1f} |")
        lines += protocol_markdown(facts["protocol"])
        lines += ["", CHOICE, "", "Tried and not kept:", ""] + [f"- {n}" for n in NOT_KEPT]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=SHARED / "data" / "nab" / "data")
    ap.add_argument("--windows", type=Path, default=SHARED / "data" / "nab" / "labels" / "combined_windows.json")
    ap.add_argument("--scorer", type=Path, default=SHARED / "tools" / "nab_score.py")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where detection.{json,md} go")
    ap.add_argument("--keep", type=Path, default=None, help="keep the detect output here (default: a temp dir)")
    ap.add_argument("--series", type=int, default=40_000, help="series per tick for the update-cost run")
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--cost-against", default="main", metavar="REV",
                    help="also time the bank committed at REV, alternating with this one (default main; '' skips)")
    ap.add_argument("--holdout", action="store_true", help="also run the half-split parameter check (minutes)")
    ap.add_argument("--splits", type=int, default=6)
    ap.add_argument("--protocol", action="store_true",
                    help="also run leave-one-category-out and the synthetic suite over the parameter grid (minutes)")
    ap.add_argument("--protocol-grid", choices=("defaults", "halve-double"), default="defaults",
                    help="the defaults alone, or each main parameter halved and doubled")
    ap.add_argument("--jobs", type=int, default=1, help="protocol settings replayed at a time (processes)")
    ap.add_argument("--forecast-feature", action="store_true",
                    help="also score AnomalyBank(use_forecast=True) inside the engine (about a minute)")
    a = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="detect-") as tmp:
        results = a.keep or Path(tmp) / "results"
        wall = run_detect(a.data_dir, results)
        report = nab_score(a.scorer, a.data_dir, a.windows, results)
        halves = half_scores(a.scorer, a.data_dir, a.windows, results, Path(tmp))
        if a.forecast_feature:
            fres = Path(tmp) / "forecast-feature"
            forecast_feature_detect(a.data_dir, a.windows, fres)
            fc = nab_score(a.scorer, a.data_dir, a.windows, fres)["profiles"]["standard"]["normalized_score"]
            fc_halves = half_scores(a.scorer, a.data_dir, a.windows, fres, Path(tmp))
    args = sys.argv[1:] if argv is None else argv
    facts: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                             "detect_wall_s": wall, "data_dir": str(a.data_dir), "halves": halves,
                             "command": " ".join(["python benchmarks/detection.py", *args])}
    if a.forecast_feature:
        facts["forecast_feature"] = {"all": fc, **fc_halves}
    if not a.skip_speed:
        facts["speed"] = update_cost(a.series, a.ticks)
        if a.cost_against:
            facts["cost_against"] = cost_against(a.cost_against, a.series, a.ticks)
    if a.protocol:
        # the defaults, the detector without its contextual expectation (as before it had one), then the grid
        grid = [{}, *ABLATIONS] + ([] if a.protocol_grid == "defaults" else variants()[1:])
        facts["protocol"] = protocol(a.data_dir, a.windows, a.scorer, grid, jobs=a.jobs)
    if a.holdout:
        facts["holdout"] = holdout(a.data_dir, a.windows, a.scorer, a.splits)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "detection.json").write_text(json.dumps({"run": facts, "nab": report}, indent=2) + "\n")
    md = markdown(report, facts)
    (a.out / "detection.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

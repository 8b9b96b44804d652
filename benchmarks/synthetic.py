"""Synthetic series with injected anomalies of known kinds and times, in NAB's file formats.

The shared NAB files are few and of two kinds; a detector tuned on them can still fail on series of
other shapes. This suite covers what the held-out series showed: daily and weekly cycles, trends,
noise of several laws, counts with irregular recurring bursts (Poisson and negative binomial),
sampling from 1 minute to 1 hour (hourly: a day is 24 samples), and anomalies of known kinds:
spikes, dips, level shifts, variance changes, cycle-shape changes (a flat day, a skipped rise, a
shifted phase), slow drifts and a stopped signal. Each base series gets each kind (in two draws), plus
a clean copy that can only raise false alarms.

Every file is written as ``timestamp,value`` under ``<category>/<name>.csv`` and the labels as a
NAB windows JSON (one window per anomaly, 10% of the file's length as NAB does, centred on the
onset), so the same ``nab_score.py`` scores it. Generation is deterministic for a seed.

    python benchmarks/synthetic.py --out /tmp/synth   # writes data/, windows.json and kinds.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DAY = 86400.0
KINDS = ("none", "spike", "dip", "level_shift", "variance", "flat_day", "skipped_rise", "phase_shift",
         "drift", "stopped")
T0 = 1.6e9 - (1.6e9 % DAY)  # a midnight (UTC), so hours of the day read plainly


@dataclass(frozen=True)
class Base:
    """A family of normal behaviour: sampling step, length and how values arise."""

    name: str
    category: str
    step: float        # seconds
    days: float
    counts: bool       # Poisson / negative-binomial counts with bursts, else a continuous metric
    weekly: bool       # weekends lower
    noise: str         # gauss | student | ar1 | lognorm | hetero (continuous), poisson | negbin (counts)
    trend: float       # change of level per day, in units of the cycle's amplitude
    cycle: str = "work"   # work (one rise and fall) | rush (two peaks, as road traffic) | square (steep edges)
    amp: float = 40.0     # counts: the cycle's amplitude in events per sample, over a floor of amp / 13
    bursts: str = "short"  # counts: short (2-6x for 1-3 samples) | heavy (Pareto-sized, decaying over an hour)
    gaps: bool = False    # sampling jittered by up to half a minute, and hours missing now and then


BASES = (
    Base("cycle5m", "synthCycle", 300.0, 14.0, False, False, "gauss", 0.0),
    Base("week1h", "synthCycle", 3600.0, 63.0, False, True, "student", 0.0),
    Base("trend1m", "synthCycle", 60.0, 5.0, False, False, "ar1", 0.3),
    Base("burst10m", "synthCounts", 600.0, 21.0, True, False, "negbin", 0.0),
    Base("clicks1h", "synthCounts", 3600.0, 63.0, True, True, "poisson", 0.0),
)
# kinds the held-out series are said to be of (NAB's realTweets, realAdExchange, realTraffic and its artificial
# daily cycles), drawn from a second stream so the first suite's files stay as they were
HELDOUT_LIKE = (
    Base("tweets5m", "synthHeldoutLike", 300.0, 28.0, True, False, "negbin", 0.0, amp=12.0, bursts="heavy"),
    Base("cpc1h", "synthHeldoutLike", 3600.0, 66.0, False, True, "lognorm", 0.0),
    Base("occupancy5m", "synthHeldoutLike", 300.0, 14.0, False, True, "hetero", 0.0, cycle="rush", gaps=True),
    Base("square5m", "synthHeldoutLike", 300.0, 14.0, False, False, "gauss", 0.0, cycle="square"),
)


def shape(hours: np.ndarray, cycle: str = "work") -> np.ndarray:
    """A day's cycle in [0, 1]. ``work``: low at night, a rise from 7 h to 10 h, a fall from 17 h to 21 h;
    ``square``: the same with edges a few samples long; ``rush``: two peaks, at 8 h and 17 h 30."""
    if cycle == "rush":
        return np.maximum(np.exp(-0.5 * ((hours - 8.0) / 1.2) ** 2), np.exp(-0.5 * ((hours - 17.5) / 1.5) ** 2))
    slope = 8.0 if cycle == "square" else 1.0
    rise = 1.0 / (1.0 + np.exp(-(hours - 8.5) * 2.0 * slope))
    fall = 1.0 / (1.0 + np.exp((hours - 19.0) * 1.5 * slope))
    return rise * fall


def generate(base: Base, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Timestamps, values and the onset rows of the anomalies (empty for ``none``)."""
    n = int(base.days * DAY / base.step)
    t = T0 + base.step * np.arange(n)
    per_day = int(DAY / base.step)
    hours = (t % DAY) / 3600.0
    weekday = ((t // DAY).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    week = np.where(base.weekly & (weekday >= 5), 0.4, 1.0)
    # the anomaly's day: late enough for several days (and, when weekly, weeks) of history, a weekday
    day = int(base.days * rng.uniform(0.6, 0.85))
    while base.weekly and (day + 3) % 7 >= 5:
        day += 1
    d0 = day * per_day
    cyc = shape(hours, base.cycle) * week
    if kind == "flat_day":
        cyc[d0:d0 + per_day] = 0.0
        onset = d0 + int(7.5 * per_day / 24)
    elif kind == "skipped_rise":
        lo, hi = d0 + int(7 * per_day / 24), d0 + int(13 * per_day / 24)
        cyc[lo:hi] = 0.0
        onset = lo + per_day // 48
    elif kind == "phase_shift":
        lag = per_day // 4  # the day's cycle six hours late
        cyc[d0 + lag:d0 + per_day] = cyc[d0:d0 + per_day - lag].copy()
        cyc[d0:d0 + lag] = 0.0
        onset = d0 + int(7.5 * per_day / 24)
    else:
        onset = d0 + int(rng.uniform(0.3, 0.7) * per_day)
    trend = base.trend * (t - t[0]) / DAY

    if base.counts:
        rate = 3.0 * base.amp / 40.0 + base.amp * (cyc + trend)
        # irregular recurring bursts, a few a day at random times: normal
        burst = np.ones(n)
        for b in np.flatnonzero(rng.random(n) < 3.0 / per_day):
            if base.bursts == "heavy":  # Pareto-sized (most small, a few ten times the rate), fading over an hour
                size = min(float(rng.pareto(1.5)) * 2.0, 20.0)
                burst[b:b + 12] += size * np.exp(-np.arange(min(12, n - b)) / 3.0)
            else:  # 2-6x the rate for 1-3 samples
                burst[b:b + int(rng.integers(1, 4))] *= rng.uniform(2.0, 6.0)
        lam = rate * burst
        amp_scale = base.amp
    else:
        lam = 50.0 + 30.0 * (cyc + trend)
        amp_scale = 30.0

    sd = 0.06 * amp_scale
    mult = np.ones(n)  # noise multiplier (variance change)
    add = np.zeros(n)  # added after noise (shift, drift, spike)
    stop = None
    if kind == "level_shift":
        add[onset:] = 0.5 * amp_scale
    elif kind == "variance":
        mult[onset:onset + per_day] = 5.0
    elif kind == "drift":
        ramp = np.clip((np.arange(n) - onset) / (2.0 * per_day), 0.0, 1.0)
        add += 0.6 * amp_scale * ramp
    elif kind == "stopped":
        stop = (onset, onset + max(per_day // 4, 6))

    if base.counts:
        mean = np.maximum(lam + add, 0.1)
        if kind == "variance":  # bursts of every size, both ways, for a day
            mean = mean * np.exp(rng.normal(0.0, 0.8, n) * (mult > 1.0))
        if base.noise == "negbin":
            r = 8.0
            y = rng.negative_binomial(r, r / (r + mean)).astype(np.float64)
        else:
            y = rng.poisson(mean).astype(np.float64)
        if kind == "spike":
            y[onset] = 3.0 * float(np.max(y[:onset]))
        elif kind == "dip":
            y[onset:onset + max(per_day // 8, 3)] = 0.0
    else:
        if base.noise == "gauss":
            e = rng.normal(0.0, 1.0, n)
        elif base.noise == "student":
            e = rng.standard_t(3, n) / np.sqrt(3.0)
        elif base.noise in ("lognorm", "hetero"):
            e = rng.normal(0.0, 1.0, n)
        else:
            e = np.empty(n)
            z = rng.normal(0.0, np.sqrt(1.0 - 0.8 ** 2), n)
            e[0] = z[0]
            for i in range(1, n):
                e[i] = 0.8 * e[i - 1] + z[i]
        if base.noise == "lognorm":  # a price or a rate: errors in proportion to the value, skewed upward
            y = (lam + add) * np.exp(2.5 * sd / amp_scale * mult * e)
        elif base.noise == "hetero":  # an occupancy: quiet at night, noisy at the peaks, never below 0
            y = np.maximum(lam + add + sd * mult * (0.5 + 2.0 * cyc) * e, 0.0)
        else:
            y = lam + add + sd * mult * e
        if kind == "spike":
            y[onset] = float(np.max(y[:onset])) + 0.6 * amp_scale
        elif kind == "dip":
            y[onset:onset + 3] = float(np.min(y[:onset])) - 0.6 * amp_scale
    if stop is not None:
        y[stop[0]:stop[1]] = 0.0 if base.counts else y[stop[0] - 1]
    onsets = [] if kind == "none" else [onset]
    if base.gaps:  # a few missing stretches of 1-6 hours a week (none at the onset), the rest jittered
        keep = np.ones(n, dtype=bool)
        for g in np.flatnonzero(rng.random(n) < 4.0 / (7 * per_day)):
            keep[g:g + int(rng.integers(1, 7) * 3600.0 / base.step)] = False
        keep[max(onset - 2, 0):onset + 3] = True
        t = t + np.round(rng.uniform(-30.0, 30.0, n))
        onsets = [int(np.count_nonzero(keep[:o])) for o in onsets]
        t, y = t[keep], y[keep]
    return t, np.round(y, 4), onsets


def stamp(t: float) -> str:
    return str(np.datetime64(int(t), "s")).replace("T", " ")


def write_file(path: Path, t: np.ndarray, y: np.ndarray, onsets: list[int]) -> list[list[str]]:
    """One series as ``timestamp,value``; returns its NAB windows (10% of its rows, centred on each onset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("timestamp,value\n")
        f.writelines(f"{stamp(a)},{b!r}\n" for a, b in zip(t.tolist(), y.tolist(), strict=True))
    width = int(0.1 * len(t) / max(len(onsets), 1))
    wins = []
    for o in onsets:
        lo, hi = max(o - width // 2, 0), min(o + width // 2, len(t) - 1)
        wins.append([stamp(t[lo]) + ".000000", stamp(t[hi]) + ".000000"])
    return wins


def write_suite(out: Path, seed: int = 0, copies: int = 2, heldout_like: bool = True) -> dict[str, str]:
    """Write ``out/data/<category>/<base>_<kind>_<copy>.csv`` and ``out/windows.json``; returns file -> kind.

    ``heldout_like`` adds the bases shaped like the held-out kinds (``HELDOUT_LIKE``, their own category).
    ``copies`` draws of every (base, kind): one draw of 50 files moves the suite's score by about ten
    points from seed to seed, too much to choose anything by."""
    windows: dict[str, list[list[str]]] = {}
    kinds: dict[str, str] = {}
    streams = [(BASES, np.random.default_rng(seed))]
    if heldout_like:
        streams.append((HELDOUT_LIKE, np.random.default_rng([seed, 1])))
    for bases, rng in streams:
        for copy, base, kind in ((c, b, k) for c in range(copies) for b in bases for k in KINDS):
            key = f"{base.category}/{base.name}_{kind}_{copy}.csv"
            windows[key] = write_file(out / "data" / key, *generate(base, kind, rng))
            kinds[key] = kind
    (out / "windows.json").write_text(json.dumps(windows, indent=1) + "\n")
    (out / "kinds.json").write_text(json.dumps(kinds, indent=1) + "\n")
    return kinds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copies", type=int, default=2)
    a = ap.parse_args(argv)
    kinds = write_suite(a.out, a.seed, a.copies)
    print(f"{len(kinds)} files in {a.out / 'data'}, windows in {a.out / 'windows.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

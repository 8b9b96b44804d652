"""How fast the forecasts follow a sudden lasting change of level, and false times to limit meanwhile.

    python3 benchmarks/level_shift.py [--wave 0.03] [--seed 0] [--output benchmarks/results/level_shift]

Pure engine, offline, through the public API only (``Engine.create_twin``, ``series_for``, ``ingest`` with
explicit times, ``predictions``, ``status``): one engine and one twin per case, one sample at a time.
Each case is a stationary noisy level (noise sd 3 % of the level; ``--wave A`` adds a daily wave of relative
amplitude A) for a warm-up long enough that every horizon (5, 15, 30, 60 min) has been scored by the
running backtest many times over (4 h at 15 s sampling, 2 days at 5 min), then a sudden lasting change of
level, then enough samples to settle (3 h at 15 s, 1 day at 5 min). Cases: memory 80 % -> 1 % (cache
flush), memory 95 % -> 5 % (a flush from over the limit),
CPU 55 % -> 7 % (idle), CPU 10 % -> 60 % (step up), latency 40 -> 120 ms; each at 15 s and 5 min
sampling; at 15 s only, a sawtooth: memory 90 % -> 5 % then refilling 0.5 %/min (the "new level" is a
line); at 15 s, memory 85 % -> 3 % then refilling toward 58 % ever slower (3 + 55 (1 - exp(-t / 2 min)): the
demo's cache); at 15 s and 5 min, CPU 98 % -> 50 % with a noise sd of 10 after the step, seen through a 1-minute
rate window (a ramp over its first minute); the engine's default limits (cpu 95, memory 90, latency 1000).

Measured per case and horizon:

* **samples to follow**: k, the number of samples after the step (k = 1: the forecast made right after the
  first new-level sample) from which the point forecast is within max(10 % of the step, 3 x the pre-step
  noise sd) of the new level (the noise-free signal at the forecast's target time) and stays there for the
  next 10 samples; none when that never happens before the end;
* whether the 90 % interval contains the new level at that point;

per case, **false time to limit**: the number of post-step samples on which ``status()`` shows a
``breach_eta_seconds`` while both the value and the shortest-horizon forecast are below 50 % of the limit
(the same count over the pre-step samples is given for reference), and the stricter count of post-step samples
showing one while the value alone is below 50 % of the limit (the flush from over the limit: for the samples
before a shift is declared, the models still forecast the old level).

Cold start: a CPU climbing steadily from 20 % at 3 %/min toward the limit 95 % from the first sample, at 15 s
sampling (noise sd 0.5): the seconds after the first sample until a breach eta is first shown, and its error
against the true time to limit then (and over every sample it is shown on).

Writes ``benchmarks/results/level_shift.json`` and ``.md`` (machine, date, git commit, CPU time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.engine.core import Engine  # noqa: E402

F64 = NDArray[np.float64]
T0 = 1_699_920_000.0            # a midnight UTC (2023-11-14), so a daily wave starts at its mean
DAY = 86400.0
STAY = 10                       # the forecast must stay close for this many more samples
NOISE = 0.03                    # noise sd, a share of the level
REFILL_TAU_S = 120.0            # a refill that slows: its time constant


@dataclass(frozen=True)
class Case:
    name: str
    metric: str
    before: float
    after: float
    dt_s: float
    refill_per_min: float = 0.0     # after the step the level climbs this much a minute (a cache refilling)
    noise_after: float = NOISE      # noise sd after the step, a share of the new level
    ramp_s: float = 0.0             # the step seen through a rate window this long: a ramp from the old level
    refill_to: float = 0.0          # after the step the level climbs toward this, ever slower (time constant 2 min)

    @property
    def warmup_s(self) -> float:
        return 4 * 3600.0 if self.dt_s < 300 else 2 * DAY

    @property
    def settle_s(self) -> float:
        return 3 * 3600.0 if self.dt_s < 300 else DAY


STEPS = tuple(
    Case(name, metric, a, b, step)
    for step in (15.0, 300.0)
    for name, metric, a, b in (
        ("memory 80 -> 1 % (cache flush)", "memory_usage", 80.0, 1.0),
        ("memory 95 -> 5 % (flush from over the limit)", "memory_usage", 95.0, 5.0),
        ("CPU 55 -> 7 % (idle)", "cpu_usage", 55.0, 7.0),
        ("CPU 10 -> 60 % (step up)", "cpu_usage", 10.0, 60.0),
        ("latency 40 -> 120 ms", "request_latency_ms", 40.0, 120.0),
    )
)
CASES = (*STEPS, Case("memory 90 -> 5 % then refilling 0.5 %/min (sawtooth)", "memory_usage", 90.0, 5.0, 15.0, 0.5),
         Case("memory 85 -> 3 % then refilling toward 58 %, ever slower (time constant 2 min)", "memory_usage", 85.0,
              3.0, 15.0, refill_to=58.0),
         *(Case("CPU 98 -> 50 %, noisy after (sd 10), through a 1-minute rate window", "cpu_usage", 98.0, 50.0,
                step, noise_after=0.2, ramp_s=60.0) for step in (15.0, 300.0)))


def level(case: Case, t: NDArray[np.floating[Any]], wave: float) -> F64:
    """The noise-free signal at times t: the old level before the step, the new one from it, times the wave."""
    step_at = T0 + case.warmup_s
    base = np.where(t < step_at, case.before, case.after + case.refill_per_min * np.maximum(t - step_at, 0.0) / 60.0)
    if case.refill_to:
        base = np.where(t < step_at, base, base + (case.refill_to - case.after)
                        * (1.0 - np.exp(-np.maximum(t - step_at, 0.0) / REFILL_TAU_S)))
    if case.ramp_s > 0:
        share = np.clip((t - step_at) / case.ramp_s, 0.0, 1.0)
        base = np.where(t < step_at, base, case.before + share * (base - case.before))
    out: F64 = base * (1.0 + wave * np.sin(2 * np.pi * (t - T0) / DAY))
    return out


def samples_to_follow(err: F64, tol: float, stay: int = STAY) -> int | None:
    """The first k (1-based: err[0] is the forecast after the first post-step sample) with err[k-1 .. k-1+stay]
    all within tol; None when there is no such run of stay + 1 samples. NaN counts as not within."""
    ok = np.asarray(err) <= tol
    need = stay + 1
    if ok.size < need:
        return None
    run = np.convolve(ok.astype(np.int64), np.ones(need, dtype=np.int64), mode="valid")   # run[i]: ok[i:i+need]
    hits = np.nonzero(run == need)[0]
    return int(hits[0]) + 1 if hits.size else None


def false_eta(eta: F64, value: F64, fc_short: F64, limit: float) -> int:
    """Samples showing a time to limit while both the value and the shortest-horizon forecast are below half
    the limit (a forecast not made yet counts as the value)."""
    fc = np.where(np.isfinite(fc_short), fc_short, value)
    return int(np.sum(np.isfinite(eta) & (value < 0.5 * limit) & (fc < 0.5 * limit)))


def run_case(case: Case, wave: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n_pre = round(case.warmup_s / case.dt_s)
    n_post = round(case.settle_s / case.dt_s)
    t = T0 + case.dt_s * np.arange(n_pre + n_post)
    true = level(case, t, wave)
    share = np.where(t < T0 + case.warmup_s, NOISE, case.noise_after)
    y = np.maximum(true + rng.normal(size=t.size) * share * true, 0.0)
    eng = Engine()
    name = "case"
    eng.create_twin(name, at=float(t[0]))
    idx = eng.series_for(name, [case.metric])
    horizons = [float(h) for h in eng.horizons_s]
    H = len(horizons)
    mean = np.full((t.size, H), np.nan)
    lo, hi = mean.copy(), mean.copy()
    eta = np.full(t.size, np.nan)
    limit = float("nan")
    for i in range(t.size):
        eng.ingest(idx, np.array([y[i]]), at=float(t[i]))
        for p in eng.predictions(name):
            f = p.metrics.get(case.metric)
            if f is not None and p.horizon_seconds in horizons:
                j = horizons.index(p.horizon_seconds)
                mean[i, j], lo[i, j], hi[i, j] = f.predicted, f.lower, f.upper
        m = eng.status(name)["metrics"][case.metric]
        eta[i] = m["breach_eta_seconds"] if m["breach_eta_seconds"] is not None else np.nan
        limit = m["limit"] if m["limit"] is not None else float("nan")
        eng.drain()
    step = abs(case.after - case.before)
    tol = max(0.1 * step, 3 * NOISE * case.before, case.noise_after * case.after)
    post = slice(n_pre, None)
    rows = []
    for j, h in enumerate(horizons):
        target = level(case, t[post] + h, wave)
        err = np.abs(mean[post, j] - target)
        k = samples_to_follow(err, tol)
        inside, cov_after = None, None
        if k is not None:
            i = n_pre + k - 1
            inside = bool(lo[i, j] <= target[k - 1] <= hi[i, j])
            cov_after = float(np.mean((lo[i:, j] <= target[k - 1:]) & (target[k - 1:] <= hi[i:, j])))
        rows.append({"horizon_s": h, "samples_to_follow": k, "seconds_to_follow": None if k is None else k * case.dt_s,
                     "interval_contains_new_level": inside,
                     # share of the forecasts from then on whose interval contains the new level
                     "interval_contains_new_level_after": None if cov_after is None else round(cov_after, 4),
                     "first_forecast_after_step": _r(mean[n_pre, j]), "worst_error_after_step": _r(np.nanmax(err)),
                     # mean absolute error of the point forecasts made in the first 15 minutes after the step
                     "mean_error_first_15min": _r(float(np.nanmean(err[:max(1, round(900.0 / case.dt_s))])))})
    fc_short = mean[:, 0]
    warm = slice(n_pre // 4, n_pre)     # pre-step reference, after the first quarter of the warm-up
    trace_n = min(n_post, 60)
    return {
        **asdict(case), "warmup_samples": n_pre, "post_samples": n_post, "limit": limit, "tolerance": tol,
        "pre_step_noise_sd": NOISE * case.before, "horizons": rows,
        "false_eta_post": false_eta(eta[post], y[post], fc_short[post], limit),
        "false_eta_pre": false_eta(eta[warm], y[warm], fc_short[warm], limit),
        "eta_value_far_post": int(np.sum(np.isfinite(eta[post]) & (y[post] < 0.5 * limit))),
        "eta_shown_post": int(np.isfinite(eta[post]).sum()), "eta_shown_pre": int(np.isfinite(eta[warm]).sum()),
        "trace": {"k": list(range(1, trace_n + 1)), "value": [_r(v) for v in y[n_pre:n_pre + trace_n]],
                  "eta_s": [_r(v) for v in eta[n_pre:n_pre + trace_n]],
                  **{f"forecast_{int(h)}s": [_r(v) for v in mean[n_pre:n_pre + trace_n, j]]
                     for j, h in enumerate(horizons)}},
    }


def cold_start(seed: int, dt_s: float = 15.0, start: float = 20.0, per_min: float = 3.0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    eng = Engine()
    eng.create_twin("cold", at=T0)
    idx = eng.series_for("cold", ["cpu_usage"])
    limit = float(eng.status("cold")["metrics"]["cpu_usage"]["limit"] or 95.0)
    breach_s = (limit - start) / per_min * 60.0
    n = math.ceil(breach_s / dt_s)
    t = T0 + dt_s * np.arange(n)
    y = np.clip(start + per_min * (t - T0) / 60.0 + rng.normal(size=n) * 0.5, 0.0, 100.0)
    shown: list[tuple[float, float, float]] = []     # (seconds since first sample, eta shown, true time to limit)
    for i in range(n):
        eng.ingest(idx, np.array([y[i]]), at=float(t[i]))
        e = eng.status("cold")["metrics"]["cpu_usage"]["breach_eta_seconds"]
        if e is not None:
            since = float(t[i] - T0)
            shown.append((since, float(e), breach_s - since))
        eng.drain()
    res: dict[str, Any] = {"dt_s": dt_s, "start": start, "percent_per_min": per_min, "limit": limit,
                           "true_breach_s": breach_s, "samples": n, "first_shown_s": None}
    if shown:
        since, e, true_ttl = shown[0]
        errs = np.array([s[1] - s[2] for s in shown])
        res.update(first_shown_s=since, first_eta_s=e, true_ttl_at_first_s=true_ttl, first_error_s=e - true_ttl,
                   shown_samples=len(shown), samples_from_first=n - round(since / dt_s),
                   median_abs_error_s=float(np.median(np.abs(errs))),
                   median_error_s=float(np.median(errs)),
                   at=[{"since_s": s, "eta_s": round(v, 1), "true_s": round(tt, 1)} for s, v, tt in shown[:: 10]])
    return res


def _r(v: float) -> float | None:
    return round(float(v), 4) if math.isfinite(v) else None


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": cpu, "python": platform.python_version(), "numpy": np.__version__}


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "sidecar")
    return f"{head}{' + uncommitted changes in sidecar/' if dirty else ''}"


def _hz(s: float) -> str:
    return f"{int(s // 60)} min"


def _dur(s: float | None) -> str:
    if s is None:
        return "never"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def _samp(dt_s: float) -> str:
    return f"{dt_s:g} s" if dt_s < 60 else f"{dt_s / 60:g} min"


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    wave = f", daily wave of relative amplitude {res['wave']:g}" if res["wave"] else ", no wave"
    lines = [
        "# Level shifts: how fast the forecasts follow, and false times to limit",
        "",
        f"Measured {res['measured_at']} on {m['host']} ({m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, "
        f"numpy {m['numpy']}), commit {res['git_commit']}, by `python3 benchmarks/level_shift.py"
        f"{' --wave ' + str(res['wave']) if res['wave'] else ''}` "
        f"({res['cpu_s']:.1f} s CPU, {res['wall_s']:.1f} s wall). Noise sd {NOISE:.0%} of the level"
        f"{wave}; "
        f"warm-up 4 h at 15 s sampling, 2 days at 5 min; then 3 h / 1 day after the step; default limits.",
        "",
        "**Samples to follow** k: from the k-th sample after the step on, the point forecast is within the "
        "tolerance max(10 % of the step, 3 x pre-step noise sd) of the new level and stays there for the next "
        f"{STAY} samples (k = 1: right after the first new-level sample). **In 90 %**: the interval contains the "
        "new level at that point; **after**: the share of the forecasts from that point on whose interval "
        "contains the new level.",
        "",
        "| case | sampling | tolerance | " + " | ".join(f"{_hz(h)}: k (time), in 90 %, after"
                                                       for h in res["horizons_s"]) + " |",
        "|---|---|---|" + "---|" * len(res["horizons_s"]),
    ]
    for c in res["cases"]:
        cells = []
        for h in c["horizons"]:
            k = h["samples_to_follow"]
            inside = {True: "yes", False: "no", None: "-"}[h["interval_contains_new_level"]]
            cells.append("never" if k is None else f"{k} ({_dur(h['seconds_to_follow'])}), {inside}, "
                         f"{h['interval_contains_new_level_after']:.2f}")
        lines.append(f"| {c['name']} | {_samp(c['dt_s'])} | {c['tolerance']:.3g} | " + " | ".join(cells) + " |")
    lines += ["", "**Mean absolute error** of the point forecasts made in the first 15 minutes after the step "
              "(against the noise-free level at their target time):", "",
              "| case | sampling | " + " | ".join(_hz(h) for h in res["horizons_s"]) + " |",
              "|---|---|" + "---|" * len(res["horizons_s"])]
    for c in res["cases"]:
        lines.append(f"| {c['name']} | {_samp(c['dt_s'])} | "
                     + " | ".join(f"{h['mean_error_first_15min']:.3g}" for h in c["horizons"]) + " |")
    lines += [
        "",
        "**False time to limit**: samples on which `status()` shows `breach_eta_seconds` while the value and the "
        "5 min forecast are both below 50 % of the limit (post-step: every sample after the step; pre-step, for "
        "reference: the last three quarters of the warm-up). Shown: samples with any time to limit.",
        "",
        "| case | sampling | limit | post-step samples | false time to limit after the step | shown after | "
        "shown after while the value is below 50 % | false before the step | shown before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        lines.append(f"| {c['name']} | {_samp(c['dt_s'])} | {c['limit']:g} | {c['post_samples']} | "
                     f"{c['false_eta_post']} | {c['eta_shown_post']} | {c['eta_value_far_post']} | "
                     f"{c['false_eta_pre']} | {c['eta_shown_pre']} |")
    cs = res["cold_start"]
    lines += ["", f"**Cold start**: CPU from {cs['start']:g} % climbing {cs['percent_per_min']:g} %/min toward the "
              f"limit {cs['limit']:g} % from the first sample, {_samp(cs['dt_s'])} sampling; the true time to "
              f"limit at the first sample is {cs['true_breach_s']:.0f} s.", ""]
    if cs["first_shown_s"] is None:
        lines.append("No time to limit was shown before the limit was reached.")
    else:
        lines += [
            "| first shown after | eta shown then | true time to limit then | error | shown on | "
            "median error over all shown | median abs error |",
            "|---|---|---|---|---|---|---|",
            f"| {cs['first_shown_s']:.0f} s | {cs['first_eta_s']:.0f} s | {cs['true_ttl_at_first_s']:.0f} s | "
            f"{cs['first_error_s']:+.0f} s ({cs['first_error_s'] / cs['true_ttl_at_first_s']:+.0%}) | "
            f"{cs['shown_samples']} of {cs['samples_from_first']} samples since | {cs['median_error_s']:+.0f} s | "
            f"{cs['median_abs_error_s']:.0f} s |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wave", type=float, default=0.0, help="relative amplitude of a daily wave (default none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "level_shift",
                   help="results path without suffix (default %(default)s)")
    a = p.parse_args(argv)
    cpu0, wall0 = time.process_time(), time.monotonic()
    cases = [run_case(c, a.wave, a.seed + i) for i, c in enumerate(CASES)]
    cold = cold_start(a.seed)
    res = {
        "benchmark": "level_shift",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine(), "git_commit": git_commit(), "wave": a.wave, "seed": a.seed,
        "noise_sd_share": NOISE, "stay_samples": STAY, "horizons_s": [h["horizon_s"] for h in cases[0]["horizons"]],
        "cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - wall0,
        "cases": cases, "cold_start": cold,
    }
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.with_suffix(".json").write_text(json.dumps(res, indent=1, allow_nan=False) + "\n")
    md = render(res)
    a.output.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

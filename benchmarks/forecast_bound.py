"""How far below the running choice a forecast built from the bank's models could get, fitted in hindsight.

    python3 benchmarks/forecast_bound.py [--data-dir ../shared/data/nab/data]

Replays every file of the corpus through a `ForecastBank` and keeps, after each sample, every model's
forecast at every horizon (what the engine's own choice combines). Then, per file and horizon, with the
whole file known (so these are bounds no online method reaches, not results):

* **best single model**: the model with the smallest MAE over the file;
* **best fixed combination**: the least-absolute-deviation fit (exact, a linear programme) of the value
  ``h`` ahead on every model's forecast and a constant, fitted on the very points it is scored on.

Each is scored like ``../shared/tools/forecast_score.py`` scores a forecast file (target = the sample at
``t + h``, else the nearest within half the median interval; MASE against the last value at the same
points; geometric mean over files), next to the engine's own forecast (`auto`) on the same points. The
question it answers: is the 0.65 goal out of reach because the choice among the models is poor (then the
bounds are far below auto) or because the models carry too little information (then they are not)?
Writes ``benchmarks/results/forecast_bound.json`` and ``forecast_bound.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import linprog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.backtest import target_index  # noqa: E402
from sidecar.engine.forecast import ForecastBank  # noqa: E402
from sidecar.replay import load  # noqa: E402

F64 = NDArray[np.float64]
HORIZONS = (300.0, 900.0, 1800.0, 3600.0)


def read(path: Path) -> tuple[F64, F64]:
    """Times and values with repeated or backward timestamps dropped, as the engine drops them."""
    rows = load(path)
    t = np.array([r.t for r in rows])
    y = np.array([r.value for r in rows])
    keep = t > np.maximum.accumulate(np.concatenate([[-np.inf], t[:-1]]))
    return t[keep], y[keep]


def replay(series: list[tuple[F64, F64]]) -> tuple[list[F64], list[F64], tuple[str, ...]]:
    """Every model's (n, M, H) forecasts and the bank's own (n, H) forecast after each sample of each file."""
    bank = ForecastBank(HORIZONS)
    idx = bank.add(len(series))
    n = np.array([len(t) for t, _ in series])
    M = len(bank.model_names)
    models = [np.full((k, M, len(HORIZONS)), np.nan) for k in n]
    own = [np.full((k, len(HORIZONS)), np.nan) for k in n]
    for i in range(int(n.max())):
        live = np.flatnonzero(n > i)
        bank.update(idx[live], np.array([series[k][0][i] for k in live]), np.array([series[k][1][i] for k in live]))
        pm, fc = bank.predict_models(idx[live]), bank.forecast(idx[live])
        for j, k in enumerate(live.tolist()):
            models[k][i] = pm[j]
            own[k][i] = fc.mean[j]
    return models, own, bank.model_names


def lad_fit(X: F64, r: F64) -> F64:
    """Exact least-absolute-deviation coefficients: min Σ|r - Xw| as a linear programme (HiGHS)."""
    n, p = X.shape
    A = sparse.hstack([sparse.csr_matrix(X), sparse.identity(n), -sparse.identity(n)], format="csr")
    cost = np.concatenate([np.zeros(p), np.ones(2 * n)])
    bounds = [(None, None)] * p + [(0, None)] * (2 * n)
    res = linprog(cost, A_eq=A, b_eq=r, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"LAD fit failed: {res.message}")
    w: F64 = res.x[:p]
    return w


def bound_file(t: F64, y: F64, models: F64, own: F64, hcol: int) -> dict[str, float] | None:
    mi = target_index(t, HORIZONS[hcol], float(np.median(np.diff(t))) / 2.0)
    P = models[:, :, hcol]
    cols = [m for m in range(P.shape[1]) if np.isfinite(P[:, m]).mean() > 0.5]
    ok = (mi >= 0) & np.isfinite(own[:, hcol]) & np.isfinite(P[:, cols]).all(axis=1)
    if ok.sum() < 50:
        return None
    actual, base = y[mi[ok]], y[ok]
    naive = float(np.abs(base - actual).mean())
    if naive <= 0:
        return None
    X = np.column_stack([P[ok][:, cols] - base[:, None], np.ones(int(ok.sum()))])
    w = lad_fit(X, actual - base)
    single = min(float(np.abs(P[ok, m] - actual).mean()) for m in cols)
    return {"auto": float(np.abs(own[ok, hcol] - actual).mean()) / naive,
            "best_single": single / naive,
            "best_fixed_combination": float(np.abs(X @ w - (actual - base)).mean()) / naive,
            "points": int(ok.sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "nab" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args(argv)
    files = sorted(a.data_dir.glob("*/*.csv"))
    if not files:
        raise SystemExit(f"no CSV files under {a.data_dir}")
    t0 = time.perf_counter()
    series = [read(p) for p in files]
    models, own, names = replay(series)
    per_file: list[dict[str, object]] = []
    gm: dict[str, dict[str, float]] = {}
    for hcol, h in enumerate(HORIZONS):
        rows = {}
        for k, p in enumerate(files):
            r = bound_file(*series[k], models[k], own[k], hcol)
            if r is not None:
                rows[str(p.relative_to(a.data_dir).with_suffix(""))] = r
        per_file.append({"horizon_s": h, "files": rows})
        gm[f"{int(h) // 60} min"] = {
            key: math.exp(float(np.mean([math.log(r[key]) for r in rows.values()])))
            for key in ("auto", "best_single", "best_fixed_combination")}
    took = time.perf_counter() - t0
    machine = (f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()})")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "forecast_bound.json").write_text(json.dumps(
        {"measured": stamp, "machine": machine, "models": list(names), "gmean_mase": gm, "per_horizon": per_file,
         "seconds": took}, indent=1))
    hs = list(gm)
    lines = [
        "# Hindsight bounds of the forecast bank (NAB corpus)", "",
        f"Measured {stamp} on {machine} by `python3 benchmarks/forecast_bound.py` ({took:.0f} s); "
        f"all {len(files)} files of `{a.data_dir}`, {len(names)} models. Geometric-mean MASE against the last "
        "value at the same points; the two bound rows are fitted per file on the very points they are scored "
        "on (hindsight), so no online method reaches them.", "",
        "| | " + " | ".join(hs) + " |", "|---|" + "---|" * len(hs)]
    labels = {"auto": "twin-sidecar (auto, online)", "best_single": "best single model per file (hindsight)",
              "best_fixed_combination": "best fixed LAD combination of all models per file (hindsight)"}
    for key, label in labels.items():
        lines.append(f"| {label} | " + " | ".join(f"{gm[h][key]:.3f}" for h in hs) + " |")
    (a.out / "forecast_bound.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

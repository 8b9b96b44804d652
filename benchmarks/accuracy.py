"""Forecast accuracy on the real NAB series, measured with the shared scorer.

Runs ``twin-sidecar forecast`` over every file of the corpus once per model row (the
last value, the predict_linear baseline = the "linear" model forced, and "auto"), scores
each run with ``../shared/tools/forecast_score.py`` (not part of the product; called, not
copied) and writes ``benchmarks/results/accuracy.md`` and ``accuracy.json``.

    python3 benchmarks/accuracy.py [--data-dir ../shared/data/nab/data] [--models last,linear,auto]
    python3 benchmarks/accuracy.py --protocol [--copies 1]

``--protocol`` scores the same way the synthetic series of ``benchmarks/synthetic.py`` (kinds the shared files
do not have: bursty counts, hourly series whose day is 24 samples, square and rush-hour cycles, jittered
sampling with gaps; anomalies of known kinds injected), per category, beside the shared files: what the
forecasts are likely to do on series they were never tuned on. Writes ``accuracy-protocol.{json,md}``.
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.cli import main as cli_main  # noqa: E402

SHARED = ROOT.parent / "shared"
LABELS = {"last": "last value", "linear": "predict_linear over 1h (`linear` forced)", "auto": "**twin-sidecar (auto)**"}
GOAL_MASE = 0.65
GOAL_COVER = (0.88, 0.92)


def run_model(data_dir: Path, out_dir: Path, model: str, scorer: Path) -> dict[str, object]:
    """Forecast every file with one model, then score the whole directory."""
    t0, c0 = time.perf_counter(), time.process_time()
    rc = cli_main(["forecast", "--input", str(data_dir), "--output", str(out_dir), "--model", model])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if rc != 0:
        raise SystemExit(f"twin-sidecar forecast --model {model} failed with {rc}")
    res = subprocess.run([sys.executable, str(scorer), "--data-dir", str(data_dir), "--forecast-dir", str(out_dir),
                          "--json"], capture_output=True, text=True, check=True)
    score = json.loads(res.stdout)
    return {"model": model, "wall_s": wall, "cpu_s": cpu, "aggregate": score["aggregate"],
            "per_file": [{"file": f"{r['category']}/{r['stem']}",
                          "mase": {h: m["mase"] for h, m in r["horizons"].items()},
                          "coverage": {h: m["coverage"] for h, m in r["horizons"].items()}}
                         for r in score["per_file"]]}


def _h(h: str) -> str:
    s = int(float(h))
    return f"{s // 60} min"


def _gmean(values: list[float | None]) -> str:
    """Geometric mean of the defined, positive MASEs, as the scorer aggregates them."""
    v = [x for x in values if x is not None and x > 0]
    return f"{math.exp(sum(math.log(x) for x in v) / len(v)):.3f}" if v else "–"


def render(runs: list[dict[str, object]], data_dir: Path) -> str:
    hs = list(runs[0]["aggregate"])  # type: ignore[call-overload]
    lines = [
        "# Forecast accuracy on the NAB corpus",
        "",
        f"Measured {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "shared with other jobs) by `python3 benchmarks/accuracy.py`.",
        f"Data: all {len(runs[0]['per_file'])} files of `{data_dir}`; "  # type: ignore[arg-type]
        "scored by `../shared/tools/forecast_score.py` (geometric mean over files of MASE against the last value "
        "at the same points; coverage = mean over files of the share of actuals inside the 90% interval).",
        "",
        "Geometric-mean MASE (lower is better; goal ≤ 0.65 at every horizon):",
        "",
        "| model | " + " | ".join(_h(h) for h in hs) + " | wall time, all files |",
        "|---|" + "---|" * len(hs) + "---|",
    ]
    for r in runs:
        agg = r["aggregate"]
        cells = [f"{agg[h]['gmean_mase']:.3f}" for h in hs]  # type: ignore[index]
        lines.append(f"| {LABELS.get(str(r['model']), r['model'])} | " + " | ".join(cells)
                     + f" | {r['wall_s']:.1f} s |")
    lines += ["", "90% interval coverage (goal 0.88–0.92) and mean width relative to the last value's MAE:", "",
              "| model | " + " | ".join(_h(h) for h in hs) + " |", "|---|" + "---|" * len(hs)]
    for r in runs:
        agg = r["aggregate"]
        cells = [f"{agg[h]['mean_coverage']:.3f} (×{agg[h]['mean_rel_width']:.2f})" for h in hs]  # type: ignore[index]
        lines.append(f"| {LABELS.get(str(r['model']), r['model'])} | " + " | ".join(cells) + " |")
    auto = next((r for r in runs if r["model"] == "auto"), None)
    if auto is not None:
        # a change that only helps some of the files shows here: each half of the files (by position in
        # name order) scored alone
        lines += ["", "`auto` on each half of the files (geometric-mean MASE):", "",
                  "| files | " + " | ".join(_h(h) for h in hs) + " |", "|---|" + "---|" * len(hs)]
        for name, half in (("even positions", 0), ("odd positions", 1)):
            part = auto["per_file"][half::2]  # type: ignore[index]
            lines.append(f"| {name} | " + " | ".join(_gmean([f["mase"].get(h) for f in part]) for h in hs) + " |")
        lines += ["", "Per file, `auto` (MASE per horizon):", "", "| file | " + " | ".join(_h(h) for h in hs) + " |",
                  "|---|" + "---|" * len(hs)]
        for f in auto["per_file"]:  # type: ignore[attr-defined]
            cells = ["–" if f["mase"].get(h) is None else f"{f['mase'][h]:.3f}" for h in hs]
            lines.append(f"| {f['file']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def by_category(run: dict[str, object]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Per category and horizon: geometric-mean MASE, mean coverage and the files scored there."""
    files = run["per_file"]
    assert isinstance(files, list)
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    cats = sorted({f["file"].split("/")[0] for f in files} | {"all"})
    hs = sorted({h for f in files for h in f["mase"]}, key=float)
    for cat in cats:
        part = [f for f in files if cat == "all" or f["file"].startswith(cat + "/")]
        out[cat] = {}
        for h in hs:
            m = [f["mase"].get(h) for f in part]
            m = [x for x in m if x is not None and x > 0]
            c = [f["coverage"].get(h) for f in part]
            c = [x for x in c if x is not None]
            out[cat][h] = {"files": len(m),
                           "gmean_mase": math.exp(sum(math.log(x) for x in m) / len(m)) if m else None,
                           "mean_coverage": sum(c) / len(c) if c else None}
    return out


def protocol(scorer: Path, results: Path, copies: int, models: list[str]) -> int:
    """The synthetic suite forecast and scored per category (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import synthetic

    shared = json.loads((results / "accuracy.json").read_text()) if (results / "accuracy.json").exists() else None
    rows: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="twin-accuracy-protocol-") as tmp:
        synthetic.write_suite(Path(tmp) / "synth", 0, copies=copies)
        data = Path(tmp) / "synth" / "data"
        for model in models:
            run = run_model(data, Path(tmp) / model, model, scorer)
            rows[model] = {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "categories": by_category(run),
                           "per_file": run["per_file"]}
    res = {"when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "copies": copies, "models": rows}
    (results / "accuracy-protocol.json").write_text(json.dumps(res, indent=1))
    lines = ["# Forecast accuracy by the protocol: synthetic series of other kinds, beside the shared files", "",
             f"Measured {res['when']} on {platform.node()} ({os.cpu_count()} cores, Python "
             f"{platform.python_version()}) by `python3 benchmarks/accuracy.py --protocol --copies {copies}`: "
             "the suite of `benchmarks/synthetic.py` (seed 0; every base with each injected kind and a clean copy), "
             "forecast by `twin-sidecar forecast` and scored by `../shared/tools/forecast_score.py` per category "
             "(geometric-mean MASE against the last value; mean coverage of the 90 % interval). A horizon shorter "
             "than half a file's sampling step has no target there (hourly files count from 60 min on).", "",
             "| model | category | 5 min | 15 min | 30 min | 60 min |", "|---|---|---|---|---|---|"]
    for model, r in rows.items():
        assert isinstance(r, dict)
        for cat, hs in r["categories"].items():
            cells = []
            for h in ("300", "900", "1800", "3600"):
                v = hs.get(h) or hs.get(f"{float(h)}") or {}
                mase, cov = v.get("gmean_mase"), v.get("mean_coverage")
                cells.append("–" if mase is None else f"{mase:.3f} ({cov:.2f}, {v['files']})")
            lines.append(f"| {model} | {cat} | " + " | ".join(cells) + " |")
    if shared is not None:
        auto = next((r for r in shared["runs"] if r["model"] == "auto"), None)
        if auto is not None:
            agg = auto["aggregate"]
            lines.append("| auto | shared NAB files (`accuracy.md`) | " + " | ".join(
                f"{agg[h]['gmean_mase']:.3f} ({agg[h]['mean_coverage']:.2f}, 24)" for h in agg) + " |")
    lines += ["", "Cells: MASE (coverage, files scored at that horizon)."]
    (results / "accuracy-protocol.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(SHARED / "data" / "nab" / "data"))
    p.add_argument("--scorer", default=str(SHARED / "tools" / "forecast_score.py"))
    p.add_argument("--models", default="last,linear,auto")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--protocol", action="store_true", help="score the synthetic suite per category instead")
    p.add_argument("--copies", type=int, default=1, help="--protocol: draws of every (base, kind)")
    a = p.parse_args()
    if a.protocol:
        models = [m for m in a.models.split(",") if m != "last"]   # MASE is already against the last value
        return protocol(Path(a.scorer), Path(a.results), a.copies, models)
    data_dir = Path(a.data_dir)
    runs = []
    with tempfile.TemporaryDirectory(prefix="twin-accuracy-") as tmp:
        for model in a.models.split(","):
            runs.append(run_model(data_dir, Path(tmp) / model, model, Path(a.scorer)))
            agg = runs[-1]["aggregate"]
            print(model, {h: round(v["gmean_mase"], 3) for h, v in agg.items()},  # type: ignore[attr-defined]
                  {h: round(v["mean_coverage"], 3) for h, v in agg.items()},  # type: ignore[attr-defined]
                  f"{runs[-1]['wall_s']:.1f}s", file=sys.stderr)
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"runs": runs, "goal_mase": GOAL_MASE, "goal_coverage": GOAL_COVER},
                                                  indent=1))
    (out / "accuracy.md").write_text(render(runs, data_dir))
    print((out / "accuracy.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Forecast accuracy on the real NAB series, measured with the shared scorer.

Runs ``twin-sidecar forecast`` over every file of the corpus once per model row (the
last value, the predict_linear baseline = the "linear" model forced, and "auto"), scores
each run with ``../shared/tools/forecast_score.py`` (not part of the product; called, not
copied) and writes ``benchmarks/results/accuracy.md`` and ``accuracy.json``.

    python3 benchmarks/accuracy.py [--data-dir ../shared/data/nab/data] [--models last,linear,auto]
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(SHARED / "data" / "nab" / "data"))
    p.add_argument("--scorer", default=str(SHARED / "tools" / "forecast_score.py"))
    p.add_argument("--models", default="last,linear,auto")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()
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

"""benchmarks/accuracy.py --protocol: the synthetic suite scored per category."""

from __future__ import annotations

import math

from helpers.bench import load_benchmark

acc = load_benchmark("accuracy")


def test_categories_take_the_geometric_mean_of_the_files_scored_at_each_horizon() -> None:
    run = {"per_file": [
        {"file": "synthA/x_none_0", "mase": {"300": 0.5, "3600": 0.8}, "coverage": {"300": 0.9, "3600": 0.8}},
        {"file": "synthA/y_spike_0", "mase": {"300": 2.0, "3600": None}, "coverage": {"300": 0.7, "3600": None}},
        {"file": "synthB/z_none_0", "mase": {"300": None, "3600": 0.9}, "coverage": {"300": None, "3600": 1.0}},
    ]}
    cats = acc.by_category(run)
    assert set(cats) == {"all", "synthA", "synthB"}
    a5 = cats["synthA"]["300"]
    assert a5["files"] == 2 and math.isclose(a5["gmean_mase"], 1.0) and math.isclose(a5["mean_coverage"], 0.8)
    assert cats["synthB"]["300"]["gmean_mase"] is None and cats["synthB"]["300"]["files"] == 0   # hourly: no target
    assert cats["all"]["3600"]["files"] == 2 and math.isclose(cats["all"]["3600"]["gmean_mase"], math.sqrt(0.72))

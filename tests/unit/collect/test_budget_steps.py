"""How many of the newest steps a backfill keeps within ``backfill_max_samples``, and how many a range holds."""

from __future__ import annotations

import pytest

from sidecar.collect.backfill import budget_steps, grid_steps


@pytest.mark.parametrize(("job_steps", "shared", "full", "budget", "kept"), [
    ([], 40_000, 239, 1_000_000, 25),               # 10,000 twins x 4 shared metrics
    ([], 4_000, 239, 1_000_000, 239),               # 1,000 twins: the whole hour
    ([239, 239], 2, 239, 401, 100),
    ([10, 239], 0, 239, 110, 100),                  # a restored twin asks only after its newest sample
    ([10, 239], 0, 239, 20, 10),
    ([5], 1, 239, 0, 0),
])
def test_the_budget_keeps_the_most_steps_that_fit(job_steps: list[int], shared: int, full: int, budget: int,
                                                  kept: int) -> None:
    assert budget_steps(job_steps, shared, full, budget) == kept


@pytest.mark.parametrize(("start", "end", "n"), [
    (0.0, 0.0, 1), (0.0, 14.9, 1), (0.0, 15.0, 2), (0.0, 3585.0, 240), (30.0, 15.0, 0),
])
def test_a_range_holds_its_grid_points_up_to_its_end(start: float, end: float, n: int) -> None:
    assert grid_steps(start, end, 15.0) == n

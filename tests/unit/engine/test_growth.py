"""Every per-series and per-twin store grows by the one shared factor, so few rows are unused and all stay aligned."""

from __future__ import annotations

import math

from sidecar.engine.core import Engine
from sidecar.engine.models_base import GROWTH, grown_capacity


def test_a_full_store_grows_by_a_quarter_and_always_fits_what_is_needed() -> None:
    assert grown_capacity(1000, 1001) == math.ceil(1000 * GROWTH) == 1250
    assert grown_capacity(1, 2) == 2 and grown_capacity(16, 500) == 500
    cap, steps = 16, 0
    while cap < 40_000:
        cap, steps = grown_capacity(cap, cap + 1), steps + 1
    assert cap < 40_000 * GROWTH and steps < 40     # amortised O(1): a geometric number of copies


def test_an_engine_keeps_its_stores_aligned_and_at_most_a_quarter_unused() -> None:
    eng = Engine()
    for i in range(300):
        eng.create_twin(f"svc-{i}", at=0.0)
        eng.series_for(f"svc-{i}", ("cpu_usage", "memory_usage", "request_latency_ms", "error_rate"))
    st = eng.state
    n = len(st.series)
    cap = st.series.capacity
    assert n == 1200 and n <= cap <= math.ceil(n * GROWTH)
    assert st.bank.size == st.anomaly.size == st.rows.rows == cap
    assert all(f.slots.capacity == st.bank.core.capacity == cap for f in st.bank.families)
    assert 300 <= st.twin_rows.rows <= math.ceil(300 * GROWTH)

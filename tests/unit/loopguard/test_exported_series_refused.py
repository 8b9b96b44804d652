"""Every series the exporter lists is refused by the loop guard, at config load and at run time.

The guard recognises the sidecar's series by prefix and by label signature, both derived from the /metrics
contract's list (``sidecar/contract.py``), so a family added there (``twin_simulation_fit_trustworthy``) is
covered without touching the guard; these tests prove it for each name rather than trusting the derivation.
"""

from __future__ import annotations

import pytest

from sidecar.contract import EXPORTED_METRICS, EXPORTED_SERIES_NAMES
from sidecar.loopguard import COMPANION_LABELS, LoopError, check_query, drop_own_series

NEW = "twin_simulation_fit_trustworthy"


def test_the_fit_verdict_is_an_exported_series() -> None:
    assert NEW in EXPORTED_SERIES_NAMES


@pytest.mark.parametrize("name", sorted(EXPORTED_SERIES_NAMES))
def test_a_query_naming_an_exported_series_is_refused(name: str) -> None:
    with pytest.raises(LoopError):
        check_query(name)
    with pytest.raises(LoopError):
        check_query(f'max by (twin) ({name}{{twin="checkout-api"}})')


@pytest.mark.parametrize("name", sorted(EXPORTED_SERIES_NAMES))
def test_a_returned_exported_series_is_dropped(name: str) -> None:
    labels = [{"__name__": name, "twin": "checkout-api"}, {"__name__": "up", "job": "x"}]
    assert drop_own_series(labels) == ([1], 1)


def test_the_fit_verdict_renamed_by_a_recording_rule_is_still_caught_by_its_labels() -> None:
    (spec,) = [m for m in EXPORTED_METRICS if m.name == NEW]
    assert spec.labels == ("twin", "scenario") and "scenario" in COMPANION_LABELS
    with pytest.raises(LoopError):
        check_query('job:fit_trust:min{twin="checkout-api", scenario="black-friday"}')
    renamed = [{"__name__": "job:fit_trust:min", "twin": "checkout-api", "scenario": "black-friday"},
               {"__name__": "job:other", "scenario": "black-friday"}]
    assert drop_own_series(renamed) == ([1], 1)

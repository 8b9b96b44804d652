"""The run-time loop guard on every answer: series the sidecar exported itself are dropped, counted, told.

``loopguard`` refuses, at load, a query that could read the sidecar's own series; what still comes back at
run time (a recording rule renaming them, the sidecar's own scrape target) is dropped here, per answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from .. import loopguard
from ..status import ServiceStatus

log = logging.getLogger(__name__)


class OwnSeriesGuard:
    """Drops the sidecar's own series from answers; ``identities`` are the labels of its scrape target(s),
    e.g. ``{"job": "twin-sidecar"}``."""

    def __init__(self, status: ServiceStatus, identities: Sequence[Mapping[str, str]] = ()) -> None:
        self.status = status
        self.identities = tuple(dict(i) for i in identities if i)
        self._dropping: set[tuple[str, str]] = set()    # (twin or rule, metric) whose answers carry our own

    def keep(self, labels: Sequence[Mapping[str, str]], key: tuple[str, str], query: str, *,
             who: str = "twin") -> tuple[list[int], int]:
        """The rows of one answer to keep, and how many were dropped.

        Dropped series are counted (``twin_dropped_own_series_total``) and
        logged once per (twin, metric) episode: at the first answer that carries
        them, again only after an answer that did not.
        """
        keep, dropped = loopguard.drop_own_series(labels, identities=self.identities)
        if not dropped:
            self._dropping.discard(key)
            return keep, 0
        self.status.dropped_own_series_total += dropped
        if key not in self._dropping:
            self._dropping.add(key)
            log.warning("loop guard: dropped series the sidecar exported itself (its metric names, its twin/metric "
                        "labels or its scrape target came back through the query)", extra={
                            who: key[0], "metric": key[1], "query": query, "dropped": dropped})
        return keep, dropped

    def forget(self, twin: str) -> None:
        """A retired twin's episode ends untold."""
        self._dropping = {k for k in self._dropping if k[0] != twin}

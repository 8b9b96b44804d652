"""Once-per-streak logging of queries that fail or answer without data.

A query failing, or answering no series (or only NaN/Inf) round after round, is warned about once when its
streak reaches its threshold, and its end logged once, not a line per round: a source down for 15 s is one
line, not a hundred. Failures are also counted per (twin, metric) on the status (``twin_query_errors_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..status import ServiceStatus

log = logging.getLogger(__name__)

#: Rounds in a row a query may answer with no series (or only NaN/Inf) before it is logged, once per streak:
#: a ``rate()`` over a fresh target is empty for a round or two, a typo'd label for ever. The same 4 intervals
#: after which the TwinMetricStale and TwinMetricNoData alerts fire (at 15 s).
NO_DATA_ROUNDS = 4

Key = tuple[str, str]


@dataclass(slots=True)
class _Streak:
    rounds: int = 0
    told: bool = False           # its warning went out (so its end is told too)


class Streaks:
    """Once-per-streak logging per key: (twin, metric), or (rule, metric) for a query shared by a family.

    A run of bad rounds is warned about once, when it reaches ``after`` rounds (1: at once), and its end is
    logged at info only if it was warned about: one line per streak, not one per round. A bad round marked
    ``quiet`` counts but tells nothing (the whole source was down and says so itself, or a family's shared
    query is told once for the rule); a streak begun quietly that goes on for a reason of its own is told at
    its first round that is not quiet. Query failures and answers without data both use it.
    """

    def __init__(self, warning: str, recovered: str, *, after: int = 1, rounds_field: str = "rounds") -> None:
        self.warning = warning
        self.recovered = recovered
        self.after = max(1, after)
        self.rounds_field = rounds_field
        self._streaks: dict[Key, _Streak] = {}

    def bad(self, key: Key, *, quiet: bool = False, **fields: Any) -> None:
        s = self._streaks.get(key)
        if s is None:
            s = self._streaks[key] = _Streak()
        s.rounds += 1
        if not quiet and not s.told and s.rounds >= self.after:
            s.told = True
            extra = {"twin": key[0], "metric": key[1], **fields}
            if self.after > 1:
                extra[self.rounds_field] = s.rounds
            log.warning(self.warning, extra=extra)

    def good(self, key: Key) -> None:
        s = self._streaks.pop(key, None)
        if s is not None and s.told:
            log.info(self.recovered, extra={"twin": key[0], "metric": key[1], self.rounds_field: s.rounds})

    def good_among(self, metric: str, twins: AbstractSet[str], but: AbstractSet[str] = frozenset()) -> None:
        """``good`` for every (twin, ``metric``) of ``twins`` not in ``but``, in one pass over the streaks under way
        (a family's shared answer: the few streaks, not the thousands of twins, are walked)."""
        for key in [k for k in self._streaks if k[1] == metric and k[0] in twins and k[0] not in but]:
            self.good(key)

    def forget(self, twin: str) -> None:
        """A retired twin's streaks end untold (it is gone, not recovered)."""
        for key in [k for k in self._streaks if k[0] == twin]:
            del self._streaks[key]


class QueryStreaks:
    """Failing queries, told at the first failure of a streak (a streak begun with the whole source down at
    its first failure of its own), and answers without data, told after ``NO_DATA_ROUNDS`` of them."""

    def __init__(self, status: ServiceStatus) -> None:
        self.status = status
        self._failing = Streaks("query failing", "query recovered", rounds_field="failed_rounds")
        self._no_data = Streaks("query returns no data", "query has data again", after=NO_DATA_ROUNDS,
                                rounds_field="empty_rounds")

    def failed(self, key: Key, message: str, *, quiet: bool) -> None:
        """A query of a twin failed: counted on the status, and its streak lengthened."""
        self.status.query_errors[key] += 1
        self.shared_failed(key, message, quiet=quiet)

    def shared_failed(self, key: Key, message: str, *, quiet: bool) -> None:
        """A failure told, not counted: a family's shared query (each twin of it is counted on its own)."""
        # a streak that began with the whole source down and goes on failing for a reason of its own
        # ("returned 2 series") is told like any other; one that stays the source's ends silently ("Prometheus
        # reachable again" says it came back: a line per query here was 100 lines for 20 twins after 15 s down)
        self._failing.bad(key, quiet=quiet, error=message)

    def ok(self, key: Key) -> None:
        self._failing.good(key)

    def answered(self, key: Key, query: str, values: np.ndarray, *, quiet: bool = False) -> None:
        """An answered query's data streak; ``values`` are what it returned for ``key`` (none: no series).

        A finite value ends the streak; no series, or only NaN/Inf, lengthens it (the engine drops non-finite
        samples, so such a metric gets no sample either way).
        """
        v = np.asarray(values, np.float64)
        if np.isfinite(v).any():
            self._no_data.good(key)
        else:
            self._no_data.bad(key, quiet=quiet, query=query,
                              answer="no series" if v.size == 0 else "only NaN/Inf values")

    def family_answered(self, metric: str, query: str, twins: Sequence[str], values: NDArray[np.float64],
                        has_row: NDArray[np.bool_], *, quiet: bool = False) -> None:
        """A family's shared answer, every twin at once: ``ok`` and ``answered`` for each of ``twins`` (its value,
        NaN where ``has_row`` is False: the answer had no series for it). Only the twins without a finite value
        are visited one by one."""
        names = frozenset(twins)
        self._failing.good_among(metric, names)
        bad = np.flatnonzero(~np.isfinite(values)).tolist()
        for i in bad:
            self._no_data.bad((twins[i], metric), quiet=quiet, query=query,
                              answer="only NaN/Inf values" if has_row[i] else "no series")
        self._no_data.good_among(metric, names, frozenset(twins[i] for i in bad))

    def forget(self, twin: str) -> None:
        """A retired twin: its streaks end untold and its error counters go."""
        self._failing.forget(twin)
        self._no_data.forget(twin)
        for key in [k for k in self.status.query_errors if k[0] == twin]:
            del self.status.query_errors[key]

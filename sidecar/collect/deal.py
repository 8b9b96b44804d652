"""Answers to samples: each twin's own answers checked, and a family's shared answers dealt out to its twins.

A twin metric needs exactly one series; more is refused (and said why). A query shared by a discovery
rule's family returns a series per twin: each goes to the twin whose naming labels it carries, in one pass
over the series with a dict lookup each, so a family of thousands of twins costs milliseconds. Failures
and answers without data go to the streaks; the sidecar's own series are dropped first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..prometheus import SourceUnavailable, select
from .fanout import Job, Outcome
from .ownguard import OwnSeriesGuard
from .roster import Roster
from .streaks import QueryStreaks
from .targets import rows_by_twin


def several_series(n: int) -> str:
    """Why a twin metric's answer of ``n`` series is refused (rounds and backfill say the same)."""
    return (f"query returned {n} series; a twin metric needs exactly one "
            f"(aggregate it, e.g. sum/avg/max, or use `discover`)")


@dataclass(slots=True)
class Dealt:
    """A round's samples by engine series slot, and what the answers cost."""

    slots: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    failed: int = 0            # query errors, cut off, or answers of several series
    dropped_own: int = 0       # series dropped by the loop guard

    def add(self, slot: int | None, value: float) -> None:
        if slot is not None:
            self.slots.append(slot)
            self.values.append(value)


class Dealer:
    """Turns a round's raw outcomes into samples for the engine; see the module docstring."""

    def __init__(self, roster: Roster, streaks: QueryStreaks, guard: OwnSeriesGuard) -> None:
        self.roster = roster
        self.streaks = streaks
        self.guard = guard

    def deal(self, raw: Sequence[tuple[Job, Outcome]], aborted: Sequence[Job], reachable: bool) -> Dealt:
        """Every outcome of a round, the shared ones dealt out and the cut-off ones failed, as samples."""
        dealt = Dealt()
        own: list[Outcome] = []
        for job, o in raw:
            if job.rule is None:
                own.append(o)
            else:
                own += self._shared(job, o, reachable, dealt)
        own += self._aborted(aborted)
        # the twins' own answers first in the ingest, the dealt ones after (as they always went)
        mine = Dealt()
        for o in own:
            self._own(o, reachable, mine)
        mine.slots += dealt.slots
        mine.values += dealt.values
        mine.dropped_own += dealt.dropped_own
        return mine

    def _shared(self, job: Job, o: Outcome, reachable: bool, dealt: Dealt) -> list[Outcome]:
        """A family's shared answer dealt out; returns the per-twin outcomes still to be checked as their own."""
        assert job.rule is not None
        family = self.roster.family(job.rule)
        key = (job.rule, job.metric)
        if o.error is not None:
            self.streaks.shared_failed(key, str(o.error), quiet=not reachable)
            return [Outcome(t.name, job.metric, error=o.error, quiet=True) for t in family]
        self.streaks.ok(key)
        assert o.result is not None
        vec = o.result
        keep, dropped = self.guard.keep(vec.labels, key, job.query, who="rule")
        dealt.dropped_own += dropped
        hits = rows_by_twin(family, vec.labels, keep)
        # an empty answer is told once, for the rule; each twin's streak still counts, and is told when the
        # query returns series again but none for that twin
        kept = np.asarray(vec.values, np.float64)[keep]
        self.streaks.answered(key, job.query, kept)
        out: list[Outcome] = []
        for t in family:
            mine = hits.get(t.name, ())
            if len(mine) > 1:
                out.append(Outcome(t.name, job.metric, result=select(vec, mine)))   # reported as an error
                continue
            self.streaks.ok((t.name, job.metric))
            self.streaks.answered((t.name, job.metric), job.query, np.asarray(vec.values, np.float64)[list(mine)],
                                  quiet=not np.isfinite(kept).any())
            if mine:
                dealt.add(self.roster.slot(t.name, job.metric), float(vec.values[mine[0]]))
        return out

    def _aborted(self, aborted: Sequence[Job]) -> list[Outcome]:
        cut = SourceUnavailable("not answered before the round was cut short")
        out: list[Outcome] = []
        for job in aborted:
            twins = [t.name for t in self.roster.family(job.rule)] if job.rule is not None else [job.twin]
            out.extend(Outcome(name, job.metric, error=cut, quiet=True) for name in twins)
        return out

    def _own(self, o: Outcome, reachable: bool, dealt: Dealt) -> None:
        """One twin metric's answer -> a sample; a failure counted and logged once per streak."""
        key = (o.twin, o.metric)
        if o.error is not None:
            dealt.failed += 1
            self.streaks.failed(key, str(o.error), quiet=o.quiet or not reachable)
            return
        assert o.result is not None
        vec = o.result
        keep, dropped = self.guard.keep(vec.labels, key, o.query)
        if dropped:
            dealt.dropped_own += dropped
            vec = select(vec, keep)
        if len(vec) > 1:
            dealt.failed += 1
            self.streaks.failed(key, several_series(len(vec)), quiet=False)
            return
        self.streaks.ok(key)
        self.streaks.answered(key, o.query, vec.values)
        if len(vec) == 1:
            dealt.add(self.roster.slot(o.twin, o.metric), float(vec.values[0]))


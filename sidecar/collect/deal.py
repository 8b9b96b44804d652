"""Answers to samples: each twin's own answers checked, and a family's shared answers dealt out to its twins.

A twin metric needs exactly one series; more is refused (and said why). A query shared by a discovery
rule's family returns a series per twin: each goes to the twin whose naming labels it carries, in one pass
over the series with a dict lookup each (``targets.row_positions``); then the whole family is dealt in a few
numpy calls — series per twin counted, values and engine slots taken by position, the streaks told only about
the twins without a value — so a family of ten thousand twins costs milliseconds, not a Python loop per twin.
The family's index (its twins, their names and slots) is built once per rule per round and shared by the
rule's queries. Failures and answers without data go to the streaks; the sidecar's own series are dropped
first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..prometheus import SourceUnavailable, select
from .fanout import Job, Outcome
from .ownguard import OwnSeriesGuard
from .roster import Roster
from .streaks import QueryStreaks
from .targets import naming_index, row_positions


def several_series(n: int) -> str:
    """Why a twin metric's answer of ``n`` series is refused (rounds and backfill say the same)."""
    return (f"query returned {n} series; a twin metric needs exactly one "
            f"(aggregate it, e.g. sum/avg/max, or use `discover`)")


@dataclass(slots=True)
class Dealt:
    """A round's samples by engine series slot (one at a time, or a family's at once), and what the answers cost."""

    one_slots: list[int] = field(default_factory=list)
    one_values: list[float] = field(default_factory=list)
    many: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = field(default_factory=list)
    failed: int = 0            # query errors, cut off, or answers of several series
    dropped_own: int = 0       # series dropped by the loop guard

    def add(self, slot: int | None, value: float) -> None:
        if slot is not None:
            self.one_slots.append(slot)
            self.one_values.append(value)

    def add_many(self, slots: NDArray[np.int64], values: NDArray[np.float64]) -> None:
        if slots.size:
            self.many.append((slots, values))

    @property
    def slots(self) -> NDArray[np.int64]:
        """Every sample's series slot: the ones added one at a time first, then the families'."""
        return np.concatenate([np.asarray(self.one_slots, np.int64), *(s for s, _ in self.many)])

    @property
    def values(self) -> NDArray[np.float64]:
        return np.concatenate([np.asarray(self.one_values, np.float64), *(v for _, v in self.many)])

    def __len__(self) -> int:
        return len(self.one_slots) + sum(s.size for s, _ in self.many)


class Family:
    """A discovery rule's live twins for one round: their names, and their engine slots per metric (-1: none)."""

    def __init__(self, roster: Roster, rule: str) -> None:
        self.roster = roster
        self.targets = roster.family(rule)
        self.names = [t.name for t in self.targets]
        self.index = naming_index(self.targets)
        self._slots: dict[str, NDArray[np.int64]] = {}

    def slots(self, metric: str) -> NDArray[np.int64]:
        got = self._slots.get(metric)
        if got is None:
            lookup = self.roster.slots.get
            got = self._slots[metric] = np.fromiter(
                (-1 if (s := lookup((n, metric))) is None else s for n in self.names), np.int64, len(self.names))
        return got


class Dealer:
    """Turns a round's raw outcomes into samples for the engine; see the module docstring."""

    def __init__(self, roster: Roster, streaks: QueryStreaks, guard: OwnSeriesGuard) -> None:
        self.roster = roster
        self.streaks = streaks
        self.guard = guard

    def deal(self, raw: Sequence[tuple[Job, Outcome]], aborted: Sequence[Job], reachable: bool) -> Dealt:
        """Every outcome of a round, the shared ones dealt out and the cut-off ones failed, as samples."""
        # the twins' own answers first in the ingest, the families' after (as they always went)
        dealt = Dealt()
        shared = Dealt()
        own: list[Outcome] = []
        families: dict[str, Family] = {}
        for job, o in raw:
            if job.rule is None:
                own.append(o)
            else:
                family = families.get(job.rule)
                if family is None:
                    family = families[job.rule] = Family(self.roster, job.rule)
                own += self._shared(job, o, reachable, family, shared)
        own += self._aborted(aborted)
        for o in own:
            self._own(o, reachable, dealt)
        dealt.many += shared.many
        dealt.dropped_own += shared.dropped_own
        return dealt

    def _shared(self, job: Job, o: Outcome, reachable: bool, family: Family, dealt: Dealt) -> list[Outcome]:
        """A family's shared answer dealt out; returns the per-twin outcomes still to be checked as their own."""
        assert job.rule is not None
        key = (job.rule, job.metric)
        if o.error is not None:
            self.streaks.shared_failed(key, str(o.error), quiet=not reachable)
            return [Outcome(name, job.metric, error=o.error, quiet=True) for name in family.names]
        self.streaks.ok(key)
        assert o.result is not None
        vec = o.result
        keep, dropped = self.guard.keep(vec.labels, key, job.query, who="rule")
        dealt.dropped_own += dropped
        rows, twin = row_positions(family.targets, vec.labels, keep, family.index)
        # an empty answer is told once, for the rule; each twin's streak still counts, and is told when the
        # query returns series again but none for that twin
        values = np.asarray(vec.values, np.float64)
        kept = values[keep]
        self.streaks.answered(key, job.query, kept)
        n = len(family.names)
        count = np.bincount(twin, minlength=n)
        first = np.full(n, -1, np.int64)
        first[twin[::-1]] = rows[::-1]            # each twin's first row (the only one, unless refused)
        out: list[Outcome] = []
        several = np.flatnonzero(count > 1)
        for i in several.tolist():                # reported as an error, the answer's rows for it in order
            out.append(Outcome(family.names[i], job.metric, result=select(vec, rows[twin == i].tolist())))
        single = np.flatnonzero(count <= 1) if several.size else np.arange(n)
        has_row = count[single] == 1
        mine = np.full(single.size, np.nan)
        mine[has_row] = values[first[single][has_row]]
        names = family.names if several.size == 0 else [family.names[i] for i in single.tolist()]
        self.streaks.family_answered(job.metric, job.query, names, mine, has_row,
                                     quiet=not np.isfinite(kept).any())
        slots = family.slots(job.metric)[single]
        take = has_row & (slots >= 0)
        dealt.add_many(slots[take], mine[take])
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


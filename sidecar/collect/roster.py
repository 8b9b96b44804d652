"""The roster: which twins the scheduler queries, and the engine's twins kept in step with it.

Discovery rules run first in every round: one twin per returned series, named by its labels, its queries'
``$label`` placeholders filled from that series (only the series whose twin is this shard's, ``shard.py``,
as for the rules file's twins); twins appear with their targets and are retired once their
series has been absent for ``RETIRE_AFTER_ROUNDS`` successful discovery rounds (never because a query
failed). A twin of the rules file is created as configured; a twin restored from the store is adopted, the
rules file winning for what it sets. Retired twins are kept to come back (``restore.RetiredTwins``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from .. import loopguard
from ..config import TwinRule
from ..errors import CapacityError, EngineError, InputError, SourceError
from ..prometheus import InstantVector, QueryFailed, SourceUnavailable, select
from .context import Context
from .naming import (
    HASH_MARK,
    ambiguous,
    discovered_name,
    key_hash,
    named_by,
    naming_key,
    rule_of,
    shared_queries,
    substitute,
)
from .ownguard import OwnSeriesGuard
from .restore import RetiredTwins
from .shard import ShardFilter
from .streaks import QueryStreaks
from .targets import Target

log = logging.getLogger(__name__)

#: A discovered twin is retired after its series was absent from this many successful discovery rounds.
RETIRE_AFTER_ROUNDS = 3
DISCOVER_METRIC = "discover"        # the "metric" label of discovery query errors

Discovered = Mapping[str, InstantVector | None]


class Roster:
    """The live targets by twin name and their engine series slots; see the module docstring."""

    def __init__(self, ctx: Context, streaks: QueryStreaks, guard: OwnSeriesGuard, retired: RetiredTwins) -> None:
        self.ctx = ctx
        self.streaks = streaks
        self.guard = guard
        self.retired = retired
        self.targets: dict[str, Target] = {}
        self.slots: dict[tuple[str, str], int] = {}
        #: called with each retired twin's name, for what other parts hold of it (standing scenarios' results)
        self.on_retired: list[Callable[[str], None]] = []
        #: which twins are this process's when several share the work (all of them unsharded)
        self.shard = ShardFilter(ctx.config.shard, ctx.config.twins)
        self._discovery_done = False
        #: this round's discovery answers by query text, as Prometheus sent them (before the loop guard): a
        #: metric query that is the same text at the same time is answered from here instead of asked again
        self.answers: dict[str, InstantVector] = {}

    def family(self, rule: str) -> list[Target]:
        """The live twins a discovery rule made."""
        return [t for t in self.targets.values() if t.rule.name == rule and t.rule.discover]

    def slot(self, twin: str, metric: str) -> int | None:
        """The engine's series slot; made for every target's metrics in ``apply`` (under the lock)."""
        return self.slots.get((twin, metric))

    async def refresh(self, at: float) -> int:
        """Discovery, then the twins made to match it; returns how many discovery queries were answered."""
        discovered, answered = await self.discover(at)
        await self.reconcile(at, discovered)
        return answered

    async def discover(self, at: float) -> tuple[dict[str, InstantVector | None], int]:
        """Run every discovery query: per rule its result (None if it failed), and how many were answered."""
        rules = [r for r in self.ctx.config.twins if r.discover]
        results: dict[str, InstantVector | None] = {}
        answered = 0
        self.answers = {}

        async def one(rule: TwinRule) -> None:
            nonlocal answered
            assert rule.discover is not None
            key = (rule.name, DISCOVER_METRIC)
            try:
                vec = await self.ctx.client.query(rule.discover, at=at)
            except SourceError as exc:
                results[rule.name] = None
                answered += isinstance(exc, QueryFailed)
                self.streaks.failed(key, str(exc), quiet=isinstance(exc, SourceUnavailable))
                return
            answered += 1
            self.answers[rule.discover] = vec
            keep, dropped = self.guard.keep(vec.labels, key, rule.discover, who="rule")
            if dropped:
                vec = select(vec, keep)
            self.streaks.ok(key)
            results[rule.name] = vec

        await asyncio.gather(*(one(r) for r in rules))
        return results, answered

    async def reconcile(self, at: float, discovered: Discovered) -> None:
        """Create twins that appeared (or bring retired ones back), retire those gone for good."""
        ctx = self.ctx
        if not self.targets:
            async with ctx.lock:
                wanted = {**self._static_targets(), **self._restored_targets()}
        else:
            wanted = dict(self.targets)
        self.retired.expire(at)
        answered_rules: set[str] = set()
        retire: list[str] = []
        for rule in ctx.config.twins:
            vec = discovered.get(rule.name) if rule.discover else None
            if vec is None:
                continue                      # no answer: its twins stay exactly as they are
            answered_rules.add(rule.name)
            retire += self._match(rule, vec, wanted)
        # once every discovery rule has answered, twins no rule accounts for (renamed or removed from the
        # rules file, restored from the store) are retired: the rules file is the source of truth
        sweep = not self._discovery_done and all(r.name in answered_rules for r in ctx.config.twins
                                                 if r.discover)
        self._discovery_done = self._discovery_done or sweep
        async with ctx.lock:
            added, retired = await asyncio.to_thread(self.apply, wanted, retire, at, sweep)
        self.targets = wanted
        # counters exist from the start, so rate() sees the first error: for every twin this process now queries
        # (created, restored from the store at start or later, or back from retirement), not only new ones
        for name in added:
            for metric in wanted[name].metrics():
                ctx.status.query_errors[(name, metric)] += 0
        for name in retired:
            for key in [k for k in self.slots if k[0] == name]:
                del self.slots[key]
            self.streaks.forget(name)
            self.guard.forget(name)
            for hook in self.on_retired:
                hook(name)
            log.info("twin retired", extra={"twin": name,
                                            "kept_for_s": self.retired.keep_for_s if name in self.retired.parked
                                            else 0})

    def _match(self, rule: TwinRule, vec: InstantVector, wanted: dict[str, Target]) -> list[str]:
        """One discovery answer against the wanted targets (changed in place); returns the twins to retire."""
        # a series finds its twin by its naming labels: a name of an older version (restored from the store,
        # without hash), a collision-resolved one and a retired twin's are all found again; a name from other
        # naming labels (name_labels changed) is not, and that twin retires as before
        by_key = {p.key: name for name, p in self.retired.parked.items() if p.rule == rule.name}
        by_key.update({t.key: name for name, t in wanted.items()
                       if t.rule.name == rule.name and t.rule.discover and t.by_labels})
        present: set[str] = set()
        for labels in vec.labels:
            own = {k: v for k, v in labels.items() if k != "__name__"}
            nkey = naming_key(rule, own)
            if not self.shard.owns_key(nkey):
                continue                      # another shard's twin: neither created nor counted present
            found = by_key.get(nkey)
            if found is not None and found in wanted:
                present.add(found)
                wanted[found].absent_rounds = 0
                continue
            name = found if found is not None else self._fresh_name(rule, nkey, wanted)
            if name is None:
                continue
            by_key[nkey] = name
            present.add(name)
            try:
                queries = {m: substitute(q, labels) for m, q in rule.queries().items()
                           if m not in shared_queries(rule)}
                for q in queries.values():
                    loopguard.check_query(q)
            except ValueError as exc:
                self.streaks.failed((name, DISCOVER_METRIC), f"cannot build its queries: {exc}", quiet=False)
                continue
            wanted[name] = Target(name, rule, queries, own, key=nkey)
        retire: list[str] = []
        for name, t in list(wanted.items()):
            if t.rule.name == rule.name and name not in present:
                t.absent_rounds += 1
                if t.absent_rounds >= RETIRE_AFTER_ROUNDS:
                    retire.append(name)
                    del wanted[name]
        return retire

    def _fresh_name(self, rule: TwinRule, key: tuple[tuple[str, str], ...],
                    wanted: Mapping[str, Target]) -> str | None:
        """The name of a twin for a label set seen for the first time: unique, stable, logged if it collided."""
        name = discovered_name(rule, dict(key))
        if not self.shard.whole and HASH_MARK not in name and ambiguous(key):
            # another shard may hold the label set whose values join to the same name, and no shard sees the
            # other's twins: the hash suffix keeps the two apart without either knowing
            name = f"{name}{HASH_MARK}{key_hash(key)}"

        def holder(n: str) -> tuple[tuple[str, str], ...] | None:
            t = wanted.get(n)
            if t is not None:
                return t.key if t.rule.discover else ()      # a configured twin's name: always taken
            p = self.retired.parked.get(n)
            return p.key if p is not None else None

        owner = holder(name)
        if owner is None or owner == key:
            return name
        alt = f"{name.split(HASH_MARK, 1)[0]}{HASH_MARK}{key_hash(key, 16)}"
        other = holder(alt)
        if other is not None and other != key:
            log.error("discovered twin name collides even with its hash; series not twinned",
                      extra={"rule": rule.name, "twin": name, "labels": dict(key)})
            return None
        log.warning("discovered twin names collide: this series' twin gets a hash suffix", extra={
            "rule": rule.name, "twin": alt, "collides_with": name, "labels": dict(key)})
        return alt

    def _static_targets(self) -> dict[str, Target]:
        return {r.name: Target(r.name, r, r.queries()) for r in self.ctx.config.twins
                if not r.discover and self.shard.owns_name(r.name)}

    def _restored_targets(self) -> dict[str, Target]:
        """Twins the store brought back that a discovery rule owns: queried at once, from their labels."""
        out: dict[str, Target] = {}
        rules = {r.name: r for r in self.ctx.config.twins if r.discover}
        for twin in self.ctx.engine.twins():
            rule = rule_of(twin.name, rules)
            if rule is None:
                continue
            try:
                queries = {m: substitute(q, twin.labels) for m, q in rule.queries().items()
                           if m not in shared_queries(rule)}
            except ValueError:
                continue
            key = naming_key(rule, twin.labels)
            out[twin.name] = Target(twin.name, rule, queries, dict(twin.labels), key=key,
                                    by_labels=named_by(twin.name, rule, key))
        return out

    def apply(self, wanted: Mapping[str, Target], retire: Sequence[str], at: float,
              sweep: bool) -> tuple[list[str], list[str]]:
        """(In a worker thread, under the lock.) Make the engine's twins match the targets.

        Returns the twins newly queried (created, adopted or back from retirement) and those retired.
        """
        engine, kept = self.ctx.engine, self.retired
        added: list[str] = []
        retired: list[str] = []
        gone = list(retire) + ([t.name for t in engine.twins() if t.name not in wanted] if sweep else [])
        kept.park(self.targets, retire, at)
        for name in gone:
            try:
                twin_id = engine.get(name).twin_id
                engine.retire_twin(name, at=at)
                retired.append(name)
            except EngineError:
                kept.parked.pop(name, None)
                continue
            if name not in kept.parked:
                kept.forget(twin_id)           # not kept: nothing will bring its learnt models back
        back = [(name, p) for name in wanted if name not in self.targets
                and (p := kept.parked.pop(name, None)) is not None]
        if back:
            kept.unpark(back, at)
        for name, t in wanted.items():
            if name in self.targets:
                continue                       # already a twin (looking it up would rebuild its record)
            self.ensure_twin(name, t, at)
            metrics = t.metrics()
            try:
                slots = engine.series_for(name, metrics)
            except EngineError:
                continue
            added.append(name)
            for metric, slot in zip(metrics, slots.tolist(), strict=True):
                self.slots[(name, metric)] = int(slot)
        kept.expire(at)
        return added, retired

    def ensure_twin(self, name: str, t: Target, at: float) -> bool:
        """(Worker thread, under the lock.) Create the twin, or adopt a restored one; True if created."""
        rule, engine = t.rule, self.ctx.engine
        try:
            engine.get(name)
        except EngineError:
            pass
        else:
            # restored from the store: the rules file wins for what it sets
            engine.configure(name, at=at, thresholds=dict(rule.thresholds), limits=dict(rule.limits),
                             auto_correction=rule.auto_correction)
            engine.set_horizons(name, rule.horizons_s, at=at)
            engine.set_metric_rules(name, directions=rule.directions, bounds=rule.bounds, at=at)
            stored = engine.get(name).expected_state or {}
            if rule.expected and dict(rule.expected) != stored:
                # the expected state is the twin's (set by the API, corrections, rollbacks), applied from the
                # rules only when the twin is created: editing it there changed nothing, without a word
                log.warning("twin restored: its stored expected state is kept, the rules' `expected` is not applied",
                            extra={"twin": name, "stored": stored, "rules": dict(rule.expected),
                                   "hint": "PUT /api/v1/twins/<twin>/expected to change it"})
            return False
        sizing = {k: v for k, v in (("replicas", rule.replicas), ("workers", rule.workers)) if v is not None}
        try:
            engine.create_twin(
                name, at=at, system_type=rule.system_type, sync_frequency_seconds=self.ctx.config.interval_s,
                expected=dict(rule.expected) or None, thresholds=dict(rule.thresholds),
                limits=dict(rule.limits), auto_correction=rule.auto_correction, labels=t.labels,
                initial_state=sizing)
        except CapacityError:
            return False        # counted, logged once per episode and recorded as an event by the registry
        except InputError as exc:
            log.error("cannot create twin", extra={"twin": name, "error": str(exc)})
            return False
        engine.set_horizons(name, rule.horizons_s, at=at)   # a subset of the engine's: config built both
        engine.set_metric_rules(name, directions=rule.directions, bounds=rule.bounds, at=at)
        return True

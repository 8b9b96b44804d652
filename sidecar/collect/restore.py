"""Every way a twin comes back, in one place: from the store at start, from the store once it answers, and a
retired discovered twin whose series returns.

* At start (``restore_stored``) the stored twins are put back: definitions and history first, then the
  models' saved rows, then only the stored samples those rows had not yet learnt.
* A store that is down at start is read once it answers (``late_restore``): a twin running since the start
  keeps its models (they learnt the outage) and takes the stored definition per key; the others are
  restored as at start.
* A retired discovered twin is kept aside in memory for a while (``retired.keep_for``, ``RetiredTwins``):
  if its series returns (a pod restarted under its name, a target that failed a few scrapes) the twin comes
  back as it was retired, with its expected state, snapshots, corrections, recent samples and learnt models,
  rather than as a new twin learning from nothing. A restart keeps them too: the twins the store retired
  within ``keep_for`` are handed to ``RetiredTwins.park_stored`` (``keep_retired``), and the store keeps a
  retired twin's saved models until it is listed as no longer kept (``take_forgotten``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import SidecarConfig
from ..engine.core import Engine
from ..engine.modelstate import TwinModelState
from ..engine.modelstate import decode as decode_model_state
from ..engine.records import CorrectionRecord, DigitalTwin, StateHistoryEntry
from ..errors import EngineError, InputError, SidecarError, StoreError
from ..store.base import RestoredTwin, Store
from .naming import named_by, naming_key, rule_of
from .shard import ShardFilter
from .targets import Target

log = logging.getLogger(__name__)

Samples = dict[str, tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- from the store

def restore_stored(engine: Engine, restored: Sequence[RestoredTwin], states: Mapping[str, bytes]) -> None:
    """Definitions and history first, then the models' saved rows, then only the stored samples those
    rows had not yet learnt (the rest rejoin the series' history without passing the models twice)."""
    samples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    back: dict[str, bytes] = {}
    for rt in restored:
        try:
            engine.restore_twin(rt.definition, snapshots=rt.snapshots, corrections=rt.corrections)
        except SidecarError as exc:
            log.error("could not restore a stored twin", extra={"twin": rt.name, "error": str(exc)})
            continue
        samples.update({(rt.twin_id, m): v for m, v in rt.samples.items()})
        if rt.twin_id in states:
            back[rt.twin_id] = states[rt.twin_id]
    learnt = engine.load_model_states(back)
    try:
        engine.restore_history(samples, learnt)
    except SidecarError as exc:
        log.error("stored samples could not be replayed", extra={"error": str(exc)})
    if back:
        log.info("model state restored", extra={"twins": len({k[0] for k in learnt}), "saved": len(back)})


async def load_model_states(store: Store, twins: Sequence[RestoredTwin] | None = None) -> dict[str, bytes]:
    """The saved model states by twin id (of ``twins`` only, if given: a shard reads its own); none (logged: the
    models relearn) when the store cannot read them."""
    try:
        return await store.load_model_states(None if twins is None else [t.twin_id for t in twins])
    except StoreError as exc:
        log.error("saved model state unreadable: the models relearn", extra={"error": str(exc)})
        return {}


@dataclass(slots=True)
class Stored:
    """What a start-up reads of the store: this shard's live twins, its twins retired recently enough to be kept,
    and the ids of the twins other shards have (whose saved models are theirs to keep or purge)."""

    live: list[RestoredTwin] = field(default_factory=list)
    retired: list[RestoredTwin] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)

    @property
    def twins(self) -> list[RestoredTwin]:
        return [*self.live, *self.retired]


class _ShardChoice:
    """The store's ``keep``: this shard's twins pass, the others' ids are noted."""

    def __init__(self, config: SidecarConfig) -> None:
        self.shard = ShardFilter(config.shard, config.twins)
        self.elsewhere: list[str] = []

    def __call__(self, definition: Mapping[str, Any]) -> bool:
        if self.shard.owns_definition(definition):
            return True
        self.elsewhere.append(str(definition.get("twin_id", "")))
        return False


async def load_stored(store: Store, config: SidecarConfig, now: float) -> Stored:
    """This shard's live twins, and its twins retired recently enough to be kept (``retired``); raises
    ``StoreError``. Unsharded (``shard.count`` 1) every twin of this replica is this process's."""
    choose = _ShardChoice(config) if config.shard.count > 1 else None
    keep = config.retired
    if keep.keep_for_s <= 0 or keep.keep_max <= 0:
        return Stored(await store.load_twins(keep=choose), [], choose.elsewhere if choose else [])
    # each shard keeps up to keep_max: the count × keep_max retired last across all shards hold every shard's
    # (with retirements spread evenly; a shard retiring far fewer than the others may find fewer of its own)
    twins = await store.load_twins(include_retired=True, retired_since=now - keep.keep_for_s,
                                   retired_max=keep.keep_max * config.shard.count, keep=choose)
    return Stored([t for t in twins if t.retired_at is None], [t for t in twins if t.retired_at is not None],
                  choose.elsewhere if choose else [])


async def keep_retired(retired: RetiredTwins, lock: asyncio.Lock, store: Store,
                       twins: Sequence[RestoredTwin], states: Mapping[str, bytes], *, now: float,
                       elsewhere: Sequence[str] = ()) -> None:
    """Keep the stored twins retired less than ``retired.keep_for`` ago (with their saved models), then
    delete the saved models of every other retired twin: nothing can bring those back (but for the twins
    ``elsewhere``: other shards', theirs to keep). A store that fails here only leaves those rows for the
    next start."""
    async with lock:
        kept = retired.park_stored(twins, states, now=now)
        live = [t.twin_id for t in retired.engine.twins()]
    try:
        await store.purge_retired_model_states(keep=[*kept, *live, *elsewhere])
    except StoreError as exc:
        log.warning("model state of retired twins no longer kept not purged; tried again at the next start",
                    extra={"error": str(exc)})


class DefinitionsHeld(Protocol):
    """The writer's gate that holds twin definitions back until the stored twins are merged."""

    pending: bool


async def late_restore(store: Store, engine: Engine, lock: asyncio.Lock, gate: DefinitionsHeld,
                       stop: asyncio.Event, clock: Callable[[], float] = time.time, *,
                       retired: RetiredTwins | None = None) -> None:
    """Read the stored twins once the database answers, merge them, then let definitions through.

    With ``retired``, the stored twins retired recently enough are kept as at a start with the store up
    (but for a name running since the start: that twin wins)."""
    delay = 1.0
    while not stop.is_set():
        try:
            if retired is not None:
                stored = await load_stored(store, retired.config, clock())
            else:
                stored = Stored(await store.load_twins())
        except StoreError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 60.0)
            continue
        restored, gone = stored.live, stored.retired
        states = await load_model_states(store, stored.twins)
        async with lock:
            merged = 0
            running = {t.twin_id for t in engine.twins()}
            for rt in restored:
                if rt.twin_id not in running:
                    continue
                try:        # a twin running since the start keeps its models: they learnt the outage
                    merged += engine.merge_stored(rt.definition, snapshots=rt.snapshots,
                                                  corrections=rt.corrections, at=clock())
                except SidecarError as exc:
                    log.error("could not merge a stored twin", extra={"twin": rt.name, "error": str(exc)})
            restore_stored(engine, [rt for rt in restored if rt.twin_id not in running], states)
            engine.republish()
            gate.pending = False
        log.info("stored twins merged after the store came back", extra={
            "twins": len(restored), "expected_states_restored": merged})
        if retired is not None:
            await keep_retired(retired, lock, store, gone, states, now=clock(), elsewhere=stored.elsewhere)
        return


# --------------------------------------------------------------------------- retired twins kept to come back

@dataclass(slots=True)
class Parked:
    """A retired discovered twin, kept so that it can come back as it was (see ``RetiredConfig``)."""

    rule: str
    key: tuple[tuple[str, str], ...]
    at: float                                                  # when it was retired
    definition: dict[str, Any]
    snapshots: list[StateHistoryEntry]
    corrections: list[CorrectionRecord]
    samples: Samples
    models: TwinModelState | None
    saved: bool = False                  # ``models`` are in the store (saved since, or read from it at start)

    @property
    def twin_id(self) -> str:
        return str(self.definition.get("twin_id", ""))


class RetiredTwins:
    """The retired discovered twins kept, oldest first, and the ids of those that left for good.

    A retired twin is kept ``keep_for_s`` at most, ``keep_max`` twins at most (the oldest go first): if its
    series returns within it, the twin is restored with everything it had. Changed only under the engine
    lock or on the event loop itself; ``park`` and ``unpark`` run in a worker thread under that lock.
    """

    def __init__(self, config: SidecarConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.keep_for_s = config.retired.keep_for_s
        self.keep_max = config.retired.keep_max
        self.parked: dict[str, Parked] = {}
        #: ids of retired twins no longer kept (or never kept), whose saved models the store may delete
        self._forgotten: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.keep_for_s > 0 and self.keep_max > 0

    def park_stored(self, twins: Sequence[RestoredTwin], states: Mapping[str, bytes], *, now: float) -> list[str]:
        """Keep the twins the store has retired, as if this process had retired them; returns the ids kept.

        A restart within ``keep_for`` then gives a returning series its twin back exactly as retiring it
        here would have: same id, expected state, snapshots, corrections, recent samples and the learnt
        models read from the store (``states``: saved blobs by twin id). Only twins retired less than
        ``keep_for_s`` ago, the ``keep_max`` retired last, whose discovery rule still exists and would find
        them by their labels; a name already live or kept here is left alone. Oldest first, ahead of any
        twin retired by this process (retired later).
        """
        if not self.enabled:
            return []
        rules = {r.name: r for r in self.config.twins if r.discover}
        live = {t.name for t in self.engine.twins()}
        found: list[tuple[str, Parked]] = []
        for rt in twins:
            name, at = rt.name, rt.retired_at
            if at is None or not math.isfinite(at) or now - at > self.keep_for_s:
                continue
            rule = rule_of(name, rules)
            if rule is None or name in live or name in self.parked:
                continue
            labels = {str(k): str(v) for k, v in (rt.definition.get("labels") or {}).items()}
            key = naming_key(rule, labels)
            if not named_by(name, rule, key):
                continue                       # named from other naming labels: no series would find it
            found.append((name, Parked(
                rule=rule.name, key=key, at=at, definition=dict(rt.definition), snapshots=list(rt.snapshots),
                corrections=list(rt.corrections), samples=dict(rt.samples),
                models=_stored_models(rt.twin_id, states.get(rt.twin_id)), saved=True)))
        found.sort(key=lambda item: item[1].at)
        found = found[-self.keep_max:]
        self.parked = {**dict(found), **self.parked}
        self.expire(now)
        kept = [p.twin_id for name, p in found if self.parked.get(name) is p]
        if found:
            log.info("retired twins kept from the store", extra={
                "twins": len(kept), "with_models": sum(1 for name, p in found
                                                       if self.parked.get(name) is p and p.models is not None),
                "keep_for_s": self.keep_for_s})
        return kept

    def unsaved_models(self) -> list[TwinModelState]:
        """The learnt models of kept twins that are not in the store yet (retired since the last save)."""
        return [p.models for p in self.parked.values() if not p.saved and p.models is not None]

    def models_saved(self, saved: Sequence[TwinModelState]) -> None:
        """These (from ``unsaved_models``) are in the store now; a twin retired again meanwhile is not."""
        done = {id(st) for st in saved}
        for p in self.parked.values():
            if p.models is not None and id(p.models) in done:
                p.saved = True

    def take_forgotten(self) -> list[str]:
        """Ids of retired twins no longer kept (expired, beyond ``keep_max``, or never kept): their saved models
        can go. Handed over once; give back with ``forget_later`` what could not be deleted. A twin kept again
        since (back and retired anew, or read from the store) with models of its own is left out: its row is
        its models."""
        kept = {p.twin_id for p in self.parked.values() if p.models is not None}
        out = [t for t in dict.fromkeys(self._forgotten) if t not in kept]
        self._forgotten = []
        return out

    def forget_later(self, twin_ids: Sequence[str]) -> None:
        """Ids from ``take_forgotten`` whose rows could not be deleted (the store was down): handed over again."""
        self._forgotten[:0] = twin_ids

    def expire(self, at: float) -> None:
        """Forget retired twins kept longer than ``keep_for_s``, and the oldest beyond ``keep_max``."""
        for name in [n for n, p in self.parked.items() if at - p.at > self.keep_for_s]:
            self.forget(self.parked.pop(name).twin_id)
        while len(self.parked) > self.keep_max:
            self.forget(self.parked.pop(next(iter(self.parked))).twin_id)

    def forget(self, twin_id: str) -> None:
        """A retired twin leaves for good: its saved models are of no further use (see ``take_forgotten``)."""
        if twin_id:
            self._forgotten.append(twin_id)

    def park(self, targets: Mapping[str, Target], names: Sequence[str], at: float) -> None:
        """(Worker thread, under the lock.) Keep what discovered twins about to be retired have, to give it back.

        The models' rows are cut out of the banks as ``Engine.export_model_states`` does, but only for these
        twins and without encoding them (a few ms per twin): they are encoded only if the twin returns.
        """
        keep: dict[str, tuple[DigitalTwin, Samples]] = {}
        if not self.enabled:
            return                             # keeping disabled: not even the models' rows are cut out
        for name in names:
            t = targets.get(name)
            if t is None or not t.rule.discover or not t.by_labels:
                continue
            try:
                keep[name] = (self.engine.get(name), self.engine.history(name))
            except EngineError:
                continue
        if not keep:
            return
        models = self.engine.model_states([twin.twin_id for twin, _ in keep.values()])
        for name, (twin, history) in keep.items():
            t = targets[name]
            self.parked.pop(name, None)
            # the twin object leaves the engine at retirement: what is kept is no longer shared with it
            self.parked[name] = Parked(
                rule=t.rule.name, key=t.key, at=at, definition=json.loads(json.dumps(twin.definition())),
                snapshots=twin.state_history, corrections=list(twin.corrections),
                samples={m: (np.array(ts), np.array(ys)) for m, (ts, ys) in history.items()},
                models=models.get(twin.twin_id))

    def unpark(self, back: Sequence[tuple[str, Parked]], at: float) -> None:
        """(Worker thread, under the lock.) Bring retired twins back as they were, the way a restart restores them.

        All at once: the models' rows are put back and the samples replayed in one call each, as at start-up.
        """
        returned: list[tuple[str, Parked, DigitalTwin]] = []
        for name, p in back:
            try:
                self.engine.get(name)
            except EngineError:
                pass
            else:
                continue                       # restored from the store meanwhile: that one is adopted
            try:
                twin = self.engine.restore_twin(p.definition, snapshots=p.snapshots, corrections=p.corrections)
            except SidecarError as exc:
                log.error("could not restore a returning twin; it starts afresh", extra={
                    "twin": name, "error": str(exc)})
                self.forget(p.twin_id)
                continue
            returned.append((name, p, twin))
        if not returned:
            return
        learnt = self.engine.put_model_states([p.models for _, p, _twin in returned if p.models is not None])
        try:
            self.engine.restore_history({(twin.twin_id, m): v for _, p, twin in returned
                                         for m, v in p.samples.items()}, learnt)
        except SidecarError as exc:
            log.error("returning twins' samples could not be replayed", extra={"error": str(exc)})
        for name, p, twin in returned:
            # the store marked it retired: writing its definition again (with a snapshot saying why) un-retires
            # it, so a restart restores it too
            self.engine.set_expected_state(name, {}, at=at, reason="its series returned after retirement")
            log.info("twin returned: restored as it was retired", extra={
                "twin": name, "away_s": round(at - p.at, 1), "expected_state": bool(twin.expected_state)})


def _stored_models(twin_id: str, blob: bytes | None) -> TwinModelState | None:
    if blob is None:
        return None
    try:
        st = decode_model_state(blob)
        if st.twin_id != twin_id:
            raise InputError(f"model state belongs to twin {st.twin_id}")
    except InputError as exc:
        log.error("stored model state of a retired twin unreadable: it would relearn", extra={
            "twin_id": twin_id, "error": str(exc)})
        return None
    return st

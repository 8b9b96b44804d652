"""A shard reads only its own twins from the store the shards share — live and recently retired, with their saved
models — and its start-up purge of retired twins' models leaves the other shards' alone (real SQLite store, real
engine)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from sidecar.collect.restore import RetiredTwins, keep_retired, load_model_states, load_stored
from sidecar.collect.shard import ShardFilter
from sidecar.config import ShardConfig, SidecarConfig, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.records import DigitalTwin, SystemType
from sidecar.engine.view import Outbox
from sidecar.store import open_store

RULES = """twins:
  - name: pods
    discover: 'up'
    name_labels: [pod]
    metrics: {cpu_usage: 'rate(cpu{pod="$pod"}[1m])'}
  - name: solo
    metrics: {cpu_usage: 'up'}
"""


def twin(name: str, labels: dict[str, str]) -> DigitalTwin:
    return DigitalTwin(twin_id=f"twin_{name}", source_system=name, system_type=SystemType.OTHER,
                       created_at=time.time() - 600, labels=labels)


def shard(index: int) -> SidecarConfig:
    return dataclasses.replace(parse_config(RULES, env={}), shard=ShardConfig(index, 2))


async def test_each_shard_reads_its_own_twins_and_purges_only_its_own_retired_models(tmp_path: Path) -> None:
    store = open_store(path=str(tmp_path / "twins.db"))
    await store.open()
    try:
        twins = [twin(f"pods@p{n}", {"pod": f"p{n}", "instance": f"10.0.0.{n}"}) for n in range(20)]
        twins.append(twin("solo", {}))
        await store.write(Outbox(twins=twins))
        gone = [t.twin_id for t in twins[:10]]                 # retired a moment ago: still kept
        await store.write(Outbox(retired=gone))
        await store.save_model_states({t.twin_id: t.twin_id.encode() for t in twins}, at=time.time())
        owner = {t.twin_id: i for t in twins for i in range(2)
                 if ShardFilter(ShardConfig(i, 2), shard(i).twins).owns_twin(t.source_system, t.labels)}
        assert 0 < list(owner.values()).count(0) < len(twins)               # both shards have twins
        for i in range(2):
            cfg = shard(i)
            stored = await load_stored(store, cfg, time.time())
            mine = {t for t, o in owner.items() if o == i}
            assert {t.twin_id for t in stored.live} == mine - set(gone)
            assert {t.twin_id for t in stored.retired} == mine & set(gone)
            assert set(stored.elsewhere) == set(owner) - mine
            assert set(await load_model_states(store, stored.twins)) == mine
        # shard 0 starts (keeping none of its retired twins: keep_for 0) and purges: shard 1's stay
        cfg0 = dataclasses.replace(shard(0), retired=dataclasses.replace(shard(0).retired, keep_for_s=0.0))
        stored0 = await load_stored(store, shard(0), time.time())
        await keep_retired(RetiredTwins(cfg0, Engine()), asyncio.Lock(), store, stored0.retired, {},
                           now=time.time(), elsewhere=stored0.elsewhere)
        left = set(await store.load_model_states())
        assert left == set(owner) - {t for t in gone if owner[t] == 0}
    finally:
        await store.close()

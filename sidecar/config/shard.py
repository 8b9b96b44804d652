"""``shard:``: this process's share of the twins, from the rules and from the environment on top."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ConfigError
from .reader import Reader
from .records import ShardConfig

#: Environment variables that set ``shard:`` (and win over the rules file, as ``DATABASE_URL`` does). The index
#: may be a StatefulSet pod name (``twins-2``): its ordinal is the index.
SHARD_INDEX_ENV = "TWIN_SIDECAR_SHARD_INDEX"
SHARD_COUNT_ENV = "TWIN_SIDECAR_SHARD_COUNT"
#: The most shards: each runs every shared (family) query in full, so thousands would only multiply that cost.
MAX_SHARDS = 1000


def shard_config(index: int | str | None, count: int | str | None, *, where: str,
                 default: ShardConfig = ShardConfig()) -> ShardConfig:  # noqa: B008 (frozen: immutable)
    """A shard from an index and a count given as text or numbers (``None``: the default's); ``ConfigError``
    naming ``where`` (the key, variable or flag) unless ``0 <= index < count <= MAX_SHARDS``. The index may be a
    StatefulSet pod name (``twins-2``), whose ordinal is the index."""
    def number(value: int | str, what: str) -> int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {what} must be an integer, got {value!r}", key=where)
        if isinstance(value, int):
            return value
        text = value.strip()
        m = re.fullmatch(r"(?:.*-)?(\d+)", text) if what == "index" else re.fullmatch(r"\d+", text)
        if m is None:
            hint = " or a StatefulSet pod name ending in -<ordinal>" if what == "index" else ""
            raise ConfigError(f"{where}: {what} must be an integer{hint}, got {value!r}", key=where)
        return int(m.group(1) if what == "index" else m.group(0))

    n = default.count if count is None else number(count, "count")
    i = default.index if index is None else number(index, "index")
    if not 1 <= n <= MAX_SHARDS:
        raise ConfigError(f"{where}: the shard count must be 1 to {MAX_SHARDS}, got {n}", key=where)
    if not 0 <= i < n:
        raise ConfigError(f"{where}: the shard index must be 0 to {n - 1} (count {n}), got {i}", key=where)
    return ShardConfig(index=i, count=n)


def read_shard(r: Reader | None, env: Mapping[str, str]) -> ShardConfig:
    """``shard: {index, count}``, then ``TWIN_SIDECAR_SHARD_INDEX`` / ``_COUNT`` from the environment on top."""
    rules = ShardConfig()
    if r is not None:
        count = r.int_("count", 1, minimum=1, maximum=MAX_SHARDS)
        index = r.int_("index", 0, minimum=0, maximum=MAX_SHARDS - 1)
        assert count is not None and index is not None
        if index >= count:
            raise r.error(r.items["index"][1], r.key("index"),
                          f"expected 0 to {count - 1} (count {count}), got {index}")
        rules = ShardConfig(index=index, count=count)
        r.finish()
    env_index, env_count = env.get(SHARD_INDEX_ENV) or None, env.get(SHARD_COUNT_ENV) or None
    if env_index is None and env_count is None:
        return rules
    where = " and ".join(n for n, v in ((SHARD_INDEX_ENV, env_index), (SHARD_COUNT_ENV, env_count)) if v is not None)
    return shard_config(env_index, env_count, where=where, default=rules)

"""Shards: which twins this process twins when several share the work (``shard:``, ``ShardConfig``).

``count`` processes over one PostgreSQL split the twins by a hash of what names them, the way Prometheus'
and vmagent's ``hashmod`` relabelling splits scrape targets: the values of a discovered twin's naming labels
(``naming.naming_key``, in order) joined by ``;``, hashed with MD5, the digest's last 8 bytes read as a
big-endian integer, modulo ``count``. A twin of the rules file is hashed by its name the same way. The hash
depends on the labels alone, never on which twins exist or on the process, so every process agrees on every
twin's shard without talking to the others, and a twin keeps its shard for as long as ``count`` stays.

All shards write as one replica (one ``TWIN_SIDECAR_REPLICA``): a twin's id, definition, history and model
state are the same rows whichever shard has it, so when ``count`` changes a twin that moves is restored by its
new shard from the store like any restarted twin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from ..config import ShardConfig, TwinRule
from .naming import naming_key, rule_of

#: Joins the values before hashing (Prometheus' default relabel ``separator``).
SEPARATOR = ";"


def hashmod(values: Sequence[str], modulus: int) -> int:
    """Prometheus' ``hashmod`` of these values joined by ``;``: the MD5 digest's last 8 bytes, big-endian, mod
    ``modulus``."""
    digest = hashlib.md5(SEPARATOR.join(values).encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


def shard_of_key(key: Sequence[tuple[str, str]], count: int) -> int:
    """The shard of a discovered twin by its naming key (label names and values, as ``naming_key`` gives)."""
    return hashmod([v for _, v in key], count)


def shard_of_name(name: str, count: int) -> int:
    """The shard of a twin of the rules file (or of one no rule accounts for), by its name."""
    return hashmod([name], count)


class ShardFilter:
    """Whether a twin is this shard's: a discovered one by its naming key, a configured one by its name.

    With ``count`` 1 every twin is, without hashing anything."""

    def __init__(self, shard: ShardConfig, rules: Sequence[TwinRule]) -> None:
        self.index, self.count = shard.index, shard.count
        self.whole = shard.count <= 1
        self._discover = {r.name: r for r in rules if r.discover}

    def owns_key(self, key: Sequence[tuple[str, str]]) -> bool:
        """A discovered series' twin, by the naming key of its labels."""
        return self.whole or shard_of_key(key, self.count) == self.index

    def owns_name(self, name: str) -> bool:
        """A twin of the rules file."""
        return self.whole or shard_of_name(name, self.count) == self.index

    def owns_twin(self, name: str, labels: Mapping[str, str]) -> bool:
        """A twin as the store holds it: by its discovery rule's naming key (the rule its name says it belongs
        to), else by its name. The same answer ``owns_key`` gives its series, so a restored twin is restored
        by the shard its series go to."""
        if self.whole:
            return True
        rule = rule_of(name, self._discover)
        if rule is None:
            return self.owns_name(name)
        return self.owns_key(naming_key(rule, labels))

    def owns_definition(self, definition: Mapping[str, object]) -> bool:
        """A stored twin definition (``DigitalTwin.definition()``: its name is ``source_system``)."""
        name = str(definition.get("source_system") or "")
        raw = definition.get("labels")
        labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        return self.owns_twin(name, labels)

"""Service-level state the exporter and probes read (not engine state)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ServiceStatus:
    """Mutated only by the scheduler and the store writer; read by /metrics and /readyz."""

    config_loaded: bool = False
    first_round_done: bool = False
    source_up: bool = False                      # could the last query round reach Prometheus
    last_round_at: float | None = None
    rounds_total: int = 0
    query_errors: Counter[tuple[str, str]] = field(default_factory=Counter)   # (twin, metric) -> count
    dropped_own_series_total: int = 0            # returned series carrying the sidecar's own metric names
    store_up: bool = True                        # is the database accepting writes
    store_backlog: int = 0                       # items waiting to be written
    store_dropped_samples_total: int = 0         # metric samples dropped because the buffer was full
    store_corrupt_snapshots_total: int = 0       # snapshots that failed their checksum on read
    simulation_failure_probability: dict[tuple[str, str], float] = field(default_factory=dict)
    simulation_breaking_multiplier: dict[tuple[str, str], float] = field(default_factory=dict)
    # was the capacity fit behind that run trustworthy (model_fit.trustworthy): the alert pages only on True
    simulation_fit_trustworthy: dict[tuple[str, str], bool] = field(default_factory=dict)
    # per twin with max_replicas: what /metrics exports of its replica recommendation, and the API's account of it
    replica_signals: dict[str, ReplicaSignal] = field(default_factory=dict)
    # this process's share of the twins (``shard:``): index of count; count 1 unsharded
    shard_index: int = 0
    shard_count: int = 1

    @property
    def shard(self) -> dict[str, int]:
        """What the probes show: ``{"index": 0, "count": 1}``."""
        return {"index": self.shard_index, "count": self.shard_count}

    @property
    def ready(self) -> bool:
        return self.config_loaded and self.first_round_done


@dataclass(frozen=True, slots=True)
class ReplicaSignal:
    """One twin's replica recommendation as exported: empty tuples and None when it is not trustworthy."""

    horizons: tuple[str, ...] = ()              # horizon labels (5m, 10m, ...)
    replicas: tuple[int, ...] = ()              # stabilised recommendation per horizon
    headroom: tuple[float, ...] = ()            # 1 - forecast upper bound / capacity, per horizon
    capacity_rps: float | None = None           # what the running replicas carry (fit trustworthy only)
    advice: dict[str, Any] = field(default_factory=dict)    # the API's account, with the reason

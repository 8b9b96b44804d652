"""The frozen records the rules become: one per section, one per twin rule and standing scenario, and the whole.

The defaults here are the rules' defaults: a section left out of the file is its record built with no arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..contract import ExportOptions
from ..engine.records import SystemType
from ..engine.replicas import DEFAULT_QUANTILE
from .secret import SecretFile

DEFAULT_HORIZONS_S: tuple[float, ...] = (300.0, 900.0, 1800.0, 3600.0)
DEFAULT_SCALE_DOWN_STABILISATION_S = 300.0    # twins[].scale_down_stabilisation (the Kubernetes HPA's default)
#: backfill_max_samples: series × steps the start-up backfill fetches and replays through every model before the
#: first round, 12-17 µs each on 2 cores (benchmarks/startup.py). 1,000 twins × 4 metrics keep the whole hour at
#: 15 s (at most 960,000); 10,000 twins keep 25 steps and are ready in 24-28 s, inside the startup probe's 60 s.
DEFAULT_BACKFILL_MAX_SAMPLES = 1_000_000


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password_file: SecretFile


@dataclass(frozen=True, slots=True)
class PrometheusConfig:
    url: str = "http://127.0.0.1:9090"
    timeout_s: float = 10.0
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    bearer_token_file: SecretFile | None = None
    basic_auth: BasicAuth | None = None
    tls_ca_file: str | None = None
    max_concurrency: int = 16
    accept_warnings: bool = False     # a result with warnings may be partial: refused unless accepted
    #: label sets of the sidecar's own scrape target(s), e.g. ``({"job": "twin-sidecar"},)``: the loop guard drops
    #: any result series carrying all the pairs of one of them (the sidecar's own metrics, however renamed)
    self_labels: tuple[Mapping[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9464
    auth_token_file: SecretFile | None = None
    max_body_bytes: int = 1_048_576

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: str = "./twin-sidecar.db"
    url: str | None = field(default=None, repr=False)   # may carry a password: never shown
    retention_days: float = 30.0
    retention_snapshots: int = 1000
    buffer_max_items: int = 100_000
    forecast_interval_s: float = 300.0         # forecast rows stored at most this often per series (spread out)
    sample_interval_s: float = 60.0            # samples and forecast rows written together this often (0: each round)
    model_state_interval_s: float = 600.0      # how often the models' learnt state is saved (and at shutdown)
    commit_wait_s: float = 3.0                 # how long an API state change waits for its commit before a 202
    #: retention never drops a snapshot younger than this, whatever ``retention_snapshots`` says: a change the
    #: API acknowledged stays readable (and a rollback target) at least this long
    retention_min_age_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What the sidecar takes on at most (``limits:``): past ``max_twins`` or ``max_series`` new twins are refused
    (counted, logged, an event), and an answer larger than ``max_response_bytes`` is refused as a query error,
    so a ``discover`` over a high-cardinality metric cannot grow the process until it is killed."""

    max_twins: int = 10_000
    max_series: int = 40_000
    max_response_bytes: int = 128 * 2**20
    #: metric history kept in memory per series (the capacity fit, what-if and replica advice read it; no
    #: forecast model does): ``history / interval + 1`` samples of 12 bytes each
    history_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """This process's share of the twins (``shard:``): of ``count`` processes over one PostgreSQL, it twins only
    the twins whose naming labels hash to ``index`` (``collect/shard.py``), so ``count`` processes twin every
    twin exactly once. ``count: 1`` (the default) twins everything."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True, slots=True)
class RetiredConfig:
    """Retired discovered twins are kept (in memory, and in the store across a restart) for a while, to come
    back as they were: how long, and how many."""

    keep_for_s: float = 3600.0                 # kept (in memory, and in the store across a restart) this long;
                                               # 0: not kept (a returning series starts a fresh twin)
    keep_max: int = 500                        # ~140 KB each with four metrics and 1,000 samples of history


@dataclass(frozen=True, slots=True)
class TwinRule:
    """One ``twins:`` entry: a single twin, or a family of discovered twins."""

    name: str
    metrics: Mapping[str, str]                  # metric name -> PromQL (may hold $label placeholders)
    system_type: SystemType = SystemType.OTHER
    discover: str | None = None                 # PromQL; one twin per returned series
    name_labels: tuple[str, ...] = ()           # which discovery labels name a twin (default: all)
    request_rate: str | None = None             # PromQL for throughput (requests/s), for the simulation
    expected: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    thresholds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    limits: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    horizons_s: tuple[float, ...] = DEFAULT_HORIZONS_S
    # which way a divergence hurts per metric (up / down / both), and the values a custom metric can take
    directions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=lambda: MappingProxyType({}))
    replicas: int | None = None
    workers: int | None = None
    auto_correction: bool = True
    line: int = 0                               # where the rule starts in the file
    # replica recommendations (twin_recommended_replicas): on when max_replicas is set
    min_replicas: int = 1
    max_replicas: int | None = None
    scale_down_stabilisation_s: float = DEFAULT_SCALE_DOWN_STABILISATION_S
    scale_quantile: float = DEFAULT_QUANTILE    # the forecast quantile of the request rate replicas are sized for

    def queries(self) -> dict[str, str]:
        """Every metric the scheduler queries for this twin (``request_rate`` included)."""
        out = dict(self.metrics)
        if self.request_rate is not None:
            out["request_rate"] = self.request_rate
        return out


@dataclass(frozen=True, slots=True)
class ScenarioRule:
    """A standing what-if scenario, re-run every ``every_s`` for one twin rule (or all)."""

    name: str
    twin: str                                   # a twin rule name, or "all"
    every_s: float
    scenario: Mapping[str, Any]
    line: int = 0


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    path: str
    prometheus: PrometheusConfig
    server: ServerConfig
    storage: StorageConfig
    twins: tuple[TwinRule, ...]
    scenarios: tuple[ScenarioRule, ...] = ()
    interval_s: float = 15.0
    backfill_s: float = 3600.0
    backfill_max_samples: int = DEFAULT_BACKFILL_MAX_SAMPLES   # series × steps the backfill asks for at most
    retired: RetiredConfig = field(default_factory=RetiredConfig)
    export: ExportOptions = field(default_factory=ExportOptions)   # what /metrics carries beyond the default
    limits: LimitsConfig = field(default_factory=LimitsConfig)      # the most twins, series and answer bytes
    shard: ShardConfig = field(default_factory=ShardConfig)         # which twins of a sharded set are this one's

    @property
    def horizons_s(self) -> tuple[float, ...]:
        """Every horizon any twin asks for (the engine forecasts all of them for all twins)."""
        hs = sorted({h for t in self.twins for h in t.horizons_s})
        return tuple(hs) if hs else DEFAULT_HORIZONS_S

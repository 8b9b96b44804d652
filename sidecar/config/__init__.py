"""The YAML rules: parsed once, validated completely, frozen.

The rules are the user's contract, so a mistake must be found before the
service starts and reported where it is: every ``ConfigError`` names the
file, the line and the key and says what was expected. The YAML is composed
into a node tree (which keeps line numbers) and read by a small walker that
also refuses unknown and duplicate keys, rather than loaded into plain dicts
where both would be silently lost.

Secrets (bearer token, basic-auth password, API token) are only ever read
from files, held as :class:`SecretFile` whose ``repr`` never shows the
content, and re-read when the file changes (Kubernetes rotates projected
tokens in place).

One concern per module, each importing only modules before it in this list:
``maxima`` (the largest value of each key), ``secret`` (:class:`SecretFile`),
``records`` (the frozen records and their defaults), ``reader`` (the
position-aware YAML walker and the value checks), ``promql`` (queries checked
by the loop guard), ``discovery`` (``$label``, ``name_labels``, ``retired:``),
the sections ``prometheus``, ``server``, ``limits``, ``storage``, ``shard``,
``export``, a twin rule's ``per_metric`` mappings and ``scaling``, ``twins``,
``scenarios``, and ``load`` (the file read whole: :func:`load_config`).

Example::

    cfg = load_config("config/example.yaml")
    cfg.interval_s, [t.name for t in cfg.twins]
"""

from __future__ import annotations

from .discovery import placeholders_in
from .load import check_config, load_config, parse_config
from .maxima import (
    HISTORY_MIN_SAMPLES,
    MAX_BACKFILL_S,
    MAX_BACKFILL_STEPS,
    MAX_BODY_BYTES,
    MAX_BUFFER_ITEMS,
    MAX_COMMIT_WAIT_S,
    MAX_CONCURRENCY,
    MAX_EVERY_S,
    MAX_FORECAST_INTERVAL_S,
    MAX_HISTORY_S,
    MAX_HORIZON_S,
    MAX_INTERVAL_S,
    MAX_KEEP_FOR_S,
    MAX_KEEP_MAX,
    MAX_LIMIT_SERIES,
    MAX_LIMIT_TWINS,
    MAX_MODEL_STATE_INTERVAL_S,
    MAX_REPLICAS,
    MAX_RESPONSE_BYTES,
    MAX_RETENTION_DAYS,
    MAX_RETENTION_MIN_AGE_S,
    MAX_RETENTION_SNAPSHOTS,
    MAX_SCALE_DOWN_STABILISATION_S,
    MAX_TIMEOUT_S,
    MAX_YAML_DEPTH,
)
from .promql import parsed_result_type_problem, result_type_problem
from .records import (
    DEFAULT_HORIZONS_S,
    DEFAULT_SCALE_DOWN_STABILISATION_S,
    BasicAuth,
    LimitsConfig,
    PrometheusConfig,
    RetiredConfig,
    ScenarioRule,
    ServerConfig,
    ShardConfig,
    SidecarConfig,
    StorageConfig,
    TwinRule,
)
from .scenarios import SCENARIO_TYPES
from .secret import SecretFile
from .shard import MAX_SHARDS, SHARD_COUNT_ENV, SHARD_INDEX_ENV, shard_config

__all__ = [
    "DEFAULT_HORIZONS_S",
    "DEFAULT_SCALE_DOWN_STABILISATION_S",
    "HISTORY_MIN_SAMPLES",
    "MAX_BACKFILL_S",
    "MAX_BACKFILL_STEPS",
    "MAX_BODY_BYTES",
    "MAX_BUFFER_ITEMS",
    "MAX_COMMIT_WAIT_S",
    "MAX_CONCURRENCY",
    "MAX_EVERY_S",
    "MAX_FORECAST_INTERVAL_S",
    "MAX_HISTORY_S",
    "MAX_HORIZON_S",
    "MAX_INTERVAL_S",
    "MAX_KEEP_FOR_S",
    "MAX_KEEP_MAX",
    "MAX_LIMIT_SERIES",
    "MAX_LIMIT_TWINS",
    "MAX_MODEL_STATE_INTERVAL_S",
    "MAX_REPLICAS",
    "MAX_RESPONSE_BYTES",
    "MAX_RETENTION_DAYS",
    "MAX_RETENTION_MIN_AGE_S",
    "MAX_RETENTION_SNAPSHOTS",
    "MAX_SCALE_DOWN_STABILISATION_S",
    "MAX_SHARDS",
    "MAX_TIMEOUT_S",
    "MAX_YAML_DEPTH",
    "SCENARIO_TYPES",
    "SHARD_COUNT_ENV",
    "SHARD_INDEX_ENV",
    "BasicAuth",
    "LimitsConfig",
    "PrometheusConfig",
    "RetiredConfig",
    "ScenarioRule",
    "SecretFile",
    "ServerConfig",
    "ShardConfig",
    "SidecarConfig",
    "StorageConfig",
    "TwinRule",
    "check_config",
    "load_config",
    "parse_config",
    "parsed_result_type_problem",
    "placeholders_in",
    "result_type_problem",
    "shard_config",
]

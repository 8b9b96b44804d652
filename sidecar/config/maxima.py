"""The largest value each key of the rules takes (``config/example.yaml`` names each).

Beyond them a value is a slip (a unit or digits too many: ``interval: 15d``, ``max_body_bytes: 1e32``), never a
setting that works, so the section that reads the key refuses it with the bound in the message.
"""

from __future__ import annotations

#: The longest ``storage.commit_wait``: an API call held longer than a minute looks hung to its client.
MAX_COMMIT_WAIT_S = 60.0

MAX_INTERVAL_S = 3600.0                       # interval
MAX_BACKFILL_S = 30 * 86400.0                 # backfill (Prometheus keeps 15 days by default)
MAX_BACKFILL_SAMPLES = 1_000_000_000         # backfill_max_samples (hours of replay before the first round)
MAX_TIMEOUT_S = 300.0                         # prometheus.timeout
MAX_HORIZON_S = 7 * 86400.0                   # twins[].horizons
MAX_EVERY_S = 86400.0                         # scenarios[].every
MAX_MODEL_STATE_INTERVAL_S = 86400.0          # storage.model_state_interval
MAX_KEEP_FOR_S = 30 * 86400.0                 # retired.keep_for
MAX_RETENTION_DAYS = 3650.0                   # storage.retention_days
MAX_RETENTION_MIN_AGE_S = 365 * 86400.0       # storage.retention_min_age
MAX_RETENTION_SNAPSHOTS = 1_000_000           # storage.retention_snapshots (per twin)
MAX_BUFFER_ITEMS = 10_000_000                 # storage.buffer_max_items
MAX_FORECAST_INTERVAL_S = 86400.0             # storage.forecast_interval
MAX_SAMPLE_INTERVAL_S = 3600.0                # storage.sample_interval (what a crash may lose of the samples)
MAX_LIMIT_TWINS = 10_000_000                  # limits.max_twins
MAX_LIMIT_SERIES = 100_000_000                # limits.max_series
MAX_RESPONSE_BYTES = 16 * 2**30               # limits.max_response_bytes
MAX_HISTORY_S = 7 * 86400.0                   # limits.history
#: Samples the capacity fit needs (`engine.whatif.capacity.MIN_SAMPLES`, which a test holds equal): a
#: ``limits.history`` shorter than this many intervals would leave every what-if and replica advice untrusted.
HISTORY_MIN_SAMPLES = 20
MAX_BODY_BYTES = 64 * 1024 * 1024             # server.max_body_bytes
MAX_CONCURRENCY = 1024                        # prometheus.max_concurrency
MAX_KEEP_MAX = 100_000                        # retired.keep_max
MAX_SCALE_DOWN_STABILISATION_S = 86400.0      # twins[].scale_down_stabilisation
MAX_REPLICAS = 100_000                        # twins[].replicas and twins[].workers (the simulation's bound)
#: Deepest nesting of mappings and lists in a rules file (the rules need 5; the YAML composer recurses per level)
MAX_YAML_DEPTH = 64
#: Longest backfill, in intervals (14 days at 15 s).
MAX_BACKFILL_STEPS = 80_640

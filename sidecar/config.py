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

Example::

    cfg = load_config("config/example.yaml")
    cfg.interval_s, [t.name for t in cfg.twins]
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .contract import ExportOptions
from .engine.expected import check_expected_value, check_limit_value
from .engine.records import SystemType
from .engine.settings import DIRECTIONS, DOMAINS
from .errors import ConfigError, ExpectedStateError, LimitError, ScenarioError
from .units import format_duration, parse_duration

#: Scenario types the engine knows; the simulation validates their parameters.
SCENARIO_TYPES: tuple[str, ...] = ("traffic_spike", "failure_injection", "load_test")
DEFAULT_HORIZONS_S: tuple[float, ...] = (300.0, 900.0, 1800.0, 3600.0)
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TWIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")   # no "@": discovered twins are "<rule>@<labels>"


class SecretFile:
    """A secret read from a file: content never shown, re-read when the file changes.

    >>> SecretFile("/run/secrets/token")     # doctest: +SKIP
    SecretFile('/run/secrets/token')
    """

    __slots__ = ("_mtime", "_value", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime: float | None = None
        self._value = ""

    def read(self) -> str:
        """The current content, stripped of surrounding whitespace; ``OSError`` if unreadable."""
        mtime = os.stat(self.path).st_mtime
        if mtime != self._mtime:
            self._value = Path(self.path).read_text(encoding="utf-8").strip()
            self._mtime = mtime
        return self._value

    def __repr__(self) -> str:
        return f"SecretFile({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretFile) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


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


#: Environment variables that set ``shard:`` (and win over the rules file, as ``DATABASE_URL`` does). The index
#: may be a StatefulSet pod name (``twins-2``): its ordinal is the index.
SHARD_INDEX_ENV = "TWIN_SIDECAR_SHARD_INDEX"
SHARD_COUNT_ENV = "TWIN_SIDECAR_SHARD_COUNT"
#: The most shards: each runs every shared (family) query in full, so thousands would only multiply that cost.
MAX_SHARDS = 1000

#: The longest ``storage.commit_wait``: an API call held longer than a minute looks hung to its client.
MAX_COMMIT_WAIT_S = 60.0

# Upper bounds of the rules' durations and sizes (config/example.yaml names each). Beyond them a value is a
# slip (a unit or digits too many: ``interval: 15d``, ``max_body_bytes: 1e32``), never a setting that works.
MAX_INTERVAL_S = 3600.0                       # interval
MAX_BACKFILL_S = 30 * 86400.0                 # backfill (Prometheus keeps 15 days by default)
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
MAX_LIMIT_TWINS = 10_000_000                  # limits.max_twins
MAX_LIMIT_SERIES = 100_000_000                # limits.max_series
MAX_RESPONSE_BYTES = 16 * 2**30               # limits.max_response_bytes
MAX_HISTORY_S = 7 * 86400.0                   # limits.history
MAX_BODY_BYTES = 64 * 1024 * 1024             # server.max_body_bytes
MAX_CONCURRENCY = 1024                        # prometheus.max_concurrency
MAX_KEEP_MAX = 100_000                        # retired.keep_max
DEFAULT_SCALE_DOWN_STABILISATION_S = 300.0    # twins[].scale_down_stabilisation (the Kubernetes HPA's default)
MAX_SCALE_DOWN_STABILISATION_S = 86400.0
MAX_REPLICAS = 100_000                        # twins[].replicas and twins[].workers (the simulation's bound)
#: Deepest nesting of mappings and lists in a rules file (the rules need 5; the YAML composer recurses per level)
MAX_YAML_DEPTH = 64


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
    retired: RetiredConfig = field(default_factory=RetiredConfig)
    export: ExportOptions = field(default_factory=ExportOptions)   # what /metrics carries beyond the default
    limits: LimitsConfig = field(default_factory=LimitsConfig)      # the most twins, series and answer bytes
    shard: ShardConfig = field(default_factory=ShardConfig)         # which twins of a sharded set are this one's

    @property
    def horizons_s(self) -> tuple[float, ...]:
        """Every horizon any twin asks for (the engine forecasts all of them for all twins)."""
        hs = sorted({h for t in self.twins for h in t.horizons_s})
        return tuple(hs) if hs else DEFAULT_HORIZONS_S


# --------------------------------------------------------------------------- the node walker


class _Reader:
    """Reads one YAML mapping node, remembering which keys were used."""

    def __init__(self, path: str, node: yaml.Node, where: str) -> None:
        self.path = path
        self.where = where
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, where or "(top level)", f"expected a mapping, got {_kind(node)}")
        self.node = node
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.error(k, where, "keys must be plain strings")
            if k.value in self.items:
                first = self.items[k.value][0].start_mark.line + 1
                raise self.error(k, self.key(k.value), f"duplicate key (first given on line {first})")
            self.items[k.value] = (k, v)
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, node: yaml.Node, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, line=node.start_mark.line + 1, key=key)

    def node_of(self, name: str) -> yaml.Node | None:
        self.used.add(name)
        item = self.items.get(name)
        if item is None or _is_null(item[1]):
            return None
        return item[1]

    def finish(self, allowed: tuple[str, ...] | None = None) -> None:
        """Refuse keys nobody asked for (a typo must not silently mean "default")."""
        for name, (k, _) in self.items.items():
            if name not in self.used:
                known = ", ".join(sorted(self.used if allowed is None else allowed))
                raise self.error(k, self.key(name), f"unknown key (known keys here: {known})")

    # typed getters -------------------------------------------------------------------------

    def str_(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        node = self.node_of(name)
        if node is None:
            if required:
                raise self.error(self.node, self.key(name), "required key is missing (expected a string)")
            return default
        value = _scalar(node)
        if not isinstance(value, str) or not value.strip():
            raise self.error(node, self.key(name), f"expected a non-empty string, got {_show(node)}")
        return value

    def req_str(self, name: str) -> str:
        value = self.str_(name, required=True)
        assert value is not None
        return value

    def bool_(self, name: str, default: bool) -> bool:
        node = self.node_of(name)
        if node is None:
            return default
        value = _scalar(node)
        if not isinstance(value, bool):
            raise self.error(node, self.key(name), f"expected true or false, got {_show(node)}")
        return value

    def int_(self, name: str, default: int | None, *, minimum: int = 1, maximum: int) -> int | None:
        node = self.node_of(name)
        if node is None:
            return default
        value = _scalar(node)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(node, self.key(name), f"expected an integer >= {minimum} (at most {maximum:,}), "
                                                   f"got {_show(node)}")
        return value

    def number(self, name: str, default: float, *, positive: bool = True, maximum: float = math.inf) -> float:
        node = self.node_of(name)
        if node is None:
            return default
        value = _number(self, node, self.key(name), positive=positive)
        if value > maximum:
            raise self.error(node, self.key(name), f"expected at most {maximum:g}, got {_show(node)}")
        return value

    def duration(self, name: str, default: float, *, maximum: float, allow_zero: bool = False) -> float:
        node = self.node_of(name)
        if node is None:
            return default
        return _duration(self, node, self.key(name), maximum=maximum, allow_zero=allow_zero)

    def mapping(self, name: str) -> _Reader | None:
        node = self.node_of(name)
        return None if node is None else _Reader(self.path, node, self.key(name))

    def sequence(self, name: str) -> Iterator[tuple[int, yaml.Node]]:
        node = self.node_of(name)
        if node is None:
            return iter(())
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, self.key(name), f"expected a list, got {_kind(node)}")
        return enumerate(node.value)

    def secret_file(self, name: str) -> SecretFile | None:
        path = self.str_(name)
        if path is None:
            return None
        node = self.items[name][1]
        secret = SecretFile(_resolve(self.path, path))
        try:
            if not secret.read():
                raise self.error(node, self.key(name),
                                 f"the file {path!r} is empty (expected the secret in it)")
        except OSError as exc:
            raise self.error(node, self.key(name),
                             f"cannot read the file {path!r} ({exc.strerror or exc})") from exc
        return secret


_LOADER = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return node  # callers compare types; a non-scalar is never the expected scalar
    try:
        return _LOADER.construct_object(node, deep=True)
    except (ValueError, yaml.YAMLError):
        # an integer of more digits than Python converts (4,300), a malformed timestamp or !!binary: the
        # text as written, which no typed getter takes, so the error names the key with its value
        return node.value


def _clip(text: str, most: int = 60) -> str:
    """A value as an error shows it: whole when short, else its start and its length."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text):,} characters)"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _show(node)


def _show(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        return _kind(node)
    value = _scalar(node)
    return f"{type(value).__name__} {_clip(repr(node.value))}"


def _number(r: _Reader, node: yaml.Node, key: str, *, positive: bool) -> float:
    value = _scalar(node)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise r.error(node, key, f"expected a number, got {_show(node)}")
    if positive and value <= 0:
        raise r.error(node, key, f"expected a number > 0, got {value}")
    return float(value)


def _duration(r: _Reader, node: yaml.Node, key: str, *, maximum: float, allow_zero: bool = False) -> float:
    """A duration from ``0`` (``allow_zero``) or above 0 up to ``maximum`` seconds; the error shows the text
    as written (an absurd value is not worth spelling out in seconds)."""
    value = _scalar(node)
    if allow_zero and (value == 0 or value == "0") and not isinstance(value, bool):
        return 0.0
    if not isinstance(value, str):
        raise r.error(node, key, f"expected a duration like 15s, 5m or 1h, got {_show(node)}")
    try:
        seconds = parse_duration(value.strip())
    except ValueError:
        raise r.error(node, key, f"expected a duration like 15s, 5m or 1h, got {_clip(repr(value))}") from None
    if seconds <= 0 and not allow_zero:
        raise r.error(node, key, "expected a duration > 0")
    if seconds > maximum:
        raise r.error(node, key, f"expected at most {format_duration(maximum)}, got {_clip(value.strip())}")
    return seconds


def _resolve(config_path: str, path: str) -> str:
    """Relative paths in the rules are relative to the rules file, not to the working directory."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(config_path).resolve().parent / p)


# --------------------------------------------------------------------------- sections


def _prometheus(r: _Reader | None) -> PrometheusConfig:
    if r is None:
        return PrometheusConfig()
    d = PrometheusConfig()
    url = r.str_("url", d.url)
    assert url is not None
    if not re.match(r"https?://[^/\s]+", url):
        raise r.error(r.items["url"][1], r.key("url"), f"expected an http:// or https:// URL, got {url!r}")
    headers: dict[str, str] = {}
    hr = r.mapping("headers")
    if hr is not None:
        for name, (k, v) in hr.items.items():
            hr.used.add(name)
            value = _scalar(v)
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise hr.error(v, hr.key(name), f"expected a string header value, got {_show(v)}")
            if name.lower() == "authorization":
                raise hr.error(k, hr.key(name), "put credentials in bearer_token_file or basic_auth, "
                                                "not in a header (headers may be logged)")
            headers[name] = str(value)
    basic: BasicAuth | None = None
    br = r.mapping("basic_auth")
    if br is not None:
        username = br.req_str("username")
        password = br.secret_file("password_file")
        if password is None:
            raise br.error(br.node, br.key("password_file"), "required key is missing (expected a file path)")
        br.finish()
        basic = BasicAuth(username, password)
    bearer = r.secret_file("bearer_token_file")
    if bearer is not None and basic is not None:
        raise r.error(r.items["bearer_token_file"][0], r.key("bearer_token_file"),
                      "use either bearer_token_file or basic_auth, not both")
    ca = r.str_("tls_ca_file")
    if ca is not None:
        ca = _resolve(r.path, ca)
        if not os.path.isfile(ca):
            raise r.error(r.items["tls_ca_file"][1], r.key("tls_ca_file"), f"no such file: {ca}")
    out = PrometheusConfig(
        url=url.rstrip("/"), timeout_s=r.duration("timeout", d.timeout_s, maximum=MAX_TIMEOUT_S),
        headers=MappingProxyType(headers), bearer_token_file=bearer, basic_auth=basic, tls_ca_file=ca,
        max_concurrency=r.int_("max_concurrency", d.max_concurrency, maximum=MAX_CONCURRENCY) or d.max_concurrency,
        accept_warnings=r.bool_("accept_warnings", False), self_labels=_self_labels(r))
    r.finish()
    return out


def _self_labels(r: _Reader) -> tuple[Mapping[str, str], ...]:
    """``self_labels``: one mapping of label name -> value, or a list of them (one per scrape identity)."""
    node = r.node_of("self_labels")
    if node is None:
        return ()
    if isinstance(node, yaml.SequenceNode):
        return tuple(_label_set(r, n, r.key(f"self_labels[{i}]")) for i, n in enumerate(node.value))
    return (_label_set(r, node, r.key("self_labels")),)


def _label_set(r: _Reader, node: yaml.Node, key: str) -> Mapping[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise r.error(node, key, f"expected a mapping of label name -> value like {{job: twin-sidecar}}, "
                                 f"got {_kind(node)}")
    m = _Reader(r.path, node, key)
    if not m.items:
        raise m.error(node, key, "expected at least one label (an empty set would match every series)")
    out: dict[str, str] = {}
    for name, (k, v) in m.items.items():
        m.used.add(name)
        if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise m.error(k, m.key(name), "expected a Prometheus label name like job or namespace "
                                          "(letters, digits, _; not starting with __)")
        value = _scalar(v)
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value):
            raise m.error(v, m.key(name), f"expected a non-empty label value, got {_show(v)}")
        out[name] = str(value)
    return MappingProxyType(out)


def _server(r: _Reader | None) -> ServerConfig:
    if r is None:
        return ServerConfig()
    d = ServerConfig()
    host, port = d.host, d.port
    listen = r.str_("listen")
    if listen is not None:
        m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", listen.strip())
        if m is None or not 0 <= int(m.group(2)) <= 65535:
            raise r.error(r.items["listen"][1], r.key("listen"), f"expected HOST:PORT, got {listen!r}")
        host, port = m.group(1) or "0.0.0.0", int(m.group(2))
    out = ServerConfig(host=host, port=port, auth_token_file=r.secret_file("auth_token_file"),
                       max_body_bytes=r.int_("max_body_bytes", d.max_body_bytes, minimum=1024,
                                             maximum=MAX_BODY_BYTES) or d.max_body_bytes)
    r.finish()
    return out


def _storage(r: _Reader | None, env: Mapping[str, str]) -> StorageConfig:
    d = StorageConfig()
    if r is None:
        return StorageConfig(url=env.get("DATABASE_URL") or None)
    path = r.str_("path", d.path)
    assert path is not None
    url = r.str_("url")
    if url is not None and not re.match(r"postgres(ql)?://", url):
        raise r.error(r.items["url"][1], r.key("url"), "expected a postgresql:// URL")
    out = StorageConfig(
        path=path if path == ":memory:" else _resolve(r.path, path),
        url=env.get("DATABASE_URL") or url,
        retention_days=r.number("retention_days", d.retention_days, maximum=MAX_RETENTION_DAYS),
        retention_snapshots=r.int_("retention_snapshots", d.retention_snapshots, maximum=MAX_RETENTION_SNAPSHOTS)
        or d.retention_snapshots,
        buffer_max_items=r.int_("buffer_max_items", d.buffer_max_items, minimum=100, maximum=MAX_BUFFER_ITEMS)
        or d.buffer_max_items,
        model_state_interval_s=r.duration("model_state_interval", d.model_state_interval_s,
                                          maximum=MAX_MODEL_STATE_INTERVAL_S),
        forecast_interval_s=r.duration("forecast_interval", d.forecast_interval_s, maximum=MAX_FORECAST_INTERVAL_S),
        commit_wait_s=r.duration("commit_wait", d.commit_wait_s, maximum=MAX_COMMIT_WAIT_S, allow_zero=True),
        retention_min_age_s=r.duration("retention_min_age", d.retention_min_age_s, maximum=MAX_RETENTION_MIN_AGE_S,
                                       allow_zero=True))
    if out.retention_min_age_s > out.retention_days * 86400.0:
        node = r.items["retention_min_age"][1] if "retention_min_age" in r.items else r.items["retention_days"][1]
        key = r.key("retention_min_age" if "retention_min_age" in r.items else "retention_days")
        raise r.error(node, key, f"retention_min_age ({format_duration(out.retention_min_age_s)}) is longer than "
                                 f"retention_days ({out.retention_days:g}): lower the one or raise the other")
    if out.url is None and "path" in r.items and out.path != ":memory:":
        problem = _sqlite_path_problem(Path(out.path))
        if problem is not None:
            raise r.error(r.items["path"][1], r.key("path"), problem)
    r.finish()
    return out


def _sqlite_path_problem(path: Path) -> str | None:
    """Why the SQLite store could not open ``path``, or ``None``: checked at load, since a store that cannot
    open only shows as a service running with its store down (snapshots kept in memory, then lost)."""
    if path.is_dir():
        return f"{path} is a directory; expected the database file's path, e.g. {path / 'twin-sidecar.db'}"
    if path.exists() and not path.is_file():
        return f"{path} is not a regular file"
    parent = path.parent
    if not parent.is_dir():
        return f"the directory {parent} does not exist (create it, or put the database in an existing directory)"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the directory {parent} is not writable (SQLite writes its journal beside the database)"
    return None


def _limits(r: _Reader | None) -> LimitsConfig:
    d = LimitsConfig()
    if r is None:
        return d
    out = LimitsConfig(
        max_twins=r.int_("max_twins", d.max_twins, maximum=MAX_LIMIT_TWINS) or d.max_twins,
        max_series=r.int_("max_series", d.max_series, maximum=MAX_LIMIT_SERIES) or d.max_series,
        max_response_bytes=r.int_("max_response_bytes", d.max_response_bytes, minimum=1024,
                                  maximum=MAX_RESPONSE_BYTES) or d.max_response_bytes,
        history_s=r.duration("history", d.history_s, maximum=MAX_HISTORY_S))
    r.finish()
    return out


def _retired(r: _Reader | None) -> RetiredConfig:
    if r is None:
        return RetiredConfig()
    d = RetiredConfig()
    keep_max = r.int_("keep_max", d.keep_max, minimum=0, maximum=MAX_KEEP_MAX)
    assert keep_max is not None
    out = RetiredConfig(keep_for_s=r.duration("keep_for", d.keep_for_s, maximum=MAX_KEEP_FOR_S, allow_zero=True),
                        keep_max=keep_max)
    r.finish()
    return out


def shard_config(index: int | str | None, count: int | str | None, *, where: str,
                 default: ShardConfig = ShardConfig()) -> ShardConfig:
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


def _shard(r: _Reader | None, env: Mapping[str, str]) -> ShardConfig:
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


_EXPORT_FLAGS = ("confidence", "actual", "expected", "divergence_ratio", "has_data", "last_sample", "query_errors")
_EXPORT_KEYS = ("all", "horizons", *_EXPORT_FLAGS)


def _export(r: _Reader | None, horizons_s: tuple[float, ...]) -> ExportOptions:
    """The ``export:`` section: one key turns one opt-in family on (``sidecar/contract.py``'s EXPORT_OPTIONS);
    ``horizons`` (a duration, a list of them, or ``all``) must name horizons some twin forecasts."""
    if r is None:
        return ExportOptions()
    base = ExportOptions.everything() if r.bool_("all", False) else ExportOptions()
    flags = {k: r.bool_(k, bool(getattr(base, k))) for k in _EXPORT_FLAGS}
    chosen: tuple[float, ...] | None = base.horizons_s
    all_horizons = base.all_horizons
    node = r.node_of("horizons")
    if node is not None:
        all_horizons = isinstance(node, yaml.ScalarNode) and _scalar(node) == "all"
        if not all_horizons:
            listed = isinstance(node, yaml.SequenceNode)
            items = list(node.value) if listed else [node]
            if not items:
                raise r.error(node, r.key("horizons"), "expected a duration, a non-empty list of them, or all")
            picked: list[float] = []
            for i, n in enumerate(items):
                key = r.key(f"horizons[{i}]" if listed else "horizons")
                h = _duration(r, n, key, maximum=MAX_HORIZON_S)
                if h not in horizons_s:
                    raise r.error(n, key, f"{format_duration(h)} is no twin's horizon (the twins forecast "
                                          f"{', '.join(map(format_duration, horizons_s))})")
                picked.append(h)
            chosen = tuple(sorted(set(picked)))
    r.finish(_EXPORT_KEYS)
    return ExportOptions(horizons_s=None if all_horizons else chosen, all_horizons=all_horizons, **flags)


def _promql(r: _Reader, name: str, *, required: bool = False) -> str | None:
    """A PromQL string, checked here so the error carries the line: parsed once, by the loop guard (which
    checks the names), and its tree handed on for the result type."""
    from . import loopguard  # late: loopguard imports nothing from here, but keep config importable alone

    text = r.str_(name, required=required)
    if text is None:
        return None
    node = r.items[name][1]
    try:
        expr = loopguard.check_query(text)
    except loopguard.LoopError as exc:
        raise r.error(node, r.key(name), str(exc)) from exc
    except ValueError as exc:
        raise r.error(node, r.key(name), f"expected valid PromQL: {exc}") from exc
    problem = parsed_result_type_problem(expr)
    if problem is not None:
        raise r.error(node, r.key(name), problem)
    return text


def result_type_problem(query: str) -> str | None:
    """Why ``query`` can never give the numbers per series a twin needs, or ``None`` when it can.

    The sidecar reads instant vectors (or scalars) and backfills with range queries, which Prometheus
    only accepts for those two types. A string literal (``'"hello"'``) or a range vector (``up[5m]``)
    parses, but every round would fail on it at run time; the type is known from the syntax tree alone.
    """
    from . import loopguard  # late, like _promql's

    return parsed_result_type_problem(loopguard.parse_query(query))


def parsed_result_type_problem(expr: Any) -> str | None:
    """:func:`result_type_problem` of a query already parsed (``loopguard.parse_query``/``check_query``)."""
    import promql_parser  # late, like the loop guard that already needs it

    while isinstance(expr, promql_parser.ParenExpr):
        expr = expr.expr
    kind: str | None = None
    if isinstance(expr, promql_parser.StringLiteral):
        kind = "string"
    elif isinstance(expr, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        kind = "range vector"
    elif isinstance(expr, promql_parser.Call):
        returns = expr.func.return_type
        kind = ("string" if returns == promql_parser.ValueType.String
                else "range vector" if returns == promql_parser.ValueType.Matrix else None)
    if kind is None:
        return None
    hint = ("a string literal is not a measurement" if kind == "string"
            else "wrap it in a function over the range, e.g. rate(...) or avg_over_time(...)")
    return f"expected PromQL returning numbers (an instant vector or a scalar), got a {kind}: {hint}"


def _metric_entries(r: _Reader, name: str, metrics: Mapping[str, str]) -> Iterator[tuple[_Reader, str, yaml.Node]]:
    """(the mapping's reader, metric, value node) of a per-metric mapping of a twin rule, each key checked to be
    one of the twin's metrics (none when the key is absent)."""
    m = r.mapping(name)
    if m is None:
        return
    for metric, (k, v) in m.items.items():
        m.used.add(metric)
        if metric not in metrics:
            raise m.error(k, m.key(metric),
                          f"not one of this twin's metrics (expected one of: {', '.join(sorted(metrics))})")
        yield m, metric, v


def _metric_map(r: _Reader, name: str, metrics: Mapping[str, str], *, positive: bool,
                expected: bool = False, limit: bool = False) -> dict[str, float]:
    """metric -> number for this twin's metrics; ``expected`` values also by the engine's expected-state
    rules (a core metric's cannot be negative), ``limit`` values by its limit rules (a core metric's above 0,
    a share at most its whole), so the file refuses what those rules refuse."""
    out: dict[str, float] = {}
    for m, metric, v in _metric_entries(r, name, metrics):
        out[metric] = _number(m, v, m.key(metric), positive=positive)
        if expected:
            try:
                check_expected_value(metric, _scalar(v), allow_null=False)
            except ExpectedStateError as exc:
                raise m.error(v, m.key(metric), exc.detail) from exc
        if limit:
            try:
                check_limit_value(metric, _scalar(v))
            except LimitError as exc:
                raise m.error(v, m.key(metric), exc.detail) from exc
    return out


def _directions(r: _Reader, metrics: Mapping[str, str]) -> dict[str, str]:
    """``direction: {metric: up|down|both}``: which way a divergence of each metric hurts."""
    out: dict[str, str] = {}
    for m, metric, v in _metric_entries(r, "direction", metrics):
        value = _scalar(v)
        if value not in DIRECTIONS:
            raise m.error(v, m.key(metric), f"expected one of {', '.join(DIRECTIONS)}, got {_show(v)}")
        out[metric] = str(value)
    return out


def _bounds(r: _Reader, metrics: Mapping[str, str]) -> dict[str, tuple[float | None, float | None]]:
    """``bounds: {metric: [low, high]}`` for custom metrics (null: open on that side)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for m, metric, v in _metric_entries(r, "bounds", metrics):
        if metric in DOMAINS:
            lo, hi = DOMAINS[metric]
            raise m.error(v, m.key(metric), f"{metric} has a fixed domain ({lo:g} to {hi:g}); bounds are for "
                                            "custom metrics")
        if not isinstance(v, yaml.SequenceNode) or len(v.value) != 2:
            raise m.error(v, m.key(metric), f"expected [low, high] (null for an open side), got {_show(v)}")
        ends: list[float | None] = []
        for n in v.value:
            x = _scalar(n)
            if x is None:
                ends.append(None)
            elif isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(float(x)):
                raise m.error(n, m.key(metric), f"expected a finite number or null, got {_show(n)}")
            else:
                ends.append(float(x))
        if ends[0] is not None and ends[1] is not None and not ends[0] < ends[1]:
            raise m.error(v, m.key(metric), f"expected low < high, got [{ends[0]:g}, {ends[1]:g}]")
        out[metric] = (ends[0], ends[1])
    return out


def _twin(path: str, node: yaml.Node, index: int) -> TwinRule:
    r = _Reader(path, node, f"twins[{index}]")
    name = r.req_str("name")
    if not _TWIN_NAME.fullmatch(name):
        raise r.error(r.items["name"][1], r.key("name"),
                      "expected a name of letters, digits and . _ - : (it is a label value and a URL part)")
    stype = r.str_("system_type", SystemType.OTHER.value) or SystemType.OTHER.value
    try:
        system_type = SystemType(stype)
    except ValueError:
        raise r.error(r.items["system_type"][1], r.key("system_type"),
                      f"expected one of {', '.join(t.value for t in SystemType)}, got {stype!r}") from None
    discover = _promql(r, "discover")
    mr = r.mapping("metrics")
    if mr is None or not mr.items:
        raise r.error(r.items["metrics"][1] if "metrics" in r.items else r.node, r.key("metrics"),
                      "required: a mapping of metric name -> PromQL, with at least one metric")
    metrics: dict[str, str] = {}
    for metric in mr.items:
        if not _METRIC_NAME.fullmatch(metric):
            raise mr.error(mr.items[metric][0], mr.key(metric), "expected a metric name like cpu_usage")
        query = _promql(mr, metric, required=True)
        assert query is not None
        metrics[metric] = query
    request_rate = _promql(r, "request_rate")
    if request_rate is not None and "request_rate" in metrics:
        raise r.error(r.items["request_rate"][0], r.key("request_rate"),
                      "request_rate is given both here and under metrics; keep one")
    placeholders = {p for q in [*metrics.values(), request_rate or ""] for p in placeholders_in(q)}
    if placeholders and discover is None:
        raise r.error(r.node, r.key("metrics"), f"uses ${sorted(placeholders)[0]} but the twin has no "
                                                "`discover` query to take label values from")
    name_labels: list[str] = []
    for i, n in r.sequence("name_labels"):
        value = _scalar(n)
        if not isinstance(value, str) or not _LABEL_NAME.fullmatch(value):
            raise r.error(n, r.key(f"name_labels[{i}]"), f"expected a label name, got {_show(n)}")
        name_labels.append(value)
    if name_labels and discover is None:
        raise r.error(r.items["name_labels"][0], r.key("name_labels"), "only meaningful with `discover`")
    all_metrics = {**metrics, **({"request_rate": request_rate} if request_rate else {})}
    horizons: list[float] = []
    for i, n in r.sequence("horizons"):
        horizons.append(_duration(r, n, r.key(f"horizons[{i}]"), maximum=MAX_HORIZON_S))
    if "horizons" in r.items and not horizons:
        raise r.error(r.items["horizons"][1], r.key("horizons"), "expected a non-empty list of durations")
    rule = TwinRule(
        name=name, metrics=MappingProxyType(metrics), system_type=system_type, discover=discover,
        name_labels=tuple(name_labels), request_rate=request_rate,
        expected=MappingProxyType(_metric_map(r, "expected", all_metrics, positive=False, expected=True)),
        thresholds=MappingProxyType(_metric_map(r, "thresholds", all_metrics, positive=True)),
        limits=MappingProxyType(_metric_map(r, "limits", all_metrics, positive=False, limit=True)),
        horizons_s=tuple(sorted(set(horizons))) or DEFAULT_HORIZONS_S,
        directions=MappingProxyType(_directions(r, all_metrics)), bounds=MappingProxyType(_bounds(r, all_metrics)),
        replicas=r.int_("replicas", None, maximum=MAX_REPLICAS), workers=r.int_("workers", None, maximum=MAX_REPLICAS),
        auto_correction=r.bool_("auto_correction", True), line=node.start_mark.line + 1,
        **_scaling(r, workers="workers" in r.items, request_rate="request_rate" in all_metrics))
    r.finish()
    return rule


def _scaling(r: _Reader, *, workers: bool, request_rate: bool) -> dict[str, Any]:
    """``min_replicas``, ``max_replicas`` and ``scale_down_stabilisation`` of a twin rule (replica recommendations)."""
    top = r.int_("max_replicas", None, maximum=MAX_REPLICAS)
    if top is None:
        r.used.update(("min_replicas", "scale_down_stabilisation"))     # known keys, listed on a typo
        for key in ("min_replicas", "scale_down_stabilisation"):
            if key in r.items:
                raise r.error(r.items[key][0], r.key(key), "only meaningful with `max_replicas` (which turns replica "
                                                           "recommendations on)")
        return {}
    for needed, have in (("workers", workers), ("request_rate", request_rate)):
        if not have:
            raise r.error(r.items["max_replicas"][0], r.key("max_replicas"),
                          f"replica recommendations need `{needed}` (the capacity of one replica is fitted from "
                          "its request rate and its workers)")
    low = r.int_("min_replicas", 1, maximum=MAX_REPLICAS)
    assert low is not None
    if low > top:
        raise r.error(r.items["min_replicas"][1], r.key("min_replicas"),
                      f"expected at most max_replicas ({top}), got {low}")
    window = r.duration("scale_down_stabilisation", DEFAULT_SCALE_DOWN_STABILISATION_S,
                        maximum=MAX_SCALE_DOWN_STABILISATION_S, allow_zero=True)
    return {"min_replicas": low, "max_replicas": top, "scale_down_stabilisation_s": window}


def _drives_itself(rule: TwinRule, identities: Sequence[Mapping[str, str]]) -> Mapping[str, str] | None:
    """The sidecar's own scrape identity a scaled twin's queries select, if any: a twin never drives the
    sidecar that computes its recommendation (scaling it would move the numbers the scaling is based on)."""
    for ident in identities:
        if ident and any(all(re.search(rf'\b{re.escape(k)}\s*=~?\s*"{re.escape(v)}"', q) for k, v in ident.items())
                         for q in rule.queries().values()):
            return ident
    return None


def _scenario(path: str, node: yaml.Node, index: int, twins: Mapping[str, TwinRule]) -> ScenarioRule:
    r = _Reader(path, node, f"scenarios[{index}]")
    twin_names = set(twins)
    name = r.req_str("name")
    if not _METRIC_NAME.fullmatch(name):
        raise r.error(r.items["name"][1], r.key("name"), "expected a name like spike_5x (letters, digits, _)")
    twin = r.str_("twin", "all")
    assert twin is not None
    if twin != "all" and twin not in twin_names:
        raise r.error(r.items["twin"][1], r.key("twin"),
                      f"no twin rule named {twin!r} "
                      f"(expected \"all\" or one of: {', '.join(sorted(twin_names))})")
    every = r.duration("every", 300.0, maximum=MAX_EVERY_S)
    sn = r.node_of("scenario")
    if sn is None:
        raise r.error(r.node, r.key("scenario"), "required: a mapping with a `type` and its parameters")
    sr = _Reader(path, sn, r.key("scenario"))
    stype = sr.req_str("type")
    if stype not in SCENARIO_TYPES:
        raise sr.error(sr.items["type"][1], sr.key("type"),
                       f"expected one of {', '.join(SCENARIO_TYPES)}, got {stype!r}")
    params: dict[str, Any] = {"type": stype}
    for pname, (_, v) in sr.items.items():
        if pname == "type":
            continue
        value = _scalar(v)
        if not isinstance(v, yaml.ScalarNode) or value is None:
            raise sr.error(v, sr.key(pname), f"expected a number, string or boolean, got {_kind(v)}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2 ** 63:
            raise sr.error(v, sr.key(pname), f"expected a number of a sensible size, got {len(str(value))} digits")
        params[pname] = value
    _check_scenario(sr, params, [t for t in twins.values() if twin in ("all", t.name)])
    r.finish()
    return ScenarioRule(name=name, twin=twin, every_s=every, scenario=MappingProxyType(params),
                        line=node.start_mark.line + 1)


def _check_scenario(sr: _Reader, params: Mapping[str, Any], rules: list[TwinRule]) -> None:
    """Validate the parameters with the simulation's own parser, so a typo or a bad value fails here
    rather than every round (the scheduler would log ``standing scenario failed`` and export nothing).

    Checked once on its own (unknown keys, ranges), then for each twin rule it runs on, with that rule's
    ``replicas``, since whether ``replicas_lost`` leaves a replica standing depends on the twin.
    """
    from .engine.whatif.scenario import parse_scenario  # late: only when a rules file has a scenario

    def fail(exc: ScenarioError, context: str = "") -> ConfigError:
        # the key the error names, from the error itself (a key the file does not have: the whole mapping)
        field = exc.field if exc.field in sr.items else None
        node = sr.items[field][1] if field is not None else sr.node
        key = sr.key(field) if field is not None else sr.where
        return sr.error(node, key, f"{exc}{context}")

    try:   # more replicas than replicas_lost can name: only what is wrong whatever the twin shows here
        parse_scenario(params, replicas=100_001)
    except ScenarioError as exc:
        raise fail(exc) from exc
    for rule in rules:
        try:
            parse_scenario(params, replicas=rule.replicas)
        except ScenarioError as exc:
            raise fail(exc, f" (for twin rule {rule.name!r}, replicas: {rule.replicas or 1})") from exc


#: Longest backfill, in intervals (14 days at 15 s).
MAX_BACKFILL_STEPS = 80_640


_TOP_KEYS = ("prometheus", "interval", "backfill", "server", "storage", "retired", "twins", "scenarios", "export",
             "limits", "shard")


def placeholders_in(query: str) -> list[str]:
    """The ``$label`` / ``${label}`` names a discovered twin's query refers to."""
    return [a or b for a, b in _PLACEHOLDER.findall(query)]


_PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _check_depth(text: str, path: str) -> None:
    """Refuse mappings and lists nested deeper than ``MAX_YAML_DEPTH``, at the line where it happens.

    The composer builds the node tree recursively, a level of Python stack per level of nesting, so a
    few hundred ``[`` end in a ``RecursionError``; the parser's events come from a state machine without
    recursion, and counting them costs one more pass over a small file.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                mark = event.start_mark
                raise ConfigError(f"nested more than {MAX_YAML_DEPTH} levels deep (mappings and lists); the rules "
                                  "need a handful", path=path, line=None if mark is None else mark.line + 1)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def parse_config(text: str, *, path: str = "<string>", env: Mapping[str, str] | None = None) -> SidecarConfig:
    """Validate rules given as text (``path`` only names them in errors and anchors relative paths)."""
    env = os.environ if env is None else env
    try:
        _check_depth(text, path)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"not valid YAML: {exc.problem or exc}", path=path, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path) from exc
    if root is None:
        raise ConfigError("the file is empty (expected at least a `twins:` list)", path=path, line=1)
    r = _Reader(path, root, "")
    prometheus = _prometheus(r.mapping("prometheus"))
    interval = r.duration("interval", 15.0, maximum=MAX_INTERVAL_S)
    if interval < 1.0:
        raise r.error(r.items["interval"][1], "interval", "expected at least 1s")
    backfill = r.duration("backfill", 3600.0, maximum=MAX_BACKFILL_S, allow_zero=True)
    if backfill / interval > MAX_BACKFILL_STEPS:
        # split into 10,000-step requests a long backfill is fetched, but each step is a tick of every model:
        # 30 days at 1 s was 260 requests and 2.6 million ticks before the first round
        raise r.error(r.items["backfill"][1], "backfill",
                      f"at most {MAX_BACKFILL_STEPS:,} intervals ({format_duration(MAX_BACKFILL_STEPS * interval)} at "
                      f"{format_duration(interval)}), got {backfill / interval:,.0f}")
    server = _server(r.mapping("server"))
    storage = _storage(r.mapping("storage"), env)
    retired = _retired(r.mapping("retired"))
    limits = _limits(r.mapping("limits"))
    shard = _shard(r.mapping("shard"), env)
    if "twins" not in r.items or _is_null(r.items["twins"][1]):
        raise r.error(root, "twins", "required: a list of twin rules")
    twins: list[TwinRule] = []
    seen: dict[str, int] = {}
    for i, n in r.sequence("twins"):
        rule = _twin(path, n, i)
        if rule.name in seen:
            raise ConfigError(f"duplicate twin name {rule.name!r} (first on line {seen[rule.name]})",
                              path=path, line=rule.line, key=f"twins[{i}].name")
        seen[rule.name] = rule.line
        own = _drives_itself(rule, prometheus.self_labels) if rule.max_replicas is not None else None
        if own is not None:
            raise ConfigError(f"twin {rule.name!r} selects the sidecar's own target ({own}) and has max_replicas: a "
                              "twin never drives its own sidecar", path=path, line=rule.line,
                              key=f"twins[{i}].max_replicas")
        twins.append(rule)
    if not twins:
        raise r.error(r.items["twins"][1], "twins", "expected at least one twin rule")
    scenarios: list[ScenarioRule] = []
    names: dict[str, int] = {}
    for i, n in r.sequence("scenarios"):
        sc = _scenario(path, n, i, {t.name: t for t in twins})
        if sc.name in names:
            raise ConfigError(f"duplicate scenario name {sc.name!r} (first on line {names[sc.name]})",
                              path=path, line=sc.line, key=f"scenarios[{i}].name")
        names[sc.name] = sc.line
        scenarios.append(sc)
    export = _export(r.mapping("export"), tuple(sorted({h for t in twins for h in t.horizons_s})))
    r.finish(_TOP_KEYS)
    return SidecarConfig(path=path, prometheus=prometheus, server=server, storage=storage, twins=tuple(twins),
                         scenarios=tuple(scenarios), interval_s=interval, backfill_s=backfill, retired=retired,
                         export=export, limits=limits, shard=shard)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> SidecarConfig:
    """Read and validate the rules file; ``ConfigError`` names file, line and key on any mistake."""
    p = os.fspath(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the rules file ({exc.strerror or exc})", path=p) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("the rules file is not UTF-8 text", path=p) from exc
    return parse_config(text, path=p, env=env)


def check_config(path: str | os.PathLike[str]) -> list[str]:
    """What ``twin-sidecar check-config`` prints on success: one line per rule. ``ConfigError`` otherwise."""
    cfg = load_config(path)
    lines = [f"{cfg.path}: OK: {len(cfg.twins)} twin rule(s), {len(cfg.scenarios)} scenario(s), "
             f"interval {format_duration(cfg.interval_s)}, prometheus {cfg.prometheus.url}"]
    for t in cfg.twins:
        kind = f"discovered by {t.discover!r}" if t.discover else "single twin"
        lines.append(f"  twin {t.name} ({t.system_type.value}, {kind}): "
                     f"{', '.join(t.queries())}; horizons {', '.join(map(format_duration, t.horizons_s))}")
    for s in cfg.scenarios:
        lines.append(f"  scenario {s.name}: {s.scenario['type']} on {s.twin} "
                     f"every {format_duration(s.every_s)}")
    return lines

"""The rules file read whole: the YAML composed (nesting bounded), the top-level keys and every section in
order, the checks across sections, and the one-line summary ``check-config`` prints.

Example::

    cfg = load_config("config/example.yaml")
    cfg.interval_s, [t.name for t in cfg.twins]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..units import format_duration
from .discovery import read_retired
from .export import read_export
from .limits import read_limits
from .maxima import MAX_BACKFILL_S, MAX_BACKFILL_SAMPLES, MAX_BACKFILL_STEPS, MAX_INTERVAL_S, MAX_YAML_DEPTH
from .prometheus import read_prometheus
from .reader import Reader, is_null
from .records import DEFAULT_BACKFILL_MAX_SAMPLES, ScenarioRule, SidecarConfig, TwinRule
from .scaling import drives_itself
from .scenarios import read_scenario
from .server import read_server
from .shard import read_shard
from .storage import read_storage
from .twins import read_twin

_TOP_KEYS = ("prometheus", "interval", "backfill", "backfill_max_samples", "server", "storage", "retired", "twins",
             "scenarios", "export", "limits", "shard")


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
    r = Reader(path, root, "")
    prometheus = read_prometheus(r.mapping("prometheus"))
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
    backfill_max_samples = r.int_("backfill_max_samples", DEFAULT_BACKFILL_MAX_SAMPLES,
                                  maximum=MAX_BACKFILL_SAMPLES) or DEFAULT_BACKFILL_MAX_SAMPLES
    server = read_server(r.mapping("server"))
    storage = read_storage(r.mapping("storage"), env)
    retired = read_retired(r.mapping("retired"))
    limits = read_limits(r.mapping("limits"), interval)
    shard = read_shard(r.mapping("shard"), env)
    if "twins" not in r.items or is_null(r.items["twins"][1]):
        raise r.error(root, "twins", "required: a list of twin rules")
    twins: list[TwinRule] = []
    seen: dict[str, int] = {}
    for i, n in r.sequence("twins"):
        rule = read_twin(path, n, i)
        if rule.name in seen:
            raise ConfigError(f"duplicate twin name {rule.name!r} (first on line {seen[rule.name]})",
                              path=path, line=rule.line, key=f"twins[{i}].name")
        seen[rule.name] = rule.line
        own = drives_itself(rule, prometheus.self_labels) if rule.max_replicas is not None else None
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
        sc = read_scenario(path, n, i, {t.name: t for t in twins})
        if sc.name in names:
            raise ConfigError(f"duplicate scenario name {sc.name!r} (first on line {names[sc.name]})",
                              path=path, line=sc.line, key=f"scenarios[{i}].name")
        names[sc.name] = sc.line
        scenarios.append(sc)
    export = read_export(r.mapping("export"), tuple(sorted({h for t in twins for h in t.horizons_s})))
    r.finish(_TOP_KEYS)
    return SidecarConfig(path=path, prometheus=prometheus, server=server, storage=storage, twins=tuple(twins),
                         scenarios=tuple(scenarios), interval_s=interval, backfill_s=backfill,
                         backfill_max_samples=backfill_max_samples, retired=retired,
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

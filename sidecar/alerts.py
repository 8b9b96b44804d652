"""Prometheus alerting rules for the sidecar's exported metrics, written from the YAML rules.

The alerts are generated rather than kept in a hand-written YAML file because some depend on the rules: how
stale a twin or a metric may get before it counts as "not syncing" follows the sync ``interval``, a twin named
in the rules (not discovered) must exist, so it gets an ``absent()`` check of its own, and a sidecar instance
whose scrape fails is found by its scrape target's labels (``prometheus.self_labels``, else
``job="twin-sidecar"``). Everything else is generic over the ``twin``/``metric`` labels, so discovered twins
are covered without listing them.

Every selector names a family of the /metrics contract (``sidecar/contract.py``) or Prometheus' own ``up``; a
rule naming anything else fails while it is written, not silently in Prometheus.

The health alerts use the engine's bands (``sidecar.engine.health``): TwinHealthLow below 70, TwinHealthCritical
below 50, so a score of exactly 50 raises the warning alone and one of exactly 70 neither.

Every alert carries ``severity`` (``warning`` or ``critical``), a one-line ``summary``, a ``description``
with the live values (Prometheus template language) and a ``runbook_url`` into the README's
``#runbook-<alertname lowercased>`` anchors (headings ``### Runbook: <AlertName>``). Where a deployment keeps
its copy of the README is not known here, so the links are ``README.md#runbook-…`` unless a base URL is given
(``twin-sidecar rules --runbook-base-url URL``, the chart's ``prometheusRule.runbookBaseUrl``): Alertmanager
and its receivers need an absolute http(s) URL to open one.

Example::

    doc = render_rules(load_config("config/example.yaml"))
    yaml.safe_dump(doc)        # what ``twin-sidecar rules --config FILE`` prints

``promtool check rules`` and the ``promtool test rules`` suites in ``deploy/prometheus/rules-tests``
prove the output; ``tests/unit/test_alerts.py`` runs both.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import yaml

from .config import SidecarConfig, load_config
from .contract import METRICS_BY_NAME
from .engine.health import CRITICAL_BELOW, WARNING_BELOW
from .errors import ConfigError, InputError
from .units import format_duration

__all__ = [
    "ALERT_NAMES",
    "DEFAULT_RUNBOOK_URL",
    "PROMETHEUS_METRICS",
    "AlertSettings",
    "check_runbook_base_url",
    "dump_rules",
    "render_rules",
    "rules_main",
    "runbook_anchor",
]

log = logging.getLogger(__name__)

#: Where the runbook headings live; deployments point this at their copy of the README.
DEFAULT_RUNBOOK_URL = "README.md"

#: Every alert this module can emit, in the order of the rule group (TwinMissing only with static twins).
ALERT_NAMES: tuple[str, ...] = (
    "TwinDivergenceHigh", "TwinDivergenceCritical", "TwinHealthLow", "TwinHealthCritical", "TwinBreachSoon",
    "TwinSyncStale", "TwinMetricStale", "TwinMetricNoData", "TwinMissing", "TwinSidecarAbsent", "TwinSidecarDown",
    "TwinPrometheusUnreachable", "TwinStoreDown", "TwinSimulationFailureLikely",
)

#: Series of Prometheus' own that the rules read beside the sidecar's families: ``up`` of its scrape targets.
PROMETHEUS_METRICS: frozenset[str] = frozenset({"up"})

#: The scrape job TwinSidecarDown looks for in ``up`` when nothing else names the sidecar's scrape target (the
#: demo's and the README's scrape config use it).
DEFAULT_SIDECAR_JOB = "twin-sidecar"


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """The alerting knobs (durations in seconds). Defaults suit a 15s sync interval.

    ``selector`` is extra label matchers put on every selector (e.g. ``job="twin-sidecar"``) so that
    two sidecar deployments scraped by one Prometheus can carry separate rule sets. ``sidecar_job`` is the
    scrape job TwinSidecarDown reads ``up`` of when neither the config's ``prometheus.self_labels`` nor
    ``selector`` names the sidecar's target.
    """

    divergence_for_s: float = 300.0
    health_warning: float = WARNING_BELOW        # the engine's bands: these alerts page on what it reports
    health_critical: float = CRITICAL_BELOW
    health_for_s: float = 300.0
    breach_eta_under_s: float = 900.0
    breach_for_s: float = 120.0
    stale_after_intervals: float = 4.0       # a twin is stale after this many missed sync intervals …
    stale_after_min_s: float = 60.0          # … but never sooner than this
    sync_for_s: float = 60.0
    absent_for_s: float = 300.0
    source_down_for_s: float = 120.0
    store_down_for_s: float = 300.0
    simulation_failure_probability: float = 0.5
    simulation_for_s: float = 60.0
    runbook_url: str = DEFAULT_RUNBOOK_URL
    selector: str = ""
    sidecar_job: str = DEFAULT_SIDECAR_JOB
    group_name: str = "twin-sidecar"
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    def stale_after_s(self, interval_s: float) -> float:
        return max(self.stale_after_intervals * interval_s, self.stale_after_min_s)


def check_runbook_base_url(url: str) -> str:
    """The URL runbook links start with (the README's, without a ``#fragment``): an absolute http(s) URL, or an
    ``InputError`` naming the option."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url.strip()):
        raise InputError(f"--runbook-base-url {url!r}: expected an absolute http:// or https:// URL of your copy "
                         "of the README, e.g. https://git.example.com/sre/twin-sidecar/blob/main/README.md")
    if parts.fragment or url.strip().endswith("#"):
        raise InputError(f"--runbook-base-url {url!r}: give the README's URL without a #fragment (each alert "
                         "adds its own #runbook-… anchor)")
    return url.strip()


def runbook_anchor(alert: str) -> str:
    """The README anchor GitHub derives from the heading ``### Runbook: <alert>``."""
    return f"runbook-{alert.lower()}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True, slots=True)
class _Builder:
    settings: AlertSettings

    def sel(self, metric: str, *matchers: str) -> str:
        if metric not in METRICS_BY_NAME and metric not in PROMETHEUS_METRICS:
            raise ValueError(f"{metric} is not in the /metrics contract (sidecar/contract.py)")
        parts = [m for m in (self.settings.selector.strip(), *matchers) if m]
        return f"{metric}{{{','.join(parts)}}}" if parts else metric

    def rule(self, alert: str, expr: str, for_s: float, severity: str, summary: str,
             description: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": alert, "expr": expr}
        if for_s > 0:
            rule["for"] = format_duration(for_s)
        rule["labels"] = {"severity": severity, **self.settings.extra_labels}
        rule["annotations"] = {
            "summary": summary,
            "description": description,
            "runbook_url": f"{self.settings.runbook_url}#{runbook_anchor(alert)}",
        }
        return rule


def _static_twins(config: SidecarConfig) -> list[str]:
    """Twins named in the rules; a discovered family has no fixed member names to check for."""
    return [t.name for t in config.twins if t.discover is None]


def _check_selector(selector: str) -> set[str]:
    """The label names ``selector`` matches on; a ConfigError if it is not a list of PromQL label matchers."""
    if not selector.strip():
        return set()
    import promql_parser

    try:
        node = promql_parser.parse(f"twin_twins{{{selector}}}")
    except ValueError as exc:
        raise ConfigError(f"alert selector {selector!r} is not a list of PromQL label matchers ({exc})",
                          key="selector") from exc
    matchers = getattr(getattr(node, "matchers", None), "matchers", ())
    return {str(m.name) for m in matchers}


def _own_targets(config: SidecarConfig, settings: AlertSettings, selector_labels: set[str]) -> list[list[str]]:
    """Label matchers picking the sidecar's own scrape target(s) out of ``up``, one list per target identity.

    The labels the config gives its own scrape target (``prometheus.self_labels``, set by the chart from its
    ServiceMonitor) when it names them; else only ``selector`` when that names the job; else the default job.
    ``up`` carries the target's labels only, so a bare selector without a job would match every target.
    """
    identities: list[list[str]] = []
    for labels in config.prometheus.self_labels:
        matchers = [f"{k}={_promql_string(str(labels[k]))}" for k in sorted(labels)]
        if matchers and matchers not in identities:
            identities.append(matchers)
    if identities:
        return identities
    if "job" in selector_labels:
        return [[]]
    return [[f"job={_promql_string(settings.sidecar_job)}"]]


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fill(text: str, values: Mapping[str, str]) -> str:
    """Put our numbers into annotation text; ``<<name>>`` tokens leave Prometheus' ``{{ }}`` alone."""
    for key, value in values.items():
        text = text.replace(f"<<{key}>>", value)
    return text


_RATIO = ('{{ with printf "twin_divergence_ratio{twin=%q,metric=%q}" $labels.twin $labels.metric | query }}'
          "{{ . | first | value | humanizePercentage }} off its expected value"
          "{{ else }}diverging{{ end }}")


def render_rules(config: SidecarConfig, settings: AlertSettings | None = None) -> dict[str, Any]:
    """The Prometheus rule-file document (``{"groups": [...]}``) for this config's sidecar."""
    s = settings or AlertSettings()
    selector_labels = _check_selector(s.selector)
    b = _Builder(s)
    stale_s = s.stale_after_s(config.interval_s)
    durations = {"div_for": s.divergence_for_s, "health_for": s.health_for_s, "eta": s.breach_eta_under_s,
                 "interval": config.interval_s, "stale": stale_s, "absent_for": s.absent_for_s,
                 "source_for": s.source_down_for_s, "store_for": s.store_down_for_s}
    v = {
        "ratio": _RATIO, "warn": _num(s.health_warning), "crit": _num(s.health_critical),
        **{key: format_duration(seconds) for key, seconds in durations.items()},
        "p": f"{s.simulation_failure_probability:.0%}",
    }
    severity, health, eta = b.sel("twin_divergence_severity"), b.sel("twin_health_score"), \
        b.sel("twin_breach_eta_seconds")
    source_up = b.sel("twin_source_up")
    # one metric left behind while its twin syncs (a query that returns nothing, or only NaN/Inf: an error ratio at
    # zero traffic is 0/0); measured against the twin's own last sync, so a twin that stops syncing altogether
    # raises TwinSyncStale alone, and one threshold (the chart rewrites it per interval). Its result carries every
    # label of the metric's series (group_right), so `unless` it matches the same series' severity exactly. The
    # last-sample series is exported only for a metric behind its twin (by default) and says 0 for one that never
    # had a sample: TwinMetricNoData's case, left out with `and … != 0` (not `> 0`: the chart rewrites the number
    # after "last_sample >" to its threshold).
    last_sample = b.sel("twin_metric_last_sample_timestamp_seconds")
    metric_stale = (f"{b.sel('twin_last_sync_timestamp_seconds')} - ignoring (metric) group_right "
                    f"{last_sample} > {_num(stale_s)} and {last_sample} != 0")
    # a stale metric's severity is the last one computed, on data no longer observed: TwinMetricStale says so
    # instead, so the divergence alerts stop (and resolve) rather than page on a frozen value
    not_stale = f" unless ({metric_stale})"
    # the score as the engine keeps it (two decimals, trailing zeros dropped): rounded to a whole number, 49.6
    # read "50/100 (below 50)"
    health_text = ("Twin {{ $labels.twin }} has had a health score of "
                   "{{ $value | printf \"%.2f\" | reReplaceAll \"\\\\.?0+$\" \"\" }}/100 "
                   "(below <<limit>>) for at least <<health_for>>.")
    rules: list[dict[str, Any]] = [
        b.rule("TwinDivergenceHigh", f"{severity} >= 3{not_stale}", s.divergence_for_s, "warning",
               "{{ $labels.twin }}: {{ $labels.metric }} diverges from its twin (severity high or worse)",
               _fill("{{ $labels.metric }} of twin {{ $labels.twin }} is <<ratio>>: divergence severity "
                     "{{ $value }} (3 high, 4 critical) for at least <<div_for>>.", v)),
        b.rule("TwinDivergenceCritical", f"{severity} >= 4{not_stale}", s.divergence_for_s, "critical",
               "{{ $labels.twin }}: {{ $labels.metric }} diverges critically from its twin",
               _fill("{{ $labels.metric }} of twin {{ $labels.twin }} is <<ratio>>: divergence severity "
                     "critical for at least <<div_for>>.", v)),
        b.rule("TwinHealthLow", f"{health} < {v['warn']}", s.health_for_s, "warning",
               _fill("{{ $labels.twin }}: health below <<warn>>", v),
               _fill(health_text, {**v, "limit": v["warn"]})),
        b.rule("TwinHealthCritical", f"{health} < {v['crit']}", s.health_for_s, "critical",
               _fill("{{ $labels.twin }}: health below <<crit>>", v),
               _fill(health_text, {**v, "limit": v["crit"]})),
        b.rule("TwinBreachSoon", f"{eta} < {_num(s.breach_eta_under_s)}", s.breach_for_s, "warning",
               "{{ $labels.twin }}: {{ $labels.metric }} forecast to reach its limit {{ $labels.limit }} "
               "in {{ $value | humanizeDuration }}",
               _fill("The forecast of {{ $labels.metric }} for twin {{ $labels.twin }} crosses its limit "
                     "{{ $labels.limit }} in {{ $value | humanizeDuration }} (alerting below <<eta>>).", v)),
        b.rule("TwinSyncStale", f"time() - {b.sel('twin_last_sync_timestamp_seconds')} > {_num(stale_s)}",
               s.sync_for_s, "warning",
               "{{ $labels.twin }}: not synced for {{ $value | humanizeDuration }}",
               _fill("Twin {{ $labels.twin }} last accepted a sync {{ $value | humanizeDuration }} ago; "
                     "the sync interval is <<interval>> and the alert fires past <<stale>>. "
                     "Its forecasts, divergence and health are frozen.", v)),
        b.rule("TwinMetricStale", metric_stale, s.sync_for_s, "warning",
               "{{ $labels.twin }}: {{ $labels.metric }} has had no new sample for {{ $value | humanizeDuration }}",
               _fill("Metric {{ $labels.metric }} of twin {{ $labels.twin }} has accepted no sample for "
                     "{{ $value | humanizeDuration }} while the twin's other metrics sync: its query returns "
                     "nothing or only NaN/Inf (a ratio at zero traffic is 0/0). Its actual, expected and "
                     "forecast values are frozen at the last sample; the sync interval is <<interval>> and the "
                     "alert fires past <<stale>>.", v)),
        # a metric that never had a sample has no last-sample time to go stale: its last-sample series says 0
        # from the start (the default export's has-data signal). Held as long as TwinMetricStale's threshold (the
        # chart rewrites it per interval); not while the same sidecar cannot reach Prometheus
        # (TwinPrometheusUnreachable's case: nothing has data then)
        b.rule("TwinMetricNoData",
               f"{last_sample} == 0 unless ignoring (twin, metric) {source_up} == 0",
               stale_s, "warning",
               "{{ $labels.twin }}: {{ $labels.metric }} has never had a sample",
               _fill("Metric {{ $labels.metric }} of twin {{ $labels.twin }} has not accepted a single sample "
                     "since the sidecar began querying it: its query returns no series (a typo in a metric or "
                     "label name, a series that does not exist) or only NaN/Inf. The twin exports no actual, "
                     "expected, forecast or divergence for it, so no other alert covers it; the sync interval is "
                     "<<interval>> and the alert fires past <<stale>>.", v)),
    ]
    static = _static_twins(config)
    if static:
        missing = " or ".join(
            f"absent({b.sel('twin_last_sync_timestamp_seconds', f'twin={_promql_string(name)}')})"
            for name in static)
        rules.append(b.rule(
            "TwinMissing", f"({missing}) unless on () absent({source_up})", s.absent_for_s, "warning",
            "{{ $labels.twin }}: configured twin exports no sync timestamp",
            _fill("Twin {{ $labels.twin }} is named in the sidecar's rules but has exported no "
                  "twin_last_sync_timestamp_seconds for <<absent_for>> while the sidecar itself is "
                  "scraped: none of its metric queries has returned a sample.", v)))
    rules += [
        b.rule("TwinSidecarAbsent", f"absent({source_up})", s.absent_for_s, "warning",
               "No twin sidecar is being scraped",
               _fill("Prometheus has had no twin_source_up series for <<absent_for>>: the sidecar is "
                     "down, or its scrape target is missing or failing. No twin alert can fire "
                     "meanwhile.", v)),
        # per instance: with several sidecars scraped (shards, replicas, sidecar mode, several releases) one dead
        # instance leaves twin_source_up present and its own series go stale, so neither the rule above nor
        # TwinSyncStale can fire for it; its scrape target's `up` still says 0
        b.rule("TwinSidecarDown",
               " or ".join(f"{b.sel('up', *m)} == 0" for m in _own_targets(config, s, selector_labels)),
               s.absent_for_s, "warning",
               "Twin sidecar {{ $labels.instance }} is down",
               _fill("Prometheus has failed to scrape the sidecar at {{ $labels.instance }} (job "
                     "{{ $labels.job }}) for <<absent_for>>: it is down, restarting or unreachable. Its twins' "
                     "series have gone stale, so no twin alert can fire for them meanwhile.", v)),
        b.rule("TwinPrometheusUnreachable", f"{source_up} == 0", s.source_down_for_s, "warning",
               "Twin sidecar {{ $labels.instance }} cannot query Prometheus",
               _fill("The sidecar at {{ $labels.instance }} has failed to reach its metrics source for at "
                     "least <<source_for>>; it serves the last state, so forecasts, divergence and health "
                     "are frozen until the source answers again.", v)),
        b.rule("TwinStoreDown", f"{b.sel('twin_store_up')} == 0", s.store_down_for_s, "warning",
               "Twin sidecar {{ $labels.instance }} cannot write its history store",
               _fill("The sidecar at {{ $labels.instance }} has had its history store (SQLite or "
                     "PostgreSQL) refuse writes for at least <<store_for>>; it buffers in memory and drops "
                     "the oldest samples when the buffer is full.", v)),
        # only on a trustworthy capacity fit: an untrusted one is a guess (too little history or load variation,
        # no request rate, extrapolation), visible on twin_simulation_fit_trustworthy == 0 but never paged.
        # Plain `and` matches every label (twin, scenario and the scrape target's), so one sidecar's trusted fit
        # cannot let through another's guess for the same twin and scenario (an HA pair, replicas).
        b.rule("TwinSimulationFailureLikely",
               f"{b.sel('twin_simulation_failure_probability')} > {_num(s.simulation_failure_probability)} "
               f"and {b.sel('twin_simulation_fit_trustworthy')} == 1",
               s.simulation_for_s, "warning",
               "{{ $labels.twin }}: scenario {{ $labels.scenario }} would likely fail",
               _fill("The standing what-if scenario {{ $labels.scenario }} on twin {{ $labels.twin }} gives "
                     "a failure probability of {{ $value | humanizePercentage }} (alerting above <<p>>) from a "
                     "trustworthy capacity fit: the service would breach a limit under that load.", v)),
    ]
    return {"groups": [{"name": s.group_name, "rules": rules}]}


def dump_rules(document: Mapping[str, Any], *, source: str | None = None) -> str:
    """The rule document as YAML, with a header saying where it came from."""
    header = "# Prometheus alerting rules for twin-sidecar. Generated by `twin-sidecar rules"
    header += f" --config {source}`" if source else "`"
    header += "; regenerate instead of editing.\n"
    return header + yaml.safe_dump(dict(document), sort_keys=False, width=1000, allow_unicode=True)


#: What ``twin-sidecar rules`` says on stderr when its runbook links are relative.
RELATIVE_RUNBOOK_NOTE = ("twin-sidecar rules: runbook links are relative (README.md#runbook-…), which Alertmanager "
                         "cannot open: pass --runbook-base-url with the URL of your copy of the README")


def rules_main(config_path: str, out: TextIO, *, settings: AlertSettings | None = None,
               err: TextIO | None = None) -> int:
    """``twin-sidecar rules --config FILE``: print the rules; 2 with the error on a bad config. A note on ``err``
    when the runbook links are the relative default."""
    try:
        config = load_config(config_path)
        text = dump_rules(render_rules(config, settings), source=config_path)
    except ConfigError as exc:
        print(f"twin-sidecar rules: {exc}", file=err or sys.stderr)
        return 2
    if (settings or AlertSettings()).runbook_url == DEFAULT_RUNBOOK_URL:
        print(RELATIVE_RUNBOOK_NOTE, file=err or sys.stderr)
    out.write(text)
    log.info("rules written config=%s twins=%d", config_path, len(config.twins))
    return 0

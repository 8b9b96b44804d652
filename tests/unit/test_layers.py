"""Which module may import which: the one-way flow ARCHITECTURE.md draws, held by reading every import.

Every module of the package sits in a layer; a module imports only from its own layer or below, never upward,
and every import counts, the late ones inside functions too. Two rules are stricter than the layers:

* the engine (``sidecar/engine/``) is pure: from the package it imports only itself, ``sidecar.errors`` and
  ``sidecar.units`` (durations in words, which depend on nothing), and from outside only numpy and scipy;
* the foundation modules (errors, units, the /metrics contract, …) import nothing of the package, so anything
  may read them without loading more than it asked for.

A new module fails :func:`test_every_module_has_a_layer` until it is given one here (and a place in
ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sidecar"

#: Layer of each module, bottom (0) to top. A package name covers its submodules.
LAYERS: dict[str, int] = {
    # 0 foundation: read by anything, import nothing of the package
    "sidecar.errors": 0, "sidecar.units": 0, "sidecar.contract": 0, "sidecar.status": 0, "sidecar.logs": 0,
    "sidecar.openapi": 0,
    # 1 the pure engine, and the package's public face over it
    "sidecar.engine": 1, "sidecar": 1,
    # 2 the rules: parsed, validated, guarded against the loop
    "sidecar.config": 2, "sidecar.loopguard": 2,
    # 3 the edges: Prometheus in, the store, /metrics, the API and the offline tools out
    "sidecar.prometheus": 3, "sidecar.collect": 3, "sidecar.store": 3, "sidecar.exporter": 3,
    "sidecar.alerts": 3, "sidecar.service": 3, "sidecar.api": 3, "sidecar.server": 3, "sidecar.replay": 3,
    "sidecar.replay_segments": 3,
    "sidecar.backtest": 3, "sidecar.autoscale": 3,
    # 4 assembly: the service, the command line, the demo and the test helpers
    "sidecar.app": 4, "sidecar.cli": 4, "sidecar.demo": 4, "sidecar.testing": 4,
}
FOUNDATION = {name for name, layer in LAYERS.items() if layer == 0}
#: What the engine, and the public face over it, may import from the rest of the package.
ENGINE_MAY_IMPORT = ("sidecar.engine", "sidecar.errors", "sidecar.units")
#: Third-party packages the engine may use: numbers, never I/O.
ENGINE_THIRD_PARTY = {"numpy", "scipy"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, late imports and ``TYPE_CHECKING`` blocks included, as absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            if node.module is None:   # from . import loopguard
                found.update(f"{base}.{a.name}" for a in node.names)
            else:
                found.add(base)
    return found


def _owner(module: str) -> str | None:
    """The ``LAYERS`` key a module falls under (the longest matching prefix), or None."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else None


MODULES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {_module_name(p): _imports(p) for p in MODULES}


def _internal(imports: set[str]) -> set[str]:
    return {m for m in imports if m == "sidecar" or m.startswith("sidecar.")}


def test_every_module_has_a_layer() -> None:
    assert [m for m in GRAPH if _owner(m) is None] == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_nothing_imports_upward(module: str) -> None:
    own = LAYERS[_owner(module) or ""]
    upward = sorted(m for m in _internal(GRAPH[module]) if LAYERS[_owner(m) or ""] > own)
    assert upward == [], f"{module} (layer {own}) imports from a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _owner(m) in ("sidecar.engine", "sidecar")))
def test_the_engine_is_pure(module: str) -> None:
    imports = GRAPH[module]
    outside = sorted(m for m in _internal(imports)
                     if m != "sidecar" and not any(m == a or m.startswith(a + ".") for a in ENGINE_MAY_IMPORT))
    assert outside == [], f"{module} imports {outside}: the engine may import only {ENGINE_MAY_IMPORT}"
    third = {m.split(".")[0] for m in imports} - {"sidecar", "__future__"} - set(sys.stdlib_module_names)
    assert third <= ENGINE_THIRD_PARTY, f"{module} imports {sorted(third - ENGINE_THIRD_PARTY)}"


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_the_foundation_imports_nothing_of_the_package(module: str) -> None:
    assert _internal(GRAPH[module]) == set()


def test_the_engine_may_use_the_duration_words() -> None:
    """The one import from outside the engine besides the errors is explicit, not an accident."""
    assert "sidecar.units" in GRAPH["sidecar.engine.predict"]


def test_no_module_imports_itself_back() -> None:
    """No import cycle anywhere in the package, late imports included: a cycle is two rooms that are one."""
    graph = {m: {d for d in _internal(GRAPH[m]) if d in GRAPH and d != m} for m in GRAPH}
    cycles: list[list[str]] = []
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            if dep in path:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in done:
                walk(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            walk(module, [module])
    assert cycles == [], f"import cycles: {cycles}"


#: The query loop's parts, in the order they lean (ARCHITECTURE.md): each imports only parts before it.
COLLECT_ORDER = ("context", "naming", "shard", "targets", "streaks", "ownguard", "fanout", "restore", "roster", "deal",
                 "backfill", "scenarios", "round", "scheduler")


@pytest.mark.parametrize("part", COLLECT_ORDER)
def test_the_query_loop_parts_lean_one_way(part: str) -> None:
    before = {f"sidecar.collect.{p}" for p in COLLECT_ORDER[:COLLECT_ORDER.index(part)]}
    inside = {m for m in GRAPH[f"sidecar.collect.{part}"] if m.startswith("sidecar.collect.")}
    assert inside <= before, f"collect.{part} imports a part after it: {sorted(inside - before)}"


def test_every_query_loop_part_has_its_place() -> None:
    parts = {m.rsplit(".", 1)[1] for m in GRAPH if m.startswith("sidecar.collect.")}
    assert parts == set(COLLECT_ORDER)


#: The rules' modules, in the order they lean (ARCHITECTURE.md): each imports only modules before it.
CONFIG_ORDER = ("maxima", "secret", "records", "reader", "promql", "discovery", "prometheus", "server", "limits",
                "storage", "shard", "export", "per_metric", "scaling", "twins", "scenarios", "load")


@pytest.mark.parametrize("part", CONFIG_ORDER)
def test_the_rules_modules_lean_one_way(part: str) -> None:
    before = {f"sidecar.config.{p}" for p in CONFIG_ORDER[:CONFIG_ORDER.index(part)]}
    inside = {m for m in GRAPH[f"sidecar.config.{part}"] if m.startswith("sidecar.config")}
    assert inside <= before, f"config.{part} imports a module after it (or the package): {sorted(inside - before)}"


def test_every_rules_module_has_its_place() -> None:
    parts = {m.rsplit(".", 1)[1] for m in GRAPH if m.startswith("sidecar.config.")}
    assert parts == set(CONFIG_ORDER)


#: The what-if's modules, in the order they lean (ARCHITECTURE.md): each imports only modules before it.
WHATIF_ORDER = ("metrics", "queueing", "routes", "samples", "fit", "capacity", "scenario", "draws", "context",
                "result", "project", "sizing", "words", "advice", "loadtest", "timeline", "run")


@pytest.mark.parametrize("part", WHATIF_ORDER)
def test_the_what_if_modules_lean_one_way(part: str) -> None:
    before = {f"sidecar.engine.whatif.{p}" for p in WHATIF_ORDER[:WHATIF_ORDER.index(part)]}
    inside = {m for m in GRAPH[f"sidecar.engine.whatif.{part}"] if m.startswith("sidecar.engine.whatif.")}
    assert inside <= before, f"whatif.{part} imports a module after it: {sorted(inside - before)}"


def test_every_what_if_module_has_its_place() -> None:
    parts = {m.rsplit(".", 1)[1] for m in GRAPH if m.startswith("sidecar.engine.whatif.")}
    assert parts == set(WHATIF_ORDER)


def test_the_api_talks_to_the_service_interface_only() -> None:
    """The API reaches the engine, the store and the writer through ``service.TwinService`` alone."""
    assert _internal(GRAPH["sidecar.api"]) & {"sidecar.engine.twin", "sidecar.engine.core", "sidecar.app"} == set()
    assert "sidecar.service" in GRAPH["sidecar.api"]

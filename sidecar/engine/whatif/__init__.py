"""The what-if room: traffic spikes, failures and load tests run on a twin's fitted capacity model.

One job per module, each leaning only on those before it:

``metrics`` (the core metrics, their domains) ◀ ``queueing`` (M/M/c) ◀ ``routes`` (the curve fits) and
``samples`` (series aligned in time) ◀ ``fit`` (`CapacityFit`) ◀ ``capacity`` (`fit_capacity`);
``scenario`` (the schema) and ``draws`` (Monte Carlo) ◀ ``context`` (`SimulationContext`, `Run`) and
``result`` (`SimulationResult`) ◀ ``project`` (forecast plus the model's difference) ◀ ``sizing`` (replicas
a scenario needs) ◀ ``words`` and ``advice`` ◀ ``loadtest`` and ``timeline`` ◀ ``run`` (`run_scenario`).

The public names load on first use, so checking a scenario's fields (the rules do) loads neither numpy nor
the capacity fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_face

if TYPE_CHECKING:
    from .capacity import MIN_SAMPLES, fit_capacity
    from .context import SimulationContext, metric_domain
    from .draws import DRAWS, Draws, draw
    from .fit import TRAFFIC_NO_DATA, TRAFFIC_NO_QUERY, TRAFFIC_OBSERVED, TRAFFIC_ZERO, CapacityFit
    from .metrics import CORE_DOMAINS, CPU, ERRORS, F64, LATENCY, MEAN_LATENCY, MEMORY, METRICS
    from .project import Fault, steady
    from .queueing import erlang_c, mean_wait_s, wait_quantile_s
    from .result import SimulationResult
    from .run import run_scenario
    from .samples import align
    from .scenario import SCENARIO_TYPES, Scenario, parse_scenario

#: Each public name and the module that defines it.
_HOMES: dict[str, str] = {
    "run_scenario": ".run",
    **dict.fromkeys(("SCENARIO_TYPES", "Scenario", "parse_scenario"), ".scenario"),
    **dict.fromkeys(("SimulationContext", "metric_domain"), ".context"),
    "SimulationResult": ".result",
    **dict.fromkeys(("DRAWS", "Draws", "draw"), ".draws"),
    **dict.fromkeys(("Fault", "steady"), ".project"),
    **dict.fromkeys(("MIN_SAMPLES", "fit_capacity"), ".capacity"),
    **dict.fromkeys(("CapacityFit", "TRAFFIC_OBSERVED", "TRAFFIC_ZERO", "TRAFFIC_NO_QUERY", "TRAFFIC_NO_DATA"),
                    ".fit"),
    **dict.fromkeys(("erlang_c", "mean_wait_s", "wait_quantile_s"), ".queueing"),
    "align": ".samples",
    **dict.fromkeys(("F64", "CPU", "MEMORY", "LATENCY", "MEAN_LATENCY", "ERRORS", "METRICS", "CORE_DOMAINS"),
                    ".metrics"),
}

__all__ = [
    "CORE_DOMAINS",
    "CPU",
    "DRAWS",
    "ERRORS",
    "F64",
    "LATENCY",
    "MEAN_LATENCY",
    "MEMORY",
    "METRICS",
    "MIN_SAMPLES",
    "SCENARIO_TYPES",
    "TRAFFIC_NO_DATA",
    "TRAFFIC_NO_QUERY",
    "TRAFFIC_OBSERVED",
    "TRAFFIC_ZERO",
    "CapacityFit",
    "Draws",
    "Fault",
    "Scenario",
    "SimulationContext",
    "SimulationResult",
    "align",
    "draw",
    "erlang_c",
    "fit_capacity",
    "mean_wait_s",
    "metric_domain",
    "parse_scenario",
    "run_scenario",
    "steady",
    "wait_quantile_s",
]

__getattr__, __dir__ = lazy_face(__name__, _HOMES, __all__)

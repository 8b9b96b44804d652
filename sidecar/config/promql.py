"""The rules' PromQL: checked at load by the loop guard, and refused when it can never give numbers per series."""

from __future__ import annotations

from typing import Any

from .reader import Reader


def promql(r: Reader, name: str, *, required: bool = False) -> str | None:
    """A PromQL string, checked here so the error carries the line: parsed once, by the loop guard (which
    checks the names), and its tree handed on for the result type."""
    from .. import loopguard  # late: loopguard imports nothing from here, but keep config importable alone

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
    from .. import loopguard  # late, like promql's

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

"""The guard against the one loop that must never happen.

Prometheus scrapes the sidecar and the sidecar queries Prometheus, so a rule
whose PromQL selects the sidecar's own ``twin_*`` series would feed a twin its
own forecasts: it would converge on itself and say everything is fine. The
sidecar's series are recognised by their names (:data:`OWN_METRIC_PREFIX`) and
by their label signature: ``twin`` together with one of :data:`COMPANION_LABELS`
(``metric``, ``horizon``, ``limit``, ``scenario``, read from the /metrics
contract in ``sidecar/contract.py``), which survives a recording rule or
``metric_relabel_configs`` that renames the series. Two defences:

* at config load, :func:`check_query` parses the PromQL (``promql-parser``) and
  refuses every selector that *can* match a ``twin_*`` name: an explicit name,
  a ``__name__`` regex that admits the prefix (``twin.*``, ``.+``, ``(?i)TWIN_.*``)
  and a selector with only label matchers (``{job="sidecar"}`` matches every
  name). Regexes are analysed, not sampled: the answer is "can this regex
  match some string that starts with the prefix", decided on its parse tree,
  and anything the analysis does not understand is refused (safe side). It
  also refuses a selector of any name that matches on ``twin`` together with a
  companion label, each in a way that admits a value: ``sc_actual{twin="a",
  metric="cpu_usage"}`` or ``job:forecast:max{twin="a", metric="m"}`` select
  the sidecar's series under another name, even inside ``max(...)``, which
  drops every label the run-time check could see. A matcher that accepts only
  the empty value (``metric=""``, ``=~""``, ``!~".+"``) selects series
  *without* that label (Prometheus treats an empty value as no label), which
  rules the sidecar's out rather than aiming at them, so it is not part of the
  signature (``foo{twin!="", metric=""}`` passes); a regex that matches the
  empty string and anything else (``=~"|x"``, ``=~".*"``) still admits the
  sidecar's values and is. The cost: a metric of the user's own that carries
  both ``twin`` and ``metric`` labels cannot be queried by them;
* at run time, :func:`drop_own_series` removes any returned series whose
  ``__name__`` carries the prefix, or whose labels carry the signature (a
  ``max by (twin, metric)`` over a renamed series keeps it), or the labels of
  the sidecar's own scrape target when they are given (``identities``, e.g.
  ``{"job": "twin-sidecar"}``).

Not caught, by either: a query that reads the sidecar's series under another
name *and* without matching on the signature, and whose result drops the
signature labels, e.g. ``max(sc_actual)`` or ``sum(job:forecast:max)`` after a
rename; the per-twin series that carry only ``twin`` (``twin_health_score``,
``twin_drift``, ``twin_last_sync_timestamp_seconds``) once renamed, since a
``twin`` label alone is too common to refuse; a relabelling that also renames
the ``twin`` label. Nothing in the query text or the result says where such
numbers came from; naming the metrics explicitly, as the error messages
advise, is the defence.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import promql_parser

from .contract import EXPORTED_METRICS

#: Every series the sidecar exports starts with this; nothing it ingests may.
OWN_METRIC_PREFIX = "twin_"
#: The label every per-twin series of the sidecar carries.
TWIN_LABEL = "twin"
#: The labels the sidecar puts beside ``twin`` (from the contract's list, so a new family cannot be missed):
#: ``twin`` with any of them is the sidecar's signature, whatever the series is called.
COMPANION_LABELS: frozenset[str] = frozenset(
    label for spec in EXPORTED_METRICS if TWIN_LABEL in spec.labels for label in spec.labels) - {TWIN_LABEL}

_PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_MARK = "__twin_placeholder__"


class LoopError(ValueError):
    """A query can select the sidecar's own exported series."""


def parse_query(query: str) -> Any:
    """The PromQL parse tree of ``query``, its ``$label`` placeholders standing as marked names (so a
    discovered twin's template parses); ``ValueError`` with the parser's message when it is not PromQL."""
    return promql_parser.parse(_PLACEHOLDER.sub(lambda m: f"{_MARK}{m.group(1) or m.group(2)}", query))


def check_query(query: str, *, prefix: str = OWN_METRIC_PREFIX) -> Any:
    """Refuse ``query`` if any of its selectors can match a ``prefix*`` metric name.

    ``$label`` placeholders of discovered twins are allowed in label values but
    not where they would choose the metric name. Raises ``LoopError`` (refused)
    or ``ValueError`` (not PromQL). Returns the parse tree (:func:`parse_query`),
    so a caller that checks more (the rules file: the result type) parses once.
    """
    expr = parse_query(query)
    problems: list[str] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            why = selector_problem(node, prefix)
            if why is not None:
                problems.append(why)
        return True

    promql_parser.walk(expr, visit)
    if problems:
        if _SIGNATURE in problems[0]:
            raise LoopError(f"refused: {problems[0]}; the sidecar exports its series with these labels and must "
                            f"never read them back, under any name (a recording rule or metric_relabel_configs "
                            f"may have renamed twin_* series)")
        raise LoopError(f"refused: {problems[0]}; the sidecar exports {prefix}* series and must never read "
                        f"them back (name the metric explicitly, e.g. process_cpu_seconds_total{{...}})")
    return expr


def selector_problem(sel: Any, prefix: str = OWN_METRIC_PREFIX) -> str | None:
    """Why this vector selector can reach the sidecar's own series, or ``None`` if it cannot."""
    shown = str(sel).replace(_MARK, "$")
    if sel.name is not None:
        if _MARK in sel.name:
            return f"the metric name of {shown} depends on a discovered label"
        if sel.name.startswith(prefix):
            return f"{shown} selects the sidecar's own series"
    groups: list[list[Any]] = [list(g) for g in sel.matchers.or_matchers] or [list(sel.matchers.matchers)]
    for group in groups:
        why = _group_problem(group, prefix) if sel.name is None else None
        why = why or _signature_problem(group)
        if why is not None:
            return f"{shown}: {why}"
    return None


_SIGNATURE = "the sidecar's own label signature"


def _signature_problem(matchers: Sequence[Any]) -> str | None:
    """A conjunction matching on ``twin`` and a companion label, both with a value, selects the sidecar's series.

    A label with a matcher that accepts only the empty value is required to be absent (:func:`only_empty`):
    ``twin=""`` rules the sidecar's series out, ``metric=""`` rules out those that carry ``metric``, so
    neither counts towards the signature.
    """
    absent = {m.name for m in matchers if only_empty(m)}
    if not any(m.name == TWIN_LABEL for m in matchers) or TWIN_LABEL in absent:
        return None
    companions = sorted({m.name for m in matchers if m.name in COMPANION_LABELS} - absent)
    if not companions:
        return None
    return f"it matches on {TWIN_LABEL} and {companions[0]}, {_SIGNATURE}"


def only_empty(matcher: Any) -> bool:
    """Does this label matcher accept the empty value only, i.e. select just series without the label?

    ``=""``; ``=~R`` where R matches no non-empty string (``""``, ``()``, ``^$``); ``!~R`` where R matches every
    non-empty string (``.+``, ``.*``). ``!=`` never does (``!=""`` demands a value, ``!="x"`` admits every
    other). When in doubt, no: the label then counts towards the signature (the safe side).
    """
    op = matcher.op
    if op == promql_parser.MatchOp.Equal:
        return bool(matcher.value == "")
    if op == promql_parser.MatchOp.Re:
        return not regex_can_match_nonempty(matcher.value)
    if op == promql_parser.MatchOp.NotRe:
        return regex_matches_every_nonempty(matcher.value)
    return False


def _group_problem(matchers: Sequence[Any], prefix: str) -> str | None:
    """One conjunction of matchers is safe if one ``__name__`` matcher alone rules the prefix out."""
    names = [m for m in matchers if m.name == "__name__"]
    for m in names:
        if _MARK in m.value:
            return "the metric name depends on a discovered label"
    for m in names:
        if m.op == promql_parser.MatchOp.Equal:
            if m.value.startswith(prefix):
                return "selects the sidecar's own series"
            return None
    for m in names:
        if m.op == promql_parser.MatchOp.Re and not regex_can_match_prefix(m.value, prefix):
            return None
    if any(m.op == promql_parser.MatchOp.Re for m in names):
        return f"its __name__ regex can match {prefix}* names"
    return f"it has no metric name, so it matches every series including {prefix}*"


# --------------------------------------------------------------------------- regex analysis

# Python's own regex parser (private but stable since 3.11; no public regex AST
# exists): RE2 (Prometheus) syntax is, for what metric-name regexes use, a
# subset of it; a regex it cannot parse is treated as "can match".
_sre: Any = importlib.import_module("re._parser")
_C: Any = _sre  # the opcodes live in re._constants, re-exported by the parser module


def _parse_regex(pattern: str) -> Any | None:
    """Python's parse tree of ``pattern``, or ``None`` when it is not understood (RE2-only syntax)."""
    if "[:" in pattern:                      # RE2's POSIX classes ([[:word:]]) mean something else here
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _sre.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return None                          # RE2-only syntax (\pL, \Q..\E, (?U)): not understood


_REPEATS = tuple(op for op in (_C.MAX_REPEAT, _C.MIN_REPEAT, getattr(_C, "POSSESSIVE_REPEAT", None)) if op)


def regex_can_match_nonempty(pattern: str) -> bool:
    """Can the regex match some non-empty string? Unknown constructs count as "can" (the safe answer here:
    a label matcher that can take a value counts towards the sidecar's signature)."""
    parsed = _parse_regex(pattern)
    try:
        return parsed is None or _consumes(list(parsed))
    except RecursionError:
        return True


def _consumes(items: Iterable[tuple[Any, Any]]) -> bool:
    """Can this sequence consume a character (over-approximated: an item that can is enough)?"""
    for op, av in items:
        if op is _C.AT:
            continue                         # anchors and \b consume nothing
        if op is _C.BRANCH:
            if any(_consumes(list(alt)) for alt in av[1]):
                return True
        elif op is _C.SUBPATTERN:
            if _consumes(list(av[3])):
                return True
        elif op in _REPEATS:
            if av[1] > 0 and _consumes(list(av[2])):
                return True
        elif op is getattr(_C, "ATOMIC_GROUP", None):
            if _consumes(list(av)):
                return True
        else:                                # a character, a class, or something not understood
            return True
    return False


def regex_matches_every_nonempty(pattern: str) -> bool:
    """Does the regex match every non-empty string? Recognises the spellings people use for "has a value"
    (``.+``, ``.*``, ``.{1,}``, lazy, grouped, with flags); anything else answers no (the safe answer here).

    ``.`` is taken to match any character: Prometheus 3 makes it so, and the values the sidecar exports
    (metric and scenario names, horizons, limits) hold no newline for an older one to trip on.
    """
    parsed = _parse_regex(pattern)
    if parsed is None:
        return False
    items = _unwrap(list(parsed))
    if len(items) != 1 or items[0][0] not in _REPEATS:
        return False
    lo, hi, body = items[0][1]
    return bool(lo <= 1 and hi == _C.MAXREPEAT and _unwrap(list(body)) == [(_C.ANY, None)])


def _unwrap(items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Strip groups around a lone item: ``((.+))`` is ``.+``."""
    while len(items) == 1 and items[0][0] is _C.SUBPATTERN:
        items = list(items[0][1][3])
    return items


def regex_can_match_prefix(pattern: str, prefix: str = OWN_METRIC_PREFIX) -> bool:
    """Can the fully anchored regex (as Prometheus anchors it) match a string starting with ``prefix``?

    Decided on the parse tree by running the prefix through it: the regex can
    match such a string iff some path consumes the whole prefix. Unknown
    constructs count as "can match" (the safe answer for a guard).
    """
    parsed = _parse_regex(pattern)
    if parsed is None:
        return True
    fold = bool(parsed.state.flags & re.IGNORECASE)
    text = prefix.lower() if fold else prefix
    try:
        return len(text) in _seq(list(parsed), {0}, text, fold)
    except RecursionError:
        return True


def _seq(items: Iterable[tuple[Any, Any]], positions: set[int], s: str, fold: bool) -> set[int]:
    for op, av in items:
        if not positions:
            return positions
        positions = _one(op, av, positions, s, fold)
    return positions


def _step(positions: set[int], s: str, ok: Callable[[str], bool]) -> set[int]:
    """Advance one character; reaching len(s) means "prefix consumed", which then absorbs."""
    n = len(s)
    return {p if p == n else p + 1 for p in positions if p == n or ok(s[p])}


def _one(op: Any, av: Any, positions: set[int], s: str, fold: bool) -> set[int]:
    n = len(s)

    def same(c: str, code: int) -> bool:
        other = chr(code)
        return c == (other.lower() if fold else other)

    if op is _C.LITERAL:
        return _step(positions, s, lambda c: same(c, av))
    if op is _C.NOT_LITERAL:
        return _step(positions, s, lambda c: not same(c, av))
    if op is _C.ANY:
        return _step(positions, s, lambda c: True)
    if op is _C.IN:
        return _step(positions, s, lambda c: _in_class(av, c, fold))
    if op is _C.BRANCH:
        out: set[int] = set()
        for alt in av[1]:
            out |= _seq(list(alt), set(positions), s, fold)
        return out
    if op is _C.SUBPATTERN:
        sub_fold = fold or bool(av[1] & re.IGNORECASE)
        return _seq(list(av[3]), positions, s, sub_fold)
    if op in _REPEATS:
        lo, hi, body = av
        if lo > 1000:                        # beyond RE2's repeat limit: Prometheus would refuse it anyway
            return positions | {n}
        result = set(positions) if lo == 0 else set()
        cur, k, seen_since_lo = frozenset(positions), 0, set()
        while k < hi and cur:
            cur = frozenset(_seq(list(body), set(cur), s, fold))
            k += 1
            if k >= lo:
                if cur in seen_since_lo:
                    break                    # the position sets now cycle through states already counted
                seen_since_lo.add(cur)
                result |= cur
        return result
    if op is _C.AT:
        return positions                     # anchors only remove matches; ignoring them is safe
    if op in (getattr(_C, "ATOMIC_GROUP", None),):
        return _seq(list(av), positions, s, fold)
    # back-references, look-arounds, conditionals: not RE2, so not understood -> "can match"
    return positions | {n}


def _in_class(items: Sequence[tuple[Any, Any]], c: str, fold: bool) -> bool:
    negate = False
    hit = False
    for op, av in items:
        if op is _C.NEGATE:
            negate = True
        elif op is _C.LITERAL:
            hit |= c == (chr(av).lower() if fold else chr(av))
        elif op is _C.RANGE:
            lo, hi = av
            hit |= lo <= ord(c) <= hi or (fold and (lo <= ord(c.upper()) <= hi))
        elif op is _C.CATEGORY:
            hit |= _category(av, c)
        else:
            hit = True                       # unknown member: assume it matches (safe side)
    return hit != negate


_CATEGORY_TESTS: Mapping[str, Callable[[str], bool]] = {
    "CATEGORY_DIGIT": str.isdigit,
    "CATEGORY_NOT_DIGIT": lambda c: not c.isdigit(),
    "CATEGORY_SPACE": str.isspace,
    "CATEGORY_NOT_SPACE": lambda c: not c.isspace(),
    "CATEGORY_WORD": lambda c: c.isalnum() or c == "_",
    "CATEGORY_NOT_WORD": lambda c: not (c.isalnum() or c == "_"),
}


def _category(cat: Any, c: str) -> bool:
    test = _CATEGORY_TESTS.get(str(cat))
    return True if test is None else test(c)


# --------------------------------------------------------------------------- run time

L = TypeVar("L", bound=Mapping[str, str])


def is_own_series(lbl: Mapping[str, str], prefix: str = OWN_METRIC_PREFIX,
                  identities: Sequence[Mapping[str, str]] = ()) -> bool:
    """Does this result series come from the sidecar: its name, its label signature, or its scrape target?"""
    if lbl.get("__name__", "").startswith(prefix):
        return True
    if lbl.get(TWIN_LABEL) and any(lbl.get(c) for c in COMPANION_LABELS):
        return True
    return any(ident and all(lbl.get(k) == v for k, v in ident.items()) for ident in identities)


def own_series_mask(labels: Sequence[Mapping[str, str]], prefix: str = OWN_METRIC_PREFIX,
                    identities: Sequence[Mapping[str, str]] = ()) -> list[bool]:
    """True for each series that carries the sidecar's own names, label signature or scrape identity.

    :func:`is_own_series` for every series, written out as plain loops: it runs on every series of every answer
    of every round, and a generator per check costs more than the checks themselves.
    """
    idents = [tuple(ident.items()) for ident in identities if ident]
    companions = tuple(COMPANION_LABELS)
    out: list[bool] = []
    for lbl in labels:
        get = lbl.get
        own = get("__name__", "").startswith(prefix)
        if not own and get(TWIN_LABEL):
            for c in companions:
                if get(c):
                    own = True
                    break
        if not own:
            for ident in idents:
                for k, v in ident:
                    if get(k) != v:
                        break
                else:
                    own = True
                    break
        out.append(own)
    return out


def drop_own_series(labels: Sequence[L], prefix: str = OWN_METRIC_PREFIX,
                    identities: Sequence[Mapping[str, str]] = ()) -> tuple[list[int], int]:
    """Indices of the series to keep, and how many were dropped as the sidecar's own (see :func:`is_own_series`)."""
    mask = own_series_mask(labels, prefix, identities)
    keep = [i for i, own in enumerate(mask) if not own]
    return keep, len(mask) - len(keep)

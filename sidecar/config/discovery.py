"""Discovered twins in the rules: the ``$label`` placeholders and ``name_labels`` of a rule with ``discover``,
and ``retired:`` (how long and how many retired discovered twins are kept to come back as they were)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .maxima import MAX_KEEP_FOR_S, MAX_KEEP_MAX
from .reader import LABEL_NAME, Reader, scalar, show
from .records import RetiredConfig


def placeholders_in(query: str) -> list[str]:
    """The ``$label`` / ``${label}`` names a discovered twin's query refers to."""
    return [a or b for a, b in _PLACEHOLDER.findall(query)]


_PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def name_labels_of(r: Reader, discover: str | None, queries: Sequence[str]) -> list[str]:
    """A twin rule's ``name_labels``, checked against its ``discover``: a ``$label`` placeholder in ``queries``
    or a ``name_labels`` list is only meaningful on a rule that discovers its twins."""
    placeholders = {p for q in queries for p in placeholders_in(q)}
    if placeholders and discover is None:
        raise r.error(r.node, r.key("metrics"), f"uses ${sorted(placeholders)[0]} but the twin has no "
                                                "`discover` query to take label values from")
    name_labels: list[str] = []
    for i, n in r.sequence("name_labels"):
        value = scalar(n)
        if not isinstance(value, str) or not LABEL_NAME.fullmatch(value):
            raise r.error(n, r.key(f"name_labels[{i}]"), f"expected a label name, got {show(n)}")
        name_labels.append(value)
    if name_labels and discover is None:
        raise r.error(r.items["name_labels"][0], r.key("name_labels"), "only meaningful with `discover`")
    return name_labels


def read_retired(r: Reader | None) -> RetiredConfig:
    if r is None:
        return RetiredConfig()
    d = RetiredConfig()
    keep_max = r.int_("keep_max", d.keep_max, minimum=0, maximum=MAX_KEEP_MAX)
    assert keep_max is not None
    out = RetiredConfig(keep_for_s=r.duration("keep_for", d.keep_for_s, maximum=MAX_KEEP_FOR_S, allow_zero=True),
                        keep_max=keep_max)
    r.finish()
    return out

"""Discovery naming: which labels identify a discovered twin, its name, and its queries filled from them.

A discovery rule makes one twin per returned series. The twin is found again by its naming labels
(``naming_key``), named from their values (``discovered_name``, unique per distinct label set), and its
queries' ``$label`` placeholders are filled from the series' labels (``substitute``), escaped as PromQL
data. A query without placeholders is shared by the whole family (``shared_queries``): run once a round,
its series dealt out by naming labels.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence

from ..config import TwinRule

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@,=-]")
_PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def naming_key(rule: TwinRule, labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The labels that identify a discovered twin (``name_labels``, or all but ``__name__``) and values."""
    keys = rule.name_labels or tuple(sorted(k for k in labels if k != "__name__"))
    return tuple((k, labels.get(k, "")) for k in keys)


#: Starts the hash suffix of a discovered name; never produced by the substitution, so a hashed name is never a
#: plain one.
HASH_MARK = "~"


def key_hash(key: Sequence[tuple[str, str]], length: int = 8) -> str:
    """A short stable hash of a naming key (label names and values, unambiguously encoded)."""
    text = json.dumps([list(kv) for kv in key], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def discovered_name(rule: TwinRule, labels: Mapping[str, str]) -> str:
    """``checkout-api@10.0.0.7:8080``: the rule's name and the naming labels' values (URL-safe).

    Characters other than letters, digits and ``_.:@,=-`` become ``_``; a name
    that needed that ends in ``~`` and a hash of the original values
    (``r@q_x~1a2b3c4d``), so ``q"x`` and ``q_x``, or ``ü`` and ``ä``, stay two
    twins. A name that needed no substitution is unchanged. The few collisions
    left (``a,b``+``c`` vs ``a``+``b,c``) are resolved when the twin is created.
    """
    key = naming_key(rule, labels)
    name = plain_name(rule, key)
    return name if name == f"{rule.name}@{_values(key)}" else f"{name}{HASH_MARK}{key_hash(key)}"


def ambiguous(key: Sequence[tuple[str, str]]) -> bool:
    """Whether another label set's values could join to the same name: a ``,`` inside one of several values
    (``a,b`` + ``c`` and ``a`` + ``b,c``)."""
    return len(key) > 1 and any("," in v for _, v in key)


def plain_name(rule: TwinRule, key: Sequence[tuple[str, str]]) -> str:
    """The name before any hash suffix: what every version has called this label set's twin."""
    return f"{rule.name}@{_NAME_UNSAFE.sub('_', _values(key))}"


def _values(key: Sequence[tuple[str, str]]) -> str:
    return ",".join(v for _, v in key) or "_"


def shared_queries(rule: TwinRule) -> dict[str, str]:
    """A discovery rule's queries without ``$label``: run once per round for the whole family.

    Each returned series goes to the twin whose naming labels it carries, so
    ``sum by (instance) (rate(x[1m]))`` serves a thousand twins with one query.
    """
    if not rule.discover:
        return {}
    return {m: q for m, q in rule.queries().items() if not _PLACEHOLDER.search(q)}


def substitute(query: str, labels: Mapping[str, str]) -> str:
    """Fill ``$label``/``${label}`` inside the query's string literals, escaped for the quote they sit in.

    A label value is data, not PromQL: a ``"`` in it must not end the string
    (an injection), so it is escaped the way the PromQL lexer expects for
    that quote. A missing label is the empty string (Prometheus' own meaning).
    Raises ``ValueError`` for a value that a raw (backtick) string cannot hold.
    """
    out: list[str] = []
    quote: str | None = None
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if quote is None:
            if c in "\"'`":
                quote = c
            out.append(c)
            i += 1
            continue
        if c == "\\" and quote != "`":
            out.append(query[i:i + 2])
            i += 2
            continue
        if c == quote:
            quote = None
            out.append(c)
            i += 1
            continue
        m = _PLACEHOLDER.match(query, i) if c == "$" else None
        if m is None:
            out.append(c)
            i += 1
            continue
        value = labels.get(m.group(1) or m.group(2), "")
        if quote == "`":
            if "`" in value:
                raise ValueError(f"label value {value!r} cannot be placed in a `raw` string")
            out.append(value)
        else:
            out.append(value.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n"))
        i = m.end()
    return "".join(out)


def rule_of(name: str, rules: Mapping[str, TwinRule]) -> TwinRule | None:
    """The discovery rule (among ``rules``, by name) a discovered twin's name says it belongs to."""
    return rules.get(name.split("@", 1)[0]) if "@" in name else None


def named_by(name: str, rule: TwinRule, key: Sequence[tuple[str, str]]) -> bool:
    """Whether ``name`` was made from this naming key (False: from other naming labels, so no series of the
    rule as it stands would find it)."""
    return name.split(HASH_MARK, 1)[0] == plain_name(rule, key)

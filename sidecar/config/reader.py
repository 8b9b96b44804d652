"""The position-aware YAML reader every section is read with, and the value checks they share.

The YAML is composed into a node tree (which keeps line numbers) and read by :class:`Reader`, a small walker
over one mapping node that also refuses unknown and duplicate keys, rather than loaded into plain dicts where
both would be silently lost. Every error it raises is a ``ConfigError`` naming the file, the line and the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..units import format_duration, parse_duration
from .secret import SecretFile

METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Reader:
    """Reads one YAML mapping node, remembering which keys were used."""

    def __init__(self, path: str, node: yaml.Node, where: str) -> None:
        self.path = path
        self.where = where
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, where or "(top level)", f"expected a mapping, got {kind(node)}")
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
        if item is None or is_null(item[1]):
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
        value = scalar(node)
        if not isinstance(value, str) or not value.strip():
            raise self.error(node, self.key(name), f"expected a non-empty string, got {show(node)}")
        return value

    def req_str(self, name: str) -> str:
        value = self.str_(name, required=True)
        assert value is not None
        return value

    def bool_(self, name: str, default: bool) -> bool:
        node = self.node_of(name)
        if node is None:
            return default
        value = scalar(node)
        if not isinstance(value, bool):
            raise self.error(node, self.key(name), f"expected true or false, got {show(node)}")
        return value

    def int_(self, name: str, default: int | None, *, minimum: int = 1, maximum: int) -> int | None:
        node = self.node_of(name)
        if node is None:
            return default
        value = scalar(node)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(node, self.key(name), f"expected an integer >= {minimum} (at most {maximum:,}), "
                                                   f"got {show(node)}")
        return value

    def number(self, name: str, default: float, *, positive: bool = True, maximum: float = math.inf) -> float:
        node = self.node_of(name)
        if node is None:
            return default
        value = number(self, node, self.key(name), positive=positive)
        if value > maximum:
            raise self.error(node, self.key(name), f"expected at most {maximum:g}, got {show(node)}")
        return value

    def duration(self, name: str, default: float, *, maximum: float, allow_zero: bool = False) -> float:
        node = self.node_of(name)
        if node is None:
            return default
        return duration(self, node, self.key(name), maximum=maximum, allow_zero=allow_zero)

    def mapping(self, name: str) -> Reader | None:
        node = self.node_of(name)
        return None if node is None else Reader(self.path, node, self.key(name))

    def sequence(self, name: str) -> Iterator[tuple[int, yaml.Node]]:
        node = self.node_of(name)
        if node is None:
            return iter(())
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, self.key(name), f"expected a list, got {kind(node)}")
        return enumerate(node.value)

    def secret_file(self, name: str) -> SecretFile | None:
        path = self.str_(name)
        if path is None:
            return None
        node = self.items[name][1]
        secret = SecretFile(resolve(self.path, path))
        try:
            if not secret.read():
                raise self.error(node, self.key(name),
                                 f"the file {path!r} is empty (expected the secret in it)")
        except OSError as exc:
            raise self.error(node, self.key(name),
                             f"cannot read the file {path!r} ({exc.strerror or exc})") from exc
        return secret


_LOADER = yaml.SafeLoader("")


def scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return node  # callers compare types; a non-scalar is never the expected scalar
    try:
        return _LOADER.construct_object(node, deep=True)
    except (ValueError, yaml.YAMLError):
        # an integer of more digits than Python converts (4,300), a malformed timestamp or !!binary: the
        # text as written, which no typed getter takes, so the error names the key with its value
        return node.value


def clip(text: str, most: int = 60) -> str:
    """A value as an error shows it: whole when short, else its start and its length."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text):,} characters)"


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return show(node)


def show(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        return kind(node)
    value = scalar(node)
    return f"{type(value).__name__} {clip(repr(node.value))}"


def number(r: Reader, node: yaml.Node, key: str, *, positive: bool) -> float:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise r.error(node, key, f"expected a number, got {show(node)}")
    if positive and value <= 0:
        raise r.error(node, key, f"expected a number > 0, got {value}")
    return float(value)


def duration(r: Reader, node: yaml.Node, key: str, *, maximum: float, allow_zero: bool = False) -> float:
    """A duration from ``0`` (``allow_zero``) or above 0 up to ``maximum`` seconds; the error shows the text
    as written (an absurd value is not worth spelling out in seconds)."""
    value = scalar(node)
    if allow_zero and (value == 0 or value == "0") and not isinstance(value, bool):
        return 0.0
    if not isinstance(value, str):
        raise r.error(node, key, f"expected a duration like 15s, 5m or 1h, got {show(node)}")
    try:
        seconds = parse_duration(value.strip())
    except ValueError:
        raise r.error(node, key, f"expected a duration like 15s, 5m or 1h, got {clip(repr(value))}") from None
    if seconds <= 0 and not allow_zero:
        raise r.error(node, key, "expected a duration > 0")
    if seconds > maximum:
        raise r.error(node, key, f"expected at most {format_duration(maximum)}, got {clip(value.strip())}")
    return seconds


def resolve(config_path: str, path: str) -> str:
    """Relative paths in the rules are relative to the rules file, not to the working directory."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(config_path).resolve().parent / p)

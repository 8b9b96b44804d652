"""``prometheus:``: where the metrics are read, with what credentials, and the sidecar's own scrape identity."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType

import yaml

from .maxima import MAX_CONCURRENCY, MAX_TIMEOUT_S
from .reader import LABEL_NAME, Reader, kind, resolve, scalar, show
from .records import BasicAuth, PrometheusConfig


def read_prometheus(r: Reader | None) -> PrometheusConfig:
    if r is None:
        return PrometheusConfig()
    d = PrometheusConfig()
    url = r.str_("url", d.url)
    assert url is not None
    if not re.match(r"https?://[^/\s]+", url):
        raise r.error(r.items["url"][1], r.key("url"), f"expected an http:// or https:// URL, got {url!r}")
    headers: dict[str, str] = {}
    hr = r.mapping("headers")
    if hr is not None:
        for name, (k, v) in hr.items.items():
            hr.used.add(name)
            value = scalar(v)
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise hr.error(v, hr.key(name), f"expected a string header value, got {show(v)}")
            if name.lower() == "authorization":
                raise hr.error(k, hr.key(name), "put credentials in bearer_token_file or basic_auth, "
                                                "not in a header (headers may be logged)")
            headers[name] = str(value)
    basic: BasicAuth | None = None
    br = r.mapping("basic_auth")
    if br is not None:
        username = br.req_str("username")
        password = br.secret_file("password_file")
        if password is None:
            raise br.error(br.node, br.key("password_file"), "required key is missing (expected a file path)")
        br.finish()
        basic = BasicAuth(username, password)
    bearer = r.secret_file("bearer_token_file")
    if bearer is not None and basic is not None:
        raise r.error(r.items["bearer_token_file"][0], r.key("bearer_token_file"),
                      "use either bearer_token_file or basic_auth, not both")
    ca = r.str_("tls_ca_file")
    if ca is not None:
        ca = resolve(r.path, ca)
        if not os.path.isfile(ca):
            raise r.error(r.items["tls_ca_file"][1], r.key("tls_ca_file"), f"no such file: {ca}")
    out = PrometheusConfig(
        url=url.rstrip("/"), timeout_s=r.duration("timeout", d.timeout_s, maximum=MAX_TIMEOUT_S),
        headers=MappingProxyType(headers), bearer_token_file=bearer, basic_auth=basic, tls_ca_file=ca,
        max_concurrency=r.int_("max_concurrency", d.max_concurrency, maximum=MAX_CONCURRENCY) or d.max_concurrency,
        accept_warnings=r.bool_("accept_warnings", False), self_labels=_self_labels(r))
    r.finish()
    return out


def _self_labels(r: Reader) -> tuple[Mapping[str, str], ...]:
    """``self_labels``: one mapping of label name -> value, or a list of them (one per scrape identity)."""
    node = r.node_of("self_labels")
    if node is None:
        return ()
    if isinstance(node, yaml.SequenceNode):
        return tuple(_label_set(r, n, r.key(f"self_labels[{i}]")) for i, n in enumerate(node.value))
    return (_label_set(r, node, r.key("self_labels")),)


def _label_set(r: Reader, node: yaml.Node, key: str) -> Mapping[str, str]:
    if not isinstance(node, yaml.MappingNode):
        raise r.error(node, key, f"expected a mapping of label name -> value like {{job: twin-sidecar}}, "
                                 f"got {kind(node)}")
    m = Reader(r.path, node, key)
    if not m.items:
        raise m.error(node, key, "expected at least one label (an empty set would match every series)")
    out: dict[str, str] = {}
    for name, (k, v) in m.items.items():
        m.used.add(name)
        if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise m.error(k, m.key(name), "expected a Prometheus label name like job or namespace "
                                          "(letters, digits, _; not starting with __)")
        value = scalar(v)
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value):
            raise m.error(v, m.key(name), f"expected a non-empty label value, got {show(v)}")
        out[name] = str(value)
    return MappingProxyType(out)

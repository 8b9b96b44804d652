"""The demo: a small service with real metrics, a real Prometheus scraping it, and the sidecar on top.

``run_demo`` (``twin-sidecar demo``) starts all three on free loopback ports,
prints what to open, and shows the sidecar's forecasts and health as they
change; Ctrl-C stops and removes everything.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_demo"]


def run_demo(*args: Any, **kwargs: Any) -> int:
    """See ``sidecar.demo.runner.run_demo`` (imported lazily: tests import the Prometheus helper alone)."""
    from .runner import run_demo as _run

    return _run(*args, **kwargs)

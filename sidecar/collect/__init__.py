"""Collect: Prometheus in, the engine fed, the roster of twins kept — everything between the source and
the engine.

One concern per module: ``scheduler`` (the loop and its backoff, composing the rest), ``round`` (one round),
``fanout`` (the concurrent queries and their breaker), ``deal`` (answers to samples, shared answers dealt out
to twins), ``streaks`` (failure and no-data logging), ``ownguard`` (the run-time loop guard), ``naming``
(discovered twins' names and queries), ``targets`` (what a live twin is queried with), ``roster`` (the
twins' lifecycle: discover, create, adopt, retire, park), ``restore`` (every way a twin comes back),
``backfill`` and ``scenarios`` (standing what-if runs); ``context`` holds what they share.
"""

from __future__ import annotations

from .round import RoundReport
from .scheduler import Scheduler

__all__ = ["RoundReport", "Scheduler"]

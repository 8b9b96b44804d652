"""The package's own errors.

Every failure the sidecar reports is one of these, so callers can catch the
family they care about and the message always names what and where::

    SidecarError
    ├── ConfigError          bad YAML rules: file, line, key, what was expected
    ├── InputError           bad data handed to the engine or the CLI (file:line)
    │   ├── ExpectedStateError   an expected-state entry the engine refuses (carries the metric)
    │   └── LimitError           a limit the engine refuses (carries the metric)
    ├── EngineError
    │   ├── UnknownTwinError     no twin with that id/name
    │   ├── UnknownSnapshotError no snapshot with that id for that twin
    │   └── ScenarioError        a simulation scenario that cannot be run
    ├── SourceError          Prometheus unreachable, slow, 5xx, garbage, query error
    └── StoreError           the database refused or is unavailable
        └── CorruptSnapshotError a stored snapshot whose checksum does not verify

Lower-layer exceptions are translated into these and raised ``from`` the
original, so the cause is kept for logs but never leaks into the API.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SidecarError):
    """The YAML rules are invalid; the message names file, line and key."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        where = ""
        if path is not None:
            where = path if line is None else f"{path}:{line}"
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line
        self.key = key
        self.detail = message


class InputError(SidecarError):
    """Data handed in (CSV row, metric sample, API body) is malformed."""


class ExpectedStateError(InputError):
    """An expected-state entry the engine refuses.

    It carries the metric key as the caller wrote it (``field``; ``None`` when the name itself is what is
    wrong), the value and the reason (``detail``), so the API (``field 'x': ...``) and the rules file
    (``file:line: twins[0].expected.x: ...``) can each name it their own way without parsing the message.
    """

    def __init__(self, detail: str, *, field: str | None, value: object) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        where = f"expected state {field!r} = {shown}" if field is not None else f"expected state metric name {shown}"
        super().__init__(f"{where}: {detail}")
        self.field = field
        self.value = value
        self.detail = detail


class CapacityError(InputError):
    """A new twin refused because the sidecar holds as many twins or series as the rules' ``limits:`` allow
    (``max_twins``, ``max_series``): memory stays bounded instead of growing until the pod is killed."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class LimitError(InputError):
    """A limit the engine refuses: a core metric's at or below 0, a percentage's above 100, one not finite.

    Like :class:`ExpectedStateError` it carries the metric key as written (``field``), the value and the reason
    (``detail``), so the rules file says ``file:line: twins[0].limits.cpu_usage: ...`` from the fields.
    """

    def __init__(self, detail: str, *, field: str, value: object) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"limit {field!r} = {shown}: {detail}")
        self.field = field
        self.value = value
        self.detail = detail


class EngineError(SidecarError):
    """The engine refused an operation."""


class UnknownTwinError(EngineError, KeyError):
    """No twin with that id or name."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else "unknown twin"


class UnknownSnapshotError(EngineError, KeyError):
    """No snapshot with that id for that twin."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown snapshot"


class ScenarioError(EngineError, ValueError):
    """A what-if scenario that is malformed or cannot be run on this twin.

    ``field`` is the scenario key at fault (as the caller wrote it, an alias included) when there is one,
    so the rules file points at that key's line from the error itself, not from its wording.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SourceError(SidecarError):
    """The metrics source (Prometheus HTTP API) failed; carries the query."""

    def __init__(self, message: str, *, query: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.query = query
        self.url = url


class StoreError(SidecarError):
    """The history store failed or is unavailable."""


class CorruptSnapshotError(StoreError):
    """A snapshot whose checksum does not match its content."""

    def __init__(self, message: str, *, snapshot_id: str | None = None) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id

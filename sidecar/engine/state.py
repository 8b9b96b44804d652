"""What the engine knows, in one place: every per-series and per-twin array, and the registry around them.

An array is declared once, as one line of :class:`SeriesArrays` or :class:`TwinArrays` (its fill value, dtype and
width): allocating, growing and resetting a slot all read that declaration, so adding an array is one line and no
room of the engine keeps its own list of them. Arrays grow by replacement, so the rooms read them through the
store (``state.rows.eta``) and never keep one across a growth.

:class:`EngineState` is the rest of the shared state the rooms (``twins``, ``tick``, ``reports``, ``rules``,
``restore``) work on: the series table and model banks, the twin registry, open alerts, the outbox and the view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .anomaly import AnomalyBank
from .correct import AutoCorrector
from .diverge import DivergenceDetector
from .forecast import ForecastBank
from .monitor import Monitor
from .predict import forecast_bank
from .records import DigitalTwin, DivergenceAlert, Source
from .series import SeriesTable, _grow
from .settings import EngineSettings
from .view import EngineView, Outbox

SOURCE_CODES: tuple[Source, ...] = tuple(Source)


@dataclass(frozen=True, slots=True)
class Column:
    """One array of a store: a slot's value before anything is known, its dtype, and its width per slot."""
    fill: float | int | bool
    dtype: np.dtype[Any]
    width: str | int | None = None      # None: one value per slot; "horizons": one per horizon; n: n values


def column(fill: float | int | bool, dtype: Any = np.float64, width: str | int | None = None) -> Any:
    """Declare an array of a store (typed ``Any`` so the class body can annotate it as the array it becomes)."""
    return Column(fill, np.dtype(dtype), width)


class ArrayStore:
    """Arrays with one row per slot, declared as :func:`column` class attributes; see the module docstring."""

    columns: ClassVar[dict[str, Column]] = {}

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.columns = {name: c for name, c in vars(cls).items() if isinstance(c, Column)}

    def __init__(self, rows: int, horizons: int) -> None:
        self.horizons = horizons
        for name, c in self.columns.items():
            setattr(self, name, np.full(self._shape(c, rows), c.fill, c.dtype))

    def _shape(self, c: Column, rows: int) -> tuple[int, ...]:
        if c.width is None:
            return (rows,)
        return (rows, self.horizons if c.width == "horizons" else int(c.width))

    @property
    def rows(self) -> int:
        first = next(iter(self.columns))
        return int(getattr(self, first).shape[0])

    def grow(self, rows: int) -> None:
        """At least ``rows`` rows; the new ones hold the fill values."""
        if self.rows >= rows:
            return
        for name, c in self.columns.items():
            setattr(self, name, _grow(getattr(self, name), rows, c.fill))

    def reset(self, rows: int | np.ndarray) -> None:
        """Rows back to the fill values (a reused slot forgets its past)."""
        for name, c in self.columns.items():
            getattr(self, name)[rows] = c.fill


class SeriesArrays(ArrayStore):
    """Per series (a series slot is a row); configuration first, then what each tick computes."""

    manual_expected: np.ndarray = column(np.nan)    # the expected value a person or the rules set
    threshold: np.ndarray = column(np.nan)          # divergence threshold, percent
    limit: np.ndarray = column(np.nan)
    direction: np.ndarray = column(0, np.int8)      # +1 divergence above hurts, -1 below, 0 both
    hshow: np.ndarray = column(True, bool, "horizons")   # horizons the series' twin asked for (the rest unshown)
    expected: np.ndarray = column(np.nan)
    div_ratio: np.ndarray = column(np.nan)
    div_pct: np.ndarray = column(np.nan)
    severity: np.ndarray = column(0, np.int8)
    run_len: np.ndarray = column(0, np.int64)
    anomaly_score: np.ndarray = column(np.nan)
    fc_mean: np.ndarray = column(np.nan, np.float64, "horizons")
    fc_lower: np.ndarray = column(np.nan, np.float64, "horizons")
    fc_upper: np.ndarray = column(np.nan, np.float64, "horizons")
    fc_conf: np.ndarray = column(np.nan, np.float64, "horizons")
    fc_model: np.ndarray = column(0, np.int8, "horizons")
    fc_regime: np.ndarray = column(1, np.int8, "horizons")     # regime.REGIMES code per horizon
    slope: np.ndarray = column(np.nan)
    eta: np.ndarray = column(np.nan)
    alert_open: np.ndarray = column(False, bool)
    alert_sev: np.ndarray = column(0, np.int8)
    last_pred_emit: np.ndarray = column(-np.inf)


class TwinArrays(ArrayStore):
    """Per twin (a twin slot is a row): the roll-up of its series and its sync counters."""

    health: np.ndarray = column(100.0)
    band: np.ndarray = column(0, np.int8)
    drift: np.ndarray = column(False, bool)
    risk_count: np.ndarray = column(0, np.int64)
    last_sync: np.ndarray = column(np.nan)
    sync_count: np.ndarray = column(0, np.int64)
    source_count: np.ndarray = column(0, np.int64, len(SOURCE_CODES))   # accepted syncs per source
    last_source: np.ndarray = column(-1, np.int8)


#: Every array name the engine keeps, and which store holds it.
ARRAY_STORE: dict[str, str] = {**dict.fromkeys(SeriesArrays.columns, "rows"),
                               **dict.fromkeys(TwinArrays.columns, "twin_rows")}


@dataclass(eq=False)
class EngineState:
    """The shared state every room of the engine reads and writes; see the module docstring."""

    settings: EngineSettings
    series: SeriesTable
    bank: ForecastBank
    anomaly: AnomalyBank
    horizons_s: np.ndarray
    rows: SeriesArrays
    twin_rows: TwinArrays
    monitor: Monitor
    view: EngineView
    detector: DivergenceDetector = field(default_factory=DivergenceDetector)
    corrector: AutoCorrector = field(default_factory=AutoCorrector)
    twins: dict[str, DigitalTwin] = field(default_factory=dict)
    by_name: dict[str, str] = field(default_factory=dict)
    twin_slot: dict[str, int] = field(default_factory=dict)
    slot_twin: list[str | None] = field(default_factory=list)
    free_twin_slots: list[int] = field(default_factory=list)
    outbox: Outbox = field(default_factory=Outbox)
    alerts: dict[int, DivergenceAlert] = field(default_factory=dict)   # series slot -> its open alert
    horizon_mask: dict[str, np.ndarray] = field(default_factory=dict)  # twin id -> (H,) bool; absent: every horizon
    # twin id -> (metric -> direction, metric -> (low, high)): the rules file's, like the horizons
    metric_rules: dict[str, tuple[dict[str, str], dict[str, tuple[float, float]]]] = field(default_factory=dict)
    # twin id -> the expected-state keys set or cleared since this engine started (None: the whole state
    # replaced, by a rollback); what a merge of the stored state after an outage must not overwrite
    expected_touched: dict[str, set[str] | None] = field(default_factory=dict)
    used_slots: set[int] = field(default_factory=set)   # slots that have held a series (reuse must reset them)
    names_cache: tuple[tuple[str, ...], tuple[str, ...], np.ndarray] | None = None
    key_arrays: tuple[np.ndarray, np.ndarray] | None = None   # slot -> twin id / metric
    last_at: float = math.nan
    dirty: bool = False                      # quiet ingests left roll-up and view stale
    twins_refused: dict[str, int] = field(default_factory=dict)   # limit name -> new twins refused, ever
    refusing: bool = False                   # the last new twin was refused (told once until one is accepted)

    @classmethod
    def new(cls, settings: EngineSettings | None = None) -> EngineState:
        s = settings or EngineSettings()
        series = SeriesTable(s.history_size)
        bank = forecast_bank(s.horizons_s, level=s.level, model=s.model)
        h = len(bank.horizons_s)
        return cls(settings=s, series=series, bank=bank, anomaly=AnomalyBank(),
                   horizons_s=bank.horizons_s, rows=SeriesArrays(series.capacity, h),
                   twin_rows=TwinArrays(16, h), monitor=Monitor(s.event_buffer),
                   view=EngineView.empty(bank.horizons_s))

    def advance(self, at: float) -> None:
        """The engine's latest time moves to ``at`` (never back)."""
        self.last_at = at if not math.isfinite(self.last_at) else max(self.last_at, at)

    def touch(self, at: float) -> None:
        """Something changed outside a tick: rebuild the view when it is next read."""
        self.advance(at)
        self.dirty = True

    def touch_expected(self, twin_id: str, keys: Sequence[str] | None) -> None:
        """Remember expected-state keys changed since the start (``None``: the whole state replaced)."""
        if keys is None:
            self.expected_touched[twin_id] = None
            return
        touched = self.expected_touched.setdefault(twin_id, set())
        if touched is not None:
            touched.update(keys)

    def forget_names(self) -> None:
        """The series' names changed: the view's and the outbox's name arrays are rebuilt when next needed."""
        self.names_cache = self.key_arrays = None

"""``Target``: one live twin the scheduler queries, its concrete queries and where they came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..config import TwinRule
from .naming import shared_queries


@dataclass(slots=True)
class Target:
    """One live twin the scheduler queries: its concrete queries and where they came from."""

    name: str
    rule: TwinRule
    queries: dict[str, str]              # metric -> PromQL (placeholders filled)
    labels: dict[str, str] = field(default_factory=dict)
    absent_rounds: int = 0               # discovered twins: successful discovery rounds without the series
    key: tuple[tuple[str, str], ...] = ()   # discovered twins: the naming labels and their values
    by_labels: bool = True               # found by ``key`` (False: restored, named from other naming labels)

    def metrics(self) -> list[str]:
        """Every metric the twin gets: its own queries and its rule's shared ones."""
        return [*self.queries, *shared_queries(self.rule)]


#: A family's twins by naming labels: label names -> label values -> the twin's position in the family.
NamingIndex = dict[tuple[str, ...], dict[tuple[str, ...], int]]


def naming_index(family: Sequence[Target]) -> NamingIndex:
    """The family's twins indexed by their naming labels (built once, looked up once per row)."""
    groups: NamingIndex = {}
    for i, t in enumerate(family):
        groups.setdefault(tuple(k for k, _ in t.key), {})[tuple(v for _, v in t.key)] = i
    return groups


def row_positions(family: Sequence[Target], labels: Sequence[Mapping[str, str]], keep: Sequence[int],
                  index: NamingIndex | None = None) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(rows, twins): each row of an answer (among ``keep``, in that order) that carries the naming labels (names
    and values) of a twin of ``family``, beside that twin's position in ``family``.

    The twins are indexed by their naming labels once (``index``, else built here) and each row is looked up in
    that index: O(twins + rows) for a family named by one set of labels, never every twin against every row.
    """
    groups = naming_index(family) if index is None else index
    rows: list[int] = []
    twins: list[int] = []
    for names, by_value in groups.items():
        if len(names) == 1:                  # the common case, without a tuple per row
            (name,) = names
            one = {v: i for (v,), i in by_value.items()}
            for r in keep:
                value = labels[r].get(name)
                if value is not None and (hit := one.get(value)) is not None:
                    rows.append(r)
                    twins.append(hit)
            continue
        for r in keep:
            lbl = labels[r]
            if all(k in lbl for k in names):
                hit = by_value.get(tuple(lbl[k] for k in names))
                if hit is not None:
                    rows.append(r)
                    twins.append(hit)
    return np.asarray(rows, np.int64), np.asarray(twins, np.int64)


def rows_by_twin(family: Sequence[Target], labels: Sequence[Mapping[str, str]],
                 keep: Sequence[int]) -> dict[str, list[int]]:
    """The rows of an answer (among ``keep``, in that order) by the name of the twin of ``family`` whose naming
    labels they carry (:func:`row_positions`)."""
    rows, twins = row_positions(family, labels, keep)
    hits: dict[str, list[int]] = {}
    for r, i in zip(rows.tolist(), twins.tolist(), strict=True):
        hits.setdefault(family[i].name, []).append(r)
    return hits

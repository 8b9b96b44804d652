"""``Target``: one live twin the scheduler queries, its concrete queries and where they came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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


def rows_by_twin(family: Sequence[Target], labels: Sequence[Mapping[str, str]],
                 keep: Sequence[int]) -> dict[str, list[int]]:
    """The rows of an answer (among ``keep``, in that order) by the twin of ``family`` whose naming labels
    (names and values) they carry.

    The twins are indexed by their naming labels once and each row is looked up in that index: O(twins +
    rows) for a family named by one set of labels, never every twin against every row.
    """
    groups: dict[tuple[str, ...], dict[tuple[str, ...], Target]] = {}
    for t in family:
        groups.setdefault(tuple(k for k, _ in t.key), {})[tuple(v for _, v in t.key)] = t
    hits: dict[str, list[int]] = {}
    for names, by_value in groups.items():
        for i in keep:
            lbl = labels[i]
            if all(k in lbl for k in names):
                hit = by_value.get(tuple(lbl[k] for k in names))
                if hit is not None:
                    hits.setdefault(hit.name, []).append(i)
    return hits

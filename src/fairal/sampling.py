"""The seeded per-group draws: the fixed test split, the initial labeled sets and the baseline cohorts all draw
a number of cases from each group with one rule, so that the same seed gives the same cases everywhere."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from fairal.errors import FairalError


def sorted_groups(groups) -> list:
    """Group labels in sorted order (numbers numerically), or as text when they cannot be compared."""
    try:
        return sorted(groups)
    except TypeError:
        return sorted(groups, key=str)


def split_evenly(total: int, groups: Sequence[Hashable]) -> dict:
    """``total`` split over ``groups`` as evenly as possible; the first groups get the remainder."""
    if not groups:
        raise FairalError("no group to split cases over")
    base, extra = divmod(total, len(groups))
    return {g: base + (i < extra) for i, g in enumerate(groups)}


def draw_per_group(ids_by_group: Mapping[Hashable, Sequence[str]], counts: Mapping[Hashable, int],
                   rng: np.random.Generator, what: str = "the draw", short: str = ", the pool has",
                   hint: str = "") -> list[str]:
    """``counts[g]`` case ids of each group, drawn without replacement with ``rng`` from the group's ids sorted,
    groups in the order of ``counts``. Returns the ids sorted."""
    chosen: list[str] = []
    for g, n in counts.items():
        ids = sorted(ids_by_group.get(g, []))
        if n > len(ids):
            raise FairalError(f"{what} needs {n} Group {g} cases{short} {len(ids)}{hint}")
        if n:
            chosen += rng.choice(ids, size=n, replace=False).tolist()
    return sorted(chosen)


def test_split(ids_by_group: Mapping[Hashable, Sequence[str]], per_group: int, seed: int) -> set[str]:
    """The fixed test set: ``per_group`` cases of each group (at most half of a group), groups in sorted order,
    drawn from the seed. Every experiment on a dataset uses it; the rest is the training pool."""
    rng = np.random.default_rng([seed, 0, 1])
    test: set[str] = set()
    for g in sorted_groups(ids_by_group):
        ids = sorted(ids_by_group[g])
        n = min(per_group, len(ids) // 2)
        test.update(rng.choice(ids, size=n, replace=False).tolist())
    return test

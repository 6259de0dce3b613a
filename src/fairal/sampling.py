"""Seeded randomness in one place: the named random streams, and the per-group draws.

Every random choice of fairal draws from a **named stream** (:data:`STREAMS`): ``stream(seed, "initial-set",
init)`` is the generator of one initial set, ``stream_seed(seed, "training", rnd)`` the torch seed of one round's
training. A stream's entropy is the seed, the stream's number and its keys (text keys as 64-bit words of their
SHA-256), so two streams never share draws and ``g12-heavy`` and ``g21-heavy`` get different sets. The
simulator's streams keep the entropy they always had (the calibration in docs/simulation.md was measured on them).

The fixed test split, the initial labeled sets and the baseline cohorts all draw a number of cases from each group
with one rule (:func:`draw_per_group`), so that the same seed gives the same cases everywhere."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from fairal.errors import FairalError

#: The first number of fairal's own streams: far above any subject index, so that no stream's entropy can equal a
#: simulated subject's ``[seed, 1 + index]``.
_BASE = 0xFA1A0000

#: Every random stream: name -> (number, what it draws). The simulator's streams (numbers below ``_BASE``) keep
#: the layout they always had (see :func:`entropy`).
STREAMS: dict[str, tuple[int, str]] = {
    # simulator (fairal simulate): seed = the dataset's seed, or the model seed for the deformation models
    "subject-groups": (0, "which subjects are in Group 1, in a shuffled order"),
    "subject": (1, "one subject's global coefficients and bias c (key: its index)"),
    "global-model": (1, "the default global deformation model's random components (model seed)"),
    "local-model": (2, "the default local deformation model's random components (model seed)"),
    "test-split": (0, "the fixed test split of a dataset"),
    "eval-groups": (_BASE + 0, "the groups of the evaluation subjects, in a shuffled order"),
    "eval-subject": (_BASE + 1, "one evaluation subject's coefficients and bias c (key: its index)"),
    "acquisition-inu": (_BASE + 2, "one subject's intensity non-uniformity field (key: its case id)"),
    "acquisition-noise": (_BASE + 3, "one subject's Rician noise (key: its case id)"),
    # experiments: seed = the run's or baseline's seed
    "cohort": (_BASE + 10, "the baseline (Table 1) training cohorts"),
    "baseline-training": (_BASE + 11, "the baseline models' initial weights and batches"),
    "initial-set": (_BASE + 20, "an AL run's initial labeled set (key: the initial set's name)"),
    "training": (_BASE + 21, "an AL round's initial weights and batches (key: the round)"),
    "mc-dropout": (_BASE + 22, "an AL round's MC-dropout draws (key: the round)"),
    "selection": (_BASE + 23, "an AL round's random scores and stochastic batches (key: the round)"),
    "group-classifier": (_BASE + 24, "the folds of an AL round's group classifier (groups_known false; key: the "
                         "round)"),
    # training: seed = the training's own seed
    "training-restart": (_BASE + 30, "the k-th restart of a collapsed training (key: k)"),
    "mc-dropout-batch": (_BASE + 31, "the dropout masks of one batch of MC-dropout prediction (key: the batch)"),
    # own data (fairal query, the API): seed = the query's seed
    "harm-subjects": (_BASE + 50, "a harm calibration's subjects (seed: the recipe's; key: the ladder's name)"),
    "harm-training": (_BASE + 51, "a harm calibration's Group 2-only models (key: the training seed)"),
    "harm-bootstrap": (_BASE + 52, "a harm calibration's bootstrap of the gap (key: the level)"),
    "ladder-rung": (_BASE + 53, "the subjects of one rung of a study's ladder (key: the rung's target gap)"),
    "query-selection": (_BASE + 40, "a query's random scores and stochastic batches"),
    "query-training": (_BASE + 41, "a query's model (initial weights and batches)"),
    "query-folds": (_BASE + 42, "the folds of the out-of-fold Dice behind a query's weights"),
    "query-fold-training": (_BASE + 43, "the model of one fold (key: the fold)"),
    "query-classifier": (_BASE + 44, "the folds of the group classifier's cross-validation"),
}


def _word(key) -> int:
    """A stream key as an entropy word: a whole number >= 0 as itself, text as 64 bits of its SHA-256."""
    if isinstance(key, bool) or not isinstance(key, int | np.integer | str):
        raise FairalError(f"a stream key must be a whole number or text, got {key!r}")
    if isinstance(key, str):
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    if key < 0:
        raise FairalError(f"a stream key must be >= 0, got {key}")
    return int(key)


def entropy(seed: int, name: str, *keys) -> list[int]:
    """The entropy of stream ``name`` under ``seed`` with ``keys``.

    fairal's own streams: ``[seed, number, *keys, len(keys) + 1]``; the last word is never 0, because NumPy's
    ``SeedSequence`` pads entropy with zeros (``[s, n]`` and ``[s, n, 0]`` would draw the same). The simulator's
    streams keep their original layout, on which the calibration was measured: a subject ``i`` ``[seed, 1 + i]``,
    the groups ``[seed, 0]``, the test split ``[seed, 0, 1]``, the models ``[model_seed, 1]`` and
    ``[model_seed, 2]`` (the model streams coincide with subjects 0 and 1 of a dataset whose seed equals the model
    seed: the basis noise of the population's model and two subjects' coefficients, independent in use)."""
    if name not in STREAMS:
        raise FairalError(f"unknown random stream {name!r}; streams: {', '.join(STREAMS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise FairalError(f"a seed must be a whole number >= 0, got {seed!r}")
    number = STREAMS[name][0]
    words = [_word(k) for k in keys]
    if name == "subject":
        return [int(seed), number + words[0]]
    if name == "test-split":
        return [int(seed), 0, 1]
    if number < _BASE:
        return [int(seed), number]
    return [int(seed), number, *words, len(words) + 1]


def stream(seed: int, name: str, *keys) -> np.random.Generator:
    """The NumPy generator of stream ``name`` (:data:`STREAMS`) under ``seed`` and ``keys``."""
    return np.random.default_rng(entropy(seed, name, *keys))


def stream_seed(seed: int, name: str, *keys) -> int:
    """A torch seed (0 <= s < 2^31 - 1) from stream ``name`` under ``seed`` and ``keys``."""
    return int(np.random.SeedSequence(entropy(seed, name, *keys)).generate_state(1)[0] % (2**31 - 1))


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
    rng = stream(seed, "test-split")
    test: set[str] = set()
    for g in sorted_groups(ids_by_group):
        ids = sorted(ids_by_group[g])
        n = min(per_group, len(ids) // 2)
        test.update(rng.choice(ids, size=n, replace=False).tolist())
    return test

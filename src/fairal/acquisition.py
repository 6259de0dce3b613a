"""Acquisition: voxel entropy, the volume scores of each strategy, the group weights, and top-k selection.

Scoring is kept apart from selection: each strategy turns per-case statistics into one score per pool case,
and :func:`select_top_k` picks the cases to annotate, so any score composes with the same selection rule.

| strategy | score of a pool case x |
| --- | --- |
| ``random`` | a seeded uniform draw |
| ``entropy`` | mean voxel entropy over the whole (cropped) volume |
| ``localized-entropy`` | Eq. 1: mean voxel entropy over R, the predicted mask dilated by r voxels |
| ``weighted-localized-entropy`` | Eq. 2: ``w_g(x) * localized entropy`` |
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from fairal.errors import FairalError

STRATEGIES = ("random", "entropy", "localized-entropy", "weighted-localized-entropy")
_EPS = 1e-7


def voxel_entropy(proba: np.ndarray) -> np.ndarray:
    """Binary entropy (nats) of the sigmoid output p: ``H = -p log p - (1 - p) log(1 - p)``; 0 at p = 0 or 1."""
    p = np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1 - _EPS)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2


def roi_mask(proba: np.ndarray, dilation: int, fallback: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """R for Eq. 1: the predicted mask (p > 0.5) dilated by a ball of ``dilation`` voxels.

    When nothing is predicted, the ``fallback`` region (the template's structure) dilated the same way is used;
    with no usable fallback, the whole volume. Returns the mask and which of ``predicted``/``template``/``volume``
    it came from.
    """
    pred = np.asarray(proba) > 0.5
    source = "predicted"
    if not pred.any():
        if fallback is not None and np.asarray(fallback).any():
            pred, source = np.asarray(fallback, bool), "template"
        else:
            return np.ones(pred.shape, bool), "volume"
    if dilation > 0:
        pred = ndimage.binary_dilation(pred, structure=_ball(dilation))
    return pred, source


def localized_entropy(proba: np.ndarray, roi: np.ndarray) -> float:
    """Eq. 1: ``H_hat = (1 / |R|) * sum_{v in R} H(v)``, the size-normalised entropy inside R."""
    roi = np.asarray(roi, bool)
    if roi.shape != np.shape(proba):
        raise FairalError(f"ROI shape {roi.shape} differs from the probability map's {np.shape(proba)}")
    if not roi.any():
        raise FairalError("the ROI of the localized entropy is empty")
    return float(voxel_entropy(np.asarray(proba)[roi]).mean())


def mean_entropy(proba: np.ndarray) -> float:
    """The ``entropy`` strategy's score: mean voxel entropy over the whole volume."""
    return float(voxel_entropy(proba).mean())


def group_weights(
    dice: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    all_groups: Sequence[Hashable],
    temperature: float = 1.0,
) -> dict:
    """Section 3.2: ``z_g = (mean DSC_all - mean DSC_g) / std DSC_all``, ``w_g = softmax(z / T)_g``.

    ``dice``/``groups``: the trained model's Dice on each labeled case and its group. ``std`` is the population
    standard deviation over the labeled set. ``temperature`` T = 1 is the paper's softmax. Edge cases:

    - ``std = 0`` (all labeled cases segmented equally well, or one labeled case): equal weights.
    - a group of ``all_groups`` with no labeled case: its mean Dice is taken as the worst labeled case's Dice,
      so the group the model has never been trained on is favoured, but no more than the worst observed case.
    """
    d = np.asarray(dice, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    if d.size == 0:
        raise FairalError("group weights need at least one labeled case")
    if d.shape != g.shape:
        raise FairalError(f"{d.size} Dice values for {g.size} groups")
    if temperature <= 0:
        raise FairalError(f"the softmax temperature must be > 0, got {temperature}")
    groups_all = list(dict.fromkeys(all_groups))
    overall, sd = float(d.mean()), float(d.std())
    if sd < 1e-12:
        return {k: 1.0 / len(groups_all) for k in groups_all}
    means = {k: float(d[g == k].mean()) if np.any(g == k) else float(d.min()) for k in groups_all}
    z = np.array([(overall - means[k]) / sd for k in groups_all]) / temperature
    e = np.exp(z - z.max())
    w = e / e.sum()
    return {k: float(v) for k, v in zip(groups_all, w, strict=True)}


def strategy_scores(
    strategy: str,
    case_ids: Sequence[str],
    groups: Sequence[Hashable],
    entropy: Sequence[float],
    localized: Sequence[float],
    weights: Mapping[Hashable, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the pool cases under ``strategy`` and the group weight each case got (1 where unused)."""
    n = len(case_ids)
    if strategy not in STRATEGIES:
        raise FairalError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    ones = np.ones(n)
    if strategy == "random":
        return rng.random(n), ones
    if strategy == "entropy":
        return np.asarray(entropy, dtype=np.float64), ones
    if strategy == "localized-entropy":
        return np.asarray(localized, dtype=np.float64), ones
    w = np.array([weights[g] for g in groups], dtype=np.float64)  # Eq. 2
    return w * np.asarray(localized, dtype=np.float64), w


def select_top_k(case_ids: Sequence[str], scores: Sequence[float], k: int) -> list[str]:
    """The ``k`` highest scores; ties broken by case id (ascending), so selection is deterministic."""
    if k < 0:
        raise FairalError(f"cannot select {k} cases")
    order = sorted(range(len(case_ids)), key=lambda i: (-float(scores[i]), str(case_ids[i])))
    return [case_ids[i] for i in order[:k]]

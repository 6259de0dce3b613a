"""Acquisition: voxel uncertainties, the volume scores of each strategy, the group weights, and the selection.

Scoring is kept apart from selection: each strategy turns per-case statistics into one score per pool case,
and :func:`select` picks the cases to annotate (the top k, or the best of random candidate batches), so any
score composes with either selection rule.

A strategy name is composed as ``[stochastic-][weighted-]BASE[-tT]``:

| part | meaning |
| --- | --- |
| ``random`` | a seeded uniform draw |
| ``entropy`` | mean voxel entropy over the whole (cropped) volume |
| ``localized-entropy`` | Eq. 1: mean voxel entropy over R, the predicted mask dilated by r voxels |
| ``bald`` | MC-dropout BALD: mean voxel mutual information ``H[E p] - E H[p]`` over R (dropout samples) |
| ``weighted-`` | Eq. 2: the score times the group weight ``w_g(x)`` (expected weight if the group is unknown) |
| ``-tT`` | the softmax temperature T of the group weights (default: the profile's, 1 in the paper) |
| ``stochastic-`` | Gaillochet et al. 2023: draw random candidate batches of the budget's size and take the one with \
the highest mean score |

The paper's four are ``random``, ``entropy``, ``localized-entropy`` and ``weighted-localized-entropy``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from fairal.errors import FairalError

#: The paper's four strategies, and the ones beyond it that the grids run by default.
PAPER_STRATEGIES = ("random", "entropy", "localized-entropy", "weighted-localized-entropy")
EXTRA_STRATEGIES = ("bald", "weighted-bald", "stochastic-weighted-localized-entropy", "weighted-localized-entropy-t0.5")
ALL_STRATEGIES = PAPER_STRATEGIES + EXTRA_STRATEGIES
#: The extras of the ``standard`` grid: plain ``bald`` is left out there (MC dropout makes a round ~4x longer on a CPU).
STANDARD_EXTRAS = ("weighted-bald", "stochastic-weighted-localized-entropy", "weighted-localized-entropy-t0.5")

__all__ = ["PAPER_STRATEGIES", "STRATEGIES", "BASES", "Strategy", "parse_strategy", "group_weights", "expected_weights",
           "case_weights",
           "strategy_scores", "select", "select_top_k", "stochastic_batch", "rank_cases", "ranking"]

#: The paper's four, then the ones beyond it that the grid runs by default (any composed name also works).
STRATEGIES = ALL_STRATEGIES
_EPS = 1e-7
_NAME = re.compile(r"^(?P<stochastic>stochastic-)?(?P<weighted>weighted-)?(?P<base>[a-z-]+?)(?:-t(?P<t>[0-9.]+))?$")


@dataclass(frozen=True)
class Base:
    """A base score: its name in strategy names, the per-case statistic it ranks by (computed by the round engine,
    :func:`fairal.engine.uncertainty_stats`; ``None`` for a seeded uniform draw), its words in reasons and figures,
    and what it needs (a U-Net with dropout for MC-dropout samples)."""

    name: str
    statistic: str | None
    label: str
    reason: str
    needs_dropout: bool = False


#: The strategy table: adding a base score is one entry here (and its statistic in the round engine).
BASES: dict[str, Base] = {b.name: b for b in (
    Base("random", None, "random", "random draw"),
    Base("entropy", "entropy", "entropy", "mean entropy"),
    Base("localized-entropy", "localized_entropy", "localized entropy", "localized entropy"),
    Base("bald", "bald", "BALD", "BALD (mutual information in the ROI)", needs_dropout=True),
)}


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy name: its base score, whether it is group-weighted, its own softmax temperature (None:
    the profile's) and whether it selects by stochastic batches."""

    name: str
    base: str
    weighted: bool = False
    temperature: float | None = None
    stochastic: bool = False

    @property
    def spec(self) -> Base:
        return BASES[self.base]

    @property
    def needs_dropout(self) -> bool:
        return self.spec.needs_dropout

    @property
    def label(self) -> str:
        """In words, for figures: "weighted localized entropy", "stochastic batches of weighted BALD, T = 0.5"."""
        text = ("weighted " if self.weighted else "") + self.spec.label
        if self.stochastic:
            text = "stochastic batches of " + text
        return text + (f", T = {self.temperature:g}" if self.temperature is not None else "")


def parse_strategy(name: str | Strategy) -> Strategy:
    """Read ``[stochastic-][weighted-]BASE[-tT]``; a clear error for anything else."""
    if isinstance(name, Strategy):
        return name
    known = ", ".join(STRATEGIES)
    m = _NAME.match(str(name).strip())
    if not m or m["base"] not in BASES:
        raise FairalError(f"unknown strategy {name!r}: a name is [stochastic-][weighted-]BASE[-tT] with BASE one of "
                          f"{', '.join(BASES)} (e.g. {known})")
    temperature = None
    if m["t"] is not None:
        try:
            temperature = float(m["t"])
        except ValueError:
            raise FairalError(f"strategy {name!r}: cannot read the temperature {m['t']!r}") from None
        if not m["weighted"]:
            raise FairalError(f"strategy {name!r}: a temperature (-t{m['t']}) needs group weights (weighted-...)")
        if not temperature > 0 or not math.isfinite(temperature):
            raise FairalError(f"strategy {name!r}: the softmax temperature must be > 0")
    if m["stochastic"] and m["base"] == "random":
        raise FairalError(f"strategy {name!r}: random candidate batches of random scores are just 'random'")
    return Strategy(str(name).strip(), m["base"], bool(m["weighted"]), temperature, bool(m["stochastic"]))


def voxel_entropy(proba: np.ndarray) -> np.ndarray:
    """Binary entropy (nats) of the sigmoid output p: ``H = -p log p - (1 - p) log(1 - p)``; 0 at p = 0 or 1."""
    p = np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1 - _EPS)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def mutual_information(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BALD's voxel mutual information from T dropout samples ``(T, X, Y, Z)`` of the foreground probability:
    ``I = H(mean_t p_t) - mean_t H(p_t)`` (>= 0). Returns ``(I, mean_t p_t)``."""
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim < 2 or s.shape[0] < 2:
        raise FairalError(f"BALD needs at least 2 dropout samples, got shape {s.shape}")
    mean = s.mean(axis=0)
    mi = voxel_entropy(mean) - voxel_entropy(s).mean(axis=0)
    return np.maximum(mi, 0.0), mean


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
    return _roi_mean(voxel_entropy(np.asarray(proba)), roi)


def _roi_mean(values: np.ndarray, roi: np.ndarray) -> float:
    roi = np.asarray(roi, bool)
    if roi.shape != np.shape(values):
        raise FairalError(f"ROI shape {roi.shape} differs from the probability map's {np.shape(values)}")
    if not roi.any():
        raise FairalError("the ROI of the localized entropy is empty")
    return float(np.asarray(values)[roi].mean())


def localized_bald(mi: np.ndarray, roi: np.ndarray) -> float:
    """The ``bald`` score: mean voxel mutual information inside R (R from the mean dropout prediction)."""
    return _roi_mean(mi, roi)


# -- the same statistics in torch, on the device where the model predicts (a GPU: no map leaves it) --------------


def voxel_entropy_torch(proba: torch.Tensor) -> torch.Tensor:
    """:func:`voxel_entropy` of a tensor, in float64 on its device."""
    p = proba.double().clamp(_EPS, 1 - _EPS)
    return -(p * torch.log(p) + (1 - p) * torch.log1p(-p))


def mutual_information_torch(samples: torch.Tensor) -> torch.Tensor:
    """:func:`mutual_information`'s ``I`` of a (T, X, Y, Z) tensor of dropout samples, in float64 on its device."""
    if samples.dim() < 2 or samples.shape[0] < 2:
        raise FairalError(f"BALD needs at least 2 dropout samples, got shape {tuple(samples.shape)}")
    s = samples.double()
    return (voxel_entropy_torch(s.mean(dim=0)) - voxel_entropy_torch(s).mean(dim=0)).clamp_min(0.0)


def roi_mask_torch(proba: torch.Tensor, dilation: int,
                   fallback: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """:func:`roi_mask` of an (X, Y, Z) tensor on its device. The ball dilation is a convolution of the mask with
    the ball (zero padding: outside the volume is background, as scipy's ``border_value=0``); its counts are small
    integers, exact in float32."""
    pred = proba > 0.5
    source = "predicted"
    if not bool(pred.any()):
        if fallback is not None and bool(fallback.any()):
            pred, source = fallback.to(device=proba.device, dtype=torch.bool), "template"
        else:
            return torch.ones_like(pred), "volume"
    if dilation > 0:
        ball = torch.as_tensor(_ball(dilation), dtype=torch.float32, device=proba.device)[None, None]
        with torch.autocast(proba.device.type, enabled=False):
            pred = torch.nn.functional.conv3d(pred[None, None].float(), ball, padding=dilation)[0, 0] > 0.5
    return pred, source


def mean_entropy(proba: np.ndarray) -> float:
    """The ``entropy`` strategy's score: mean voxel entropy over the whole volume."""
    return float(voxel_entropy(proba).mean())


def group_weights(
    dice: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    all_groups: Sequence[Hashable],
    temperature: float = 1.0,
) -> dict:
    """The group weights of Eq. 2 (Section 3.2): ``z_g = (mean DSC_all - mean DSC_g) / std DSC_all``,
    ``w_g = softmax(z / T)_g``.

    ``dice``/``groups``: the trained model's Dice on each labeled case and its group (``None`` for a case whose
    group is unknown: it counts in ``DSC_all`` and its std, in no group). ``std`` is the population standard
    deviation over the labeled set. ``temperature`` T = 1 is the paper's softmax; any number of groups. Edge cases:

    - ``std = 0`` (all labeled cases segmented equally well, or one labeled case): equal weights.
    - a group of ``all_groups`` with no labeled case: its mean Dice is taken as the worst labeled case's Dice,
      so the group the model has never been trained on is favoured, but no more than the worst observed case.
    """
    d = np.asarray(dice, dtype=np.float64)
    g = np.empty(len(groups), dtype=object)
    g[:] = list(groups)
    if d.size == 0:
        raise FairalError("group weights need at least one labeled case")
    if d.shape != g.shape:
        raise FairalError(f"{d.size} Dice values for {g.size} groups")
    if temperature <= 0:
        raise FairalError(f"the softmax temperature must be > 0, got {temperature}")
    groups_all = list(dict.fromkeys(all_groups))
    if not groups_all:
        raise FairalError("group weights need at least one group")
    overall, sd = float(d.mean()), float(d.std())
    if sd < 1e-12:
        return {k: 1.0 / len(groups_all) for k in groups_all}
    means = {k: float(d[g == k].mean()) if np.any(g == k) else float(d.min()) for k in groups_all}
    z = np.array([(overall - means[k]) / sd for k in groups_all]) / temperature
    e = np.exp(z - z.max())
    w = e / e.sum()
    return {k: float(v) for k, v in zip(groups_all, w, strict=True)}


def expected_weights(proba: np.ndarray, weights: Mapping[Hashable, float], order: Sequence[Hashable]) -> np.ndarray:
    """The weight of a case whose group is unknown: ``sum_g p(g|x) w_g``. ``proba`` is (n_cases, n_groups) with
    columns in ``order``; each row must sum to 1."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(order):
        raise FairalError(f"group probabilities must be (cases, {len(order)}), got {p.shape}")
    if p.size and (np.any(p < -1e-9) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6)):
        raise FairalError("group probabilities must be >= 0 and sum to 1 for each case")
    w = np.array([weights[g] for g in order], dtype=np.float64)
    return p @ w


def case_weights(groups: Sequence[Hashable | None], weights: Mapping[Hashable, float],
                 p_group: np.ndarray | None = None, order: Sequence[Hashable] = ()) -> np.ndarray:
    """Each case's weight in Eq. 2: ``w_g`` of its group, or, for a case whose group is unknown (``None``), the
    expected weight ``sum_g p(g|x) w_g`` from its row of ``p_group`` (columns in ``order``)."""
    out = np.empty(len(groups), dtype=np.float64)
    unknown = [i for i, g in enumerate(groups) if g is None]
    for i, g in enumerate(groups):
        if g is not None:
            out[i] = weights[g]
    if unknown:
        if p_group is None:
            raise FairalError("cases of unknown group need group probabilities for their expected weight")
        out[unknown] = expected_weights(np.asarray(p_group)[unknown], weights, order)
    return out


def strategy_scores(
    strategy: str | Strategy,
    stats: Mapping[str, Sequence[float]],
    weights: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the pool cases under ``strategy`` and the group weight each case got (1 where unused).

    ``stats``: the per-case statistics of the round engine (``entropy``, ``localized_entropy``, ``bald``: one value
    per case); ``weights``: each case's group weight ``w_g(x)`` (the expected weight over the groups where a case's
    group is unknown). A ``random`` base draws from ``rng``."""
    s = parse_strategy(strategy)
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    if s.spec.statistic is None:
        base = rng.random(n)
    else:
        values = stats.get(s.spec.statistic)
        if values is None or np.isnan(np.asarray(values, dtype=np.float64)).any():
            raise FairalError(f"strategy {s.name} needs the statistic {s.spec.statistic!r} of every pool case")
        base = np.asarray(values, dtype=np.float64)
        if base.shape != (n,):
            raise FairalError(f"{base.size} values of {s.spec.statistic} for {n} cases")
    if not s.weighted:
        return base, np.ones(n)
    return w * base, w  # Eq. 2


def select_top_k(case_ids: Sequence[str], scores: Sequence[float], k: int) -> list[str]:
    """The ``k`` highest scores; ties broken by case id (ascending), so selection is deterministic."""
    return rank_cases(case_ids, scores)[: _check_k(k)]


def rank_cases(case_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """All cases by descending score, ties by case id."""
    order = sorted(range(len(case_ids)), key=lambda i: (-float(scores[i]), str(case_ids[i])))
    return [case_ids[i] for i in order]


def ranking(case_ids: Sequence[str], scores: Sequence[float], selected: Sequence[str]) -> list[str]:
    """Every case: the ``selected`` ones first (in selection order), then the rest by descending score."""
    chosen = set(selected)
    return list(selected) + [c for c in rank_cases(case_ids, scores) if c not in chosen]


def _check_k(k: int) -> int:
    if k < 0:
        raise FairalError(f"cannot select {k} cases")
    return k


def stochastic_batch(
    case_ids: Sequence[str], scores: Sequence[float], k: int, n_batches: int, rng: np.random.Generator
) -> list[str]:
    """Gaillochet et al. (2023): draw ``n_batches`` random batches of ``k`` distinct cases and keep the one with
    the highest mean score (the first drawn on a tie); its cases in score order. Diversity comes from the random
    batches, informativeness from the score."""
    k = _check_k(k)
    n = len(case_ids)
    if n_batches < 1:
        raise FairalError(f"stochastic batches need at least one candidate batch, got {n_batches}")
    if k >= n:
        return rank_cases(case_ids, scores)
    if k == 0:
        return []
    s = np.asarray(scores, dtype=np.float64)
    batches = np.stack([rng.choice(n, size=k, replace=False) for _ in range(n_batches)])
    best = batches[int(np.argmax(s[batches].mean(axis=1)))]
    return rank_cases([case_ids[i] for i in best], s[best])


def select(
    strategy: str | Strategy, case_ids: Sequence[str], scores: Sequence[float], k: int, n_batches: int,
    rng: np.random.Generator,
) -> list[str]:
    """The cases to annotate: the top ``k`` scores, or with ``stochastic-`` the best random candidate batch."""
    s = parse_strategy(strategy)
    if s.stochastic:
        return stochastic_batch(case_ids, scores, k, n_batches, rng)
    return select_top_k(case_ids, scores, k)

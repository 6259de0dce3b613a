"""The active-learning round, one engine for ``fairal run``, the grid and ``fairal query``: fit the profile's
network (:mod:`fairal.run.network`) on the labeled cases, measure its Dice on them, weigh the groups (Eq. 2), compute
each candidate's statistics, score the candidates under a strategy, select the next batch.

A lab's own data is the same round with cases of unknown group (an expected weight, from group probabilities) and
no test set; what differs between the callers (warm starts and records for a run; resampling, a group classifier
and the annotator's files for a query) stays with them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fairal.acquisition import (
    STATISTICS,
    CaseMaps,
    PoolScore,
    PoolView,
    Strategy,
    case_statistics,
    case_weights,
    group_weights,
    plain_stats,
    pool_values,
    ranking,
    select,
    steering_groups,
    strategy_scores,
)
from fairal.config import Profile
from fairal.data.volumes import Case, VolumeSet
from fairal.metrics import dice_from_proba
from fairal.run.network import build_network
from fairal.run.packed import Member
from fairal.run.train import TrainConfig, TrainResult, load_checkpoint, predict_mc_dropout, predict_proba, train_model


def model_factory(profile: Profile, volumes: VolumeSet, train_rows: list[int], dropout: float = 0.0,
                  warm_from: str | Path | None = None) -> Callable[[], torch.nn.Module]:
    """The profile's network (:func:`fairal.run.network.build_network`, looked up when built) whose output bias
    starts at the training labels' foreground fraction (guards against collapse); ``dropout`` > 0 for the MC-dropout
    strategies; ``warm_from``: start from a checkpoint's weights."""
    prior = float(volumes.labels[train_rows].float().mean()) if train_rows else None
    prior = min(max(prior, 1e-4), 0.5) if prior is not None else None

    def build() -> torch.nn.Module:
        model = build_network(profile, foreground_prior=prior, dropout=dropout)
        if warm_from is not None:
            load_checkpoint(warm_from, model)
        return model

    return build


def training_member(profile: Profile, volumes: VolumeSet, rows: list[int], config: TrainConfig, strategy: Strategy,
                    warm_from: str | Path | None = None) -> Member:
    """What training the profile's network on the cases at ``rows`` needs (with dropout when the strategy samples
    it): the cases, the settings and the model factory, for :func:`fairal.run.train.train_model` or, with other runs
    in lockstep, :func:`fairal.run.packed.train_packed`."""
    dropout = profile.mc_dropout if strategy.needs_dropout else 0.0
    factory = model_factory(profile, volumes, rows, dropout=dropout, warm_from=warm_from)
    return Member(volumes.images[rows], volumes.labels[rows], config, factory)


def fit(profile: Profile, volumes: VolumeSet, rows: list[int], config: TrainConfig, strategy: Strategy,
        warm_from: str | Path | None = None, progress: bool = False) -> TrainResult:
    """Train the profile's network on the cases at ``rows`` (with dropout when the strategy samples it)."""
    m = training_member(profile, volumes, rows, config, strategy, warm_from)
    return train_model(m.images, m.labels, m.config, m.factory, progress=progress)


def evaluate(model: torch.nn.Module, volumes: VolumeSet, rows: list[int], batch_size: int = 8) -> list[float]:
    """Per-case Dice (threshold 0.5) of ``model`` on the cases at ``rows``."""
    dices = []
    for row, proba in zip(rows, predict_proba(model, volumes.images[rows], batch_size=batch_size), strict=True):
        dices.append(dice_from_proba(proba[0] if proba.ndim == 4 else proba, volumes.labels[row, 0].numpy()))
    return dices


def uncertainty_stats(model, images, fallback, profile: Profile, dropout: bool, seed: int, batch_size: int = 8
                      ) -> dict:
    """:func:`proba_stats` of ``model``'s predictions, computed with torch where the model is (a GPU: only the
    numbers leave it), and with ``dropout`` the statistics that need MC-dropout samples (BALD; their maps' ``proba``
    is the samples' mean), in the same R (from the deterministic prediction); without ``dropout`` those are NaN,
    as are the statistics computed from the network itself (:func:`acquisition_round` fills in the one it uses)."""
    device = next(model.parameters()).device
    fb = None if fallback is None else torch.as_tensor(np.asarray(fallback), dtype=torch.bool, device=device)
    probas = predict_proba(model, images, batch_size=batch_size, as_tensor=True)
    stats, rois = plain_stats(probas, profile.roi_dilation, fb, keep_rois=dropout)
    if dropout:
        draws = predict_mc_dropout(model, images, profile.mc_samples, seed, batch_size=batch_size, as_tensor=True)
        stats.update(case_statistics((CaseMaps(s.mean(dim=0), roi, s) for roi, s in zip(rois, draws, strict=True)),
                                     dropout=True))
    else:
        n = len(stats["roi_source"])
        stats.update({name: [float("nan")] * n for name, st in STATISTICS.items() if st.needs_dropout})
    n = len(stats["roi_source"])
    stats.update({name: [float("nan")] * n for name, st in STATISTICS.items() if st.needs_model})
    return stats


def prediction_features(model, images, blocks: int = 4, batch_size: int = 8) -> np.ndarray:
    """Each case's predicted foreground probability averaged over a ``blocks``^3 grid of blocks, one row per case:
    what the network sees in a case, small, for any network that predicts a foreground map (the default embedding
    of a pool-wide score, :class:`fairal.acquisition.PoolScore`)."""
    rows = [torch.nn.functional.adaptive_avg_pool3d(p.reshape(-1, *p.shape[-3:]).float(), blocks).flatten().cpu()
            for p in predict_proba(model, images, batch_size=batch_size, as_tensor=True)]
    return torch.stack(rows).double().numpy() if rows else np.zeros((0, blocks ** 3))


def pool_score(model, volumes: VolumeSet, candidates: Sequence[str], labeled: Sequence[str], pool: PoolScore,
               stats: Mapping[str, Sequence[float]], k: int, rng: np.random.Generator) -> np.ndarray:
    """A pool-wide base score of the round: every candidate and labeled case embedded (the score's ``embed``, else
    :func:`prediction_features`), then its value for each candidate (:func:`fairal.acquisition.pool_values`)."""
    embed = pool.embed or prediction_features
    view = PoolView(list(candidates), embed(model, volumes.images[volumes.rows(list(candidates))]),
                    embed(model, volumes.images[volumes.rows(list(labeled))]), stats, k, rng)
    return pool_values(pool, view)


@dataclass
class Round:
    """What one round decided: the labeled cases' Dice, the group weights, and for each candidate (in the order
    given) its statistics, weight and score; the selected cases, best first."""

    labeled_dice: list[float]
    weight_dice: list[float]
    weights: dict
    candidates: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    case_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    selected: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        """Every candidate: the selected ones first (in selection order), then the rest by score."""
        return ranking(self.candidates, self.scores, self.selected)


def acquisition_round(
    model: torch.nn.Module,
    volumes: VolumeSet,
    labeled: Sequence[str],
    candidates: Sequence[str],
    cases: Mapping[str, Case],
    groups: Sequence[Hashable],
    strategy: Strategy,
    profile: Profile,
    k: int,
    rng: np.random.Generator,
    mc_seed: int,
    weigh: bool = True,
    weight_dice: Callable[[list[float]], list[float]] | None = None,
    p_group: np.ndarray | None = None,
    hide_groups: bool = False,
) -> Round:
    """The round after training: the Dice of ``model`` on the ``labeled`` cases, the group weights of Eq. 2 over
    ``groups`` (``weigh``: else 1 for every group), each candidate's weight (its group's, or the expected weight
    from its row of ``p_group`` when its group is unknown), statistics, score, and the ``k`` cases to annotate.
    ``cases`` gives every case's record (:class:`fairal.data.volumes.Case`) by id.

    ``rng`` draws a pool-wide score's draws, the random scores and stochastic batches (in that order); ``mc_seed``
    seeds MC dropout.
    ``weight_dice`` may replace the labeled Dice behind the weights (e.g. cross-validated Dice). ``hide_groups``:
    no candidate's group is used, every one gets the expected weight from ``p_group`` (an AL run with
    ``groups_known`` false)."""
    rows = volumes.rows(list(labeled))
    labeled_dice = evaluate(model, volumes, rows, batch_size=8) if rows else []
    used_dice = weight_dice(labeled_dice) if weight_dice is not None else labeled_dice
    if weigh:
        temperature = strategy.temperature or profile.temperature
        weights = group_weights(used_dice, [cases[c].group for c in labeled], list(groups), temperature)
    else:
        weights = {g: 1.0 for g in groups}
    result = Round(labeled_dice, used_dice, weights, list(candidates))
    if not candidates or k <= 0:
        return result
    cand_rows = volumes.rows(list(candidates))
    result.stats = uncertainty_stats(model, volumes.images[cand_rows], volumes.roi[0].numpy(), profile,
                                     strategy.needs_dropout, seed=mc_seed)
    stat = STATISTICS.get(strategy.spec.statistic) if strategy.spec.statistic else None
    if stat is not None and stat.needs_model:
        result.stats[stat.name] = stat.from_model(model, volumes.images[cand_rows], volumes.images[rows],
                                                  volumes.labels[rows], [cases[c].group for c in labeled])
    if strategy.spec.pool is not None:  # it sees the whole pool at once (its values: not a column of the records)
        result.stats[strategy.spec.pool.name] = pool_score(model, volumes, candidates, labeled, strategy.spec.pool,
                                                           result.stats, k, rng)
    seen = [None if hide_groups else cases[c].group for c in candidates]
    result.case_weights = (case_weights(seen, weights, p_group, list(groups))
                           if groups else np.ones(len(candidates)))
    result.scores, result.case_weights = strategy_scores(strategy, result.stats, result.case_weights, rng)
    result.selected = select(strategy, list(candidates), result.scores, k, profile.stochastic_batches, rng,
                             groups=steering_groups(seen, p_group, list(groups)), weights=weights,
                             power_temperature=profile.power_temperature)
    return result


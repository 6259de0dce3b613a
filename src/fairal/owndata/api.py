"""fairal's acquisition for any segmentation model: rank scans for annotation from their probability maps.

The paper's scores need only a model's foreground probabilities, so they serve any model (nnU-Net, MONAI, your
own): give the maps of the unlabeled scans, their groups (``None`` where unknown, with group probabilities), and
the group weights from your model's Dice on the labeled scans.

>>> import numpy as np, fairal
>>> rng = np.random.default_rng(0)
>>> probas = {f"scan{i}": rng.random((8, 8, 8)) for i in range(4)}
>>> w = fairal.group_weights([0.92, 0.90, 0.75, 0.80], ["F", "F", "M", "M"], ["F", "M"])
>>> table = fairal.rank_for_annotation(probas, {"scan0": "F", "scan1": "M", "scan2": "M", "scan3": None}, w,
...                                    budget=2, p_group={"scan3": {"F": 0.5, "M": 0.5}})
>>> list(table.columns)
['rank', 'case_id', 'group', 'score', 'weight', 'entropy', 'localized_entropy', 'selected']
>>> int(table["selected"].sum())
2
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

import numpy as np
import pandas as pd

from fairal.acquisition import (
    STATISTICS,
    Strategy,
    case_weights,
    parse_strategy,
    proba_stats,
    select,
    steering_groups,
    strategy_scores,
)
from fairal.errors import FairalError
from fairal.run.rounds import Round
from fairal.sampling import stream


def from_maps(strategy: str | Strategy, where: str = "use fairal query") -> Strategy:
    """The strategy, if probability maps are all it needs: not MC-dropout samples, not the network, not the
    network's features of the whole pool (refused with the reason; ``where``: what to do instead)."""
    s = parse_strategy(strategy)
    if s.needs_dropout:
        raise FairalError(f"strategy {s.name} needs MC-dropout samples of the model, which probability maps do not "
                          f"hold: {where}, or score your own samples with fairal.acquisition.mutual_information")
    if s.spec.statistic and STATISTICS[s.spec.statistic].needs_model:
        raise FairalError(f"strategy {s.name} needs the network itself ({STATISTICS[s.spec.statistic].needs})")
    if s.spec.pool is not None:
        raise FairalError(f"strategy {s.name} scores the whole pool from the network's features ({s.spec.pool.label}),"
                          f" which probability maps do not hold: {where}")
    return s


def rank_maps(strategy: Strategy, ids: list[str], maps: Iterable, seen: list, weights: Mapping[Hashable, float],
              p_group: np.ndarray | None, budget: int, roi_dilation: int, seed: int, stochastic_batches: int,
              power_temperature: float) -> Round:
    """The round of a strategy that needs only probability maps (one per case of ``ids``, in that order; any
    iterable, read once): statistics, each case's weight (its group's from ``seen``, else the expected weight from
    its row of ``p_group``), score, and the ``budget`` cases to annotate, drawn from the seeded stream
    ``query-selection`` as :func:`fairal.owndata.query.run_query` draws them."""
    order = list(weights)
    stats = proba_stats(maps, roi_dilation)
    w = case_weights(seen, weights, p_group, order) if order else np.ones(len(ids))
    rng = stream(seed, "query-selection")
    scores, used = strategy_scores(strategy, stats, w, rng)
    chosen = select(strategy, ids, scores, budget, stochastic_batches, rng,
                    groups=steering_groups(seen, p_group, order), weights=weights,
                    power_temperature=power_temperature)
    return Round([], [], dict(weights), list(ids), stats, used, scores, chosen)


def rank_for_annotation(
    probas: Mapping[str, np.ndarray],
    groups: Mapping[str, Hashable | None],
    weights: Mapping[Hashable, float],
    strategy: str = "weighted-localized-entropy",
    budget: int = 4,
    roi_dilation: int = 3,
    p_group: Mapping[str, Mapping[Hashable, float]] | None = None,
    seed: int = 0,
    stochastic_batches: int = 50,
    power_temperature: float = 1.0,
) -> pd.DataFrame:
    """Rank the scans of ``probas`` (case id -> (X, Y, Z) foreground probability map) for annotation.

    Scores: ``random``, ``entropy`` (mean voxel entropy), ``localized-entropy`` (Eq. 1: mean entropy in the
    predicted mask dilated by ``roi_dilation`` voxels), each optionally ``weighted-`` (Eq. 2: times the group's
    weight ``w_g``, e.g. from :func:`fairal.group_weights`; a scan of unknown group gets ``sum_g p(g|x) w_g`` from
    ``p_group``), steered by group (``worst-group-``, ``balanced-``, ``group-drawn-``: a scan of unknown group
    counts in its most probable group) and selected by ``stochastic-`` (the best of random candidate batches) or
    ``power-`` (drawn ∝ score^(1/``power_temperature``)). MC-dropout BALD and ``fair-influence`` need the model
    itself (``fairal query``). Returns one row per scan, best first: ``rank, case_id, group, score, weight``, one
    column per statistic of the strategy table that needs no MC dropout (``entropy``: mean entropy,
    ``localized_entropy``), ``selected``.
    """
    s = from_maps(strategy)
    ids = list(probas)
    if not ids:
        raise FairalError("no probability map to rank")
    missing = [c for c in ids if c not in groups]
    if missing:
        raise FairalError(f"no group given for {', '.join(missing[:5])} (use None for an unknown group)")
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= len(ids):
        raise FairalError(f"budget must be a whole number from 1 to {len(ids)}, got {budget!r}")
    maps = [np.asarray(probas[c], dtype=np.float32) for c in ids]
    for c, m in zip(ids, maps, strict=True):
        if m.ndim != 3 or not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise FairalError(f"{c}: a probability map must be a 3D array of values in [0, 1]")
    order = list(weights)
    rows = None
    if any(groups[c] is None for c in ids):
        if p_group is None:
            raise FairalError("scans of unknown group need p_group (their group probabilities)")
        rows = np.array([[float((p_group.get(c) or {}).get(g, 0.0)) for g in order] for c in ids])
    rnd = rank_maps(s, ids, maps, [groups[c] for c in ids], weights, rows, budget, roi_dilation, seed,
                    stochastic_batches, power_temperature)
    stats, scores, used = rnd.stats, rnd.scores, rnd.case_weights
    order = rnd.ranking()
    at = {c: i for i, c in enumerate(ids)}
    plain = [name for name, st in STATISTICS.items() if not st.needs_dropout and not st.needs_model]
    return pd.DataFrame([{"rank": r, "case_id": c, "group": groups[c], "score": float(scores[at[c]]),
                          "weight": float(used[at[c]]), **{name: stats[name][at[c]] for name in plain},
                          "selected": r <= budget}
                         for r, c in enumerate(order, start=1)])

"""``fairal query``: which unlabeled cases of a lab's own data to annotate next, and why.

Reads the CSV (:mod:`fairal.owndata`), trains the U-Net on the labeled cases (or loads ``--model``), computes the
group weights from its Dice on the labeled cases (Sec. 3.2, any number of groups), scores every unlabeled case with
the strategy and ranks them. An unlabeled case whose group is unknown gets the expected weight
``sum_g p(g|x) w_g``: ``p(g|x)`` from a logistic-regression classifier on the U-Net's features when every group has
at least ``MIN_PER_GROUP`` cases of known group, else the groups' frequencies among the cases of known group.

Writes, into a folder that appears whole or not at all: ``query.csv`` (every unlabeled case, ranked), ``montage.png``
(the top cases with their predicted structure and ROI), ``model.pt`` (the model and its grid, for ``--model``
next time) and ``query.json`` (settings, group weights, the classifier's cross-validated accuracy, versions).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairal import versions
from fairal.acquisition import expected_weights, group_weights, parse_strategy, rank_cases, select, strategy_scores
from fairal.config import Profile
from fairal.errors import FairalError
from fairal.fit import case_features, evaluate, model_factory, train_config, uncertainty_stats
from fairal.io import write_csv, write_json
from fairal.model import UNet3D
from fairal.owndata import Grid, load_cases, read_cases, structure_grid
from fairal.train import load_checkpoint, save_checkpoint, train_model

#: Fewest cases of known group per group for the group classifier; below it, group frequencies are used.
MIN_PER_GROUP = 5
QUERY_COLUMNS = ["rank", "case_id", "group", "score", "entropy", "weight"]


@dataclass
class GroupModel:
    """``p(g|x)`` for the cases whose group is unknown: how it was obtained, and its quality when measurable."""

    method: str  # "classifier", "frequencies" or "none needed"
    groups: list
    proba: np.ndarray  # (n_unknown, n_groups)
    cv_accuracy: float | None = None
    chance_accuracy: float | None = None
    n_train: int = 0


def group_probabilities(features: np.ndarray, groups: np.ndarray, known: np.ndarray, order: list,
                        seed: int = 0) -> GroupModel:
    """``p(g|x)`` of the cases with ``known == False``, learnt from the cases of known group.

    With at least :data:`MIN_PER_GROUP` known cases in every group: a standardised multinomial logistic regression
    on ``features`` (its stratified cross-validated accuracy is reported against the majority-class rate); else the
    groups' frequencies among the known cases, the same for every unknown case."""
    unknown = ~known
    n_unknown = int(unknown.sum())
    if n_unknown == 0:
        return GroupModel("none needed", order, np.zeros((0, len(order))))
    y = np.array([order.index(g) for g in groups[known]])
    counts = np.bincount(y, minlength=len(order))
    chance = float(counts.max() / counts.sum())
    if len(order) > 1 and counts.min() >= MIN_PER_GROUP:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        folds = StratifiedKFold(n_splits=min(5, int(counts.min())), shuffle=True, random_state=seed)
        cv = float(cross_val_score(clf, features[known], y, cv=folds).mean())
        clf.fit(features[known], y)
        proba = np.zeros((n_unknown, len(order)))
        proba[:, clf.classes_] = clf.predict_proba(features[unknown])
        return GroupModel("classifier", order, proba, cv, chance, int(known.sum()))
    freq = counts / counts.sum()
    return GroupModel("frequencies", order, np.tile(freq, (n_unknown, 1)), None, chance, int(known.sum()))


GROUP_DICE = ("labeled", "cross-validated")


def out_of_fold_dice(vol, rows: list[int], groups: list, profile: Profile, seed: int, dropout: float,
                     folds: int = 5, progress: bool = False) -> list[float]:
    """Dice of each labeled case from a model that did not train on it: ``folds``-fold cross-validation,
    stratified by group (cases of one group dealt round-robin over the folds in a seeded order). Each fold trains
    with the profile's settings."""
    k = min(folds, len(rows))
    if k < 2:
        raise FairalError("cross-validated group Dice needs at least 2 labeled cases")
    rng = np.random.default_rng([seed, 11])
    key = rng.random(len(rows))
    order = sorted(range(len(rows)), key=lambda i: (str(groups[i]), key[i]))
    fold_of = np.empty(len(rows), int)
    fold_of[order] = np.arange(len(rows)) % k
    dice = np.zeros(len(rows))
    for f in range(k):
        held = np.flatnonzero(fold_of == f)
        train = [rows[i] for i in np.flatnonzero(fold_of != f)]
        result = train_model(vol.images[train], vol.labels[train], train_config(profile, seed + 101 * (f + 1)),
                             model_factory(profile, vol, train, dropout=dropout), progress=progress)
        dice[held] = evaluate(result.model, vol, [rows[i] for i in held], batch_size=8)
    return dice.tolist()


def _model_for(path: Path, profile: Profile, dropout: float) -> tuple[UNet3D, dict]:
    """The U-Net of the profile's architecture with the checkpoint's weights (a clear error if they differ)."""
    model = UNet3D(features=profile.features, dropout=dropout)
    meta = load_checkpoint(path, model)
    return model, meta if isinstance(meta, dict) else {}


def run_query(
    csv_path: str | Path, budget: int, strategy: str, out: str | Path, profile: Profile,
    group_by: list[str] | tuple[str, ...] = (), model_path: str | Path | None = None, seed: int = 0,
    spacing: float = 2.0, overwrite: bool = False, montage_cases: int = 16, progress: bool = True,
    group_dice: str = "labeled",
) -> pd.DataFrame:
    """Rank the unlabeled cases of ``csv_path`` for annotation; write the records into ``out``. Returns the
    ranked table (``query.csv``).

    ``group_dice``: where the Dice of the group weights comes from: ``labeled``, the model's Dice on the cases it
    was trained on (the paper), or ``cross-validated``, each labeled case's Dice from a model trained without it
    (5 folds; five more trainings), which keeps the weights informative when the model fits its training cases
    perfectly."""
    out = Path(out)
    strat = parse_strategy(strategy)
    if group_dice not in GROUP_DICE:
        raise FairalError(f"--group-dice must be one of {', '.join(GROUP_DICE)}, got {group_dice!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise FairalError(f"--budget must be a whole number >= 1, got {budget!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FairalError(f"{out} exists and is not empty: choose another --out or add --overwrite")
    cases = read_cases(csv_path, list(group_by))
    n_unlabeled = int((~cases["labeled"]).sum())
    if n_unlabeled == 0:
        raise FairalError(f"{csv_path}: every case is labeled; nothing to rank (leave 'label' empty for the "
                          "candidates)")
    if budget > n_unlabeled:
        raise FairalError(f"impossible budget: {budget} cases asked for, {csv_path} has {n_unlabeled} unlabeled")
    n_labeled = int(cases["labeled"].sum())
    if model_path is None and n_labeled == 0:
        raise FairalError(f"{csv_path}: no labeled case in any group: label some cases (the 'label' column) to train "
                          "on, or give a trained model (--model)")
    known_labeled = cases["labeled"] & cases["group_known"]
    if strat.weighted and not known_labeled.any():
        raise FairalError(f"{csv_path}: strategy {strat.name} weighs groups by the model's Dice on the labeled cases, "
                          f"but no labeled case has a known group (columns {', '.join(group_by) or '-'})")
    dropout = profile.mc_dropout if strat.needs_dropout else 0.0

    # The grid: the one the model was trained on, else around the labeled structures.
    model, meta = (None, {})
    if model_path is not None:
        model, meta = _model_for(Path(model_path), profile, dropout)
    grid = Grid.from_meta(meta["grid"]) if "grid" in meta else structure_grid(
        cases, spacing, float(profile.crop_margin if profile.crop_margin is not None else 12))
    vol = load_cases(cases, grid)
    labeled_ids = cases.loc[cases["labeled"], "case_id"].tolist()
    unlabeled_ids = cases.loc[~cases["labeled"], "case_id"].tolist()
    rows_l, rows_u = vol.rows(labeled_ids), vol.rows(unlabeled_ids)
    training: dict = {"trained": model is None}
    if model is None:
        result = train_model(vol.images[rows_l], vol.labels[rows_l], train_config(profile, seed),
                             model_factory(profile, vol, rows_l, dropout=dropout), progress=progress)
        model = result.model
        training.update({"n_train": len(rows_l), "train_dice": result.train_dice, "restarts": result.restarts,
                         "collapsed": result.collapsed, "seconds": round(result.seconds, 2)})

    # Group weights from the Dice on the labeled cases; the groups are those of every case of known group.
    order = sorted({g for g in cases.loc[cases["group_known"], "group"]}, key=str)
    weights: dict = {g: 1.0 for g in order}
    labeled_dice = evaluate(model, vol, rows_l, batch_size=8) if rows_l else []
    weight_dice = labeled_dice
    if strat.weighted:
        temperature = strat.temperature or profile.temperature
        lab_groups = [g if k else None for g, k in zip(cases.loc[cases["labeled"], "group"],
                                                       cases.loc[cases["labeled"], "group_known"], strict=True)]
        if group_dice == "cross-validated":
            weight_dice = out_of_fold_dice(vol, rows_l, lab_groups, profile, seed, dropout, progress=progress)
        weights = group_weights(weight_dice, lab_groups, order, temperature)
    unlabeled = cases[~cases["labeled"]]  # in unlabeled_ids order
    known_u = unlabeled["group_known"].to_numpy(bool)
    groups_u = np.empty(len(unlabeled_ids), dtype=object)
    groups_u[:] = unlabeled["group"].tolist()
    gm = GroupModel("none needed", order, np.zeros((0, len(order))))
    p_group = np.zeros((len(unlabeled_ids), len(order)))
    for i, g in enumerate(groups_u):
        if known_u[i]:
            p_group[i, order.index(g)] = 1.0
    if (~known_u).any() and order:  # with no known group at all there is nothing to weigh (unweighted strategies)
        feats = case_features(model, vol.images)
        all_known = cases["group_known"].to_numpy(bool)
        all_groups = np.empty(len(cases), dtype=object)
        all_groups[:] = cases["group"].tolist()
        gm = group_probabilities(feats, all_groups, all_known, order, seed)
        unknown_rows = np.flatnonzero(~all_known)
        at = {int(r): k for k, r in enumerate(unknown_rows)}
        for i, cid in enumerate(unlabeled_ids):
            if not known_u[i]:
                p_group[i] = gm.proba[at[vol.index[cid]]]
    case_w = expected_weights(p_group, weights, order) if order else np.ones(len(unlabeled_ids))

    # Scores and ranking.
    stats = uncertainty_stats(model, vol.images[rows_u], vol.roi[0].numpy(), profile, strat.needs_dropout, seed=seed,
                              keep_proba=True)
    rng = np.random.default_rng([seed, 7])
    scores, w = strategy_scores(strat, unlabeled_ids, list(groups_u), stats["entropy"], stats["localized_entropy"],
                                case_w, rng, bald=stats["bald"])
    chosen = select(strat, unlabeled_ids, scores, budget, profile.stochastic_batches, rng)
    picked = set(chosen)
    rest = [c for c in rank_cases(unlabeled_ids, scores) if c not in picked]
    ranking = chosen + rest
    pos = {c: i for i, c in enumerate(unlabeled_ids)}
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    records = []
    for rank, cid in enumerate(ranking, start=1):
        i = pos[cid]
        rec = {"rank": rank, "case_id": cid, "group": groups_u[i] if known_u[i] else "",
               "score": float(scores[i]), "entropy": float(stats["localized_entropy"][i]), "weight": float(w[i]),
               "selected": rank <= budget, "group_known": bool(known_u[i]),
               "mean_entropy": float(stats["entropy"][i]), "bald": float(stats["bald"][i]),
               "predicted_ml": stats["predicted_voxels"][i] * voxel_ml, "roi_source": stats["roi_source"][i]}
        for k, g in enumerate(order):
            rec[f"p_group_{g}"] = float(p_group[i, k])
        rec["reason"] = _reason(strat, rec, order, p_group[i], profile)
        records.append(rec)
    table = pd.DataFrame(records)

    # Everything is written into a hidden folder beside OUT and moved into place at the end.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_csv(tmp / "query.csv", table)
        from fairal.report.montage import write_montage

        top = [pos[c] for c in ranking[:max(1, min(montage_cases, budget))]]  # the cases to annotate
        write_montage(tmp / "montage.png", [vol.images[rows_u[i], 0].numpy() for i in top],
                      [stats["proba"][i] for i in top], [stats["roi"][i] for i in top],
                      [f"#{r + 1} {unlabeled_ids[i]}\n{groups_u[i] if known_u[i] else 'group ?'}  score "
                       f"{scores[i]:.3g}" for r, i in enumerate(top)])
        model_meta = {"grid": grid.as_meta(), "features": list(model.features), "dropout": float(model.dropout),
                      "profile": profile.name, "group_by": list(group_by), "n_labeled": n_labeled, "seed": seed}
        save_checkpoint(model, tmp / "model.pt", model_meta)
        lab_table = cases.loc[cases["labeled"], ["case_id", "group"]].assign(dice=weight_dice)
        write_json(tmp / "query.json", {
            "csv": str(Path(csv_path).resolve()), "strategy": strat.name, "budget": budget, "seed": seed,
            "group_by": list(group_by), "groups": [str(g) for g in order],
            "weights": {str(g): weights[g] for g in order} if strat.weighted else None,
            "temperature": strat.temperature or profile.temperature,
            "group_dice": group_dice,
            "labeled_dice": {str(g): float(d.mean()) for g, d in lab_table.groupby("group")["dice"]},
            "unknown_groups": {"n_unlabeled_unknown": int((~known_u).sum()), "method": gm.method,
                               "classifier_cv_accuracy": gm.cv_accuracy, "majority_rate": gm.chance_accuracy,
                               "n_known": gm.n_train},
            "model": str(Path(model_path).resolve()) if model_path else "trained here", "training": training,
            "grid": {"shape": list(grid.shape), "spacing_mm": list(grid.spacing)},
            "n_cases": len(cases), "n_labeled": n_labeled, "n_unlabeled": n_unlabeled,
            "profile": profile.as_dict(), "versions": versions()})
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return table


def _reason(strat, rec: dict, order: list, p: np.ndarray, profile: Profile) -> str:
    base = {"random": "random draw", "entropy": "mean entropy", "localized-entropy": "localized entropy",
            "bald": "BALD (mutual information in the ROI)"}[strat.base]
    value = rec["score"] / rec["weight"] if strat.weighted and rec["weight"] > 0 else rec["score"]
    text = f"{base} {value:.4g}"
    if strat.weighted:
        if rec["group_known"]:
            text += f" x weight {rec['weight']:.3f} of group {rec['group']}"
        else:
            mix = ", ".join(f"{g} {q:.2f}" for g, q in zip(order, p, strict=True) if q >= 0.005)
            text += f" x expected weight {rec['weight']:.3f} (group unknown; p: {mix})"
    if strat.stochastic:
        text += (f"; in the best of {profile.stochastic_batches} random batches" if rec["selected"]
                 else "; not in the chosen batch")
    return text

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fairal import versions
from fairal.acquisition import parse_strategy
from fairal.config import Profile
from fairal.data import case_records
from fairal.engine import acquisition_round, evaluate, fit, model_factory, proba_stats
from fairal.errors import FairalError
from fairal.io import check_replaceable, publish_folder, within, write_csv, write_json
from fairal.model import UNet3D
from fairal.owndata import Grid, load_cases, read_cases, structure_grid, to_case_grid
from fairal.sampling import stream, stream_seed
from fairal.train import check_device, load_checkpoint, predict_proba, save_checkpoint, train_model

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
        folds = StratifiedKFold(n_splits=min(5, int(counts.min())), shuffle=True,
                                random_state=stream_seed(seed, "query-classifier"))
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
    rng = stream(seed, "query-folds")
    key = rng.random(len(rows))
    order = sorted(range(len(rows)), key=lambda i: (str(groups[i]), key[i]))
    fold_of = np.empty(len(rows), int)
    fold_of[order] = np.arange(len(rows)) % k
    dice = np.zeros(len(rows))
    for f in range(k):
        held = np.flatnonzero(fold_of == f)
        train = [rows[i] for i in np.flatnonzero(fold_of != f)]
        config = profile.train_config(stream_seed(seed, "query-fold-training", f))
        result = train_model(vol.images[train], vol.labels[train], config,
                             model_factory(profile, vol, train, dropout=dropout), progress=progress)
        dice[held] = evaluate(result.model, vol, [rows[i] for i in held], batch_size=8)
    return dice.tolist()


def case_features(model: UNet3D, images: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """One feature vector per case: the channel means of the deepest encoder block and of the last decoder block
    (what the network sees at its coarsest and finest level), for the group classifier."""
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured.append(output.detach().float().mean(dim=(2, 3, 4)).cpu())

    layers = [model.encoders[-1]] + ([model.decoders[0]] if len(model.decoders) else [])
    hooks = [layer.register_forward_hook(keep) for layer in layers]
    rows = []
    try:
        for start in range(0, len(images), batch_size):
            captured.clear()
            for _ in predict_proba(model, images[start:start + batch_size], batch_size=batch_size):
                pass
            rows.append(torch.cat(captured, dim=1).numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, 0))


def _model_for(path: Path, profile: Profile, dropout: float) -> tuple[UNet3D, dict]:
    """The U-Net of the profile's architecture with the weights of a model saved by ``fairal query`` (a clear
    error for another architecture, or a checkpoint without the grid it was trained on, e.g. a run's)."""
    model = UNet3D(features=profile.features, dropout=dropout)
    meta = load_checkpoint(path, model)
    if not isinstance(meta, dict) or "grid" not in meta:
        raise FairalError(f"{path} is not a model saved by fairal query (it carries no analysis grid); use the "
                          "model.pt of an earlier query's output folder")
    return model, meta


def run_query(
    csv_path: str | Path, budget: int, strategy: str, out: str | Path, profile: Profile,
    group_by: list[str] | tuple[str, ...] = (), model_path: str | Path | None = None, seed: int = 0,
    spacing: float = 2.0, overwrite: bool = False, montage_cases: int = 16, progress: bool = True,
    group_dice: str = "labeled", label_value: float | None = None,
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
    check_device(profile.device)
    cases = read_cases(csv_path, list(group_by))
    # The output folder: never one that holds the user's data, replaced only if fairal made it.
    inputs = [csv_path, *cases["image_path"], *[p for p in cases["label_path"] if p]]
    check_replaceable(out, overwrite, inputs)
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
    grid = Grid.from_meta(meta["grid"], model_path) if "grid" in meta else structure_grid(
        cases, spacing, float(profile.crop_margin if profile.crop_margin is not None else 12), label_value)
    vol = load_cases(cases, grid, label_value=label_value)
    labeled_ids = cases.loc[cases["labeled"], "case_id"].tolist()
    unlabeled_ids = cases.loc[~cases["labeled"], "case_id"].tolist()
    rows_l, rows_u = vol.rows(labeled_ids), vol.rows(unlabeled_ids)
    training: dict = {"trained": model is None}
    if model is None:
        result = fit(profile, vol, rows_l, profile.train_config(stream_seed(seed, "query-training")), strat,
                     progress=progress)
        model = result.model
        training.update({"n_train": len(rows_l), "train_dice": result.train_dice, "restarts": result.restarts,
                         "collapsed": result.collapsed, "seconds": round(result.seconds, 2)})

    # Groups: every group of a case of known group; p(g|x) for the unlabeled cases (one-hot where known).
    order = sorted({g for g in cases.loc[cases["group_known"], "group"]}, key=str)
    records_of = case_records(cases)  # one record per case: id, group (None: unknown), split, files
    unlabeled = cases[~cases["labeled"]]  # in unlabeled_ids order
    known_u = unlabeled["group_known"].to_numpy(bool)
    gm = GroupModel("none needed", order, np.zeros((0, len(order))))
    p_group = np.zeros((len(unlabeled_ids), len(order)))
    for i, cid in enumerate(unlabeled_ids):
        if known_u[i]:
            p_group[i, order.index(records_of[cid].group)] = 1.0
    if (~known_u).any() and order:  # with no known group at all there is nothing to weigh (unweighted strategies)
        all_known = cases["group_known"].to_numpy(bool)
        all_groups = np.empty(len(cases), dtype=object)
        all_groups[:] = cases["group"].tolist()
        gm = group_probabilities(case_features(model, vol.images), all_groups, all_known, order, seed)
        at = {int(r): k for k, r in enumerate(np.flatnonzero(~all_known))}
        for i, cid in enumerate(unlabeled_ids):
            if not known_u[i]:
                p_group[i] = gm.proba[at[vol.index[cid]]]

    def weight_dice(labeled_dice: list[float]) -> list[float]:
        if group_dice != "cross-validated" or not strat.weighted:
            return labeled_dice
        lab_groups = [records_of[c].group for c in labeled_ids]
        return out_of_fold_dice(vol, rows_l, lab_groups, profile, seed, dropout, progress=progress)

    # The round: group weights from the Dice on the labeled cases, scores, the batch; the rest ranked by score.
    rnd = acquisition_round(model, vol, labeled_ids, unlabeled_ids, records_of, order, strat, profile, budget,
                            rng=stream(seed, "query-selection"), mc_seed=stream_seed(seed, "mc-dropout", 0),
                            weigh=strat.weighted,
                            weight_dice=weight_dice, p_group=p_group)
    stats, scores, w, weights = rnd.stats, rnd.scores, rnd.case_weights, rnd.weights
    ranking = rnd.ranking()
    # The batch's maps and ROIs (montage, annotators' files): predicted again for these few cases rather than kept
    # in memory for the whole pool.
    batch = ranking[:budget]
    maps = proba_stats(predict_proba(model, vol.images[vol.rows(batch)], batch_size=8), profile.roi_dilation,
                       vol.roi[0].numpy(), keep_proba=True)
    pos = {c: i for i, c in enumerate(unlabeled_ids)}
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    records = []
    for rank, cid in enumerate(ranking, start=1):
        i = pos[cid]
        rec = {"rank": rank, "case_id": cid, "group": records_of[cid].group if known_u[i] else "",
               "score": float(scores[i]), "entropy": float(stats["localized_entropy"][i]), "weight": float(w[i]),
               "selected": rank <= budget, "image": records_of[cid].image, "label": "",
               "prediction": f"predictions/{cid}.nii.gz" if rank <= budget else "", "group_known": bool(known_u[i]),
               "mean_entropy": float(stats["entropy"][i]), "bald": float(stats["bald"][i]),
               "predicted_ml": stats["predicted_voxels"][i] * voxel_ml, "roi_source": stats["roi_source"][i]}
        for k, g in enumerate(order):
            rec[f"p_group_{g}"] = float(p_group[i, k])
        rec["reason"] = _reason(strat, rec, order, p_group[i], profile)
        records.append(rec)
    table = pd.DataFrame(records)

    # Everything is written into a hidden folder beside OUT and moved into place at the end.
    with publish_folder(out, "query") as tmp:
        write_csv(within(tmp, "query.csv"), table)
        from fairal.report.montage import write_montage

        top = batch[:max(1, min(montage_cases, budget))]  # the first cases to annotate

        def rec_group(cid: str) -> str:
            return "group ?" if records_of[cid].group is None else str(records_of[cid].group)

        write_montage(within(tmp, "montage.png"), [vol.images[rows_u[pos[c]], 0].numpy() for c in top],
                      maps["proba"][:len(top)], maps["roi"][:len(top)],
                      [f"#{r + 1} {c}\n{rec_group(c)}  score {scores[pos[c]]:.3g}" for r, c in enumerate(top)])
        model_meta = {"grid": grid.as_meta(), "features": list(model.features), "dropout": float(model.dropout),
                      "profile": profile.name, "group_by": list(group_by), "n_labeled": n_labeled, "seed": seed}
        save_checkpoint(model, within(tmp, "model.pt"), model_meta)
        write_handoff(tmp, [(c, records_of[c].image, proba) for c, proba in zip(batch, maps["proba"], strict=True)],
                      grid, label_value)
        lab_table = cases.loc[cases["labeled"], ["case_id", "group"]].assign(dice=rnd.weight_dice)
        write_json(within(tmp, "query.json"), {
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
    return table


def write_handoff(folder: Path, batch: list[tuple[str, str, np.ndarray]], grid: Grid,
                  label_value: float | None) -> None:
    """The annotators' files: each selected scan's prediction on the scan's own grid
    (``predictions/CASE.nii.gz``, to correct rather than draw from nothing), ``annotate.csv`` (case, image,
    prediction), a 3D Slicer script that opens them all (``open_in_slicer.py``) and ITK-SNAP command lines
    (``open_in_itksnap.sh``). Every string the scripts embed is quoted as data: ``repr`` in Python, ``shlex.quote``
    in the shell (a case id or a folder named ``O'Brien; $(rm -rf ~)`` stays a name)."""
    import shlex

    import nibabel as nib

    within(folder, "predictions").mkdir()
    rows = []
    for case, image, proba in batch:
        nib.save(to_case_grid(proba, grid, image, case), str(within(folder, "predictions", f"{case}.nii.gz")))
        rows.append({"case_id": case, "image": image, "prediction": f"predictions/{case}.nii.gz"})
    write_csv(within(folder, "annotate.csv"), pd.DataFrame(rows, columns=["case_id", "image", "prediction"]))
    value = "" if label_value is None else f" (saved with value 1; your map uses {label_value:g})"
    cases = ",\n".join(f"    ({r['case_id']!r}, {r['image']!r}, {r['prediction']!r})" for r in rows)
    within(folder, "open_in_slicer.py").write_text(
        "# Open the scans to annotate in 3D Slicer, each with fairal's prediction as a segmentation to correct.\n"
        "# In Slicer's Python console: exec(open('/path/to/this/open_in_slicer.py').read())\n"
        f"# Save each corrected segmentation as a label map{value} and give its path in the CSV's label column.\n"
        "import os\nimport slicer\n\nhere = os.path.dirname(os.path.abspath(__file__)) if '__file__' in dir() else "
        "os.getcwd()\ncases = [\n" + cases + ",\n]\nfor case, image, prediction in cases:\n"
        "    volume = slicer.util.loadVolume(image)\n"
        "    segmentation = slicer.util.loadSegmentation(os.path.join(here, prediction))\n"
        "    segmentation.SetName(case + ' (fairal prediction)')\n")
    within(folder, "open_in_itksnap.sh").write_text(
        "#!/bin/sh\n# One ITK-SNAP window per scan to annotate, with fairal's prediction loaded as the segmentation.\n"
        "cd \"$(dirname \"$0\")\"\n"
        + "".join(f"itksnap -g {shlex.quote(r['image'])} -s {shlex.quote(r['prediction'])} &\n" for r in rows))


def _reason(strat, rec: dict, order: list, p: np.ndarray, profile: Profile) -> str:
    base = strat.spec.reason
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

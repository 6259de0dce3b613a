"""``fairal query``: which unlabeled cases of a lab's own data to annotate next, and why.

Reads the CSV (:mod:`fairal.data.cohort`), trains the profile's network (:mod:`fairal.run.network`, the paper's U-Net)
on the labeled cases (or loads ``--model``), computes the group weights from its Dice on the labeled cases (Sec. 3.2,
any number of groups), scores every unlabeled case with the strategy and ranks them. An unlabeled case whose group is
unknown gets the expected weight ``sum_g p(g|x) w_g``: ``p(g|x)`` from a logistic-regression classifier on the
network's features when every group has at least ``MIN_PER_GROUP`` cases of known group, else the groups'
frequencies among the cases of known group.

Writes, into a folder that appears whole or not at all: ``query.csv`` (every unlabeled case, ranked), ``montage.png``
(the top cases with their predicted structure and ROI), ``model.pt`` (the model and its grid, for ``--model``
next time), ``query.json`` (settings, group weights, the classifier's cross-validated accuracy, versions) and, with
a cross-validated group Dice, ``folds/fold-K.pt`` (the fold models, for :class:`Folds` next time).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from fairal import versions
from fairal.acquisition import STATISTICS, Strategy, parse_strategy, roi_mask
from fairal.config import Profile, get_profile, setting_name
from fairal.data.cohort import (
    GROUP_SEPARATOR,
    Grid,
    check_label_value,
    load_cases,
    read_cases,
    structure_grid,
    to_case_grid,
)
from fairal.data.volumes import case_records
from fairal.errors import FairalError
from fairal.io import check_replaceable, file_stamp, file_version, publish_folder, within, write_csv, write_json
from fairal.owndata.montage import write_montage
from fairal.run.group_model import MIN_PER_GROUP, GroupModel, case_features, group_probabilities  # noqa: F401
from fairal.run.network import load_network, network_meta, network_of
from fairal.run.rounds import acquisition_round, evaluate, fit, model_factory
from fairal.run.train import TrainConfig, check_device, predict_proba, save_checkpoint, train_model
from fairal.sampling import stream, stream_seed

logger = logging.getLogger(__name__)  # progress, for a server's log (fairal query's console shows its own bars)

#: Fewest labeled cases per group for a group Dice worth weighing by: fewer, and a warning says so.
MIN_LABELED_PER_GROUP = 3
#: Below this mean Dice in every group the model segments next to nothing (untrained, or the wrong class): a warning
#: says that its weights are noise.
LOW_DICE = 0.1
#: The profile settings a query uses: it trains once (or not at all) and ranks; it has no active-learning schedule
#: and simulates nothing, so the other settings would do nothing and are refused (:func:`query_profile`).
QUERY_SETTINGS = ("steps", "epochs", "lr", "batch_size", "device", "bf16", "features", "crop_margin", "roi_dilation",
                  "temperature", "mc_dropout", "mc_samples", "stochastic_batches", "power_temperature", "network")


def query_profile(name: str, overrides: dict[str, str] | None = None) -> Profile:
    """The profile ``name`` with ``overrides`` (``--set``) for a query: a setting that a query does not use (the
    active-learning schedule ``init_size``/``acquire``/``final_size``, the simulated data, the grid's) is refused
    naming it, instead of a check of that setting speaking of a schedule the query does not have."""
    fields = {f.name for f in dataclasses.fields(Profile)}
    for key in overrides or {}:
        setting = setting_name(key)
        if setting not in fields:
            import difflib

            near = difflib.get_close_matches(setting, QUERY_SETTINGS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise FairalError(f"--set {key}: unknown setting{hint}; a query's settings: {', '.join(QUERY_SETTINGS)}")
        if setting not in QUERY_SETTINGS:
            raise FairalError(f"--set {key}: fairal query does not use the setting {setting} (a query trains one model "
                              "and ranks the unlabeled cases: no active-learning schedule, no simulated data); "
                              f"its settings: {', '.join(QUERY_SETTINGS)}")
    return get_profile(name, overrides)


GROUP_DICE = ("labeled", "cross-validated")


def out_of_fold_dice(vol, rows: list[int], groups: list, profile: Profile, seed: int, dropout: float,
                     folds: int = 5, progress: bool = False, models: list | None = None) -> list[float]:
    """Dice of each labeled case from a model that did not train on it: ``folds``-fold cross-validation,
    stratified by group (cases of one group dealt round-robin over the folds in a seeded order). Each fold trains
    with the profile's settings; ``models``, where given, gets the fold models."""
    k = min(folds, len(rows))
    if k < 2:
        raise FairalError("cross-validated group Dice needs at least 2 labeled cases")
    rng = stream(seed, "query-folds")
    key = rng.random(len(rows))
    order = sorted(range(len(rows)), key=lambda i: (str(groups[i]), key[i]))
    fold_of = np.empty(len(rows), int)
    fold_of[order] = np.arange(len(rows)) % k
    dice = np.zeros(len(rows))
    start = time.monotonic()
    for f in range(k):
        held = np.flatnonzero(fold_of == f)
        train = [rows[i] for i in np.flatnonzero(fold_of != f)]
        logger.info("cross-validated group Dice: fold %d/%d, training on %d cases, %d held out", f + 1, k,
                    len(train), len(held))
        config = TrainConfig.of(profile, stream_seed(seed, "query-fold-training", f))
        result = train_model(vol.images[train], vol.labels[train], config,
                             model_factory(profile, vol, train, dropout=dropout), progress=progress)
        dice[held] = evaluate(result.model, vol, [rows[i] for i in held], batch_size=8)
        if models is not None:
            models.append(result.model)
    logger.info("cross-validated group Dice: %d folds in %.1f s", k, time.monotonic() - start)
    return dice.tolist()


def load_query_model(path: Path, profile: Profile, dropout: float) -> tuple[torch.nn.Module, dict]:
    """The profile's network (:func:`fairal.run.network.load_network`) with the weights of a model saved by
    ``fairal query`` (a clear error for another network or architecture, or a checkpoint without the grid it was
    trained on, e.g. a run's)."""
    model, meta = load_network(path, profile, dropout=dropout)
    if not isinstance(meta, dict) or "grid" not in meta:
        raise FairalError(f"{path} is not a model saved by fairal query (it carries no analysis grid); use the "
                          "model.pt of an earlier query's output folder")
    return model, meta


@dataclass
class Folds:
    """The folds of an earlier query with the same model, cases and labels: the out-of-fold Dice of the cases they
    ran over (``query.json``'s ``fold_dice``), the fold models (``folds/fold-K.pt`` of its folder) and what they
    ran with (``key``, :func:`fold_key`: the model's versions, each case's image, label and group; None where the
    caller has checked that itself, as the MONAI Label app does)."""

    dice: dict[str, float]
    models: list[Path]
    key: dict | None = None

    @classmethod
    def of_query(cls, folder: str | Path) -> Folds | None:
        """The folds a query folder kept (None where it kept none, or without what they ran with)."""
        info = json.loads((Path(folder) / "query.json").read_text())
        if not info.get("fold_dice") or not info.get("fold_models") or not info.get("fold_key"):
            return None
        return cls({str(c): float(d) for c, d in info["fold_dice"].items()},
                   [Path(folder) / m for m in info["fold_models"]], info["fold_key"])


def case_stamps(rows) -> dict[str, list]:
    """``{case: [its image's file stamp, its label's (None: none), its group (None: unknown)]}`` of the rows
    ``(case, image, label, group)``, as JSON has them: what a case's files and group were when folds ran over it."""
    files = {str(c): [file_stamp(img), file_stamp(lab) if lab else None, None if g is None else str(g)]
             for c, img, lab, g in rows}
    return json.loads(json.dumps(files))


def fold_key(records: dict, cases: list[str], models: list[str]) -> dict:
    """What folds ran with: the versions of the model (:func:`fairal.io.file_version`: the file given and the one
    saved) and each case's files and group (:func:`case_stamps`)."""
    rows = [(c, records[c].image, records[c].label, records[c].group) for c in sorted(cases)]
    return {"models": list(models), "cases": case_stamps(rows)}


def _same_run(given: Folds, q: Query, cases: list[str]) -> bool:
    """``given`` ran with this model and these cases' files and groups (or says nothing of it: checked by its
    caller)."""
    if given.key is None:
        return True
    now = fold_key(q.records, cases, [])
    model = file_version(q.model_path) if q.model_path else None
    return model in given.key.get("models", []) and given.key.get("cases") == now["cases"]


@dataclass
class Query:
    """What a query works on, step by step: the settings, the cases, the model and its grid, the groups."""

    csv_path: Path
    budget: int
    strat: Strategy
    out: Path
    profile: Profile
    group_by: list
    model_path: str | Path | None
    seed: int
    group_dice: str
    label_value: float | None
    progress: bool
    cases: pd.DataFrame = None
    records: dict = field(default_factory=dict)  # case id -> its record (id, group or None, split, files)
    model: torch.nn.Module = None
    grid: Grid = None
    vol: object = None
    training: dict = field(default_factory=dict)
    order: list = field(default_factory=list)
    p_group: np.ndarray = None
    gm: GroupModel = None
    voxel_ml: dict = field(default_factory=dict)  # case id -> its voxel's volume (a ranking on each scan's own grid)
    dice_ids: list | None = None  # the labeled cases behind the group Dice (default: every labeled case)
    trained_on: list | None = None  # the cases the model was trained on (None: not recorded, a model saved earlier)
    folds: Folds | None = None  # the folds of an earlier query with this model (given), or of this one
    fold_models: list = field(default_factory=list)  # the fold models (trained here, or loaded from ``folds``)
    dice_sources: dict = field(default_factory=dict)  # where each labeled case's Dice behind the weights came from

    @property
    def labeled_ids(self) -> list[str]:
        return self.cases.loc[self.cases["labeled"], "case_id"].tolist()

    @property
    def unlabeled_ids(self) -> list[str]:
        return self.cases.loc[~self.cases["labeled"], "case_id"].tolist()

    @property
    def known_u(self) -> np.ndarray:
        return self.cases.loc[~self.cases["labeled"], "group_known"].to_numpy(bool)

    @property
    def dropout(self) -> float:
        return self.profile.mc_dropout if self.strat.needs_dropout else 0.0


def run_query(
    csv_path: str | Path, budget: int, strategy: str | Strategy, out: str | Path, profile: Profile,
    group_by: list[str] | tuple[str, ...] = (), model_path: str | Path | None = None, seed: int = 0,
    spacing: float = 2.0, overwrite: bool = False, montage_cases: int = 16, progress: bool = True,
    group_dice: str = "labeled", label_value: float | None = None, folds: Folds | None = None,
) -> pd.DataFrame:
    """Rank the unlabeled cases of ``csv_path`` for annotation; write the records into ``out``. Returns the
    ranked table (``query.csv``; ``table.attrs["query"]`` holds what ``query.json`` says).

    ``group_dice``: where the Dice of the group weights comes from: ``labeled``, the model's Dice on the cases it
    was trained on (the paper), or ``cross-validated``, each labeled case's Dice from a model trained without it,
    which keeps the weights informative when the model fits its training cases perfectly: with ``model_path``, 5
    folds over the model's training cases (five more trainings), and a case labeled after it was trained, out of
    sample for the fold models too, measured by each of them (the mean). ``folds``: the folds of an earlier query
    with the same model, cases and labels (:meth:`Folds.of_query`; the caller vouches for that, e.g. the MONAI
    Label app), used where they ran over exactly the training cases still labeled. The query keeps its folds
    (``query.json``'s ``fold_dice`` and ``fold_models``, ``folds/fold-K.pt``)."""
    q = Query(Path(csv_path), budget, parse_strategy(strategy), Path(out), profile, list(group_by), model_path,
               seed, group_dice, label_value, progress, folds=folds)
    _check_query(q, overwrite)
    _query_model(q, spacing)
    unlabeled_groups(q, lambda: case_features(q.model, q.vol.images), q.vol.index.__getitem__)
    rnd = acquisition_round(q.model, q.vol, q.labeled_ids, q.unlabeled_ids, q.records, q.order, q.strat,
                            profile, budget, rng=stream(seed, "query-selection"),
                            mc_seed=stream_seed(seed, "mc-dropout", 0), weigh=q.strat.steered,
                            weight_dice=lambda dice: _weight_dice(q, dice), p_group=q.p_group)
    table = query_table(q, rnd)
    _write_query(q, rnd, table, montage_cases)
    return table


def _check_query(q: Query, overwrite: bool) -> None:
    """The settings and the study, checked before any work: the cases, the budget, the output folder."""
    if q.group_dice not in GROUP_DICE:
        raise FairalError(f"--group-dice must be one of {', '.join(GROUP_DICE)}, got {q.group_dice!r}")
    check_device(q.profile.device)
    network_of(q.profile)
    check_cases(q, overwrite)
    cases = q.cases
    if q.model_path is None and not cases["labeled"].any():
        raise FairalError(f"{q.csv_path}: no labeled case in any group: label some cases (the 'label' column) to "
                          "train on, or give a trained model (--model)")
    check_steered(q)


def check_cases(q: Query, overwrite: bool, inputs: list = ()) -> None:
    """The budget, the cases of the CSV (read into ``q``), the output folder (never one that holds the user's data
    or ``inputs``, replaced only if fairal made it) and something to rank."""
    if isinstance(q.budget, bool) or not isinstance(q.budget, int) or q.budget < 1:
        raise FairalError(f"--budget must be a whole number >= 1, got {q.budget!r}")
    check_label_value(q.label_value)
    cases = q.cases = read_cases(q.csv_path, q.group_by)
    q.records = case_records(cases)
    check_replaceable(q.out, overwrite, [q.csv_path, *cases["image_path"], *[p for p in cases["label_path"] if p],
                                         *inputs])
    n_unlabeled = int((~cases["labeled"]).sum())
    if n_unlabeled == 0:
        raise FairalError(f"{q.csv_path}: every case is labeled; nothing to rank (leave 'label' empty for the "
                          "candidates)")
    if q.budget > n_unlabeled:
        raise FairalError(f"impossible budget: {q.budget} cases asked for, {q.csv_path} has {n_unlabeled} "
                          "unlabeled")


def check_steered(q: Query) -> None:
    """A strategy steered by group needs a labeled case of known group (its group weights come from them)."""
    cases = q.cases
    if q.strat.steered and not (cases["labeled"] & cases["group_known"]).any():
        raise FairalError(f"{q.csv_path}: strategy {q.strat.name} weighs groups by the model's Dice on the labeled "
                          f"cases, but no labeled case has a known group (columns {', '.join(q.group_by) or '-'})")


def _query_model(q: Query, spacing: float) -> None:
    """The grid (the one the model was trained on, else around the labeled structures), the volumes on it, and the
    model: the one given, else trained on the labeled cases."""
    meta: dict = {}
    if q.model_path is not None:
        q.model, meta = load_query_model(Path(q.model_path), q.profile, q.dropout)
        trained_on = meta.get("trained_on")
        q.trained_on = [str(c) for c in trained_on] if isinstance(trained_on, list) else None
    else:
        q.trained_on = q.labeled_ids
    margin = float(q.profile.crop_margin if q.profile.crop_margin is not None else 12)
    q.grid = (Grid.from_meta(meta["grid"], q.model_path) if "grid" in meta
              else structure_grid(q.cases, spacing, margin, q.label_value))
    q.vol = load_cases(q.cases, q.grid, label_value=q.label_value)
    q.training = {"trained": q.model is None}
    if q.model is None:
        rows = q.vol.rows(q.labeled_ids)
        logger.info("training started: %d labeled cases on a %s grid", len(rows), "x".join(map(str, q.grid.shape)))
        result = fit(q.profile, q.vol, rows, TrainConfig.of(q.profile, stream_seed(q.seed, "query-training")), q.strat,
                     progress=q.progress)
        q.model = result.model
        logger.info("training finished in %.1f s (training Dice %.3f)", result.seconds, result.train_dice)
        q.training.update({"n_train": len(rows), "train_dice": result.train_dice, "restarts": result.restarts,
                           "collapsed": result.collapsed, "seconds": round(result.seconds, 2)})


def unlabeled_groups(q: Query, features: Callable[[], np.ndarray] | None = None,
                     row_of: Callable[[str], int] | None = None) -> None:
    """The groups (every group of a case of known group) and ``p(g|x)`` of the unlabeled cases: one-hot where the
    group is known, else from the group classifier on ``features()`` (every case's, rows by ``row_of``: default,
    the CSV's order) or, without features, the groups' frequencies."""
    cases = q.cases
    q.order = sorted({g for g in cases.loc[cases["group_known"], "group"]}, key=str)
    records_of = q.records
    known_u, unlabeled_ids = q.known_u, q.unlabeled_ids
    q.gm = GroupModel("none needed", q.order, np.zeros((0, len(q.order))))
    q.p_group = np.zeros((len(unlabeled_ids), len(q.order)))
    for i, cid in enumerate(unlabeled_ids):
        if known_u[i]:
            q.p_group[i, q.order.index(records_of[cid].group)] = 1.0
    if (~known_u).any() and q.order:  # with no known group at all there is nothing to weigh (unweighted strategies)
        all_known = cases["group_known"].to_numpy(bool)
        all_groups = np.empty(len(cases), dtype=object)
        all_groups[:] = cases["group"].tolist()
        q.gm = group_probabilities(features() if features else None, all_groups, all_known, q.order, q.seed)
        row_of = row_of or {c: i for i, c in enumerate(cases["case_id"])}.__getitem__
        at = {int(r): k for k, r in enumerate(np.flatnonzero(~all_known))}
        for i, cid in enumerate(unlabeled_ids):
            if not known_u[i]:
                q.p_group[i] = q.gm.proba[at[row_of(cid)]]


def _fold_cases(q: Query, labeled: list[str]) -> list[str]:
    """The labeled cases the folds run over: the model's training cases still labeled, unless the model does not
    record them, or they are too few to cross-validate (fewer than 2, or a group with fewer of them than
    min(:data:`MIN_LABELED_PER_GROUP`, its labeled cases)): then every labeled case, as without ``--model``."""
    if q.trained_on is None:
        return labeled
    trained = set(q.trained_on)
    inside = [c for c in labeled if c in trained]
    groups = pd.Series([q.records[c].group for c in labeled], dtype=object)
    have = groups[[c in trained for c in labeled]].value_counts()
    short = [g for g, n in groups.value_counts().items() if have.get(g, 0) < min(MIN_LABELED_PER_GROUP, n)]
    return labeled if len(inside) < 2 or short else inside


def _given_fold_models(q: Query, given: Folds) -> list:
    """The fold models of ``given``, loaded; none (the folds are trained again, with a warning in the log) where one
    cannot be read (removed or replaced meanwhile) or was trained on another grid."""
    models = []
    for m in given.models:
        try:
            model, meta = load_query_model(Path(m), q.profile, q.dropout)
        except (FairalError, OSError) as err:
            logger.warning("the kept fold models cannot be used (%s): training the folds again", err)
            return []
        if meta.get("grid") != q.grid.as_meta():
            logger.warning("the kept fold model %s was trained on another grid: training the folds again", m)
            return []
        models.append(model)
    return models


def _weight_dice(q: Query, labeled_dice: list[float]) -> list[float]:
    """The Dice behind the group weights: the labeled cases' own, or out of fold (``--group-dice``). Out of fold,
    the folds run over the model's training cases still labeled (:func:`_fold_cases`), or come from an earlier
    query (``folds``) whose folds ran over exactly these cases; a case the model was not trained on is out of
    sample for every fold model as well and gets the mean of their Dice: every labeled case is measured by models
    of the same kind, each trained on all but one fold of the training cases, none on it."""
    labeled = q.labeled_ids
    if q.group_dice != "cross-validated" or not q.strat.steered:
        q.dice_sources = {"own": len(labeled)}
        return labeled_dice
    inside = _fold_cases(q, labeled)
    outside = [c for c in labeled if c not in set(inside)]
    given = q.folds
    reused = given is not None and set(given.dice) == set(inside) and bool(given.models)
    if reused and not _same_run(given, q, inside):
        logger.warning("the kept folds ran with another model, or a case's image, label or group has changed "
                       "since: training the folds again")
        reused = False
    if reused:
        dice = {c: float(given.dice[c]) for c in inside}
        q.fold_models = _given_fold_models(q, given)
        reused = bool(q.fold_models)
    if not reused:
        q.fold_models = []
        oof = out_of_fold_dice(q.vol, q.vol.rows(inside), [q.records[c].group for c in inside], q.profile, q.seed,
                               q.dropout, progress=q.progress, models=q.fold_models)
        dice = dict(zip(inside, oof, strict=True))
    q.folds = Folds(dict(dice), [])  # the training cases' only
    if outside:
        each = [evaluate(m, q.vol, q.vol.rows(outside), batch_size=8) for m in q.fold_models]
        dice.update(zip(outside, np.mean(each, axis=0).tolist(), strict=True))
    q.dice_sources = {"out_of_fold": len(inside), "out_of_sample": len(outside),
                      "folds": "reused" if reused else "trained",
                      "folds_over": "every labeled case" if not outside else "training cases"}
    if q.trained_on is not None and inside is labeled and not set(labeled) <= set(q.trained_on):
        q.dice_sources["why"] = (f"the model's training cases still labeled are too few to cross-validate (fewer "
                                 f"than 2, or a group with fewer than {MIN_LABELED_PER_GROUP})")
    return [dice[c] for c in labeled]


def query_table(q: Query, rnd) -> pd.DataFrame:
    """``query.csv``: every unlabeled case, best first, with its score, weight, statistics (one column each, from
    the strategy table), group probabilities and the reason for its rank."""
    stats, records_of, known_u = rnd.stats, q.records, q.known_u
    pos = {c: i for i, c in enumerate(q.unlabeled_ids)}
    voxel_ml = float(np.prod(q.grid.spacing)) / 1000.0 if q.grid is not None else None
    records = []
    for rank, cid in enumerate(rnd.ranking(), start=1):
        i = pos[cid]
        rec = {"rank": rank, "case_id": cid, "group": records_of[cid].group if known_u[i] else "",
               "score": float(rnd.scores[i]), "entropy": float(stats["entropy"][i]),
               "weight": float(rnd.case_weights[i]), "selected": rank <= q.budget, "image": records_of[cid].image,
               "label": "", "prediction": f"predictions/{cid}.nii.gz" if rank <= q.budget else "",
               "group_known": bool(known_u[i]), **{n: float(stats[n][i]) for n in STATISTICS if n != "entropy"},
               "predicted_ml": stats["predicted_voxels"][i] * (voxel_ml or q.voxel_ml[cid]),
               "roi_source": stats["roi_source"][i]}
        rec.update({f"p_group_{g}": float(q.p_group[i, k]) for k, g in enumerate(q.order)})
        rec["reason"] = _reason(q.strat, rec, q.order, q.p_group[i], q.profile)
        records.append(rec)
    return pd.DataFrame(records)


def _write_query(q: Query, rnd, table: pd.DataFrame, montage_cases: int) -> None:
    """Everything, into a hidden folder beside OUT moved into place at the end: query.csv, the montage of the first
    cases, the model, the annotators' files and query.json (also in ``table.attrs["query"]``). The batch's maps
    are predicted again for these few cases rather than kept for the whole pool."""
    records_of, pos = q.records, {c: i for i, c in enumerate(q.unlabeled_ids)}
    batch = rnd.ranking()[:q.budget]
    probas = list(predict_proba(q.model, q.vol.images[q.vol.rows(batch)], batch_size=8))
    rois = [roi_mask(p, q.profile.roi_dilation, q.vol.roi[0].numpy())[0] for p in probas]
    top = batch[:max(1, min(montage_cases, q.budget))]  # the first cases to annotate
    titles = [f"#{r + 1} {c}\n{'group ?' if records_of[c].group is None else records_of[c].group}  score "
              f"{rnd.scores[pos[c]]:.3g}" for r, c in enumerate(top)]
    n_labeled = int(q.cases["labeled"].sum())
    with publish_folder(q.out, "query") as tmp:
        write_csv(within(tmp, "query.csv"), table)
        write_montage(within(tmp, "montage.png"), [q.vol.images[q.vol.index[c], 0].numpy() for c in top],
                      probas[:len(top)], rois[:len(top)], titles)
        save_checkpoint(q.model, within(tmp, "model.pt"), _model_meta(q, n_labeled))
        if q.folds is not None and q.dice_sources.get("folds"):  # the folds are of the model given and of its copy
            q.folds.key = fold_key(q.records, list(q.folds.dice), list(dict.fromkeys(
                [file_version(m) for m in (q.model_path, within(tmp, "model.pt")) if m])))
        write_handoff(tmp, [(c, records_of[c].image, to_case_grid(p, q.grid, records_of[c].image, c))
                            for c, p in zip(batch, probas, strict=True)], q.label_value, final=q.out)
        _write_folds(q, tmp, n_labeled)
        table.attrs["query"] = info = query_info(q, rnd, n_labeled)
        write_json(within(tmp, "query.json"), info)


def _write_folds(q: Query, folder: Path, n_labeled: int) -> None:
    """The fold models of an out-of-fold group Dice, ``folds/fold-K.pt`` (a later query with the same model uses
    them again: :class:`Folds`)."""
    if not q.fold_models:
        return
    within(folder, "folds").mkdir()
    meta = {k: v for k, v in _model_meta(q, n_labeled).items() if k != "trained_on"}
    for k, model in enumerate(q.fold_models, 1):
        save_checkpoint(model, within(folder, "folds", f"fold-{k}.pt"), {**meta, "fold": k})
    q.folds.models = [Path("folds") / f"fold-{k}.pt" for k in range(1, len(q.fold_models) + 1)]


def _model_meta(q: Query, n_labeled: int) -> dict:
    """What a query's ``model.pt`` carries beside the weights: its grid (``--model`` ranks on it), its architecture
    and how it was trained."""
    return {"grid": q.grid.as_meta(), "features": list(q.profile.features), "dropout": float(q.dropout),
            "profile": q.profile.name, "group_by": q.group_by, "n_labeled": n_labeled, "seed": q.seed,
            **({"trained_on": list(q.trained_on)} if q.trained_on is not None else {}), **network_meta(q.profile)}


def train_query_model(csv_path: str | Path, model_file: str | Path, profile: Profile,
                      group_by: list[str] | tuple[str, ...] = (), seed: int = 0, spacing: float = 2.0,
                      label_value: float | None = None, strategy: str | Strategy = "weighted-localized-entropy",
                      progress: bool = False) -> dict:
    """Train the model a query of ``csv_path`` would train (same grid, seed stream and settings) and save it as
    ``model_file``, without ranking: a later ``run_query(..., model_path=model_file)`` ranks with it, as ``fairal
    query --model`` does. Every case may be labeled. Returns how the training went."""
    q = Query(Path(csv_path), 0, parse_strategy(strategy), Path(model_file).parent, profile, list(group_by), None,
               seed, "labeled", label_value, progress)
    check_device(profile.device)
    network_of(profile)
    q.cases = read_cases(q.csv_path, q.group_by)
    q.records = case_records(q.cases)
    if not q.cases["labeled"].any():
        raise FairalError(f"{q.csv_path}: no labeled case to train on: save some labels first")
    _query_model(q, spacing)
    n_labeled = int(q.cases["labeled"].sum())
    save_checkpoint(q.model, model_file, _model_meta(q, n_labeled))
    return {"n_labeled": n_labeled, **q.training}


def predict_image(model_file: str | Path, image: str | Path, target: str | Path, profile: Profile,
                  label_value: float | None = None) -> Path:
    """The segmentation of ``image`` by a query's model, on the image's own grid (as the hand-off's predictions),
    saved as ``target``."""
    model, meta = load_query_model(Path(model_file), profile, 0.0)
    grid = Grid.from_meta(meta["grid"], model_file)
    case = Path(image).name.split(".")[0]
    cases = pd.DataFrame({"case_id": [case], "image_path": [str(image)], "label_path": [""], "labeled": [False],
                          "group": [None]})
    vol = load_cases(cases, grid, label_value=label_value)
    proba = next(iter(predict_proba(model, vol.images, batch_size=1)))
    nib.save(to_case_grid(proba, grid, str(image), case), str(target))
    return Path(target)


#: How other tools write a missing value: a group of that name is warned about (:func:`missing_mark_warnings`).
MISSING_MARKS = frozenset({"NA", "N/A", "NaN", "nan", "null", "NULL", "None", "none", "missing", "#N/A"})


def weight_notes(group_by: list, order: list, labeled_groups: list, weights: dict, group_dice: str,
                 mean_dice: dict | None = None) -> tuple[list[str], list[str]]:
    """What the console and ``query.json`` say about the group weights of a weighted strategy: notes (no groups
    given, one group, equal weights) and warnings (a group with fewer than :data:`MIN_LABELED_PER_GROUP` labeled
    cases, whose Dice, and so its weight, rests on those few; every group's mean Dice, ``mean_dice``, below
    :data:`LOW_DICE`: Eq. 2 divides the groups' deficits by the Dice's spread, so a model that segments nothing
    still gets unequal weights, from noise)."""
    notes, warnings = [], []
    if mean_dice and len(mean_dice) > 1 and max(mean_dice.values()) < LOW_DICE:
        warnings.append(f"the model's mean Dice on the labeled cases is below {LOW_DICE} in every group (best "
                        f"{max(mean_dice.values()):.3f}): the group weights come from noise, not from a gap; check "
                        "that the model is trained and that --class (or --label-value) names the structure")
    if not group_by:
        notes.append("no groups given (--group-by): every case is in one group, so there are no weights to steer "
                     "by and the ranking is the unweighted score's")
    elif len(order) == 1:
        notes.append(f"one group only ({order[0]}): no other group to weigh it against, so the ranking is the "
                     "unweighted score's")
    elif len({round(w, 6) for w in weights.values()}) == 1 and group_dice == "labeled":
        notes.append("the weights are equal: the model segments its labeled cases equally well (no spread in "
                     "Dice); --group-dice cross-validated measures it on cases it has not seen")
    counts = pd.Series(labeled_groups, dtype=object).value_counts()
    for g in order if len(order) > 1 else []:
        n = int(counts.get(g, 0))
        if n == 0:  # Eq. 2 needs a Dice of every group: the worst labeled case's stands in (acquisition.py)
            warnings.append(f"group {g} has no labeled case: its Dice is taken as the worst labeled case's, which "
                            f"gives it a high weight ({weights[g]:.3f}) and brings its cases forward; label a few of "
                            f"group {g} to measure it")
        elif n < MIN_LABELED_PER_GROUP:
            warnings.append(f"group {g} has {n} labeled case{'' if n == 1 else 's'}: its Dice, and so its weight "
                            f"({weights[g]:.3f}), rests on {'it' if n == 1 else 'them'}; label at least "
                            f"{MIN_LABELED_PER_GROUP} of each group, or group more coarsely")
    return notes, warnings


def missing_mark_warnings(order: list) -> list[str]:
    """A group named as other tools write a missing value (R's ``NA``, ...): a group of its own here, since values
    are taken as written; said, for every strategy."""
    warnings = []
    for g in order:
        if missing := [v for v in str(g).split(GROUP_SEPARATOR) if v in MISSING_MARKS]:
            warnings.append(f"group {g}: {missing[0]!r} is a value of its own here (values are taken as written), "
                            "not a missing one; leave the cell empty where the group is unknown")
    return warnings


def sources_note(sources: dict) -> str | None:
    """What the out-of-fold group Dice came from, where it is more than 5 folds trained over every labeled case: a
    case labeled after the model was trained, measured by the fold models, or folds reused (None otherwise)."""
    outside, reused = int(sources.get("out_of_sample", 0)), sources.get("folds") == "reused"
    how = "the folds of an earlier ranking with this model" if reused else "5 folds over them"
    if "why" in sources:
        return (f"group Dice: every labeled case ({sources['out_of_fold']}) out of fold ({how}), those labeled after "
                f"the model was trained included: {sources['why']}")
    if not outside and not reused:
        return None
    inside = int(sources.get("out_of_fold", 0))
    whose = "of the model's training cases" if sources.get("folds_over") == "training cases" else "labeled cases"
    text = f"group Dice: {inside} {whose} out of fold ({how})"
    if outside:
        text += (f", {outside} case{'' if outside == 1 else 's'} labeled after the model was trained measured by "
                 "the fold models (out of sample for each, their mean)")
    return text


def query_info(q: Query, rnd, n_labeled: int) -> dict:
    """``query.json``: the settings, the group weights and the Dice behind them, the unknown groups' method, the
    model, the grid, the counts, the profile and the versions."""
    dice_ids = q.labeled_ids if q.dice_ids is None else q.dice_ids
    behind = q.cases["labeled"] & q.cases["case_id"].isin(dice_ids)  # dice_ids: in the CSV's order
    lab_table = q.cases.loc[behind, ["case_id", "group"]].assign(dice=rnd.weight_dice)
    gm = q.gm
    mean_dice = {g: float(d.mean()) for g, d in lab_table.groupby("group")["dice"]}
    notes, warnings = weight_notes(q.group_by, q.order, [q.records[c].group for c in dice_ids], rnd.weights,
                                   q.group_dice, mean_dice) if q.strat.steered else ([], [])
    warnings += missing_mark_warnings(q.order)
    notes += [n for n in [sources_note(q.dice_sources)] if n and q.strat.steered]
    return {
        "csv": str(q.csv_path.resolve()), "strategy": q.strat.name, "budget": q.budget, "seed": q.seed,
        "group_by": q.group_by, "groups": [str(g) for g in q.order],
        "weights": {str(g): rnd.weights[g] for g in q.order} if q.strat.steered else None,
        "notes": notes, "warnings": warnings,
        "temperature": q.strat.temperature or q.profile.temperature, "group_dice": q.group_dice,
        "group_dice_sources": q.dice_sources,
        "fold_dice": q.folds.dice if q.dice_sources.get("folds") and q.folds else None,
        "fold_models": [m.as_posix() for m in q.folds.models] if q.dice_sources.get("folds") and q.folds else None,
        "fold_key": q.folds.key if q.dice_sources.get("folds") and q.folds else None,
        "labeled_dice": {str(g): d for g, d in mean_dice.items()},
        "labeled_case_dice": {c: float(d) for c, d in zip(dice_ids, rnd.weight_dice, strict=True)},
        "unknown_groups": {"n_unlabeled_unknown": int((~q.known_u).sum()), "method": gm.method,
                           "classifier_cv_accuracy": gm.cv_accuracy, "majority_rate": gm.chance_accuracy,
                           "n_known": gm.n_train},
        "model": str(Path(q.model_path).resolve()) if q.model_path else "trained here", "training": q.training,
        "grid": {"shape": list(q.grid.shape), "spacing_mm": list(q.grid.spacing)} if q.grid is not None
        else "each scan's own",
        "n_cases": len(q.cases), "n_labeled": n_labeled, "n_unlabeled": len(q.cases) - n_labeled,
        "profile": q.profile.as_dict(), "versions": versions()}


#: The 3D Slicer script of the hand-off (``value``, ``folder`` and ``cases`` filled in as Python literals). Slicer's
#: console runs it with ``exec(open(PATH).read())``, where ``__file__`` is not this file and the working folder is
#: anyone's: the script names the folder fairal wrote it in, and falls back on its own file's folder when run as a
#: file after the folder has moved.
SLICER_SCRIPT = """\
# Open the scans to annotate in 3D Slicer, each with fairal's prediction as a segmentation to correct.
# In Slicer's Python console, from any working folder: exec(open('/path/to/this/open_in_slicer.py').read())
# Save each corrected segmentation as a label map{value} and give its path in the CSV's label column.
import os

import slicer

# The folder fairal wrote this script in; if it has been moved since, the folder of this file run as a file.
folder = {folder}
if not os.path.isdir(os.path.join(folder, "predictions")) and "__file__" in globals():
    folder = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(folder, "predictions")):
    raise FileNotFoundError("no predictions/ folder in " + folder + ": the folder has moved; in Slicer's console "
                            "run exec(open(PATH).read(), dict(__file__=PATH)) with PATH this script's new path")
cases = [
{cases}]
for case, image, prediction in cases:
    volume = slicer.util.loadVolume(image)
    segmentation = slicer.util.loadSegmentation(os.path.join(folder, prediction))
    segmentation.SetName(case + " (fairal prediction)")
"""


def write_handoff(folder: Path, batch: list[tuple[str, str, nib.Nifti1Image]], label_value: float | None,
                  final: str | Path | None = None) -> None:
    """The annotators' files: each selected scan's prediction (a mask on the scan's own grid, e.g.
    :func:`fairal.data.cohort.to_case_grid`) as ``predictions/CASE.nii.gz``, to correct rather than draw from
    nothing; ``annotate.csv`` (case, image,
    prediction), a 3D Slicer script that opens them all (``open_in_slicer.py``) and ITK-SNAP command lines
    (``open_in_itksnap.sh``). Every string the scripts embed is quoted as data: ``repr`` in Python, ``shlex.quote``
    in the shell (a case id or a folder named ``O'Brien; $(rm -rf ~)`` stays a name). ``final``: where ``folder``
    will be once published (default: ``folder`` itself), the folder the Slicer script opens the predictions from."""
    import shlex

    within(folder, "predictions").mkdir()
    rows = []
    for case, image, mask in batch:
        nib.save(mask, str(within(folder, "predictions", f"{case}.nii.gz")))
        rows.append({"case_id": case, "image": image, "prediction": f"predictions/{case}.nii.gz"})
    write_csv(within(folder, "annotate.csv"), pd.DataFrame(rows, columns=["case_id", "image", "prediction"]))
    value = "" if label_value is None else f" (saved with value 1; your map uses {label_value:g})"
    cases = "".join(f"    ({r['case_id']!r}, {r['image']!r}, {r['prediction']!r}),\n" for r in rows)
    within(folder, "open_in_slicer.py").write_text(
        SLICER_SCRIPT.format(value=value, folder=repr(str(Path(final if final is not None else folder).resolve())),
                             cases=cases))
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
    elif strat.steered:
        text += (f"; {strat.steering} steering, weight {rec['weight']:.3f} of group {rec['group']}"
                 if rec["group_known"] else f"; {strat.steering} steering, expected weight {rec['weight']:.3f}")
    if strat.stochastic:
        text += (f"; in the best of {profile.stochastic_batches} random batches" if rec["selected"]
                 else "; not in the chosen batch")
    return text

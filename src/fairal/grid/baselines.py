"""The baselines of the paper's Table 1: the profile's network (the paper's U-Net) trained on each cohort (all, each
group alone), measured on the test and evaluation splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairal.config import Profile
from fairal.data.volumes import load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.io import (
    check_own_folder,
    make_own_folder,
    within,
    write_csv,
    write_json,
)
from fairal.metrics import fairness_summary
from fairal.records import BASELINE_CASE_COLUMNS, EVAL, EVAL_PREFIX, POOL, TEST, baseline_columns, prefixed_summary
from fairal.run.network import network_meta, network_of
from fairal.run.rounds import evaluate, model_factory
from fairal.run.train import TrainConfig, check_device, save_checkpoint, train_model
from fairal.sampling import draw_per_group, split_evenly, stream, stream_seed

#: The columns of the paper's groups 1 and 2 (:func:`fairal.records.baseline_columns`).
BASELINE_TABLE_COLUMNS = baseline_columns([1, 2])


def baseline_cohorts(manifest: pd.DataFrame, size: int, seed: int = 0) -> dict[str, list[str]]:
    """The training cohorts drawn (seeded) from the pool, never from the test split.

    ``all`` = ``size`` split evenly over the groups (the paper: 63 + 63; the first groups get a remainder),
    ``g<g>`` = ``size`` cases of group g alone (126), for every group of the dataset.
    """
    groups = sorted(set(manifest["group"]), key=str)
    pool = manifest[manifest["split"] == POOL]
    ids = {g: pool.loc[pool["group"] == g, "case_id"].tolist() for g in groups}
    need = {"all": split_evenly(size, groups)}
    need.update({f"g{g}": {h: size if h == g else 0 for h in groups} for g in groups})
    rng = stream(seed, "cohort")
    return {name: draw_per_group(ids, counts, rng, what=f"cohort {name}", short=" for training but the pool has",
                                 hint=" (test cases excluded): lower the cohort size (--set cohort_size=N)")
            for name, counts in need.items()}


def run_baseline(
    data_dir: str | Path, out: str | Path, profile: Profile, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Train the profile's network on each cohort and evaluate it on the fixed test split; write the records to ``out``.

    Writes ``baseline_cases.csv`` (cohort, case_id, group, dice, split: ``test``, and ``eval`` for the evaluation
    split), ``baseline_table.csv`` (cohort, dice_g1,
    dice_g2, dice_all, essp, delta; one dice_g<g> per group), ``baseline.json`` (settings, versions, training
    diagnostics) and one model per cohort under ``checkpoints/``. Everything is validated before any file is
    written, and each file is moved into place whole.
    """
    data_dir, out = Path(data_dir), check_own_folder(out, "baseline")
    check_device(profile.device)
    network_of(profile)  # a network unknown here is refused before any file is written
    manifest = read_manifest(data_dir, test_per_group=profile.test_per_group, seed=0)
    cohorts = baseline_cohorts(manifest, profile.cohort_size, seed)
    checkpoints = {name: within(out, "checkpoints", f"baseline-{name}.pt") for name in cohorts}  # group names
    test_ids = manifest.loc[manifest["split"] == TEST, "case_id"].tolist()
    if not test_ids:
        raise FairalError(f"{data_dir}: the test split is empty")
    volumes = load_volumes(data_dir, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
    test_rows = volumes.rows(test_ids)
    test_groups = volumes.groups[test_rows]
    eval_ids = manifest.loc[manifest["split"] == EVAL, "case_id"].tolist()
    eval_rows = volumes.rows(eval_ids)
    eval_groups = volumes.groups[eval_rows]
    case_rows, table_rows, diagnostics = [], [], {}
    groups = sorted(set(manifest["group"]), key=str)
    columns = baseline_columns(groups)
    for name in cohorts:
        rows = volumes.rows(cohorts[name])
        result = train_model(volumes.images[rows], volumes.labels[rows],
                             TrainConfig.of(profile, stream_seed(seed, "baseline-training")),
                             model_factory(profile, volumes, rows), progress=progress)
        dices = evaluate(result.model, volumes, test_rows, profile.batch_size)
        summary = fairness_summary(dices, test_groups)
        eval_dice = evaluate(result.model, volumes, eval_rows, profile.batch_size) if eval_rows else []
        summary.update(prefixed_summary(eval_dice, eval_groups, groups, EVAL_PREFIX))
        table_rows.append({columns[0]: name, **{k: summary.get(k) for k in columns[1:]}})
        case_rows += [dict(zip(BASELINE_CASE_COLUMNS, (name, c, g, d, split), strict=True))
                      for ids, grp, dcs, split in ((test_ids, test_groups, dices, TEST),
                                                   (eval_ids, eval_groups, eval_dice, EVAL))
                      for c, g, d in zip(ids, grp, dcs, strict=True)]
        diagnostics[name] = {"n_train": len(rows), "train_dice": result.train_dice, "restarts": result.restarts,
                             "collapsed": result.collapsed, "seconds": round(result.seconds, 2),
                             "final_loss": result.losses[-1] if result.losses else None}
        make_own_folder(out, "baseline")
        save_checkpoint(result.model, checkpoints[name], {"cohort": name, "profile": profile.name, "seed": seed,
                                                                **network_meta(profile)})
    table = pd.DataFrame(table_rows, columns=columns)
    write_csv(within(out, "baseline_cases.csv"), pd.DataFrame(case_rows, columns=BASELINE_CASE_COLUMNS))
    write_csv(within(out, "baseline_table.csv"), table)
    info = {"data_dir": str(data_dir.resolve()), "profile": profile.as_dict(), "seed": seed,
            "cohorts": {k: len(v) for k, v in cohorts.items()}, "n_test": len(test_ids), "n_eval": len(eval_ids),
            "grid": list(volumes.spatial_shape), "crop_box": volumes.box, "training": diagnostics}
    write_json(within(out, "baseline.json"), info)
    return table

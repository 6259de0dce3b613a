"""Experiments: the baseline cohorts of the paper's Table 1 (and, later, the active-learning grid)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fairal.config import Profile
from fairal.data import VolumeSet, load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.metrics import dice_from_proba, fairness_summary
from fairal.model import UNet3D
from fairal.train import TrainConfig, predict_proba, save_checkpoint, train_model

#: The paper's training cohorts: balanced (half of each group), Group 1 only, Group 2 only.
COHORTS = ("all", "g1", "g2")
BASELINE_TABLE_COLUMNS = ["cohort", "dice_g1", "dice_g2", "dice_all", "essp", "delta"]


def baseline_cohorts(manifest: pd.DataFrame, size: int, seed: int = 0) -> dict[str, list[str]]:
    """The three training cohorts drawn (seeded) from the pool, never from the test split.

    ``all`` = size/2 of each group (the paper: 63 + 63), ``g1`` / ``g2`` = ``size`` of one group (126).
    """
    groups = set(manifest["group"])
    if not groups <= {1, 2}:
        raise FairalError(f"the baseline compares groups 1 and 2; the manifest has unknown group(s) "
                          f"{sorted(map(str, groups - {1, 2}))}")
    pool = manifest[manifest["split"] == "pool"]
    ids = {g: sorted(pool.loc[pool["group"] == g, "case_id"]) for g in (1, 2)}
    need = {"all": {1: size // 2, 2: size - size // 2}, "g1": {1: size, 2: 0}, "g2": {1: 0, 2: size}}
    rng = np.random.default_rng([seed, 3])
    cohorts = {}
    for name in COHORTS:
        chosen: list[str] = []
        for g, n in need[name].items():
            if n > len(ids[g]):
                raise FairalError(
                    f"cohort {name} needs {n} Group {g} cases for training but the pool has {len(ids[g])} "
                    f"(test cases excluded): lower the cohort size (--set cohort_size=N)"
                )
            chosen += rng.choice(ids[g], size=n, replace=False).tolist() if n else []
        cohorts[name] = sorted(chosen)
    return cohorts


def train_config(profile: Profile, seed: int, num_threads: int | None = None) -> TrainConfig:
    return TrainConfig(lr=profile.lr, steps=profile.steps, epochs=profile.epochs, batch_size=profile.batch_size,
                       seed=seed, num_threads=num_threads)


def model_factory(profile: Profile, volumes: VolumeSet, train_rows: list[int]):
    """A U-Net whose output bias starts at the training labels' foreground fraction (guards against collapse)."""
    prior = float(volumes.labels[train_rows].float().mean()) if train_rows else None
    prior = min(max(prior, 1e-4), 0.5) if prior is not None else None
    return lambda: UNet3D(features=profile.features, foreground_prior=prior)


def evaluate(model: torch.nn.Module, volumes: VolumeSet, rows: list[int], batch_size: int = 4) -> list[float]:
    """Per-case Dice (threshold 0.5) of ``model`` on the cases at ``rows``."""
    dices = []
    for row, proba in zip(rows, predict_proba(model, volumes.images[rows], batch_size=batch_size), strict=True):
        dices.append(dice_from_proba(proba[0] if proba.ndim == 4 else proba, volumes.labels[row, 0].numpy()))
    return dices


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def run_baseline(
    data_dir: str | Path, out: str | Path, profile: Profile, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Train the U-Net on each cohort and evaluate it on the fixed test split; write the records to ``out``.

    Writes ``baseline_cases.csv`` (cohort, case_id, group, dice), ``baseline_table.csv`` (cohort, dice_g1,
    dice_g2, dice_all, essp, delta), ``baseline.json`` (settings, versions, training diagnostics) and the three
    models under ``checkpoints/``. Everything is validated before any file is written, and each file is moved
    into place whole.
    """
    data_dir, out = Path(data_dir), Path(out)
    manifest = read_manifest(data_dir, test_per_group=profile.test_per_group, seed=0)
    cohorts = baseline_cohorts(manifest, profile.cohort_size, seed)
    test_ids = manifest.loc[manifest["split"] == "test", "case_id"].tolist()
    if not test_ids:
        raise FairalError(f"{data_dir}: the test split is empty")
    volumes = load_volumes(data_dir, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
    test_rows = volumes.rows(test_ids)
    test_groups = volumes.groups[test_rows]
    case_rows, table_rows, diagnostics = [], [], {}
    for name in COHORTS:
        rows = volumes.rows(cohorts[name])
        result = train_model(volumes.images[rows], volumes.labels[rows], train_config(profile, seed),
                             model_factory(profile, volumes, rows), progress=progress)
        dices = evaluate(result.model, volumes, test_rows, profile.batch_size)
        summary = fairness_summary(dices, test_groups)
        table_rows.append({"cohort": name, **{k: summary[k] for k in BASELINE_TABLE_COLUMNS[1:]}})
        case_rows += [{"cohort": name, "case_id": c, "group": g, "dice": d}
                      for c, g, d in zip(test_ids, test_groups, dices, strict=True)]
        diagnostics[name] = {"n_train": len(rows), "train_dice": result.train_dice, "restarts": result.restarts,
                             "collapsed": result.collapsed, "seconds": round(result.seconds, 2),
                             "final_loss": result.losses[-1] if result.losses else None}
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        save_checkpoint(result.model, out / "checkpoints" / f"baseline-{name}.pt",
                        {"cohort": name, "profile": profile.name, "seed": seed})
    table = pd.DataFrame(table_rows, columns=BASELINE_TABLE_COLUMNS)
    _atomic_csv(pd.DataFrame(case_rows), out / "baseline_cases.csv")
    _atomic_csv(table, out / "baseline_table.csv")
    info = {"data_dir": str(data_dir.resolve()), "profile": profile.as_dict(), "seed": seed,
            "cohorts": {k: len(v) for k, v in cohorts.items()}, "n_test": len(test_ids),
            "grid": list(volumes.spatial_shape), "crop_box": volumes.box, "training": diagnostics}
    tmp = out / f".baseline.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    tmp.replace(out / "baseline.json")
    return table

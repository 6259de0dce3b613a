"""What the report's example figure draws, written by the run that has the model (the report never predicts): at the
final round, for each group, the median test case by Dice, its axial slice with the most structure, and that slice
of its image, its ground truth and the final model's segmentation (:data:`fairal.records.EXAMPLES_FILE`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from fairal.data.volumes import VolumeSet
from fairal.io import atomic_write, within
from fairal.records import EXAMPLES_FILE
from fairal.run.train import predict_proba


def example_cases(groups: Sequence, dice: Sequence[float]) -> list[int]:
    """For each group (in ``str`` order), the position of its median case by Dice (the upper median of an even
    count) among the test cases whose ``groups`` and ``dice`` are given."""
    groups, dice = np.asarray(list(groups), dtype=object), np.asarray(dice, dtype=float)
    picks = []
    for group in sorted(set(groups), key=str):
        idx = np.flatnonzero(groups == group)
        picks.append(int(idx[np.argsort(dice[idx])[len(idx) // 2]]))
    return picks


def most_structure(truth: np.ndarray) -> int:
    """The axial slice with the most ground-truth voxels (the middle one of an empty label)."""
    return int(np.argmax(truth.sum(axis=(0, 1)))) if truth.any() else truth.shape[2] // 2


def write_examples(folder: Path, model: nn.Module, volumes: VolumeSet, test_ids: list[str], dice: list[float]
                   ) -> None:
    """The example slices of ``model`` (a run's final model) on its test cases ``test_ids`` (whose Dice are
    ``dice``), written atomically to the run ``folder``'s :data:`fairal.records.EXAMPLES_FILE`."""
    rows = volumes.rows(test_ids)
    picks = example_cases(volumes.groups[rows], dice)
    out: dict[str, list] = {k: [] for k in ("case_id", "group", "dice", "slice", "image", "truth", "prediction")}
    for pick in picks:
        row = rows[pick]
        proba = next(iter(predict_proba(model, volumes.images[row:row + 1])))
        proba = proba[0] if proba.ndim == 4 else proba
        truth = volumes.labels[row, 0].numpy()
        z = most_structure(truth)
        out["case_id"].append(test_ids[pick])
        out["group"].append(str(volumes.groups[row]))
        out["dice"].append(float(dice[pick]))
        out["slice"].append(z)
        out["image"].append(volumes.images[row, 0, :, :, z].numpy().astype(np.float16))
        out["truth"].append((truth[:, :, z] > 0.5).astype(np.uint8))
        out["prediction"].append((proba[:, :, z] > 0.5).astype(np.uint8))

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in out.items()})

    atomic_write(within(folder, EXAMPLES_FILE), save)

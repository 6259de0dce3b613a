"""Example segmentations for the report: a Group 1 and a Group 2 test case of each dataset, segmented by the final
model of a weighted-localized-entropy run, with the ground truth and the prediction drawn over the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairal.config import Profile
from fairal.data.volumes import load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.io import within
from fairal.report.figures import literal
from fairal.report.records import Results, read_json_record
from fairal.run.model import load_unet
from fairal.run.rounds import evaluate
from fairal.run.train import predict_proba

EXAMPLE_STRATEGY = "weighted-localized-entropy"


def _final_run(folder: Path, dataset: str) -> Path | None:
    """The first finished run of the dataset under the example strategy (balanced start first) with its model."""
    runs = sorted(folder.glob(f"runs/{dataset}/*/{EXAMPLE_STRATEGY}/seed-*"),
                  key=lambda p: (p.parts[-3] != "balanced", p.as_posix()))
    for run in runs:
        try:
            finished = bool(read_json_record(run / "state.json").get("finished"))
        except FairalError:  # no state, or an unreadable one: not a finished run
            continue
        if finished and list(run.glob("checkpoints/*.pt")):
            return run
    return None


def _panels(folder: Path, results: Results) -> list[tuple]:
    """Per dataset with a finished run of the example strategy, the median test case of each group: (dataset, group,
    case, Dice, image, truth, probability map, run folder)."""
    panels = []
    for dataset in sorted(set(results.rounds["dataset"])):
        final = _final_model(folder, dataset)
        if final is None:
            continue
        run, manifest, vol, model = final
        test = manifest.loc[manifest["split"] == "test", ["case_id", "group"]]
        rows = vol.rows(test["case_id"].tolist())
        dice = np.array(evaluate(model, vol, rows))
        for group in sorted(set(test["group"]), key=str):
            idx = np.flatnonzero(test["group"].to_numpy() == group)
            pick = idx[np.argsort(dice[idx])[len(idx) // 2]]  # the median case of the group
            row = rows[pick]
            proba = next(predict_proba(model, vol.images[row:row + 1]))
            panels.append((dataset, group, test["case_id"].iloc[pick], float(dice[pick]), vol.images[row, 0].numpy(),
                           vol.labels[row, 0].numpy(), proba, run))
    return panels


def _final_model(folder: Path, dataset: str) -> tuple | None:
    """The example run of ``dataset``, its manifest, its volumes and its final model; None when there is no such
    run or its data or model moved (then there is no example, and the rest of the report stands)."""
    run = _final_run(folder, dataset)
    if run is None:
        return None
    try:
        settings = read_json_record(run / "config.json")["settings"]
        profile = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings["profile"].items()})
        data = Path(settings["data_dir"])
        manifest = read_manifest(data, test_per_group=profile.test_per_group)
        vol = load_volumes(data, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
        model, _ = load_unet(max(run.glob("checkpoints/round-*.pt")), profile.features)
    except (FairalError, OSError, KeyError, TypeError, ValueError):
        return None
    return run, manifest, vol, model


def _draw(ax, image: np.ndarray, truth: np.ndarray, proba: np.ndarray) -> None:
    """The axial slice with the most structure: the ground truth filled in yellow beneath, the prediction's outline
    in dashed vermillion over it (where they agree, the outline runs along the fill's edge; neither hides the
    other)."""
    from matplotlib.colors import ListedColormap

    z = int(np.argmax(truth.sum(axis=(0, 1)))) if truth.any() else truth.shape[2] // 2
    ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", interpolation="nearest")
    if truth[:, :, z].any():
        fill = np.ma.masked_where(truth[:, :, z].T < 0.5, np.ones_like(truth[:, :, z].T, dtype=float))
        ax.imshow(fill, cmap=ListedColormap(["#F0E442"]), alpha=0.45, origin="lower", interpolation="nearest")
    if (proba[:, :, z] > 0.5).any():
        ax.contour((proba[:, :, z] > 0.5).T, levels=[0.5], colors="#D55E00", linewidths=1.6, linestyles="--")
    ax.axis("off")


def write_examples(folder: Path, results: Results, out: Path) -> list[Path] | None:
    """Figure 10, when the results folder holds the runs' models and their datasets (a grid folder); else None.
    One row per dataset, one column per group, so the panels stay large on a narrow screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    panels = _panels(folder, results)
    if not panels:
        return None
    datasets = list(dict.fromkeys(p[0] for p in panels))
    groups = list(dict.fromkeys(p[1] for p in panels))
    fig, axes = plt.subplots(len(datasets), len(groups), figsize=(3.6 * len(groups), 3.6 * len(datasets) + 1.0),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for dataset, group, case, d, image, truth, proba, _run in panels:
        ax = axes[datasets.index(dataset), groups.index(group)]
        _draw(ax, image, truth, proba)
        ax.set_title(literal(f"{dataset} bias, Group {group}\n{case}: Dice {d:.3f}"), fontsize=10)
    run = panels[0][-1]
    fig.text(0.5, 0.01, literal(f"filled yellow: ground truth; dashed vermillion: prediction of the final\n"
                                f"{EXAMPLE_STRATEGY} model ({run.parts[-3]} start, {run.name}); the median test\n"
                                "case of each group; axial slice with the most structure"),
             ha="center", va="bottom", fontsize=9)
    fig.tight_layout(rect=(0, 0.9 / (3.6 * len(datasets) + 1.0), 1, 1))
    written = []
    for suffix in (".png", ".svg"):
        target = within(out, f"fig10_examples{suffix}")
        fig.savefig(target, dpi=100, metadata={"Software": None} if suffix == ".png" else {"Date": None})
        written.append(target)
    plt.close(fig)
    return written

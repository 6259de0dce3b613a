"""Example segmentations for the report: a Group 1 and a Group 2 test case of each dataset, segmented by the final
model of a weighted-localized-entropy run, with the ground truth and the prediction drawn over the image. The run
wrote the slices when it finished (:data:`fairal.records.EXAMPLES_FILE`): the report reads them, it never predicts.
A run finished before runs wrote them has none, and the figure is then absent (the report says why)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairal.errors import FairalError
from fairal.io import within
from fairal.records import EXAMPLES_FILE
from fairal.report.figures import literal
from fairal.report.tidy import Results, read_json_record

EXAMPLE_STRATEGY = "weighted-localized-entropy"


def _final_run(folder: Path, dataset: str) -> Path | None:
    """The first finished run of the dataset under the example strategy (balanced start first) with its example
    slices."""
    runs = sorted(folder.glob(f"runs/{dataset}/*/{EXAMPLE_STRATEGY}/seed-*"),
                  key=lambda p: (p.parts[-3] != "balanced", p.as_posix()))
    for run in runs:
        try:
            finished = bool(read_json_record(run / "state.json").get("finished"))
        except FairalError:  # no state, or an unreadable one: not a finished run
            continue
        if finished and (run / EXAMPLES_FILE).is_file():
            return run
    return None


def _read_examples(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a run's example file; None when it cannot be read (then there is no example, and the rest of
    the report stands)."""
    keys = ("case_id", "group", "dice", "image", "truth", "prediction")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    n = {len(a) for a in arrays.values()}
    return arrays if len(n) == 1 and arrays["image"].ndim == 3 else None


def _panels(folder: Path, results: Results) -> list[tuple]:
    """Per dataset with a finished run of the example strategy, the median test case of each group: (dataset, group,
    case, Dice, image slice, truth slice, prediction slice, run folder)."""
    panels = []
    for dataset in sorted(set(results.rounds["dataset"])):
        run = _final_run(folder, dataset)
        examples = _read_examples(run / EXAMPLES_FILE) if run is not None else None
        if examples is None:
            continue
        for i in range(len(examples["case_id"])):
            panels.append((dataset, str(examples["group"][i]), str(examples["case_id"][i]),
                           float(examples["dice"][i]), examples["image"][i].astype(np.float32),
                           examples["truth"][i], examples["prediction"][i], run))
    return panels


def _draw(ax, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
    """The axial slice (the run chose the one with the most structure): the ground truth filled in yellow beneath,
    the prediction's outline in dashed vermillion over it (where they agree, the outline runs along the fill's edge;
    neither hides the other)."""
    from matplotlib.colors import ListedColormap

    ax.imshow(image.T, cmap="gray", origin="lower", interpolation="nearest")
    if truth.any():
        fill = np.ma.masked_where(truth.T < 0.5, np.ones_like(truth.T, dtype=float))
        ax.imshow(fill, cmap=ListedColormap(["#F0E442"]), alpha=0.45, origin="lower", interpolation="nearest")
    if prediction.any():
        ax.contour((prediction > 0.5).T, levels=[0.5], colors="#D55E00", linewidths=1.6, linestyles="--")
    ax.axis("off")


def write_examples(folder: Path, results: Results, out: Path) -> list[Path] | None:
    """Figure 10, when the results folder holds a finished example run's slices (a grid folder); else None.
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
    for dataset, group, case, d, image, truth, prediction, _run in panels:
        ax = axes[datasets.index(dataset), groups.index(group)]
        _draw(ax, image, truth, prediction)
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

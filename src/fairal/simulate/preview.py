"""``preview.png``: what the bias does to the structure, each group against one without it, in one picture."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fairal.io import within  # noqa: E402
from fairal.nifti import load_nifti  # noqa: E402
from fairal.records import ACQUISITION_COLUMNS  # noqa: E402

#: A column's width (inches) and the resolution: a report shows the picture at its page's width (about 1050 px for
#: five columns), where FONT's points stay legible (13 px and more at the page's full width).
COLUMN_INCHES, DPI = 2.3, 110
FONT = {"title": 11, "panel": 11, "axis": 10, "tick": 9, "legend": 9}


def _wrapped(text: str, inches: float, points: int) -> str:
    """``text`` broken into lines that fit ``inches`` at ``points`` (a character about 0.65 em wide)."""
    width = max(10, int(inches * 72 / (0.65 * points)))
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _groups(manifest: pd.DataFrame) -> list:
    return sorted(manifest["group"].unique())


def _biased(manifest: pd.DataFrame, g) -> bool:
    """Whether group ``g`` has a local bias (its subjects have a bias coefficient)."""
    return bool(manifest.loc[manifest["group"] == g, "bias_scale"].notna().any())


def _examples(manifest: pd.DataFrame) -> list[tuple[str, str]]:
    """The example subjects of the top row. The paper's two groups: Group 1 at the median and at the 90th
    percentile of the bias coefficient, two Group 2 subjects. More groups: one subject a group (a biased group's at
    its median coefficient)."""
    groups = _groups(manifest)
    rows = []
    for g in groups:
        members = manifest[manifest["group"] == g]
        if _biased(manifest, g):
            members = members.sort_values("bias_scale")
            quantiles = (0.5, 0.9) if groups == [1, 2] and g == 1 else (0.5,)
            rows += [members.iloc[min(int(q * len(members)), len(members) - 1)] for q in quantiles]
        else:
            rows += [row for _, row in members.head(2 if groups == [1, 2] else 1).iterrows()]
    picks: list[tuple[str, str]] = []
    for row in rows:
        bias = "no local bias" if pd.isna(row["bias_scale"]) else f"bias c = {row['bias_scale']:.2f} SD"
        acquisition = [f"{key} {row[key]:g}{'' if key == 'contrast' else '%'}"
                       for key, neutral in ACQUISITION_COLUMNS.items()
                       if key in row.index and pd.notna(row[key]) and row[key] != neutral]
        bias = ", ".join([bias, *acquisition])
        picks.append((row["case_id"], f"Group {row['group']}, {row['case_id']}\n{bias}"))
    return picks


def _comparisons(manifest: pd.DataFrame) -> list[tuple]:
    """The (group, reference) pairs of the frequency-difference panels: each biased group against the first group
    without a local bias (the last group if all have one); without a biased group, the first other group."""
    groups = _groups(manifest)
    if len(groups) < 2:
        return []
    plain = [g for g in groups if not _biased(manifest, g)]
    ref = plain[0] if plain else groups[-1]
    others = [g for g in groups if g != ref and _biased(manifest, g)] or [g for g in groups if g != ref][:1]
    return [(g, ref) for g in others]


def write_preview(out: Path, state: dict, subjects, results: dict, manifest: pd.DataFrame) -> Path:
    """Slices through the structure's centroid for the template and example subjects (label outlines: subject
    in yellow, template in dashed cyan), per-group label frequency, and the volume distribution by group."""
    ref = state["template_label_crop"]
    k = int(np.round(np.argwhere(ref).mean(0)).astype(int)[2])  # axial slice through the structure's centroid
    n_top = 1 + len(_examples(manifest))
    n_bottom = len(_groups(manifest)) + len(_comparisons(manifest)) + 1
    n_cols = max(n_top, n_bottom, 4)
    fig, axes = plt.subplots(2, n_cols, figsize=(COLUMN_INCHES * n_cols, 7.2))
    _subject_row(axes[0], out, state, manifest, k)
    _group_row(fig, axes[1], state, results, manifest, k)
    left = "right" if state["out_affine"][0, 0] < 0 else "left"  # RAS: x falling with i = toward the patient's left
    fig.suptitle(_wrapped(f"axial slice {k} of the output grid through the structure's centroid (patient's left on "
                          f"the {left} of each panel); top row: a subject's label outlined in yellow, the template's "
                          "in dashed cyan", COLUMN_INCHES * n_cols, FONT["title"]), fontsize=FONT["title"])
    fig.tight_layout()
    path = within(out, "preview.png")
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def _subject_row(axes, out: Path, state: dict, manifest: pd.DataFrame, k: int) -> None:
    """The top row: the template, then the example subjects (:func:`_examples`) read back from ``out``."""
    box = state["preview_box"]
    ref = state["template_label_crop"]
    zoom = (box[0], box[1])
    start = state["crop_start"]
    tpl_img = state["template"].image[
        tuple(slice(int(s), int(s) + n) for s, n in zip(start, state["shape"], strict=True))
    ]

    def show(ax, img, lab, title):
        ax.imshow(img[zoom[0], zoom[1], k].T, cmap="gray", origin="lower")
        ax.contour(ref[zoom[0], zoom[1], k].T.astype(float), levels=[0.5], colors="cyan", linestyles="--",
                   linewidths=1)
        if lab is not None:
            ax.contour(lab[zoom[0], zoom[1], k].T.astype(float), levels=[0.5], colors="yellow", linewidths=1.2)
        ax.set_title(_wrapped(title, COLUMN_INCHES, FONT["panel"]), fontsize=FONT["panel"])
        ax.axis("off")

    picks = _examples(manifest)
    show(axes[0], tpl_img, None, "template\n(cyan: its label)")
    for ax, (case_id, title) in zip(axes[1:], picks, strict=False):
        img = np.asarray(load_nifti(out / "images" / f"{case_id}.nii.gz", "image", case_id, read=False).dataobj)
        lab = np.asarray(load_nifti(out / "labels" / f"{case_id}.nii.gz", "label", case_id, read=False).dataobj)
        show(ax, img, lab, title)
    for ax in axes[1 + len(picks):]:
        ax.axis("off")


def _group_row(fig, axes, state: dict, results: dict, manifest: pd.DataFrame, k: int) -> None:
    """The bottom row: each group's label frequency on the slice, the differences of :func:`_comparisons`, and
    the volumes by group."""
    box = state["preview_box"]
    ref = state["template_label_crop"]
    kb = k - box[2].start
    groups = _groups(manifest)
    freq = {}
    for g in groups:
        ids = manifest.loc[manifest["group"] == g, "case_id"]
        if len(ids):
            freq[g] = np.mean([results[c]["preview_label"][:, :, kb] for c in ids], axis=0)
    ref_box = ref[box][:, :, kb].astype(float)
    col = 0
    for g in groups:
        ax = axes[col]
        im = ax.imshow(freq[g].T, cmap="magma", vmin=0, vmax=1, origin="lower")
        ax.contour(ref_box.T, levels=[0.5], colors="cyan", linestyles="--", linewidths=1)
        fig.colorbar(im, ax=ax, fraction=0.046).ax.tick_params(labelsize=FONT["tick"])
        ax.set_title(f"Group {g}, n = {int((manifest['group'] == g).sum())}:\nlabel frequency", fontsize=FONT["panel"])
        ax.axis("off")
        col += 1
    for g, r in _comparisons(manifest):
        ax = axes[col]
        im = ax.imshow((freq[g] - freq[r]).T, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
        fig.colorbar(im, ax=ax, fraction=0.046).ax.tick_params(labelsize=FONT["tick"])
        ax.set_title(f"frequency,\nGroup {g} - Group {r}", fontsize=FONT["panel"])
        ax.axis("off")
        col += 1
    ax = axes[col]
    palette = {1: "tab:red", 2: "tab:blue"}
    extra = itertools.cycle(("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                             "tab:cyan", "tab:gray"))
    for g in groups:
        colour = palette.get(g) or next(extra)
        v = manifest.loc[manifest["group"] == g, "label_volume_mm3"]
        if len(v):
            ax.hist(v, bins=20, alpha=0.6, color=colour, label=f"Group {g}")
    ax.axvline(ref.sum() * state["voxel_volume"], color="k", linestyle="--", linewidth=1, label="template")
    ax.set_xlabel("structure volume (mm$^3$)", fontsize=FONT["axis"])
    ax.set_ylabel("subjects", fontsize=FONT["axis"])
    ax.legend(fontsize=FONT["legend"])
    ax.tick_params(labelsize=FONT["tick"])
    for ax in axes[col + 1:]:
        ax.axis("off")

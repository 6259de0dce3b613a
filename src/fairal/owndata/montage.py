"""A QC montage of cases: one slice through each case's region of interest, with the predicted structure and the
ROI of the localized scores drawn over the image."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fairal.report.figures import literal  # noqa: E402

#: The montage's title: what the colours are and which way the slices face (RAS grid: x, the patient's right, grows
#: to the right of a panel and y, anterior, upwards; the patient's left is on the left, the neurological convention).
MONTAGE_TITLE = ("cases to annotate next: prediction (red), ROI of the score (yellow)\naxial slices, anterior up, "
                 "the patient's left on the left (neurological convention)")


def _slice_index(roi: np.ndarray, proba: np.ndarray) -> int:
    """The axial slice (last axis) with the most predicted structure, else the ROI's centre, else the middle."""
    pred = proba > 0.5
    if pred.any():
        return int(np.argmax(pred.sum(axis=(0, 1))))
    if roi.any() and not roi.all():
        return int(np.round(np.argwhere(roi)[:, 2].mean()))
    return roi.shape[2] // 2


def write_montage(path: Path, images: list[np.ndarray], probas: list[np.ndarray], rois: list[np.ndarray],
                  titles: list[str], columns: int = 4) -> Path:
    """One panel per case (in the given order): the axial slice through the predicted structure, the prediction
    (p > 0.5) outlined in red and the ROI in yellow, oriented as :data:`MONTAGE_TITLE` says. Images are (X, Y, Z)
    arrays on a RAS grid."""
    n = len(images)
    cols = min(columns, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, proba, roi, title in zip(axes.flat, images, probas, rois, titles, strict=False):
        z = _slice_index(roi, proba)
        # RAS arrays: x to the right, y up when the slice is transposed and drawn with the origin below.
        ax.imshow(img[:, :, z].T, cmap="gray", origin="lower", interpolation="nearest")
        if (proba[:, :, z] > 0.5).any():
            ax.contour((proba[:, :, z] > 0.5).T, levels=[0.5], colors="red", linewidths=0.8)
        if roi[:, :, z].any() and not roi[:, :, z].all():
            ax.contour(roi[:, :, z].T.astype(float), levels=[0.5], colors="yellow", linewidths=0.6)
        ax.set_title(literal(title), fontsize=7)
    fig.suptitle(MONTAGE_TITLE, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path

"""A tiny own-data study for the query tests: three sites (groups) scanned at different sizes, spacings and
orientations, some cases labeled, some groups unknown."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

# site -> (shape, spacing mm, flip x (LAS instead of RAS), structure radius scale)
SITES = {"A": ((32, 32, 28), 1.0, False, 1.0), "B": ((22, 22, 19), 1.5, False, 1.0),
         "C": ((32, 32, 28), 1.0, True, 0.7)}


def case_volume(shape, spacing, flip, scale, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'brain' ellipsoid around the world origin with a brighter 'structure' ellipsoid at (4, 2, 0) mm."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    if flip:
        affine[0, 0], affine[0, 3] = -spacing, -affine[0, 3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    brain = ((xyz / np.array([14.0, 15.0, 12.0])) ** 2).sum(-1) < 1
    c = np.array([4.0, 2.0, 0.0]) + rng.normal(0, 0.5, 3)
    structure = (((xyz - c) / (np.array([4.0, 6.0, 4.0]) * scale)) ** 2).sum(-1) < 1
    image = 600.0 * brain + 500.0 * structure + rng.normal(0, 20, shape)
    return image.astype(np.float32), structure.astype(np.uint8), affine


def make_study(folder: Path, per_site: int = 8, labeled_per_site: int = 4, unknown: int = 3, seed: int = 0) -> Path:
    """``study.csv`` with columns case_id, image, label, site, sex: ``per_site`` cases per site, the first
    ``labeled_per_site`` of each labeled, and the site of ``unknown`` unlabeled cases left empty."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    rows = []
    for site, (shape, spacing, flip, scale) in SITES.items():
        for k in range(per_site):
            case = f"{site.lower()}{k:02d}"
            image, label, affine = case_volume(shape, spacing, flip, scale, rng)
            nib.save(nib.Nifti1Image(image, affine), str(folder / "images" / f"{case}.nii.gz"))
            lab = ""
            if k < labeled_per_site:
                nib.save(nib.Nifti1Image(label, affine), str(folder / "labels" / f"{case}.nii.gz"))
                lab = f"labels/{case}.nii.gz"
            rows.append({"case_id": case, "image": f"images/{case}.nii.gz", "label": lab, "site": site,
                         "sex": "F" if k % 2 else "M"})
    table = pd.DataFrame(rows)
    unlabeled = table.index[table["label"] == ""]
    table.loc[unlabeled[::max(1, len(unlabeled) // unknown)][:unknown], "site"] = ""
    path = folder / "study.csv"
    table.to_csv(path, index=False)
    return path

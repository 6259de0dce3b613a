"""How long ``fairal query --probabilities`` takes on scans of a real T1's size (1 mm, 182 x 218 x 182), against
:func:`fairal.rank_for_annotation` on the same maps already in memory (the reference, in the same run): the
difference is reading the files, putting their axes in order and writing the records.

    python benchmarks/bench_saved_query.py [N_UNLABELED] [FOLDER]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

import fairal
from fairal.config import get_profile
from fairal.owndata.saved import run_saved_query

SHAPE = (182, 218, 182)


def make(folder: Path, n_unlabeled: int) -> dict:
    """Scans, labels for 4 labeled cases (2 per site), their segmentations, and each unlabeled scan's
    probabilities as nnU-Net's .npz (SimpleITKIO's axis order). Returns the unlabeled maps (scan voxel order)."""
    rng = np.random.default_rng(0)
    box = np.zeros(SHAPE, bool)
    box[80:100, 120:140, 90:105] = True
    (folder / "npz").mkdir()
    (folder / "validation").mkdir()
    rows, maps = [], {}
    for i in range(4 + n_unlabeled):
        case, site = f"c{i:02d}", "AB"[i % 2]
        image = (100 + 20 * rng.random(SHAPE)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"{case}.nii.gz")
        label = ""
        if i < 4:
            nib.save(nib.Nifti1Image(box.astype(np.uint8), np.eye(4)), folder / f"{case}_label.nii.gz")
            seg = box.copy()
            seg[80:84 + 4 * (i % 2)] = False
            nib.save(nib.Nifti1Image(seg.astype(np.uint8), np.eye(4)), folder / "validation" / f"{case}.nii.gz")
            label = f"{case}_label.nii.gz"
        else:
            p = gaussian_filter(box.astype(np.float32) + rng.normal(0, 0.3, SHAPE).astype(np.float32), 2)
            p = np.clip(p, 0, 1)
            maps[case] = p
            t = p.transpose(2, 1, 0)
            np.savez_compressed(folder / "npz" / f"{case}.npz", probabilities=np.stack([1 - t, t]))
        rows.append({"case_id": case, "image": f"{case}.nii.gz", "label": label, "site": site})
    pd.DataFrame(rows).to_csv(folder / "cases.csv", index=False)
    return maps


def main(n_unlabeled: int = 8, folder: str | None = None) -> None:
    root = Path(folder or tempfile.mkdtemp(prefix="fairal-bench-saved-"))
    maps = make(root, n_unlabeled)
    profile = get_profile("standard")
    start = time.perf_counter()
    table = run_saved_query(root / "cases.csv", 4, "weighted-localized-entropy", root / "out", profile,
                            root / "npz", [root / "validation"], group_by=["site"], progress=False)
    saved = time.perf_counter() - start
    weights = table.attrs["query"]["weights"]
    start = time.perf_counter()
    ref = fairal.rank_for_annotation(maps, {c: "AB"[int(c[1:]) % 2] for c in maps}, weights, budget=4)
    memory = time.perf_counter() - start
    same = table["case_id"].tolist() == ref["case_id"].tolist()
    print(f"{n_unlabeled} unlabeled scans of {SHAPE} (1 mm), 4 labeled: fairal query --probabilities {saved:.1f} s "
          f"({saved / n_unlabeled:.2f} s a scan); rank_for_annotation on the maps in memory {memory:.1f} s; "
          f"same ranking: {same}")


if __name__ == "__main__":
    main(*(int(a) if i == 0 else a for i, a in enumerate(sys.argv[1:])))

"""A fairal dataset in the layouts other tools read: nnU-Net v2's raw format, and the Medical Segmentation Decathlon
(MSD) ``dataset.json`` that MONAI's ``load_decathlon_datalist`` reads.

nnU-Net v2 (``nnUNet_raw/DatasetNNN_NAME``): ``imagesTr/CASE_0000.nii.gz`` (channel 0), ``labelsTr/CASE.nii.gz``,
the fixed test split in ``imagesTs/`` (its labels in ``labelsTs/``, which nnU-Net ignores, for your own
evaluation), ``dataset.json`` with ``channel_names``, ``labels``, ``numTraining`` and ``file_ending``, and the groups
as a side table ``groups.csv`` (``case_id, group, split``): nnU-Net trains on images alone, fairness is evaluated
from the side table.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from fairal.data.volumes import read_manifest
from fairal.errors import FairalError
from fairal.io import check_replaceable, publish_folder, within, write_csv, write_json
from fairal.nifti import read_image, read_label
from fairal.records import POOL, TEST

STRUCTURE = "left caudate"


def decathlon_json(manifest: pd.DataFrame, name: str, structure: str = STRUCTURE) -> dict:
    """The MSD description of a dataset folder, with paths relative to the folder: ``training`` (image, label,
    group) for the pool and ``test`` (image, label, group) for the fixed test split."""
    def entries(split: str) -> list[dict]:
        rows = manifest[manifest["split"] == split]
        return [{"image": img, "label": lab, "group": str(g), "case_id": c}
                for c, img, lab, g in zip(rows["case_id"], rows["image"], rows["label"], rows["group"], strict=True)]

    training, test = entries(POOL), entries(TEST)
    return {"name": name, "description": "fairal dataset: T1 images, a binary structure label, a group per case",
            "tensorImageSize": "3D", "modality": {"0": "T1"}, "labels": {"0": "background", "1": structure},
            "numTraining": len(training), "numTest": len(test), "training": training, "test": test}


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (same file system: no copy of the voxels), else a copy; never through or over a destination
    that exists (``x`` mode creates the file or fails, and follows no symbolic link)."""
    try:
        os.link(src, dst)
        return
    except FileExistsError:
        pass
    except OSError:  # another file system
        with contextlib.suppress(FileExistsError), open(src, "rb") as f, open(dst, "xb") as g:
            shutil.copyfileobj(f, g)
            g.close()
            shutil.copystat(src, dst)
            return
    raise FairalError(f"{dst} already exists: the export never writes over or through an existing file")


def export_nnunet(data_dir: str | Path, out: str | Path, dataset_id: int, name: str | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``out/DatasetNNN_NAME`` in nnU-Net v2's raw format from the fairal dataset ``data_dir``; returns it."""
    data_dir = Path(data_dir)
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise FairalError(f"--dataset-id must be a whole number from 1 to 999 (nnU-Net's ids), got {dataset_id!r}")
    name = name or re.sub(r"[^A-Za-z0-9]+", "", data_dir.resolve().name.title()) or "Fairal"
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise FairalError(f"--name may hold letters, digits, '_' and '-' only, got {name!r}")
    manifest = read_manifest(data_dir)
    target = Path(out) / f"Dataset{dataset_id:03d}_{name}"
    taken = sorted(p.name for p in Path(out).glob(f"Dataset{dataset_id:03d}_*") if p.name != target.name)
    if taken:  # nnU-Net finds a dataset by its id: two folders of one id stop every nnUNetv2_ command
        raise FairalError(f"--dataset-id {dataset_id} is taken in {out} by {taken[0]}: nnU-Net needs one folder per "
                          f"id; choose another --dataset-id (or --name {taken[0][11:]!r} to replace that export)")
    check_replaceable(target, overwrite, [data_dir], what="export folder")
    cases = list(zip(manifest["case_id"], manifest["split"], manifest["image_path"], manifest["label_path"],
                     strict=True))
    for case, _, img, lab in cases:  # only images and labels are linked or copied, never another file
        read_image(img, "image", case)
        read_label(lab, "label", case)
    with publish_folder(target, "nnunet-export") as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            within(tmp, sub).mkdir()
        for case, split, img, lab in cases:
            images, labels = ("imagesTr", "labelsTr") if split == POOL else ("imagesTs", "labelsTs")
            _link_or_copy(Path(img), within(tmp, images, f"{case}_0000.nii.gz"))
            _link_or_copy(Path(lab), within(tmp, labels, f"{case}.nii.gz"))
        n_train = int((manifest["split"] == POOL).sum())
        write_json(within(tmp, "dataset.json"), {
            "channel_names": {"0": "T1"}, "labels": {"background": 0, STRUCTURE.replace(" ", "_"): 1},
            "numTraining": n_train, "file_ending": ".nii.gz", "name": name,
            "description": "exported by fairal export nnunet; groups in groups.csv, the fixed test split in imagesTs"})
        write_csv(within(tmp, "groups.csv"), manifest[["case_id", "group", "split"]])
    return target

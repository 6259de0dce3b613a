"""``fairal query --probabilities``: rank a lab's unlabeled scans from its own model's saved outputs (nnU-Net's or any
model's), with no training.

What it reads, each file named after its case (the CSV's ``case_id``):

- the **unlabeled** scans' class probabilities (``--probabilities DIR``): nnU-Net's ``CASE.npz``
  (``nnUNetv2_predict --save_probabilities``: key ``probabilities``, class axis first, the spatial axes in the order
  nnU-Net's image reader gave them) or a NIfTI map ``CASE.nii.gz`` / ``CASE.nii`` (3D: the structure's probability;
  4D: one volume per class, class ``--class``), on the scan's grid in any orientation. Where a folder holds both
  ``CASE.npz`` and ``CASE.nii.gz`` (nnU-Net writes its segmentation beside the probabilities), the ``.npz`` is read.
- the **labeled** cases' segmentations by the model (``--segmentations DIR``, repeatable: e.g. nnU-Net's
  ``fold_K/validation/``, each case segmented by the fold that did not train on it): label maps whose value
  ``--class`` is the structure. They give the model's Dice on each labeled case, against the CSV's label, and so the
  group weights of Eq. 2. A labeled case with no segmentation but saved probabilities counts with ``p > 0.5``; one
  with neither is left out of the Dice, with a warning.

nnU-Net's axis order (checked against nnU-Net 2.8's ``imageio`` and ``inference/export_prediction.py``): its export
reverts its own transpose and cropping, so a ``.npz`` holds ``(classes, *the reader's array shape)``. The NIfTI
readers ``SimpleITKIO`` (nnU-Net's default for ``.nii.gz``) and ``NibabelIO`` give the file's voxel axes reversed,
``(k, j, i)``; ``NibabelIOWithReorient`` reorients to RAS first. The reader is the ``image_reader_writer`` of the
model's ``plans.json`` (``--nnunet-plans``; without it, ``SimpleITKIO``). A probability file whose shape is not its
scan's (in that order) is refused naming both. The ``CASE.pkl`` nnU-Net writes beside each ``.npz`` is never
opened (unpickling runs code); the ``.npz`` is read with ``allow_pickle=False``.

Scores are computed on each scan's own voxels (the ROI's dilation counts the scan's voxels), the ranking is the one
:func:`fairal.rank_for_annotation` gives from the same maps, and the output is a query's: ``query.csv``,
``query.json``, ``montage.png`` and the annotators' hand-off (each selected scan's ``p > 0.5`` as its prediction).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from rich.progress import track

from fairal.acquisition import STATISTICS, Strategy, group_weights, roi_mask
from fairal.config import Profile
from fairal.data.cohort import scan_mask
from fairal.errors import FairalError
from fairal.io import check_input_file, publish_folder, within, write_csv, write_json
from fairal.metrics import dice
from fairal.nifti import image_data, load_nifti, read_label, volume_3d
from fairal.owndata.api import from_maps, rank_maps
from fairal.owndata.montage import write_montage
from fairal.owndata.query import (
    Query,
    check_cases,
    check_steered,
    query_info,
    query_table,
    unlabeled_groups,
    write_handoff,
)

#: nnU-Net's NIfTI readers whose axis order fairal reads: name -> whether it reorients the scan to RAS first.
NNUNET_READERS = {"SimpleITKIO": False, "NibabelIO": False, "NibabelIOWithReorient": True}
#: nnU-Net's reader for ``.nii.gz`` when its dataset.json names none (the first of its registry that reads them).
DEFAULT_READER = "SimpleITKIO"
#: How far outside [0, 1] a saved probability may lie (rounding of a float32 softmax) before it is refused.
TOLERANCE = 1e-5
PROBABILITY_FILES = (".npz", ".nii.gz", ".nii")
SEGMENTATION_FILES = (".nii.gz", ".nii")


def nnunet_reader(plans: str | Path | None) -> str:
    """The image reader of a trained nnU-Net model (its ``plans.json``'s ``image_reader_writer``), refused unless
    fairal knows its axis order; :data:`DEFAULT_READER` without a plans file."""
    if plans is None:
        return DEFAULT_READER
    path = check_input_file(plans, "--nnunet-plans")
    try:
        name = json.loads(path.read_text()).get("image_reader_writer")
    except (ValueError, AttributeError, UnicodeDecodeError) as err:
        raise FairalError(f"--nnunet-plans {path} is not an nnU-Net plans.json: {err}") from None
    if name not in NNUNET_READERS:
        raise FairalError(f"--nnunet-plans {path}: its image reader {name!r} is not one whose axis order fairal reads "
                          f"({', '.join(NNUNET_READERS)}); export NIfTI probability maps instead")
    return name


def find_outputs(folders: list[Path], cases: list[str], endings: tuple[str, ...], what: str) -> dict[str, Path]:
    """Each case's file in ``folders`` (``CASE`` + the first of ``endings`` found in a folder); a case found in two
    folders is refused (which one is the model's?)."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise FairalError(f"{what} {folder}: not a folder")
        for case in cases:
            hit = next((Path(folder) / f"{case}{e}" for e in endings if (Path(folder) / f"{case}{e}").is_file()), None)
            if hit is None:
                continue
            if case in found:
                raise FairalError(f"case {case}: two files in {what}: {found[case]} and {hit}; keep one")
            found[case] = hit
    return found


def _npz_classes(path: Path, case: str) -> np.ndarray:
    """nnU-Net's ``probabilities`` array, read without unpickling anything."""
    try:
        if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle (or a lone .npy)
            raise FairalError(f"case {case}: {path} is not a .npz file (a zip archive of arrays, as "
                              "nnUNetv2_predict --save_probabilities writes)")
        with np.load(path, allow_pickle=False) as z:
            if "probabilities" not in z.files:
                raise FairalError(f"case {case}: {path} holds no 'probabilities' array (it holds {', '.join(z.files)})"
                                  ": not nnUNetv2_predict --save_probabilities output")
            return z["probabilities"]
    except ValueError as err:  # an object array, which only unpickling could read
        raise FairalError(f"case {case}: {path} is not a plain array file ({err}); fairal never unpickles") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise FairalError(f"case {case}: {path} is not a readable .npz file: {err}") from None


def _class_of(stack: np.ndarray, axis: int, fg_class: int, path: Path, case: str) -> np.ndarray:
    n = stack.shape[axis]
    if not 0 <= fg_class < n:
        raise FairalError(f"case {case}: {path} holds {n} classes (0 to {n - 1}): there is no class {fg_class} "
                          "(--class)")
    return np.take(stack, fg_class, axis=axis)


def _nnunet_on_scan(path: Path, scan: nib.Nifti1Image, image, fg_class: int, reader: str, case: str) -> np.ndarray:
    """The class ``fg_class`` of nnU-Net's ``.npz``, in the scan's voxel order (see the module's docstring)."""
    stack = _npz_classes(path, case)
    shape = tuple(int(n) for n in scan.shape[:3])
    ornt = io_orientation(scan.affine) if NNUNET_READERS[reader] else axcodes2ornt("RAS")
    read_shape = [0, 0, 0]  # the reader's array before its (2, 1, 0) transpose: RAS-reoriented or as stored
    for axis, (to, _flip) in enumerate(ornt):
        read_shape[int(to)] = shape[axis]
    expected = tuple(read_shape[::-1])
    if stack.ndim == 3 and tuple(stack.shape) == expected:
        raise FairalError(f"case {case}: {path} holds one volume of shape {tuple(stack.shape)}, no class axis: "
                          "nnUNetv2_predict --save_probabilities writes (classes, *volume); save every class, or "
                          "give the structure's probability as a 3D NIfTI map (CASE.nii.gz)")
    if stack.ndim != 4 or tuple(stack.shape[1:]) != expected:
        raise FairalError(f"case {case}: {path} holds probabilities of shape {tuple(stack.shape)} (classes first, then "
                          f"nnU-Net's axis order), but its scan {image} of shape {shape} reads through "
                          f"{reader} as {expected}: not this scan's prediction, or another reader (--nnunet-plans)")
    volume = _class_of(stack, 0, fg_class, path, case).transpose(2, 1, 0)
    if NNUNET_READERS[reader]:  # back from RAS to the scan's own voxel order
        volume = apply_orientation(volume, ornt_transform(axcodes2ornt("RAS"), ornt))
    return volume


def on_scan(data: np.ndarray, affine: np.ndarray, scan: nib.Nifti1Image, image, path: Path, what: str,
            case: str) -> np.ndarray:
    """A volume of another file brought to the scan's voxel order (axes swapped or flipped, nothing resampled),
    refused unless it then lies on the scan's grid (shape and affine)."""
    ornt = ornt_transform(io_orientation(affine), io_orientation(scan.affine))
    moved = apply_orientation(data, ornt)
    moved_affine = affine @ inv_ornt_aff(ornt, data.shape)
    if moved.shape != tuple(scan.shape[:3]) or not np.allclose(moved_affine, scan.affine, atol=1e-3):
        raise FairalError(f"case {case}: {what} {path} is not on its scan's grid ({image}: shape "
                          f"{tuple(scan.shape[:3])}; the map, in the scan's axis order: shape {moved.shape}, "
                          f"{'same' if np.allclose(moved_affine, scan.affine, atol=1e-3) else 'another'} affine); "
                          "resample it onto the scan first")
    return moved


def _nifti_probabilities(path: Path, scan: nib.Nifti1Image, image, fg_class: int, case: str) -> np.ndarray:
    img = load_nifti(path, "probability map", case, read=False)
    if len(img.shape) == 3:
        data = np.asarray(img.dataobj, dtype=np.float32)
    elif len(img.shape) == 4 or (len(img.shape) == 5 and img.shape[3] == 1):  # NIfTI's vector layout: (X, Y, Z, 1, C)
        data = _class_of(np.asarray(img.dataobj, dtype=np.float32).reshape(*img.shape[:3], -1), 3, fg_class, path,
                         case)
    else:
        raise FairalError(f"case {case}: probability map {path} has shape {img.shape}: expected a 3D map or a 4D one "
                          "with a volume per class")
    return on_scan(data, img.affine, scan, image, path, "probability map", case)


def read_probabilities(path: Path, image: str | Path, fg_class: int, reader: str, case: str) -> np.ndarray:
    """The structure's probability at each voxel of the scan ``image`` (float32, the scan's voxel order) from a
    saved ``.npz`` or NIfTI map, refused unless finite and in [0, 1]."""
    scan = volume_3d(load_nifti(image, "image", case, read=False), "image", image, case)
    if path.name.endswith(".npz"):
        volume = _nnunet_on_scan(path, scan, image, fg_class, reader, case)
    else:
        volume = _nifti_probabilities(path, scan, image, fg_class, case)
    volume = np.asarray(volume, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise FairalError(f"case {case}: {path} holds NaN or infinite values")
    low, high = float(volume.min()), float(volume.max())
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        scaled = low >= -TOLERANCE and high <= 255 + TOLERANCE and np.array_equal(volume, np.round(volume))
        raise FairalError(f"case {case}: {path} class {fg_class} holds values from {low:.4g} to {high:.4g}, outside "
                          "[0, 1]: probabilities, not logits, are needed (nnUNetv2_predict --save_probabilities)"
                          + ("; whole numbers up to 255 or 100 look like probabilities saved scaled (as 8-bit or "
                             "percent): save them as fractions in [0, 1]" if scaled else ""))
    return np.clip(volume, 0.0, 1.0)


def read_segmentation(path: Path, image: str | Path, fg_class: int, case: str) -> np.ndarray:
    """The model's mask of the structure (value ``fg_class`` of a label map) on the scan ``image``'s voxels."""
    scan = volume_3d(load_nifti(image, "image", case, read=False), "image", image, case)
    img = volume_3d(load_nifti(path, "segmentation", case, read=False), "segmentation", path, case)
    data = np.asarray(img.dataobj)
    if not np.isfinite(data).all():
        raise FairalError(f"case {case}: segmentation {path} holds NaN or infinite values")
    return on_scan(data == fg_class, img.affine, scan, image, path, "segmentation", case)


def run_saved_query(
    csv_path: str | Path, budget: int, strategy: str | Strategy, out: str | Path, profile: Profile,
    probabilities: str | Path, segmentations: list[str | Path] | tuple = (), fg_class: int = 1,
    nnunet_plans: str | Path | None = None, group_by: list[str] | tuple[str, ...] = (), seed: int = 0,
    overwrite: bool = False, montage_cases: int = 16, progress: bool = True, label_value: float | None = None,
) -> pd.DataFrame:
    """Rank the unlabeled cases of ``csv_path`` for annotation from a model's saved outputs (the module's
    docstring says which files), with no training; write a query's records into ``out``. Returns the ranked table
    (``query.csv``; ``table.attrs["query"]`` holds what ``query.json`` says)."""
    strat = from_maps(strategy, "train fairal's network on the labeled cases instead (fairal query without "
                                "--probabilities)")
    if isinstance(fg_class, bool) or not isinstance(fg_class, int) or fg_class < 0:
        raise FairalError(f"--class must be a whole number >= 0 (the structure's class), got {fg_class!r}")
    reader = nnunet_reader(nnunet_plans)
    q = Query(Path(csv_path), budget, strat, Path(out), profile, list(group_by), None, seed, "saved segmentations",
              label_value, progress)
    folders = [Path(probabilities), *(Path(f) for f in segmentations)]
    check_cases(q, overwrite, folders)
    check_steered(q)
    probs = find_outputs(folders[:1], q.cases["case_id"].tolist(), PROBABILITY_FILES, "--probabilities")
    segs = find_outputs(folders[1:], q.labeled_ids, SEGMENTATION_FILES, "--segmentations")
    missing = [c for c in q.unlabeled_ids if c not in probs]
    if missing:
        raise FairalError(f"--probabilities {probabilities}: no saved probabilities of {len(missing)} unlabeled "
                          f"case(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (files named CASE"
                          f"{', CASE'.join(PROBABILITY_FILES)})")
    unlabeled_groups(q)
    dice_ids, dice_values, left_out = _saved_dice(q, probs, segs, fg_class, reader)
    q.dice_ids = dice_ids
    q.dice_sources = {"own": len(dice_ids)}
    if q.strat.steered and not any(q.records[c].group is not None for c in dice_ids):
        raise FairalError(f"strategy {q.strat.name} weighs groups by the model's Dice on the labeled cases, but no "
                          "labeled case of known group has a saved segmentation (--segmentations) or probabilities")
    weights = (group_weights(dice_values, [q.records[c].group for c in dice_ids], q.order,
                             q.strat.temperature or profile.temperature)
               if q.strat.steered else {g: 1.0 for g in q.order})
    ids = q.unlabeled_ids
    maps = (read_probabilities(probs[c], q.records[c].image, fg_class, reader, c) for c in ids)
    if progress:
        maps = track(maps, total=len(ids), description="scoring the saved probabilities", transient=True)
    rnd = rank_maps(q.strat, ids, maps, [q.records[c].group for c in ids], weights, q.p_group, budget,
                    profile.roi_dilation, seed, profile.stochastic_batches, profile.power_temperature)
    rnd.labeled_dice = rnd.weight_dice = dice_values
    for name in STATISTICS:  # the model's statistics (MC dropout, the network's): not in saved maps
        rnd.stats.setdefault(name, [float("nan")] * len(ids))
    q.voxel_ml = {c: _voxel_ml(q.records[c].image, c) for c in ids}
    table = query_table(q, rnd)
    saved = {"probabilities": str(Path(probabilities).resolve()),
             "segmentations": [str(Path(f).resolve()) for f in segmentations], "class": fg_class,
             "nnunet_reader": reader, "files": {c: str(probs[c].name) for c in ids},
             "dice_from": {c: "segmentation" if c in segs else "probabilities" for c in dice_ids}}
    warnings = [f"{len(left_out)} labeled case(s) have no saved segmentation or probabilities and are left out of "
                f"the group Dice: {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}"] if left_out else []
    if fg_class == 0:
        warnings.append("--class 0 is the background in nnU-Net's outputs and label maps (its segmentations' value 0 "
                        "is everything but the structure): give the structure's class, e.g. --class 1")
    _write_saved(q, rnd, table, probs, fg_class, reader, montage_cases, saved, warnings)
    return table


def _saved_dice(q: Query, probs: dict, segs: dict, fg_class: int, reader: str
                ) -> tuple[list[str], list[float], list[str]]:
    """The model's Dice on each labeled case that has a saved output (its segmentation, else its saved
    probabilities > 0.5) against the CSV's label; and the labeled cases left out for having neither."""
    ids, values, left_out = [], [], []
    for c in q.labeled_ids:
        rec = q.records[c]
        if c in segs:
            mask = read_segmentation(segs[c], rec.image, fg_class, c)
        elif c in probs:
            mask = read_probabilities(probs[c], rec.image, fg_class, reader, c) > 0.5
        else:
            left_out.append(c)
            continue
        label, _ = read_label(rec.label, "label", c, q.label_value)
        ids.append(c)
        values.append(dice(mask, label))
    return ids, values, left_out


def _voxel_ml(image: str, case: str) -> float:
    return float(np.prod(load_nifti(image, "image", case, read=False).header.get_zooms()[:3])) / 1000.0


def _montage_panel(image: str, proba: np.ndarray, dilation: int, case: str) -> tuple[np.ndarray, ...]:
    """A scan, its map and its ROI, turned to RAS (the montage's orientation)."""
    scan = volume_3d(load_nifti(image, "image", case, read=False), "image", image, case)
    ornt = io_orientation(scan.affine)
    roi = roi_mask(proba, dilation)[0]
    return tuple(apply_orientation(a, ornt) for a in (image_data(scan, "image", image, case), proba, roi))


def _write_saved(q: Query, rnd, table: pd.DataFrame, probs: dict, fg_class: int, reader: str, montage_cases: int,
                 saved: dict, warnings: list[str]) -> None:
    """A query's records, from the saved maps: query.csv, the montage, the hand-off and query.json, into a folder
    that appears whole or not at all."""
    pos = {c: i for i, c in enumerate(q.unlabeled_ids)}
    batch = rnd.ranking()[:q.budget]
    top = batch[:max(1, min(montage_cases, q.budget))]
    panels, handoff = [], []
    for c in batch:
        image = q.records[c].image
        proba = read_probabilities(probs[c], image, fg_class, reader, c)
        scan = volume_3d(load_nifti(image, "image", c, read=False), "image", image, c)
        handoff.append((c, image, scan_mask(proba > 0.5, scan)))
        if c in top:
            panels.append(_montage_panel(image, proba, q.profile.roi_dilation, c))
    titles = [f"#{r + 1} {c}\n{'group ?' if q.records[c].group is None else q.records[c].group}  score "
              f"{rnd.scores[pos[c]]:.3g}" for r, c in enumerate(top)]
    with publish_folder(q.out, "query") as tmp:
        write_csv(within(tmp, "query.csv"), table)
        write_montage(within(tmp, "montage.png"), *(list(p) for p in zip(*panels, strict=True)), titles)
        write_handoff(tmp, handoff, q.label_value, final=q.out)
        info = query_info(q, rnd, int(q.cases["labeled"].sum()))
        info.update({"model": f"saved outputs: {saved['probabilities']}", "training": {"trained": False},
                     "saved": saved, "warnings": [*warnings, *info["warnings"]]})
        table.attrs["query"] = info
        write_json(within(tmp, "query.json"), info)

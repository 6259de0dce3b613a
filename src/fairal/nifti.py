"""The one NIfTI reader: every image and label map fairal reads goes through here, and is refused with a message
naming the file (and the case) when it is unreadable, larger than :data:`MAX_VOXELS` (checked on the header, before
any voxel is read), not 3D, has a broken affine, holds NaN or infinity, is blank or constant (an image), or is not
binary (a label)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from fairal.errors import FairalError
from fairal.limits import MAX_VOXELS, check_voxels  # noqa: F401  (re-exported: owndata, tests)


def valid_affine(affine: np.ndarray) -> bool:
    """A voxel-to-world matrix that maps voxels somewhere: finite and not singular."""
    affine = np.asarray(affine, dtype=np.float64)
    return bool(np.all(np.isfinite(affine)) and abs(np.linalg.det(affine[:3, :3])) >= 1e-6)


def _who(what: str, path: str | Path, case: str | None) -> str:
    return f"case {case}: {what} {path}" if case else f"{what} {path}"


def _reason(err: BaseException) -> str:
    """A library's error as one line (nibabel's and gzip's may hold line breaks), or its type where it is silent."""
    return " ".join(str(err).split()) or type(err).__name__


def load_nifti(path: str | Path, what: str, case: str | None = None, read: bool = True) -> nib.Nifti1Image:
    """Open a NIfTI image (and with ``read``, read its data now, so that a truncated file fails here)."""
    path = Path(path)
    if not path.is_file():
        raise FairalError(f"{'case ' + case + ': ' if case else ''}{what} not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for corrupt files
        raise FairalError(f"{_who(what, path, case)} is not a readable NIfTI image: {_reason(err)}") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise FairalError(f"{_who(what, path, case)} is not a NIfTI image")
    check_voxels(img.shape if read else img.shape[:3], _who(what, path, case))  # a 4D atlas: one volume is read
    if not valid_affine(img.affine):
        raise FairalError(f"{_who(what, path, case)} has an invalid affine (voxel-to-world matrix)")
    if read:
        try:
            np.asarray(img.dataobj)
        except Exception as err:
            raise FairalError(f"{_who(what, path, case)} is not a readable NIfTI image: {_reason(err)}") from err
    return img


def volume_3d(img: nib.Nifti1Image, what: str, path: str | Path, case: str | None = None) -> nib.Nifti1Image:
    """The image itself if 3D; a 4D image with one volume as 3D; anything else refused."""
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        return img.slicer[..., 0]
    if len(shape) != 3:
        raise FairalError(f"{_who(what, path, case)} must be a 3D volume, got shape {shape}")
    return img


def _finite(img: nib.Nifti1Image, what: str, path: str | Path, case: str | None) -> np.ndarray:
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # a truncated file: EOFError, often without a message
        raise FairalError(f"{_who(what, path, case)} is corrupt (truncated or damaged): "
                          f"{_reason(err)}") from err
    if not np.isfinite(data).all():
        raise FairalError(f"{_who(what, path, case)} holds NaN or infinite values")
    return data


def image_data(img: nib.Nifti1Image, what: str, path: str | Path, case: str | None = None) -> np.ndarray:
    """The voxels as float32; refused when not finite, blank or constant (nothing to segment)."""
    data = _finite(img, what, path, case)
    if data.size == 0 or float(data.max()) == float(data.min()):
        value = float(data.flat[0]) if data.size else float("nan")
        raise FairalError(f"{_who(what, path, case)} is blank: every voxel is {value:g}")
    return data


def label_data(img: nib.Nifti1Image, what: str, path: str | Path, case: str | None = None,
               value: float | None = None) -> np.ndarray:
    """A binary mask as uint8. With ``value``, the voxels equal to it (a structure of a multi-label map); without,
    the map itself, which must hold only 0 and 1."""
    data = _finite(img, what, path, case)
    if value is not None:
        return (data == np.float32(value)).astype(np.uint8)
    values = np.unique(data)
    if not set(values.tolist()) <= {0.0, 1.0}:
        who = f"case {case}: {what}" if case else what
        raise FairalError(f"{who} is not binary (values {values[:6].tolist()}): expected 0 and 1 ({path}; a "
                          "multi-label map needs the structure's value)")
    return data.astype(np.uint8)


def read_image(path: str | Path, what: str = "image", case: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A 3D image's voxels (float32) and affine, checked (see :func:`image_data`)."""
    img = volume_3d(load_nifti(path, what, case, read=False), what, path, case)
    return image_data(img, what, path, case), img.affine


def read_label(path: str | Path, what: str = "label", case: str | None = None,
               value: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A 3D binary label's voxels (uint8) and affine, checked (see :func:`label_data`)."""
    img = volume_3d(load_nifti(path, what, case, read=False), what, path, case)
    return label_data(img, what, path, case, value), img.affine

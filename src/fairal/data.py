"""Reading a dataset: the manifest, its validation, and the volumes loaded once into a compact in-memory set.

A dataset folder is what ``fairal simulate`` writes (or the same layout from elsewhere): ``manifest.csv`` with
``case_id, group, image, label`` (paths relative to the manifest) and optionally ``split`` (``test``/``pool``),
plus optionally ``template/label.nii.gz``, the template's structure on the images' grid.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fairal.errors import FairalError

REQUIRED_COLUMNS = ("case_id", "group", "image", "label")


def read_manifest(data_dir: str | Path, test_per_group: int = 15, seed: int = 0) -> pd.DataFrame:
    """Read and validate ``data_dir/manifest.csv``. Adds absolute paths (``image_path``, ``label_path``) and,
    if the manifest has no ``split`` column, the fixed test split drawn from ``seed`` (``test_per_group`` cases
    of each group, at most half of it, chosen among the case ids sorted)."""
    data_dir = Path(data_dir)
    path = data_dir / "manifest.csv"
    if not path.is_file():
        raise FairalError(f"no manifest.csv in {data_dir}: is this a dataset folder (fairal simulate OUT)?")
    try:
        m = pd.read_csv(path, dtype={"case_id": str, "image": str, "label": str}, keep_default_na=False)
    except Exception as err:
        raise FairalError(f"{path} is not a readable CSV file: {err}") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in m.columns]
    if missing:
        raise FairalError(f"{path} lacks the column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
    if m.empty:
        raise FairalError(f"{path} lists no case")
    dup = m["case_id"][m["case_id"].duplicated()].tolist()
    if dup:
        raise FairalError(f"{path}: case ids must be unique; repeated: {', '.join(dup[:5])}")
    empty_group = m["case_id"][m["group"].astype(str).str.strip() == ""].tolist()
    if empty_group:
        raise FairalError(f"{path}: case {empty_group[0]} has no group (column 'group' is empty)")
    m["group"] = m["group"].map(_group_value)
    for col in ("image", "label"):
        m[f"{col}_path"] = [str((data_dir / p).resolve()) if p else "" for p in m[col]]
        for case, p, rel in zip(m["case_id"], m[f"{col}_path"], m[col], strict=True):
            if not rel or not Path(p).is_file():
                raise FairalError(f"case {case}: {col} file not found: {data_dir / rel}")
    if "split" in m.columns:
        bad = sorted(set(m["split"]) - {"test", "pool"})
        if bad:
            raise FairalError(f"{path}: column 'split' must hold 'test' or 'pool', found {bad}")
    else:
        m["split"] = "pool"
        rng = np.random.default_rng([seed, 0, 1])
        for _, ids in m.groupby("group")["case_id"]:
            ids = sorted(ids)
            n = min(test_per_group, len(ids) // 2)
            m.loc[m["case_id"].isin(rng.choice(ids, size=n, replace=False)), "split"] = "test"
    return m


def _group_value(value):
    """Groups are kept as ints when they look like ints (1, 2), else as strings."""
    text = str(value).strip()
    try:
        f = float(text)
    except ValueError:
        return text
    return int(f) if f.is_integer() else text


@dataclass
class VolumeSet:
    """Every case of a dataset in memory: images float32 (N, 1, X, Y, Z), labels uint8, with ids and groups.

    Cases are looked up by id (``index``), never by position alone.
    """

    case_ids: list[str]
    groups: np.ndarray
    splits: np.ndarray
    images: torch.Tensor
    labels: torch.Tensor
    roi: torch.Tensor  # (1, X, Y, Z) bool: the template's structure on the same grid (fallback ROI), may be empty
    box: tuple[tuple[int, int], ...]  # crop box on the original grid
    downsample: int

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.case_ids)}

    def rows(self, ids: list[str]) -> list[int]:
        return [self.index[c] for c in ids]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])  # type: ignore[return-value]


def _read(path: str, case: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(path)
        return np.asarray(img.dataobj, dtype=np.float32), img.affine
    except Exception as err:
        raise FairalError(f"case {case}: {what} {path} is not a readable NIfTI image: {err}") from err


def crop_box(
    data_dir: Path, manifest: pd.DataFrame, shape: tuple[int, ...], margin: int | None
) -> tuple[tuple[int, int], ...]:
    """The box around the structure, with ``margin`` voxels: from the template's label when the dataset has
    one, else from the union of the training pool's labels (never the test cases'). ``None``: the whole grid."""
    if margin is None:
        return tuple((0, n) for n in shape)
    tpl = data_dir / "template" / "label.nii.gz"
    if tpl.is_file():
        ref = np.asarray(nib.load(str(tpl)).dataobj) > 0
    else:
        ref = np.zeros(shape, bool)
        pool = manifest[manifest["split"] == "pool"]
        for case, p in zip(pool["case_id"], pool["label_path"], strict=True):
            ref |= _read(p, case, "label")[0] > 0.5
    if ref.shape != tuple(shape) or not ref.any():
        raise FairalError(f"cannot place a crop box: the reference label in {data_dir} is empty or of another shape")
    idx = np.argwhere(ref)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _normalise(image: np.ndarray) -> np.ndarray:
    """Scale intensities to about 0..1 by the 99.5th percentile of the non-zero voxels (one rule for all cases)."""
    nz = image[image > 0]
    scale = float(np.percentile(nz, 99.5)) if nz.size else 1.0
    return image / max(scale, 1e-6)


def _downsample(image: torch.Tensor, label: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the image; the label is the pooled label fraction >= 0.5 (a majority vote)."""
    if factor == 1:
        return image, label
    img = F.avg_pool3d(image[None], factor, ceil_mode=True)[0]
    lab = F.avg_pool3d(label[None].float(), factor, ceil_mode=True)[0] >= 0.5
    return img, lab.to(torch.uint8)


def load_volumes(
    data_dir: str | Path,
    manifest: pd.DataFrame,
    crop_margin: int | None = 12,
    downsample: int = 1,
    threads: int = 2,
    cache: bool = True,
) -> VolumeSet:
    """Load every case once: validate, crop, normalise, downsample. Images/labels of one shape, binary labels.

    With ``cache``, the result is kept in ``data_dir/cache/`` (keyed by the manifest and the settings), so the
    many runs of an experiment grid read one file instead of hundreds of NIfTI files.
    """
    data_dir = Path(data_dir)
    if downsample not in (1, 2, 3, 4):
        raise FairalError(f"downsample must be 1, 2, 3 or 4, got {downsample}")
    ids = manifest["case_id"].tolist()
    key_src = json.dumps([manifest[["case_id", "group", "image", "label", "split"]].astype(str).values.tolist(),
                          crop_margin, downsample])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache_file = data_dir / "cache" / f"volumes-{key}.pt"
    if cache and cache_file.is_file():
        try:
            blob = torch.load(cache_file, weights_only=True)
            return VolumeSet(ids, manifest["group"].to_numpy(), manifest["split"].to_numpy(), blob["images"],
                             blob["labels"], blob["roi"], tuple(map(tuple, blob["box"].tolist())), downsample)
        except Exception:
            cache_file.unlink(missing_ok=True)  # a stale or broken cache is rebuilt, never trusted

    try:  # the header gives the grid; the data are read once, below
        shape = tuple(nib.load(manifest["image_path"].iloc[0]).shape)
    except Exception as err:
        raise FairalError(f"case {ids[0]}: image {manifest['image_path'].iloc[0]} is not a readable NIfTI image: "
                          f"{err}") from err
    if len(shape) != 3:
        raise FairalError(f"case {ids[0]}: images must be 3D, got shape {shape}")
    box = crop_box(data_dir, manifest, shape, crop_margin)
    sl = tuple(slice(a, b) for a, b in box)

    def one(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        case = ids[i]
        img, _ = _read(manifest["image_path"].iloc[i], case, "image")
        lab, _ = _read(manifest["label_path"].iloc[i], case, "label")
        if img.shape != shape:
            raise FairalError(f"case {case}: image shape {img.shape} differs from the dataset's {shape}")
        if lab.shape != img.shape:
            raise FairalError(f"case {case}: label shape {lab.shape} differs from its image's {img.shape}")
        values = np.unique(lab)
        if not set(values.tolist()) <= {0.0, 1.0}:
            raise FairalError(f"case {case}: label is not binary (values {values[:6].tolist()}): expected 0 and 1")
        t_img = torch.from_numpy(_normalise(img[sl]).astype(np.float32))[None]
        t_lab = torch.from_numpy(lab[sl].astype(np.uint8))[None]
        return _downsample(t_img, t_lab, downsample)

    with ThreadPoolExecutor(max(threads, 1)) as pool:  # zlib decompression releases the GIL
        loaded = list(pool.map(one, range(len(ids))))
    images = torch.stack([a for a, _ in loaded])
    labels = torch.stack([b for _, b in loaded])
    tpl = data_dir / "template" / "label.nii.gz"
    if tpl.is_file():
        ref = torch.from_numpy((np.asarray(nib.load(str(tpl)).dataobj)[sl] > 0).astype(np.uint8))[None]
        roi = _downsample(torch.zeros_like(ref, dtype=torch.float32), ref, downsample)[1].bool()
    else:
        roi = torch.zeros(labels.shape[1:], dtype=torch.bool)
    if cache:
        try:
            cache_file.parent.mkdir(exist_ok=True)
            tmp = cache_file.with_suffix(f".partial-{os.getpid()}")
            torch.save({"images": images, "labels": labels, "roi": roi, "box": torch.tensor(box)}, tmp)
            tmp.replace(cache_file)
        except OSError:
            pass  # a read-only dataset folder: no cache, same result
    return VolumeSet(ids, manifest["group"].to_numpy(), manifest["split"].to_numpy(), images, labels, roi, box,
                     downsample)

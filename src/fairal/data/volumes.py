"""Reading a dataset: the manifest, its validation, and the volumes loaded once into a compact in-memory set.

A dataset folder is what ``fairal simulate`` writes (or the same layout from elsewhere): ``manifest.csv`` with
``case_id, group, image, label`` (paths relative to the manifest) and optionally ``split`` (``test``/``pool``,
and ``eval`` for an evaluation split that is only measured on),
plus optionally ``template/label.nii.gz``, the template's structure on the images' grid.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fairal.errors import FairalError
from fairal.io import check_input_file, within, write_torch
from fairal.nifti import image_data, label_data, load_nifti
from fairal.records import POOL, SPLITS, TEST
from fairal.sampling import test_split

REQUIRED_COLUMNS = ("case_id", "group", "image", "label")


def read_manifest(data_dir: str | Path, test_per_group: int = 15, seed: int = 0) -> pd.DataFrame:
    """Read and validate ``data_dir/manifest.csv``. Adds absolute paths (``image_path``, ``label_path``) and,
    if the manifest has no ``split`` column, the fixed test split drawn from ``seed`` (``test_per_group`` cases
    of each group, at most half of it, chosen among the case ids sorted)."""
    data_dir = Path(data_dir)
    path = data_dir / "manifest.csv"
    if not data_dir.exists():
        raise FairalError(f"dataset folder {data_dir} does not exist")
    if not path.is_file():
        raise FairalError(f"no manifest.csv in {data_dir}: is this a dataset folder (fairal simulate OUT)?")
    m = read_table(path, {"case_id": str, "group": str, "image": str, "label": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in m.columns]
    if missing:
        raise FairalError(f"{path} lacks the column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
    if m.empty:
        raise FairalError(f"{path} lists no case")
    check_case_ids(m["case_id"], path)
    empty_group = m["case_id"][m["group"].astype(str).str.strip() == ""].tolist()
    if empty_group:
        raise FairalError(f"{path}: case {empty_group[0]} has no group (column 'group' is empty)")
    m["group"] = m["group"].map(group_value)
    for col in ("image", "label"):
        m[f"{col}_path"] = [str((data_dir / p).resolve()) if p else "" for p in m[col]]
        for case, p, rel in zip(m["case_id"], m[f"{col}_path"], m[col], strict=True):
            if not rel or not Path(p).is_file():
                raise FairalError(f"case {case}: {col} file not found: {data_dir / rel}")
    if "split" in m.columns:
        bad = sorted(set(m["split"]) - set(SPLITS))
        if bad:
            raise FairalError(f"{path}: column 'split' must hold {', '.join(SPLITS)}, found {bad}")
    else:
        ids = {g: ids.tolist() for g, ids in m.groupby("group")["case_id"]}
        m["split"] = np.where(m["case_id"].isin(test_split(ids, test_per_group, seed)), TEST, POOL)
    return m


@dataclass(frozen=True)
class Case:
    """One case, from the manifest (or a lab's CSV) to its weight: its id, its group (``None``: unknown), its split
    (``test``/``pool`` in a dataset, ``labeled``/``unlabeled`` in own data) and its files (``label`` is ``""`` when
    it is not segmented yet)."""

    case_id: str
    group: object
    split: str
    image: str
    label: str

    @property
    def group_known(self) -> bool:
        return self.group is not None


def case_records(table: pd.DataFrame) -> dict[str, Case]:
    """The :class:`Case` of every row of a manifest (:func:`read_manifest`) or an own-data table
    (:func:`fairal.data.cohort.read_cases`), by case id, in the table's order."""
    known = table["group_known"] if "group_known" in table.columns else [True] * len(table)
    split = (table["split"] if "split" in table.columns
             else np.where(table["labeled"], "labeled", "unlabeled"))
    return {str(c): Case(str(c), g if k else None, str(sp), str(img), str(lab) if lab else "")
            for c, g, k, sp, img, lab in zip(table["case_id"], table["group"], known, split, table["image_path"],
                                              table["label_path"], strict=True)}


def data_files(manifest: pd.DataFrame) -> dict:
    """What a run's records depend on in the data: per case its group, split and the size and modification time
    of its image and label files (a replaced file changes them)."""
    out = {}
    for case, group, split, img, lab in zip(manifest["case_id"], manifest["group"], manifest["split"],
                                            manifest["image_path"], manifest["label_path"], strict=True):
        files = []
        for path in (img, lab):
            st = Path(path).stat() if path else None
            files += [st.st_size, st.st_mtime_ns] if st else [None, None]
        out[str(case)] = [str(group), str(split), *files]
    return out


def describe_changes(before: dict, now: dict) -> str:
    """The cases that differ between two :func:`data_files` records, in words ("" when none)."""
    removed = sorted(set(before) - set(now))
    added = sorted(set(now) - set(before))
    changed = sorted(c for c in set(before) & set(now) if list(before[c]) != list(now[c]))
    parts = []
    for what, ids in (("removed", removed), ("added", added), ("changed", changed)):
        if ids:
            parts.append(f"{what}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}")
    return "; ".join(parts)


def group_value(value):
    """A group is the text the file holds ("007", "7", "7.0" and "1e0" are four groups); a plain whole number
    ("1", "2": the simulated groups) is kept as an int."""
    text = str(value).strip()
    return int(text) if re.fullmatch(r"0|[1-9][0-9]*", text) else text


def read_table(path: Path, dtype) -> pd.DataFrame:
    """A CSV file of the user's (a manifest, a study) without the missing-value guesses of pandas; refused when
    unreadable or when two columns share a name (pandas would rename the second and use the first). A folder or a
    device given as the file is refused saying so (:func:`fairal.io.check_input_file`); a byte-order mark (spreadsheet
    programs write one) is not part of the first column's name."""
    check_input_file(path, "CSV file")
    try:
        table = pd.read_csv(path, dtype=dtype, keep_default_na=False, encoding="utf-8-sig")
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False,
                             encoding="utf-8-sig").iloc[0].tolist()
    except Exception as err:
        raise FairalError(f"{path} is not a readable CSV file: {err}") from err
    separator = next((c for c in ";\t" if len(header) == 1 and c in str(header[0])), None)
    if separator is not None:  # a spreadsheet's export in a locale whose list separator is not the comma
        raise FairalError(f"{path}: its columns are separated by {separator!r}, not commas (header "
                          f"{str(header[0])[:80]!r}): save it as a comma-separated CSV")
    twice = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if twice is not None:
        raise FairalError(f"{path}: column {twice!r} appears more than once in the header: give each column its own "
                          "name")
    return table


#: A case id names files (``predictions/CASE.nii.gz``, ``imagesTr/CASE_0000.nii.gz``): what it may not be.
CASE_ID_RULES = "not empty, no leading '.', no '/', '\\', '..' or control characters, at most 200 bytes"


def names_a_file(case: str) -> bool:
    """Whether ``case`` can name a file of its own inside a folder (:data:`CASE_ID_RULES`): never a path, ``.``,
    ``..`` or a hidden name."""
    return bool(isinstance(case, str) and case and not case.startswith(".") and not any(c in case for c in "/\\")
                and ".." not in case and not any(unicodedata.category(c) == "Cc" for c in case)
                and len(case.encode()) <= 200)


def check_case_ids(ids: pd.Series, path: str | Path) -> None:
    """Refuse repeated case ids, and ids that cannot name a file of their own (:data:`CASE_ID_RULES`), naming
    the file and the row (row 2 is the first after the header)."""
    dup = ids[ids.duplicated()].tolist()
    if dup:
        raise FairalError(f"{path}: case ids must be unique; repeated: {', '.join(dup[:5])}")
    # Ids that differ only in case or Unicode form name one file on a case-insensitive disk (macOS, Windows).
    folded = ids.map(lambda case: unicodedata.normalize("NFC", case).casefold())
    clash = folded.duplicated(keep=False).to_numpy().nonzero()[0]
    if clash.size:
        rows = [i for i in clash if folded.iloc[i] == folded.iloc[clash[0]]][:2]
        raise FairalError(f"{path}: rows {rows[0] + 2} and {rows[1] + 2}: case ids {ids.iloc[rows[0]]!r} and "
                          f"{ids.iloc[rows[1]]!r} differ only in letter case or Unicode form: they name the same "
                          "file on a case-insensitive disk (macOS, Windows); rename one")
    for row, case in enumerate(ids, start=2):
        if not names_a_file(case):
            raise FairalError(f"{path}: row {row}: case id {case!r} cannot name a file (case ids: {CASE_ID_RULES})")


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




def crop_box(
    data_dir: Path, manifest: pd.DataFrame, shape: tuple[int, ...], margin: int | None
) -> tuple[tuple[int, int], ...]:
    """The box around the structure, with ``margin`` voxels: from the template's label when the dataset has
    one, else from the union of the training pool's labels (never the test cases'). ``None``: the whole grid."""
    if margin is None:
        return tuple((0, n) for n in shape)
    tpl = data_dir / "template" / "label.nii.gz"
    if tpl.is_file():
        ref = np.asarray(load_nifti(tpl, "template label", read=False).dataobj) > 0
    else:
        ref = np.zeros(shape, bool)
        pool = manifest[manifest["split"] == POOL]
        for case, p in zip(pool["case_id"], pool["label_path"], strict=True):
            ref |= label_data(load_nifti(p, "label", case, read=False), "label", p, case) > 0
    if ref.shape != tuple(shape) or not ref.any():
        raise FairalError(f"cannot place a crop box: the reference label in {data_dir} is empty or of another shape")
    idx = np.argwhere(ref)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def normalise_intensity(image: np.ndarray) -> np.ndarray:
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


def volume_cache(data_dir: str | Path, manifest: pd.DataFrame, crop_margin: int | None, downsample: int) -> Path:
    """The file of the volume cache of these cases and settings: ``data_dir/cache/volumes-KEY.pt``, the key a hash
    of the manifest, the settings and every file's size and modification time (:func:`data_files`), so a replaced
    image or label makes another cache."""
    key_src = json.dumps([manifest[["case_id", "group", "image", "label", "split"]].astype(str).values.tolist(),
                          crop_margin, downsample, data_files(manifest)])
    return within(Path(data_dir), "cache", f"volumes-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.pt")


def read_volume_cache(path: str | Path, manifest: pd.DataFrame, downsample: int) -> VolumeSet | None:
    """The volumes kept in a cache file (:func:`volume_cache`), or None when it is missing or unreadable (a
    broken cache is removed: rebuilt, never trusted)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        return VolumeSet(manifest["case_id"].tolist(), manifest["group"].to_numpy(), manifest["split"].to_numpy(),
                         blob["images"], blob["labels"], blob["roi"], tuple(map(tuple, blob["box"].tolist())),
                         downsample)
    except Exception:
        path.unlink(missing_ok=True)
        return None


def load_volumes(
    data_dir: str | Path,
    manifest: pd.DataFrame,
    crop_margin: int | None = 12,
    downsample: int = 1,
    threads: int = 2,
    cache: bool = True,
) -> VolumeSet:
    """Load every case once: validate, crop, normalise, downsample. Images/labels of one shape, binary labels.

    With ``cache``, the result is kept in ``data_dir/cache/`` (:func:`volume_cache`), so the many runs of an
    experiment grid read one file instead of hundreds of NIfTI files, and a replaced image or label is read again.
    """
    cache_file = volume_cache(data_dir, manifest, crop_margin, downsample)
    cached = read_volume_cache(cache_file, manifest, downsample) if cache else None
    if cached is not None:
        return cached
    volumes = _build_volumes(Path(data_dir), manifest, crop_margin, downsample, threads)
    if cache:
        try:
            cache_file.parent.mkdir(exist_ok=True)
            write_torch(cache_file, {"images": volumes.images, "labels": volumes.labels, "roi": volumes.roi,
                                     "box": torch.tensor(volumes.box)})
        except OSError:
            pass  # a read-only dataset folder: no cache, same result
    return volumes


def _load_case(case: str, img_path: str, lab_path: str, shape: tuple, sl: tuple, downsample: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One case cropped (``sl``), normalised and downsampled, after its shapes are checked."""
    img_nii = load_nifti(img_path, "image", case, read=False)
    lab_nii = load_nifti(lab_path, "label", case, read=False)
    if tuple(img_nii.shape) != shape:
        raise FairalError(f"case {case}: image shape {tuple(img_nii.shape)} differs from the dataset's {shape}")
    if tuple(lab_nii.shape) != tuple(img_nii.shape):
        raise FairalError(f"case {case}: label shape {tuple(lab_nii.shape)} differs from its image's "
                          f"{tuple(img_nii.shape)}")
    img = image_data(img_nii, "image", img_path, case)
    lab = label_data(lab_nii, "label", lab_path, case)
    t_img = torch.from_numpy(normalise_intensity(img[sl]).astype(np.float32))[None]
    t_lab = torch.from_numpy(lab[sl].astype(np.uint8))[None]
    return _downsample(t_img, t_lab, downsample)


def _build_volumes(data_dir: Path, manifest: pd.DataFrame, crop_margin: int | None, downsample: int,
                   threads: int) -> VolumeSet:
    ids = manifest["case_id"].tolist()
    # the header gives the grid; the data are read once, below
    shape = tuple(load_nifti(manifest["image_path"].iloc[0], "image", ids[0], read=False).shape)
    if len(shape) != 3:
        raise FairalError(f"case {ids[0]}: images must be 3D, got shape {shape}")
    box = crop_box(data_dir, manifest, shape, crop_margin)
    sl = tuple(slice(a, b) for a, b in box)
    rows = zip(ids, manifest["image_path"], manifest["label_path"], strict=True)
    with ThreadPoolExecutor(max(threads, 1)) as pool:  # zlib decompression releases the GIL
        loaded = list(pool.map(lambda r: _load_case(*r, shape, sl, downsample), rows))
    images = torch.stack([a for a, _ in loaded])
    labels = torch.stack([b for _, b in loaded])
    tpl = data_dir / "template" / "label.nii.gz"
    if tpl.is_file():
        ref = np.asarray(load_nifti(tpl, "template label", read=False).dataobj)[sl] > 0
        ref = torch.from_numpy(ref.astype(np.uint8))[None]
        roi = _downsample(torch.zeros_like(ref, dtype=torch.float32), ref, downsample)[1].bool()
    else:
        roi = torch.zeros(labels.shape[1:], dtype=torch.bool)
    return VolumeSet(ids, manifest["group"].to_numpy(), manifest["split"].to_numpy(), images, labels, roi, box,
                     downsample)

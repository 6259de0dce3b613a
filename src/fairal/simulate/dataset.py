"""Generating a synthetic dataset: subjects, NIfTI files, manifest, settings, models and preview."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from fairal import sampling, versions
from fairal.errors import FairalError
from fairal.io import check_output_folder, is_fairal_folder, publish_folder, within
from fairal.simulate.deformation import (
    DEFAULT_GLOBAL_RMS_MM,
    DEFAULT_LOCAL_SD_MM,
    DeformationModel,
    default_global_model,
    default_local_model,
)
from fairal.simulate.template import Template, crop_box, load_template, sha256

#: Bias presets, the seed paper's N(mu, sigma) of the local PC1 coefficient for Group 1 (in SD units).
BIAS_PRESETS: dict[str, tuple[float, float]] = {"strong": (4.0, 2.0), "weak": (2.0, 2.0), "none": (0.0, 0.0)}
GLOBAL_SAMPLING = ("per-component", "one-scalar")
DEFAULT_SHAPE = (170, 170, 76)


@dataclass
class SimulationConfig:
    """Every setting of a synthetic dataset. Recorded whole in ``dataset.json``."""

    bias: str = "strong"
    n_subjects: int = 312
    seed: int = 0
    bias_mean: float | None = None  # default: the preset's
    bias_std: float | None = None
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    global_sampling: str = "per-component"
    model_seed: int = 0
    global_rms_mm: float = DEFAULT_GLOBAL_RMS_MM
    global_components: int = 10
    local_sd_mm: float = DEFAULT_LOCAL_SD_MM
    local_components: int = 4
    test_per_group: int = 15
    eval_per_group: int = 0  # subjects per group of the evaluation split (split "eval"), beyond n_subjects
    template: str | None = None
    label: str | None = None
    label_value: float | None = None
    global_model: str | None = None
    local_model: str | None = None
    jobs: int = 0  # 0 = one per core (one process for fewer than 64 subjects)
    preview: bool = True

    def resolved_bias(self) -> tuple[float, float]:
        if self.bias not in BIAS_PRESETS:
            raise FairalError(f"--bias must be one of {', '.join(BIAS_PRESETS)}, got {self.bias!r}")
        mu, sd = BIAS_PRESETS[self.bias]
        mu = mu if self.bias_mean is None else self.bias_mean
        sd = sd if self.bias_std is None else self.bias_std
        for name, v in (("--bias-mean", mu), ("--bias-std", sd)):
            if not math.isfinite(v):
                raise FairalError(f"{name} must be a finite number, got {v}")
        if sd < 0:
            raise FairalError(f"the bias SD must be >= 0, got {sd}")
        return mu, sd

    def validate(self) -> None:
        self.resolved_bias()
        for name, v in (("--seed", self.seed), ("--model-seed", self.model_seed)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise FairalError(f"{name} must be a whole number >= 0, got {v!r}")
        if self.n_subjects < 2:
            raise FairalError(f"--n-subjects must be at least 2 (one per group), got {self.n_subjects}")
        for name, v, low in (("--seed", self.seed, 0), ("--model-seed", self.model_seed, 0),
                             ("--eval-per-group", self.eval_per_group, 0),
                             ("--test-per-group", self.test_per_group, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise FairalError(f"{name} must be a whole number >= {low}, got {v!r}")
        if self.global_sampling not in GLOBAL_SAMPLING:
            raise FairalError(f"--global-sampling must be one of {GLOBAL_SAMPLING}, got {self.global_sampling!r}")
        if len(self.shape) != 3 or min(self.shape) < 4:
            raise FairalError(f"--shape must be three sizes of at least 4 voxels, got {self.shape}")
        for name, v in (("--global-rms-mm", self.global_rms_mm), ("--local-sd-mm", self.local_sd_mm)):
            if not (math.isfinite(v) and v >= 0):
                raise FairalError(f"{name} must be a finite number >= 0, got {v}")


def simulation_config(options: dict, where: str) -> SimulationConfig:
    """A :class:`SimulationConfig` from ``fairal simulate`` options by their names with ``_`` for ``-`` (a study
    file's ``simulate`` table), checked: an unknown option or a bad value names ``where`` and the option."""
    known = [f.name for f in dataclasses.fields(SimulationConfig) if f.name not in ("jobs", "preview")]
    for key in options:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise FairalError(f"{where}: unknown simulate option {key!r}{hint}; options: {', '.join(known)}")
    values = {k: tuple(v) if k == "shape" and isinstance(v, list) else v for k, v in options.items()}
    try:
        cfg = SimulationConfig(**values)
        cfg.validate()
    except FairalError as err:
        raise FairalError(f"{where}: {err}") from None
    return cfg


@dataclass
class Subject:
    """One subject's draw: which group, the local coefficient c (Group 1) and the global coefficients z."""

    index: int
    case_id: str
    group: int
    bias_scale: float | None
    global_z: np.ndarray


def draw_subjects(cfg: SimulationConfig, n_global: int) -> list[Subject]:
    """Groups (ceil(n/2) Group 1, the rest Group 2, in a seeded random order) and each subject's coefficients,
    then the evaluation subjects (``eval_per_group`` of each group, ids ``eval-NNNN``).

    Each subject has its own random stream (:func:`fairal.sampling.stream` ``"subject"``, an evaluation subject
    ``"eval-subject"``), so a subject's draw does not depend on the others, on how many evaluation subjects there
    are or on how the work is split across processes.
    """
    n1 = (cfg.n_subjects + 1) // 2
    groups = np.array([1] * n1 + [2] * (cfg.n_subjects - n1))
    sampling.stream(cfg.seed, "subject-groups").shuffle(groups)
    subjects = [_draw(cfg, i, f"sub-{i + 1:04d}", int(g), sampling.stream(cfg.seed, "subject", i), n_global)
                for i, g in enumerate(groups)]
    if cfg.eval_per_group:
        eval_groups = np.array([1] * cfg.eval_per_group + [2] * cfg.eval_per_group)
        sampling.stream(cfg.seed, "eval-groups").shuffle(eval_groups)
        subjects += [_draw(cfg, cfg.n_subjects + j, f"eval-{j + 1:04d}", int(g),
                           sampling.stream(cfg.seed, "eval-subject", j), n_global)
                     for j, g in enumerate(eval_groups)]
    return subjects


def _draw(cfg: SimulationConfig, index: int, case_id: str, group: int, rng: np.random.Generator,
          n_global: int) -> Subject:
    mu, sd = cfg.resolved_bias()
    if cfg.global_sampling == "one-scalar":  # SimBA's variant: one N(0,1) scalar scales all components
        z = np.full(n_global, rng.standard_normal())
    else:
        z = rng.standard_normal(n_global)
    c = float(rng.normal(mu, sd)) if group == 1 else None
    return Subject(index, case_id, group, c, z)


# --- worker side -------------------------------------------------------------------------------------------

_STATE: dict = {}


def _init_worker(state: dict) -> None:
    import torch

    torch.set_num_threads(1)
    _STATE.clear()
    _STATE.update(state)
    _STATE["points"] = _STATE["image_t"] = None


def subject_map(state: dict, subject: Subject):
    """The subject's composed deformation ``psi`` (X, Y, Z, 3): world coordinates of the output voxels in the
    template's space (global field, then the local bias for Group 1)."""
    import torch

    from fairal.simulate.warp import deformed_points, field_on_grid, integrate, output_points

    gm: DeformationModel = state["global_model"]
    lm: DeformationModel | None = state["local_model"]
    if state.get("points") is None:
        state["points"] = output_points(state["out_affine"], state["shape"])
    with torch.inference_mode():
        u_g = integrate(gm, gm.sample(subject.global_z))
        u_l = None
        if subject.bias_scale is not None and lm is not None:
            u_l = integrate(lm, lm.sample(np.array([subject.bias_scale])))
        u_g_out = field_on_grid(u_g, gm.affine, state["out_affine"], state["shape"], stride=state["global_stride"])
        return deformed_points(state["points"], u_g_out, lm if u_l is not None else None, u_l)


def simulate_subject(state: dict, subject: Subject) -> tuple[np.ndarray, np.ndarray]:
    """Warp the template for one subject, once, at :func:`subject_map`. Returns (image, label)."""
    import torch

    from fairal.simulate.warp import warp_template

    tpl: Template = state["template"]
    if state.get("image_t") is None:
        state["image_t"] = torch.as_tensor(tpl.image)
        state["prob_t"] = torch.as_tensor(tpl.label_prob)
    psi = subject_map(state, subject)
    with torch.inference_mode():
        image, prob = warp_template(state["image_t"], state["prob_t"], tpl.affine, psi)
    return image.numpy(), (prob.numpy() >= 0.5)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_subject(subject: Subject) -> dict:
    state = _STATE
    image, label = simulate_subject(state, subject)
    out: Path = state["out_dir"]
    if state["integer_image"]:
        image = np.round(image).astype(np.int16)
    else:
        image = image.astype(np.float32)
    _save_nifti(image, state["out_affine"], within(out, "images", f"{subject.case_id}.nii.gz"))
    _save_nifti(label.astype(np.uint8), state["out_affine"], within(out, "labels", f"{subject.case_id}.nii.gz"))
    ref = state["template_label_crop"]
    inter = np.logical_and(label, ref).sum()
    denom = label.sum() + ref.sum()
    box = state["preview_box"]
    return {
        "case_id": subject.case_id,
        "label_volume_mm3": float(label.sum() * state["voxel_volume"]),
        "dice_to_template": float(2 * inter / denom) if denom else 1.0,
        "preview_label": label[box].astype(np.uint8),
    }


# --- driver ------------------------------------------------------------------------------------------------


def prepare(cfg: SimulationConfig) -> dict:
    """Load the template, make or load the models, and everything a worker needs (no subject work yet)."""
    cfg.validate()
    tpl = load_template(cfg.template, cfg.label, cfg.label_value)
    start, out_affine = crop_box(tpl, cfg.shape)
    if cfg.global_model:
        gm = DeformationModel.load(cfg.global_model)
    else:
        gm = default_global_model(tpl, start, cfg.shape, seed=cfg.model_seed, n_components=cfg.global_components,
                                  rms_mm=cfg.global_rms_mm)
    if cfg.local_model:
        lm = DeformationModel.load(cfg.local_model)
    else:
        lm = default_local_model(tpl, seed=cfg.model_seed, sd_mm=cfg.local_sd_mm, n_components=cfg.local_components)
    _check_model_grid(gm, out_affine, cfg.shape, "global")
    _check_model_grid(lm, tpl.affine, tpl.shape, "local", must_cover=np.argwhere(tpl.label))
    image_crop = _crop(tpl.image, start, cfg.shape)
    label_crop = _crop(tpl.label, start, cfg.shape)
    lab = np.argwhere(label_crop)
    lo = np.maximum(lab.min(0) - 10, 0)
    hi = np.minimum(lab.max(0) + 11, cfg.shape)
    integer = np.allclose(tpl.image, np.round(tpl.image)) and np.abs(tpl.image).max() < 32767
    return {
        "template": tpl,
        "global_model": gm,
        "local_model": lm,
        "out_affine": out_affine,
        "crop_start": start,
        "shape": tuple(cfg.shape),
        "template_label_crop": label_crop,
        "template_image_crop": image_crop,
        "preview_box": tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)),
        "voxel_volume": float(abs(np.linalg.det(out_affine[:3, :3]))),
        "integer_image": bool(integer),
        # The default global field is smooth on a 10 mm scale: sampling it every 2nd voxel and upsampling is
        # within 0.05 mm of exact and saves a fifth of a subject's time. A user's model may be rougher: exact.
        "global_stride": 1 if cfg.global_model else 2,
    }


def _crop(volume: np.ndarray, start: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``volume[start : start + shape]``, padded with zeros where the box extends beyond the volume."""
    out = np.zeros(shape, volume.dtype)
    src = tuple(slice(max(int(a), 0), min(int(a) + n, m)) for a, n, m in zip(start, shape, volume.shape, strict=True))
    dst = tuple(slice(sl.start - int(a), sl.stop - int(a)) for sl, a in zip(src, start, strict=True))
    out[dst] = volume[src]
    return out


def _check_model_grid(model: DeformationModel, affine, shape, name: str, must_cover=None) -> None:
    """The model's grid must overlap the output (global) / contain the structure (local)."""
    inv = np.linalg.inv(model.affine)
    if must_cover is not None:
        pts = must_cover
    else:
        pts = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = pts @ affine[:3, :3].T + affine[:3, 3]
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    inside = np.all((vox >= -0.5) & (vox <= np.array(model.shape) - 0.5), axis=1)
    if name == "local" and inside.mean() < 0.99:
        raise FairalError(
            f"the local deformation model's grid covers only {100 * inside.mean():.0f}% of the labelled structure: "
            "it was made for another template (mismatched grids)"
        )
    if name == "global" and not inside.any():
        raise FairalError(
            "the global deformation model's grid does not overlap the output field of view: it was made for "
            "another template (mismatched grids)"
        )


def simulate_dataset(cfg: SimulationConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
    """Generate a dataset in ``out``: ``images/``, ``labels/``, ``manifest.csv``, ``dataset.json``, ``models/``
    and ``preview.png``. Written into a hidden temporary folder and moved into place at the end, so an
    interrupted or failed run never leaves a folder that looks complete."""
    out = Path(out)
    check_output_folder(out)
    if out.exists() and not overwrite:
        raise FairalError(f"{out} already exists; choose another folder or pass --overwrite")
    if out.exists() and not is_fairal_folder(out) and not (out / "dataset.json").is_file():
        raise FairalError(f"{out} is not a fairal dataset: --overwrite only replaces folders fairal made")
    state = prepare(cfg)
    subjects = draw_subjects(cfg, state["global_model"].n_components)
    with publish_folder(out, "dataset") as tmp:
        for sub in ("images", "labels", "models", "template"):
            within(tmp, sub).mkdir()
        # The template on the output grid: the reference for Dice-to-template, crops and fallback ROIs.
        tpl_image = state["template_image_crop"]
        tpl_image = np.round(tpl_image).astype(np.int16) if state["integer_image"] else tpl_image.astype(np.float32)
        _save_nifti(tpl_image, state["out_affine"], within(tmp, "template", "image.nii.gz"))
        _save_nifti(state["template_label_crop"].astype(np.uint8), state["out_affine"],
                    within(tmp, "template", "label.nii.gz"))
        state["out_dir"] = tmp
        results = _run_subjects(state, subjects, cfg.jobs, progress)
        state["global_model"].save(within(tmp, "models", "global.npz"))
        state["local_model"].save(within(tmp, "models", "local.npz"))
        manifest = _manifest(subjects, results, test_split(subjects[:cfg.n_subjects], cfg.seed, cfg.test_per_group),
                             {s.case_id for s in subjects[cfg.n_subjects:]})
        manifest.to_csv(within(tmp, "manifest.csv"), index=False)
        _write_dataset_json(cfg, state, manifest, tmp)
        if cfg.preview:
            from fairal.simulate.preview import write_preview

            write_preview(tmp, state, subjects, results, manifest)
    return out


def _run_subjects(state: dict, subjects: list[Subject], jobs: int, progress: bool) -> dict[str, dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # Auto: a worker per core, but no pool for a few subjects (starting a worker costs seconds).
    jobs = jobs or min(os.cpu_count() or 1, max(1, len(subjects) // 32))
    results: dict[str, dict] = {}
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("subjects", total=len(subjects))
        if jobs <= 1:
            import torch

            threads = torch.get_num_threads()
            _init_worker(state)
            try:
                for s in subjects:
                    results[s.case_id] = _write_subject(s)
                    bar.advance(task)
            finally:
                torch.set_num_threads(threads)
        else:
            ctx = multiprocessing.get_context("spawn")  # fork after torch threads have run can deadlock
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(state,)) as pool:
                futures = [pool.submit(_write_subject, s) for s in subjects]
                for fut in as_completed(futures):
                    r = fut.result()
                    results[r["case_id"]] = r
                    bar.advance(task)
    return results


def test_split(subjects: list[Subject], seed: int, per_group: int) -> set[str]:
    """The fixed test set (:func:`fairal.sampling.test_split`): ``per_group`` cases of each group, at most half of a
    group, drawn with the seed (the caller passes the subjects without the evaluation split). Every experiment on
    the dataset uses it; the rest is the training pool."""
    ids: dict[int, list[str]] = {}
    for s in subjects:
        ids.setdefault(s.group, []).append(s.case_id)
    return sampling.test_split(ids, per_group, seed)


def _manifest(subjects: list[Subject], results: dict[str, dict], test: set[str], evaluation: set[str]
              ) -> pd.DataFrame:
    rows = []
    for s in subjects:
        r = results[s.case_id]
        rows.append(
            {
                "case_id": s.case_id,
                "group": s.group,
                "bias_scale": s.bias_scale,
                "image": f"images/{s.case_id}.nii.gz",
                "label": f"labels/{s.case_id}.nii.gz",
                "split": "test" if s.case_id in test else "eval" if s.case_id in evaluation else "pool",
                "label_volume_mm3": round(r["label_volume_mm3"], 3),
                "dice_to_template": round(r["dice_to_template"], 6),
            }
        )
    return pd.DataFrame(rows)


def group_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Caudate volume and Dice-to-template by group (mean and SD)."""
    agg = manifest.groupby("group").agg(
        n=("case_id", "size"),
        volume_mean_mm3=("label_volume_mm3", "mean"),
        volume_sd_mm3=("label_volume_mm3", "std"),
        dice_to_template_mean=("dice_to_template", "mean"),
        dice_to_template_sd=("dice_to_template", "std"),
        dice_to_template_min=("dice_to_template", "min"),
    )
    return agg.reset_index()


def _counts(groups: pd.Series) -> dict[str, int]:
    return {str(g): int(n) for g, n in groups.value_counts().sort_index().items()}


def _write_dataset_json(cfg: SimulationConfig, state: dict, manifest: pd.DataFrame, tmp: Path) -> None:
    tpl: Template = state["template"]
    mu, sd = cfg.resolved_bias()
    settings = {**asdict(cfg), "shape": list(cfg.shape), "bias_mean": mu, "bias_std": sd}
    for key in ("jobs", "preview"):  # how it ran, not what it made: the same data whatever these are
        settings.pop(key)
    from fairal.export import decathlon_json

    info = {
        **decathlon_json(manifest, f"fairal {cfg.bias} bias"),
        "format": "fairal-dataset/1",
        "settings": settings,
        "n_subjects": int(len(manifest)),
        "n_per_group": _counts(manifest["group"]),
        "n_test_per_group": _counts(manifest.loc[manifest["split"] == "test", "group"]),
        "n_eval_per_group": _counts(manifest.loc[manifest["split"] == "eval", "group"]),
        "groups": {"1": "local bias deformation of the structure", "2": "global deformation only"},
        "template": {"sources": {k: Path(v).name if k != "label_value" else v for k, v in tpl.sources.items()},
                     "sha256": {Path(k).name: v for k, v in tpl.checksums.items()}, "shape": list(tpl.shape)},
        "output_grid": {
            "shape": list(cfg.shape),
            "affine": np.round(state["out_affine"], 6).tolist(),
            "crop_start_in_template": [int(v) for v in state["crop_start"]],
        },
        "models": {
            "global": {"file": "models/global.npz", "description": state["global_model"].description,
                       "sha256": sha256(tmp / "models" / "global.npz") if (tmp / "models" / "global.npz").exists()
                       else None},
            "local": {"file": "models/local.npz", "description": state["local_model"].description,
                      "sha256": sha256(tmp / "models" / "local.npz") if (tmp / "models" / "local.npz").exists()
                      else None},
        },
        "summary": group_summary(manifest).round(6).to_dict(orient="records"),
        "versions": versions(),
    }
    within(tmp, "dataset.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

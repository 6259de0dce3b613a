"""Generating a synthetic dataset: subjects, NIfTI files, manifest, settings, models and preview."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from fairal import sampling, versions
from fairal.data.export import decathlon_json
from fairal.errors import FairalError, SettingError
from fairal.io import check_output_folder, check_written, is_fairal_folder, publish_folder, sha256, within
from fairal.limits import check_room
from fairal.records import ACQUISITION_COLUMNS, EVAL, POOL, TEST
from fairal.simulate.deformation import DeformationModel, default_global_model, default_local_model
from fairal.simulate.groups import Group
from fairal.simulate.preview import write_preview
from fairal.simulate.scanner import WHITE_MATTER_METHOD, acquire, white_matter_intensity
from fairal.simulate.settings import SimulationConfig, build_config
from fairal.simulate.template import Template, crop_box, harvard_oxford_index, load_template
from fairal.simulate.warp import deformed_points, field_on_grid, integrate, output_points, warp_template


def simulation_config(options: Mapping, where: str) -> SimulationConfig:
    """The settings of a dataset from a table of ``fairal simulate``'s options by their names, ``_`` for ``-``
    (``bias``, ``n_subjects``, ``seed``, ``structure``, ``contrast``, ``inu``, ``noise``, ``noise_all``,
    ``inu_all``, ``group`` as a list of spec texts or of tables ``{name = ..., bias = ..., share = ...}``,
    ``shape``, ...), as a settings file gives them. The same validation as the command line's; an unknown key
    or a bad value is a FairalError naming ``where`` and the key.

    >>> simulation_config({"n_subjects": 40, "group": ["1:bias=strong,share=3", "2"]}, "study.toml").group_counts()
    [30, 10]
    """
    if not isinstance(options, Mapping):
        raise FairalError(f"{where}: the simulator's settings must be a table of keys, got {options!r}")
    try:
        return build_config(options)
    except SettingError as err:
        known = [f.name for f in fields(SimulationConfig)]
        if err.key not in known:
            raise FairalError(f"{where}: unknown key {err.key!r}; known keys: {', '.join(known)}") from None
        raise FairalError(f"{where}: {err.key} {err.problem}") from None


@dataclass
class Subject:
    """One subject's draw: which group, the local coefficient c (Group 1) and the global coefficients z."""

    index: int
    case_id: str
    group: int
    bias_scale: float | None
    global_z: np.ndarray


def draw_subjects(cfg: SimulationConfig, n_global: int) -> list[Subject]:
    """Groups (their sizes by the shares, :meth:`SimulationConfig.group_counts`: by default ceil(n/2) Group 1 and
    the rest Group 2) in a seeded random order and each subject's coefficients, then the evaluation subjects
    (``eval_per_group`` of each group, ids ``eval-NNNN``).

    Each subject has its own random stream (:func:`fairal.sampling.stream` ``"subject"``, an evaluation subject
    ``"eval-subject"``), so a subject's draw does not depend on the others, on how many evaluation subjects there
    are or on how the work is split across processes.
    """
    by_name = {g.name: g for g in cfg.resolved_groups()}
    groups = np.array([name for name, n in zip(by_name, cfg.group_counts(), strict=True) for _ in range(n)])
    sampling.stream(cfg.seed, "subject-groups").shuffle(groups)
    subjects = [_draw(cfg, i, f"sub-{i + 1:04d}", by_name[int(g)], sampling.stream(cfg.seed, "subject", i), n_global)
                for i, g in enumerate(groups)]
    if cfg.eval_per_group:
        eval_groups = np.array([name for name in by_name for _ in range(cfg.eval_per_group)])
        sampling.stream(cfg.seed, "eval-groups").shuffle(eval_groups)
        subjects += [_draw(cfg, cfg.n_subjects + j, f"eval-{j + 1:04d}", by_name[int(g)],
                           sampling.stream(cfg.seed, "eval-subject", j), n_global)
                     for j, g in enumerate(eval_groups)]
    return subjects


def _draw(cfg: SimulationConfig, index: int, case_id: str, group: Group, rng: np.random.Generator,
          n_global: int) -> Subject:
    if cfg.global_sampling == "one-scalar":  # SimBA's variant: one N(0,1) scalar scales all components
        z = np.full(n_global, rng.standard_normal())
    else:
        z = rng.standard_normal(n_global)
    c = float(rng.normal(group.bias_mean, group.bias_std)) if group.biased else None
    return Subject(index, case_id, group.name, c, z)


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


def acquired_image(state: dict, subject: Subject, image: np.ndarray) -> np.ndarray:
    """The warped image as the subject's group acquires it (:func:`fairal.simulate.scanner.acquire`); the
    image itself for a group without contrast, INU or noise."""
    group: Group = state["groups"][subject.group]
    if not group.acquisition_changed:
        return image
    return acquire(image, group, state["seed"], subject.case_id, state["white_matter"],
                   state["template_image_crop"] > 0, state["spacing"])


def _write_subject(subject: Subject) -> dict:
    state = _STATE
    image, label = simulate_subject(state, subject)
    image = acquired_image(state, subject, image)
    out: Path = state["out_dir"]
    if state["integer_image"]:
        image = np.round(np.clip(image, -32768, 32767)).astype(np.int16)
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
    label_value = cfg.label_value if cfg.structure is None else harvard_oxford_index(cfg.structure)
    tpl = load_template(cfg.template, cfg.label, label_value)
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
        # the acquisition (fairal.simulate.scanner): each group's settings, the noise reference
        "groups": {g.name: g for g in cfg.resolved_groups()},
        "seed": cfg.seed,
        "white_matter": white_matter_intensity(tpl.image),
        "spacing": tuple(float(v) for v in tpl.spacing),
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


def simulate_dataset(cfg: SimulationConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
                     keep: Callable[[Subject, str], bool] | None = None) -> Path:
    """Generate a dataset in ``out``: ``images/``, ``labels/``, ``manifest.csv``, ``dataset.json``, ``models/``
    and ``preview.png``. Written into a hidden temporary folder and moved into place at the end, so an
    interrupted or failed run never leaves a folder that looks complete.

    ``keep(subject, split)``: only the subjects it accepts are made (the others are drawn all the same, so a kept
    subject is the one the whole dataset would hold: the same draws, the same split); ``dataset.json`` then says
    how many were kept (``subset``)."""
    out = Path(out)
    check_output_folder(out, "OUT")
    if out.exists() and not overwrite:
        raise FairalError(f"{out} already exists; choose another folder or pass --overwrite")
    if out.exists() and not is_fairal_folder(out) and not (out / "dataset.json").is_file():
        raise FairalError(f"{out} is not a fairal dataset: --overwrite only replaces folders fairal made")
    if out.exists():
        check_written(out, "OUT", own=("cache",))
    check_room(cfg.total_subjects(), cfg.shape, out.parent, "the dataset")
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
        test = test_split(subjects[:cfg.n_subjects], cfg.seed, cfg.test_per_group)
        evaluation = {s.case_id for s in subjects[cfg.n_subjects:]}
        drawn = len(subjects)
        if keep is not None:
            subjects = [s for s in subjects if keep(s, TEST if s.case_id in test else EVAL
                                                    if s.case_id in evaluation else POOL)]
        results = _run_subjects(state, subjects, cfg.jobs, progress)
        state["global_model"].save(within(tmp, "models", "global.npz"))
        state["local_model"].save(within(tmp, "models", "local.npz"))
        manifest = _manifest(subjects, results, test, evaluation, state["groups"])
        manifest.to_csv(within(tmp, "manifest.csv"), index=False)
        _write_dataset_json(cfg, state, manifest, tmp, None if keep is None else {"kept": len(subjects),
                                                                                   "drawn": drawn})
        if cfg.preview:
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




def _manifest(subjects: list[Subject], results: dict[str, dict], test: set[str], evaluation: set[str],
              groups: dict[int, Group]) -> pd.DataFrame:
    extra = [k for k, neutral in ACQUISITION_COLUMNS.items() if any(getattr(g, k) != neutral for g in groups.values())]
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
                "split": TEST if s.case_id in test else EVAL if s.case_id in evaluation else POOL,
                "label_volume_mm3": round(r["label_volume_mm3"], 3),
                "dice_to_template": round(r["dice_to_template"], 6),
                **{k: getattr(groups[s.group], k) for k in extra},
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


def _acquisition_json(state: dict) -> dict:
    """How the acquisition differences are made (docs/simulation.md), with the template's white-matter intensity."""
    wm = state["white_matter"]
    return {
        "white_matter_intensity": round(wm, 6),
        "white_matter_method": WHITE_MATTER_METHOD,
        "order": "contrast, then intensity non-uniformity, then Rician noise; on the image, never the label",
        "contrast": "SimBA's change_contrast: clip(f * (v - h) + h, lo, hi), h = (hi - lo) / 2, lo and hi the "
                    "warped image's minimum and maximum",
        "inu": "a smooth multiplicative field within [1 - a/2, 1 + a/2] reaching both ends over the template's "
               "brain, a = level / 100 (BrainWeb); per subject from the stream acquisition-inu",
        "noise": "Rician: |v + n_re + i n_im|, n ~ N(0, sd^2) per channel, sd = level / 100 x the white-matter "
                 "intensity (BrainWeb); per subject from the stream acquisition-noise",
        "noise_sd": {str(name): round(g.noise / 100.0 * wm, 6) for name, g in state["groups"].items()},
    }


def recorded_settings(cfg: SimulationConfig) -> dict:
    """The settings as ``dataset.json`` records them: what the data depend on (not ``jobs``, ``preview``), the
    bias resolved (the groups' own with ``group``), in JSON's types."""
    mu, sd = (None, None) if cfg.group else cfg.resolved_bias()
    settings = {**asdict(cfg), "shape": list(cfg.shape), "bias_mean": mu, "bias_std": sd}
    if cfg.group:  # the groups say their own bias
        settings["bias"] = None
    for key in ("jobs", "preview"):  # how it ran, not what it made: the same data whatever these are
        settings.pop(key)
    return json.loads(json.dumps(settings, default=str))


def same_settings(recorded: dict, cfg: SimulationConfig) -> bool:
    """Whether a dataset's recorded settings are ``cfg``'s; a setting it does not record (one added since it was
    written) counts as equal when ``cfg`` holds its default."""
    mine, default = recorded_settings(cfg), recorded_settings(SimulationConfig())
    return all(recorded.get(k, default.get(k)) == v for k, v in mine.items())


def _write_dataset_json(cfg: SimulationConfig, state: dict, manifest: pd.DataFrame, tmp: Path,
                        subset: dict | None = None) -> None:
    tpl: Template = state["template"]
    settings = recorded_settings(cfg)

    groups: dict[int, Group] = state["groups"]
    title = f"fairal groups {', '.join(map(str, groups))}" if cfg.group else f"fairal {cfg.bias} bias"
    info = {
        **decathlon_json(manifest, title),
        "format": "fairal-dataset/1",
        "settings": settings,
        "n_subjects": int(len(manifest)),
        "n_per_group": _counts(manifest["group"]),
        "n_test_per_group": _counts(manifest.loc[manifest["split"] == TEST, "group"]),
        "n_eval_per_group": _counts(manifest.loc[manifest["split"] == EVAL, "group"]),
        "groups": {str(name): g.describe() for name, g in groups.items()},
        "group_settings": {str(name): {k: v for k, v in asdict(g).items() if k != "name"}
                           for name, g in groups.items()},
        "acquisition": _acquisition_json(state),
        "template": {"sources": {k: Path(v).name if k != "label_value" else v for k, v in tpl.sources.items()},
                     "sha256": {Path(k).name: v for k, v in tpl.checksums.items()}, "shape": list(tpl.shape),
                     "structure": cfg.structure},
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
        **({"subset": subset} if subset is not None else {}),
    }
    within(tmp, "dataset.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

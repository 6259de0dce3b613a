"""A study's datasets: simulated, a lab's CSV cohort resampled, or a folder made before; what each must hold for the
study's runs, checked before any is made."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fairal import versions
from fairal.config import Profile, setting_name
from fairal.data.cohort import check_headers, check_images, load_cases, read_cases, structure_grid
from fairal.data.volumes import group_value, read_manifest
from fairal.errors import FairalError
from fairal.grid.spec import DatasetSpec, Study, check_cohort, cohort_splits, paper_study
from fairal.io import (
    publish_folder,
    sha256,
    within,
    write_json,
)
from fairal.records import POOL, SPLITS, TEST
from fairal.run.loop import initial_counts
from fairal.simulate.dataset import same_settings, simulate_dataset, simulation_config

#: The paper's datasets: name -> (bias preset, subject seed). Different seeds: the two share no subject draw, so
#: a claim pooled over them counts independent data (the deformation models, the population, are shared).
DATASETS = {"strong": ("strong", 0), "weak": ("weak", 1)}


def simulation_settings(spec: DatasetSpec, profile: Profile):
    """The simulation of a study's dataset: its ``simulate`` options over the profile's subject count, grid
    size, test and evaluation cases per group."""
    sizes = {"n_subjects": profile.n_subjects, "shape": list(profile.sim_shape),
             "test_per_group": profile.test_per_group, "eval_per_group": profile.eval_per_group}
    return simulation_config({**sizes, **spec.simulate}, f"dataset {spec.name}")


def _same_simulation(info: dict, cfg) -> bool:
    """Whether a ``dataset.json`` (``info``) holds ``cfg``'s simulation. Its template and label paths are recorded
    as they were given (relative to where fairal ran then, or to the study file): the same files where their
    names and the recorded checksums agree."""
    recorded = dict(info.get("settings") or {})
    sums = (info.get("template") or {}).get("sha256") or {}
    for key in ("template", "label"):
        mine, theirs = getattr(cfg, key), recorded.get(key)
        if mine and isinstance(theirs, str) and theirs != str(mine) and Path(theirs).name == Path(mine).name \
                and Path(mine).is_file() and sums.get(Path(mine).name) == sha256(mine):
            recorded[key] = str(mine)
    return same_settings(recorded, cfg)


def ensure_dataset(out: Path, spec: str | DatasetSpec, profile: Profile, progress: bool) -> Path:
    """The study's dataset in ``out/data/NAME``: simulated (or a CSV cohort resampled) with these settings, or
    reused if one with the same settings is there. ``spec``: a :class:`fairal.grid.spec.DatasetSpec` or the name of
    one of the paper's datasets."""
    if isinstance(spec, str):
        spec = next(d for d in paper_study().datasets if d.name == spec)
    path = dataset_folder(out, spec)
    if spec.kind == "folder":
        return path
    if check_made_dataset(out, spec, profile):
        return path
    if spec.kind == "csv":
        return ensure_cohort(spec, path, profile)
    return simulate_dataset(simulation_settings(spec, profile), path, progress=progress)


def dataset_folder(out: Path, spec: DatasetSpec) -> Path:
    """Where a study's dataset is (or will be made): a dataset folder made before, as given, else ``out/data/NAME``."""
    return spec.folder if spec.kind == "folder" else Path(out) / "data" / spec.name


def check_made_dataset(out: Path, spec: DatasetSpec, profile: Profile) -> bool:
    """Whether ``out/data/NAME`` holds this dataset already (made with these settings); a dataset of other
    settings there is refused, so that a study is refused before any work rather than after its first datasets."""
    info = Path(out) / "data" / spec.name / "dataset.json"
    if spec.kind == "folder" or not info.is_file():
        return False
    try:
        held = json.loads(info.read_text())
    except (OSError, ValueError) as err:
        raise FairalError(f"{info} is unreadable ({err}); use another output folder or delete it") from None
    if not isinstance(held, dict):
        raise FairalError(f"{info} is not a dataset's description; use another output folder or delete it")
    if spec.kind == "csv" and held.get("settings") == cohort_settings(spec, profile):
        return True
    if spec.kind == "simulate" and _same_simulation(held, simulation_settings(spec, profile)):
        return True
    raise FairalError(f"{info.parent} holds a dataset of other settings than dataset {spec.name} of this study at "
                      f"profile {profile.name} (its CSV, its simulation or a setting that makes it changed); use "
                      "another output folder or delete it")


def link_tree(source: Path, target: Path) -> None:
    """A copy of the folder ``source`` as ``target`` whose files are hard links (copies where the file system has
    none): the same bytes, sizes and modification times."""
    import os
    import shutil

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, copy_function=link)


def reuse_datasets(out: Path, study: Study, profile: Profile, cli: dict, reuse: Path) -> None:
    """Link the simulated datasets of ``reuse`` that this study would simulate with the same settings into
    ``out/data`` (then runs on them can be reused: :func:`reuse_run`)."""
    for d in study.datasets:
        source, target = Path(reuse) / "data" / d.name, Path(out) / "data" / d.name
        if d.kind != "simulate" or target.exists() or not (source / "dataset.json").is_file():
            continue
        cfg = simulation_settings(d, study.profile_for(profile, d, None, cli))
        if _same_simulation(json.loads((source / "dataset.json").read_text()), cfg):
            link_tree(source, target)


def dataset_outline(spec: DatasetSpec, profile: Profile):
    """The cases the dataset will have per group (rows) and split (columns test, pool, eval), without making it:
    from a folder's manifest, a CSV cohort's cases and split, or a simulation's group sizes (its test split takes
    ``test_per_group`` of a group, at most half: :func:`fairal.sampling.test_split`)."""


    if spec.kind == "simulate":
        cfg = simulation_settings(spec, profile)
        names = [g.name for g in cfg.resolved_groups()]
        rows = [(min(cfg.test_per_group, n // 2), n - min(cfg.test_per_group, n // 2), cfg.eval_per_group)
                for n in cfg.group_counts()]
        counts = pd.DataFrame(rows, index=pd.Index(names, name="group"), columns=list(SPLITS))
    else:
        if spec.kind == "folder":
            cases = read_manifest(spec.folder, test_per_group=profile.test_per_group)
        else:
            cases = spec.cohort()
            cases = pd.DataFrame({"group": cases["group"].map(group_value),
                                  "split": cohort_splits(cases, spec, profile.test_per_group)})
        counts = pd.crosstab(cases["group"], cases["split"]).reindex(columns=list(SPLITS), fill_value=0)
    return counts.loc[sorted(counts.index, key=str)]  # the groups in the order the initial sets take them


def check_data(study: Study, base: Profile, cli: dict) -> None:
    """What each dataset must hold for the study's runs, checked before any dataset is made or run: every group
    a test case, a pool of the final budget, each initial set's cases per group, and the baselines' training
    cohorts (``cohort_size`` cases of each group) where the study has them."""
    given = {setting_name(k) for k in cli}

    def setting(key: str) -> str:  # a setting's name in a message, and whether the command line gave it
        return f"{key}, from --set" if key in given else key

    for d in study.datasets:
        data_profile = study.profile_for(base, d, None, cli)
        outline = dataset_outline(d, data_profile)
        where = f"{study.source}, dataset {d.name}"
        groups = list(outline.index)
        pool, test = outline[POOL].to_dict(), outline[TEST].to_dict()
        for g in groups:
            if not test.get(g):
                raise FairalError(f"{where}: group {g} has no test case (the metrics measure every group on the "
                                  "test split); add cases of the group")
        if study.baselines:
            size = data_profile.cohort_size
            short = [g for g in groups if pool.get(g, 0) < size]
            if short:
                raise FairalError(f"{where}: the baselines train on {size} cases of each group alone "
                                  f"({setting('cohort_size')}), group {short[0]}'s pool has "
                                  f"{pool.get(short[0], 0)}: lower cohort_size ([set] or --set) or add subjects")
        for arm in study.resolved_arms(base):
            prof = study.profile_for(base, d, arm, cli)
            if sum(pool.values()) < prof.final_size:
                raise FairalError(f"{where}, strategy {arm.name}: impossible budget, {prof.final_size} labeled "
                                  f"cases asked for ({setting('final_size')}) and the pool has {sum(pool.values())}")
            for init in study.inits:
                try:
                    need = initial_counts(groups, init, prof.init_size)
                except FairalError as err:
                    raise FairalError(f"{where}: {err}") from None
                short = [g for g in groups if need[g] > pool.get(g, 0)]
                if short:
                    raise FairalError(f"{where}, strategy {arm.name}: initial set {init} takes {need[short[0]]} "
                                      f"cases of group {short[0]}, its pool has {pool.get(short[0], 0)}")


def cohort_settings(spec: DatasetSpec, profile: Profile) -> dict:
    """What makes a CSV cohort's dataset: its file (path and content), group columns, grid, seed and test split."""
    import hashlib

    return {"csv": str(spec.csv.resolve()), "csv_sha256": hashlib.sha256(spec.csv.read_bytes()).hexdigest(),
            "group_by": list(spec.group_by), "spacing": spec.spacing, "margin_mm": spec.margin_mm,
            "label_value": spec.label_value, "seed": spec.seed, "test_per_group": profile.test_per_group}


#: How the messages about a CSV dataset's grid name its settings: the study file's keys.
COHORT_KEYS = {"spacing": "spacing", "margin_mm": "margin_mm", "label_value": "label_value"}


def check_cohort_files(spec: DatasetSpec) -> None:
    """A CSV cohort's files as its dataset will read them, before anything is written: every header (a label on
    its image's grid), the grid around the labeled structures (``spacing``, ``margin_mm``, ``label_value``), and
    every image read in full (not truncated, finite, not blank) and covering that grid. Its images are read twice,
    here and when the dataset is made, so that no refusal comes after the study has written."""
    cases = spec.cohort()
    check_headers(cases)
    check_images(cases, structure_grid(cases, spec.spacing, spec.margin_mm, spec.label_value, COHORT_KEYS))


def _save(array, affine, path: Path) -> None:
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def ensure_cohort(spec: DatasetSpec, path: Path, profile: Profile) -> Path:
    """A CSV cohort as a fairal dataset in ``path``: every case resampled onto one grid around the labeled
    structures (``spacing`` mm, as ``fairal query`` does; intensities normalised), a manifest with the groups and
    the splits, the pool's union of labels as the template structure (the crop and the fallback region); the
    user's files are only read. A ``path`` made before is the caller's to check
    (:func:`fairal.grid.datasets.check_made_dataset`)."""


    settings = cohort_settings(spec, profile)
    cases = read_cases(spec.csv, spec.group_by, "group_by")  # once more: the dataset is made of the file as it is
    try:
        check_cohort(spec, cases)
    except FairalError as err:
        raise FairalError(f"dataset {spec.name}: {err}") from None
    splits = cohort_splits(cases, spec, profile.test_per_group)
    grid = structure_grid(cases, spec.spacing, spec.margin_mm, spec.label_value, COHORT_KEYS)
    vol = load_cases(cases, grid, label_value=spec.label_value)
    pool = [i for i, s in enumerate(splits) if s == POOL]
    with publish_folder(path, "dataset") as tmp:
        for sub in ("images", "labels", "template"):
            within(tmp, sub).mkdir()
        rows = []
        for i, (case, group) in enumerate(zip(cases["case_id"], cases["group"], strict=True)):
            _save(vol.images[i, 0].numpy(), grid.affine, within(tmp, "images", f"{case}.nii.gz"))
            _save(vol.labels[i, 0].numpy().astype("uint8"), grid.affine, within(tmp, "labels", f"{case}.nii.gz"))
            rows.append({"case_id": case, "group": group, "image": f"images/{case}.nii.gz",
                         "label": f"labels/{case}.nii.gz", "split": splits[i],
                         "source_image": cases["image_path"].iloc[i], "source_label": cases["label_path"].iloc[i]})
        union = vol.labels[pool, 0].amax(dim=0).numpy().astype("uint8")
        _save(union, grid.affine, within(tmp, "template", "label.nii.gz"))
        manifest = pd.DataFrame(rows)
        manifest.to_csv(within(tmp, "manifest.csv"), index=False)
        write_json(within(tmp, "dataset.json"), {
            "format": "fairal-dataset/1", "kind": "csv cohort", "settings": settings,
            "n_per_group": {str(g): int(n) for g, n in manifest["group"].value_counts().sort_index().items()},
            "output_grid": {"shape": list(grid.shape), "affine": grid.affine.round(6).tolist()},
            "versions": versions()})
    return path

"""Experiments: the baseline cohorts of the paper's Table 1 and the grid of the paper's experiment (its tasks, run
on an executor of :mod:`fairal.executors`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fairal import ladder
from fairal.config import Profile
from fairal.data import load_volumes, read_manifest, read_volume_cache, volume_cache
from fairal.engine import evaluate, model_factory
from fairal.errors import FairalError
from fairal.executors import Executor, LocalExecutor, Task, describe, make_executor
from fairal.io import (
    FolderLock,
    check_output_folder,
    check_own_folder,
    is_fairal_folder,
    make_own_folder,
    within,
    write_csv,
    write_json,
)
from fairal.metrics import EVAL_PREFIX, METRICS, fairness_columns, fairness_summary, prefixed_summary
from fairal.sampling import draw_per_group, split_evenly, stream, stream_seed
from fairal.study import Arm, DatasetSpec, Study, ensure_cohort, paper_study
from fairal.train import check_device, save_checkpoint, train_model


def baseline_columns(groups: list) -> list[str]:
    """``baseline_table.csv``'s columns; for the paper's groups: cohort, dice_g1, dice_g2, dice_all, essp, delta
    (on the test split), then eval_dice_all, eval_dice_g1, eval_dice_g2, eval_delta, eval_essp (on the evaluation
    split; empty without one)."""
    extra = [m for m in METRICS if m not in ("essp", "delta")]  # metrics added to the table
    return ["cohort", *[f"dice_g{g}" for g in groups], "dice_all", "essp", "delta", *extra,
            *fairness_columns(groups, EVAL_PREFIX)]


BASELINE_TABLE_COLUMNS = baseline_columns([1, 2])


def baseline_cohorts(manifest: pd.DataFrame, size: int, seed: int = 0) -> dict[str, list[str]]:
    """The training cohorts drawn (seeded) from the pool, never from the test split.

    ``all`` = ``size`` split evenly over the groups (the paper: 63 + 63; the first groups get a remainder),
    ``g<g>`` = ``size`` cases of group g alone (126), for every group of the dataset.
    """
    groups = sorted(set(manifest["group"]), key=str)
    pool = manifest[manifest["split"] == "pool"]
    ids = {g: pool.loc[pool["group"] == g, "case_id"].tolist() for g in groups}
    need = {"all": split_evenly(size, groups)}
    need.update({f"g{g}": {h: size if h == g else 0 for h in groups} for g in groups})
    rng = stream(seed, "cohort")
    return {name: draw_per_group(ids, counts, rng, what=f"cohort {name}", short=" for training but the pool has",
                                 hint=" (test cases excluded): lower the cohort size (--set cohort_size=N)")
            for name, counts in need.items()}


def run_baseline(
    data_dir: str | Path, out: str | Path, profile: Profile, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Train the U-Net on each cohort and evaluate it on the fixed test split; write the records to ``out``.

    Writes ``baseline_cases.csv`` (cohort, case_id, group, dice, split: ``test``, and ``eval`` for the evaluation
    split), ``baseline_table.csv`` (cohort, dice_g1,
    dice_g2, dice_all, essp, delta; one dice_g<g> per group), ``baseline.json`` (settings, versions, training
    diagnostics) and one model per cohort under ``checkpoints/``. Everything is validated before any file is
    written, and each file is moved into place whole.
    """
    data_dir, out = Path(data_dir), check_own_folder(out, "baseline")
    check_device(profile.device)
    manifest = read_manifest(data_dir, test_per_group=profile.test_per_group, seed=0)
    cohorts = baseline_cohorts(manifest, profile.cohort_size, seed)
    checkpoints = {name: within(out, "checkpoints", f"baseline-{name}.pt") for name in cohorts}  # group names
    test_ids = manifest.loc[manifest["split"] == "test", "case_id"].tolist()
    if not test_ids:
        raise FairalError(f"{data_dir}: the test split is empty")
    volumes = load_volumes(data_dir, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
    test_rows = volumes.rows(test_ids)
    test_groups = volumes.groups[test_rows]
    eval_ids = manifest.loc[manifest["split"] == "eval", "case_id"].tolist()
    eval_rows = volumes.rows(eval_ids)
    eval_groups = volumes.groups[eval_rows]
    case_rows, table_rows, diagnostics = [], [], {}
    groups = sorted(set(manifest["group"]), key=str)
    columns = baseline_columns(groups)
    for name in cohorts:
        rows = volumes.rows(cohorts[name])
        result = train_model(volumes.images[rows], volumes.labels[rows],
                             profile.train_config(stream_seed(seed, "baseline-training")),
                             model_factory(profile, volumes, rows), progress=progress)
        dices = evaluate(result.model, volumes, test_rows, profile.batch_size)
        summary = fairness_summary(dices, test_groups)
        eval_dice = evaluate(result.model, volumes, eval_rows, profile.batch_size) if eval_rows else []
        summary.update(prefixed_summary(eval_dice, eval_groups, groups, EVAL_PREFIX))
        table_rows.append({"cohort": name, **{k: summary.get(k) for k in columns[1:]}})
        case_rows += [{"cohort": name, "case_id": c, "group": g, "dice": d, "split": split}
                      for ids, grp, dcs, split in ((test_ids, test_groups, dices, "test"),
                                                   (eval_ids, eval_groups, eval_dice, "eval"))
                      for c, g, d in zip(ids, grp, dcs, strict=True)]
        diagnostics[name] = {"n_train": len(rows), "train_dice": result.train_dice, "restarts": result.restarts,
                             "collapsed": result.collapsed, "seconds": round(result.seconds, 2),
                             "final_loss": result.losses[-1] if result.losses else None}
        make_own_folder(out, "baseline")
        save_checkpoint(result.model, checkpoints[name], {"cohort": name, "profile": profile.name, "seed": seed})
    table = pd.DataFrame(table_rows, columns=columns)
    write_csv(within(out, "baseline_cases.csv"), pd.DataFrame(case_rows))
    write_csv(within(out, "baseline_table.csv"), table)
    info = {"data_dir": str(data_dir.resolve()), "profile": profile.as_dict(), "seed": seed,
            "cohorts": {k: len(v) for k, v in cohorts.items()}, "n_test": len(test_ids), "n_eval": len(eval_ids),
            "grid": list(volumes.spatial_shape), "crop_box": volumes.box, "training": diagnostics}
    write_json(within(out, "baseline.json"), info)
    return table


# --- the grid of a study (the paper's: the built-in study ``paper``) -----------------------------------------

#: The paper's datasets: name -> (bias preset, subject seed). Different seeds: the two share no subject draw, so
#: a claim pooled over them counts independent data (the deformation models, the population, are shared).
DATASETS = {"strong": ("strong", 0), "weak": ("weak", 1)}


def run_dir(out: Path, dataset: str, init: str, strategy: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / init / strategy / f"seed-{seed}"


def simulation_settings(spec: DatasetSpec, profile: Profile):
    """The simulation of a study's dataset: its ``simulate`` options over the profile's subject count, grid
    size, test and evaluation cases per group."""
    from fairal.simulate.dataset import simulation_config

    sizes = {"n_subjects": profile.n_subjects, "shape": list(profile.sim_shape),
             "test_per_group": profile.test_per_group, "eval_per_group": profile.eval_per_group}
    return simulation_config({**sizes, **spec.simulate}, f"dataset {spec.name}")


def _same_simulation(info: dict, cfg) -> bool:
    """Whether a ``dataset.json`` (``info``) holds ``cfg``'s simulation. Its template and label paths are recorded
    as they were given (relative to where fairal ran then, or to the study file): the same files where their
    names and the recorded checksums agree."""
    from fairal.simulate.dataset import same_settings
    from fairal.simulate.template import sha256

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
    reused if one with the same settings is there. ``spec``: a :class:`fairal.study.DatasetSpec` or the name of
    one of the paper's datasets."""
    from fairal.simulate.dataset import simulate_dataset

    if isinstance(spec, str):
        spec = next(d for d in paper_study().datasets if d.name == spec)
    if spec.kind == "folder":
        return spec.folder
    path = Path(out) / "data" / spec.name
    if check_made_dataset(out, spec, profile):
        return path
    if spec.kind == "csv":
        return ensure_cohort(spec, path, profile)
    return simulate_dataset(simulation_settings(spec, profile), path, progress=progress)


def check_made_dataset(out: Path, spec: DatasetSpec, profile: Profile) -> bool:
    """Whether ``out/data/NAME`` holds this dataset already (made with these settings); a dataset of other
    settings there is refused, so that a study is refused before any work rather than after its first datasets."""
    from fairal.study import cohort_settings

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


@dataclass(frozen=True)
class GridRun:
    """One AL run of a study: dataset, initial set, arm (strategy under its name), seed, and its settings."""

    dataset: DatasetSpec
    init: str
    arm: Arm
    seed: int
    profile: Profile

    def folder(self, out: Path) -> Path:
        return run_dir(out, self.dataset.name, self.init, self.arm.name, self.seed)


def study_grid(study: Study, base: Profile, seeds: int, cli: dict | None = None) -> list[GridRun]:
    """Every run of the study, datasets x initial sets x arms x seeds in that order."""
    arms = study.resolved_arms(base)
    return [GridRun(d, i, a, seed, study.profile_for(base, d, a, cli or {}))
            for d in study.datasets for i in study.inits for a in arms for seed in range(seeds)]


def grid(seeds: int, strategies: tuple[str, ...] | list[str]) -> list[tuple[str, str, str, int]]:
    """Every (dataset, initial set, strategy, seed) of the paper's experiment; strategy names are checked first."""
    from fairal.acquisition import parse_strategy
    from fairal.loop import INITS

    if not strategies:
        raise FairalError("the grid needs at least one strategy (--strategies)")
    for s in strategies:
        parse_strategy(s)
    strategies = list(dict.fromkeys(strategies))
    return [(d, i, s, seed) for d in DATASETS for i in INITS for s in strategies for seed in range(seeds)]


def reproduce(
    out: str | Path, profile: Profile, seeds: int | None = None, jobs: int = 0, progress: bool = True,
    executor: str | Executor = "local", address: str | None = None, cpus_per_task: int = 1,
    gpus_per_task: float = 0.0, max_retries: int = 3, pack: str = "auto", pack_size: int = 0,
) -> None:
    """The whole paper experiment (the built-in study ``paper``, :func:`run_study`): both datasets, their
    baselines, and the grid 2 datasets x 3 initial sets x the profile's strategies (the paper's 4, and more at
    ``smoke``/``standard``) x seeds, skipping finished work."""
    run_study(paper_study(), out, profile, seeds=seeds, jobs=jobs, progress=progress, executor=executor,
              address=address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, max_retries=max_retries,
              pack=pack, pack_size=pack_size)


#: The marker's kind of a study's results folder (``OUT`` of ``fairal study`` and ``fairal reproduce``).
RESULTS = "results folder"


def check_results_folder(out: str | Path) -> Path:
    """A study's results folder: absent, empty, or fairal's results folder (its marker, or from a fairal that set
    no marker yet: its ``study.json``); a folder of the user's or a dataset is refused before any work."""
    if (Path(out) / "study.json").is_file() and not is_fairal_folder(out):
        return check_output_folder(out, "OUT")
    return check_own_folder(out, RESULTS, "OUT")


def check_before_writing(out: Path, study: Study, profile: Profile, seeds: int, cli: dict) -> None:
    """What a study finds in ``out``, checked before it writes anything there (a refusal leaves ``out`` as it was,
    its ``study.json`` too): ``out`` holds no other study (:func:`fairal.study.other_study`), every path of the
    study's plan, resolved, lies inside ``out`` (no symbolic link planted in it leads a write elsewhere), and every
    run already there has this study's settings."""
    _check_same_study(out, study)
    runs = study_grid(study, profile, seeds, cli)
    own = [("study.json",), ("report",), *[("data", d.name) for d in study.datasets if d.kind != "folder"],
           *[("baseline", d.name) for d in study.datasets if study.baselines],
           *[r.folder(out).relative_to(out).parts for r in runs]]
    for parts in own:
        try:
            within(out, *parts)
        except FairalError as err:
            raise FairalError(f"{study.source}: {err} (a symbolic link inside it leads there); remove the link or "
                              "choose another OUT") from None
    _check_runs_there(out, study, runs)


def _check_same_study(out: Path, study: Study) -> None:
    """``out`` holds no study (no ``study.json``) or this one (:func:`fairal.study.other_study`)."""
    from fairal.study import other_study

    path = out / "study.json"
    if not path.is_file():
        return
    try:
        held = json.loads(path.read_text())["study"]
        why = other_study(held, study)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise FairalError(f"{study.source}: {path} is unreadable ({type(err).__name__}: {err}), so which study OUT "
                          "holds is unknown; choose another OUT") from None
    if why:
        raise FairalError(f"{study.source}: OUT {out} holds another study, {held.get('name')!r} from "
                          f"{held.get('source')} ({why}); a results folder holds one study, its name and datasets: "
                          f"choose a new OUT (--reuse {out} links its finished runs of identical settings)")


def _check_runs_there(out: Path, study: Study, runs: list[GridRun]) -> None:
    """Every run of the plan already in ``out`` has its settings there (as :class:`fairal.loop.ActiveLearningRun`
    reads a run's state: the same settings, or the same on the same data files under another path)."""
    from fairal.loop import RunSpec, same_run_elsewhere, same_settings

    manifests: dict = {}
    for r in runs:
        folder = r.folder(out)
        if not (folder / "state.json").is_file():
            continue
        data = r.dataset.folder if r.dataset.kind == "folder" else out / "data" / r.dataset.name
        spec = RunSpec(str(data), r.arm.strategy, r.init, r.seed, r.profile)
        try:
            config = json.loads((folder / "config.json").read_text())
            if same_settings(config.get("settings", {}), spec.settings()):
                continue
        except (OSError, ValueError, AttributeError) as err:
            raise FairalError(f"{study.source}: {folder} holds an unreadable run ({err}); delete it or choose "
                              "another OUT") from None
        if (data / "manifest.csv").is_file() and r.dataset.name not in manifests:
            manifests[r.dataset.name] = read_manifest(data, test_per_group=r.profile.test_per_group)
        if r.dataset.name in manifests and same_run_elsewhere(folder, config, spec, manifests[r.dataset.name]):
            continue
        raise FairalError(f"{study.source}: {folder} holds a run with other settings than this study's dataset "
                          f"{r.dataset.name}, initial set {r.init}, strategy {r.arm.name}, seed {r.seed} (a setting, "
                          "the strategy or the data changed); choose a new OUT (--reuse links the runs of identical "
                          "settings) or delete that run")


def run_study(
    study: Study, out: str | Path, profile: Profile, cli: dict | None = None, seeds: int | None = None,
    jobs: int = 0, progress: bool = True, executor: str | Executor = "local", address: str | None = None,
    cpus_per_task: int = 1, gpus_per_task: float = 0.0, max_retries: int = 3, pack: str = "auto",
    pack_size: int = 0, reuse: str | Path | None = None, only: list[str] | None = None,
) -> None:
    """A study (:mod:`fairal.study`): its datasets, their baselines if it has them, and its grid of AL runs (its
    datasets x initial sets x strategies x seeds), skipping finished work. A ladder's calibration
    (:mod:`fairal.ladder`) comes first: the knob of each target gap is fixed before any dataset is made.
    ``only``: run the grid of these datasets alone (the study's records and calibrations stay the whole study's).
    ``profile``: the base settings (the study's, dataset's and arm's overrides apply on top, then ``cli``'s).

    ``executor``: an :class:`fairal.executors.Executor` or its name, ``"local"`` (a process pool on this machine,
    ``jobs`` workers) or ``"ray"`` (one Ray task per AL run and per dataset's baselines, on a local Ray or the
    cluster at ``address``, ``cpus_per_task`` / ``gpus_per_task`` each, retried ``max_retries`` times). Either
    way every task writes its records into ``out`` itself, so ``out`` must be on a filesystem that the workers
    share; a task that fails or whose worker is lost resumes after its last complete round. The results folder is
    locked while the grid runs: a second study or ``reproduce`` into it is refused.

    ``pack``: the unfinished runs of one dataset and seed (the same schedule: the same number of steps at every
    round) become one task that trains them in lockstep on one device (:func:`fairal.loop.run_lockstep`), at most
    ``pack_size`` runs a task (0: all of them). ``"auto"`` packs when the runs train on a GPU; on a CPU packing is
    slower than a process per core. ``reuse``: another results folder; its finished runs of identical settings on
    the same data files are linked into ``out`` instead of run again (:func:`reuse_run`).
    """
    from fairal.plugins import for_workers
    from fairal.study import check_data, check_settings, study_seeds

    cli = cli or {}
    seeds = study_seeds(study, profile, seeds)
    _check_grid_options(study, pack, pack_size, reuse, only)
    check_settings(study, profile, cli)
    check_data(study, profile, cli)  # what the datasets must hold for these runs, before any is made
    work = for_workers(grid_task)  # the plugins and run-time registrations, checked before any work
    if isinstance(executor, str):
        executor = make_executor(executor, jobs=jobs, address=address, cpus_per_task=cpus_per_task,
                                 gpus_per_task=gpus_per_task, max_retries=max_retries)
    profiles = [study.profile_for(profile, d, a, cli) for d in study.datasets
                for a in (None, *study.resolved_arms(profile))]
    for prof in profiles:  # each device a run is set to (the study's, a dataset's or an arm's)
        executor.check(prof)
    out = check_results_folder(out)
    study = ladder.resolve(out, study, profile, cli, compute=False)  # a calibration made before: the same knob
    check_before_writing(out, study, profile, seeds, cli)
    _check_datasets_in(out, study, profile, cli)
    with FolderLock(out, f"fairal study {study.name}"):
        make_own_folder(out, RESULTS)
        study = ladder.resolve(out, study, profile, cli, compute=True, progress=progress)
        packed = pack == "on" or (pack == "auto" and any(executor.trains_on_gpu(p) for p in profiles))
        if packed and isinstance(executor, LocalExecutor) and not executor.jobs:
            executor = LocalExecutor(jobs=1)  # one process drives the GPU; --jobs N runs N lockstep groups
        _write_study(out, study, profile, seeds, cli)
        if only:
            study = dataclasses.replace(study, datasets=tuple(d for d in study.datasets if d.name in only))
        _run_grid(out, study, profile, cli, seeds, executor, progress, pack_size if packed else 1, reuse, work)


def _check_grid_options(study: Study, pack: str, pack_size: int, reuse, only: list[str] | None) -> None:
    """The grid's own options: packing, the folder to reuse runs from, the datasets to run now."""
    if pack not in ("auto", "on", "off"):
        raise FairalError(f"--pack must be auto, on or off, got {pack!r}")
    if isinstance(pack_size, bool) or not isinstance(pack_size, int) or pack_size < 0:
        raise FairalError(f"--pack-size must be a whole number >= 0 (0: no limit), got {pack_size!r}")
    names = [d.name for d in study.datasets]
    missing = [n for n in only or () if n not in names]
    if missing:
        raise FairalError(f"{study.source}: no dataset {missing[0]!r} (datasets: {', '.join(names)})")
    if reuse is not None and not (Path(reuse) / "runs").is_dir():
        raise FairalError(f"--reuse {reuse}: no results folder (no runs/ in it)")


def _write_study(out: Path, study: Study, profile: Profile, seeds: int, cli: dict) -> None:
    """``OUT/study.json``: the study (its ladders resolved), the profile, the seeds, the command line's settings and
    the extensions loaded."""
    from fairal.plugins import record as extensions

    info = {"study": study.as_dict(), "profile": profile.as_dict(), "seeds": seeds, "cli_overrides": cli}
    if (extended := extensions()) is not None:
        info["extensions"] = extended
    write_json(within(out, "study.json"), info)


def _check_datasets_in(out: Path, study: Study, profile: Profile, cli: dict) -> None:
    """Each dataset of the study in ``out/data`` made with these settings (:func:`check_made_dataset`), or, not
    made yet, a CSV cohort's files as its dataset will read them (:func:`fairal.study.check_cohort_files`: no
    group's labels all empty among them), a simulation's subjects within the free disk and memory
    (:func:`fairal.limits.check_room`): refused before the study writes anything."""
    from fairal.limits import check_room
    from fairal.study import check_cohort_files

    for d in study.datasets:
        if d.target_gap is not None and d.harm is None:
            continue  # its knob comes from the calibration, before its dataset is made
        prof = study.profile_for(profile, d, None, cli)
        try:
            if check_made_dataset(out, d, prof):
                continue
            if d.kind == "simulate":
                cfg = simulation_settings(d, prof)
                check_room(cfg.total_subjects(), cfg.shape, out, f"{study.source}, dataset {d.name}",
                           prof.downsample if prof.crop_margin is None else None)
            elif d.kind == "csv":
                check_cohort_files(d)
        except FairalError as err:
            if str(err).startswith(study.source):
                raise
            raise FairalError(f"{study.source}, dataset {d.name}: {err}") from None


def lockstep_groups(runs: list[Task], pack_size: int) -> list[list[Task]]:
    """The runs in groups of one dataset and seed, at most ``pack_size`` a group (0: no limit; 1: every run
    alone), in the order given."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r.data_dir, r.seed), []).append(r)
    size = pack_size or max((len(g) for g in groups.values()), default=1)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def _dataset_data(out: Path, study: Study, profile: Profile, cli: dict) -> dict:
    """Each dataset made (or reused) and its manifest: name -> (path, manifest)."""
    data = {}
    for d in study.datasets:
        prof = study.profile_for(profile, d, None, cli)
        path = ensure_dataset(out, d, prof, progress=False)
        data[d.name] = (str(path), read_manifest(path, test_per_group=prof.test_per_group))
    return data


def _cache(data_dir: str, manifest: pd.DataFrame, profile: Profile, caches: dict) -> str:
    """The volume cache of a dataset at a profile's crop and resolution, built once by the driver."""
    key = (data_dir, profile.crop_margin, profile.downsample)
    if key not in caches:
        load_volumes(data_dir, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
        caches[key] = str(volume_cache(Path(data_dir), manifest, profile.crop_margin, profile.downsample))
    return caches[key]


def reuse_run(spec, manifest: pd.DataFrame, source: Path, target: Path) -> bool:
    """Link a finished run of another results folder into ``target`` when it is this run: the same settings
    (:func:`fairal.loop.same_settings`: strategy, initial set, seed, profile) on the same data files (its
    ``data.json``: every case's group, split, file sizes and modification times, as linked datasets keep them).
    Its files are hard links (:func:`link_tree`); returns whether it was."""
    from fairal.loop import same_run_elsewhere

    try:
        state = json.loads((source / "state.json").read_text())
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not (state.get("finished") and same_run_elsewhere(source, config, spec, manifest)):
        return False
    link_tree(source, target)
    return True


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


def grid_tasks(out: Path, study: Study, profile: Profile, seeds: int, pack_size: int, cli: dict | None = None,
               reuse: str | Path | None = None) -> list[Task]:
    """The unfinished work of the study as tasks: each dataset's baselines (if the study has them), then its runs
    (alone, or in lockstep groups). The datasets are made and their volume caches built here, once, so that
    workers only read them. ``reuse``: a results folder whose finished runs of identical settings and data are
    linked instead of run again (:func:`reuse_run`)."""
    from fairal.loop import ActiveLearningRun, RunSpec

    cli = cli or {}
    tasks, unfinished, caches = [], [], {}
    data = _dataset_data(out, study, profile, cli)
    for d in study.datasets if study.baselines else ():
        path, manifest = data[d.name]
        prof = study.profile_for(profile, d, None, cli)
        if not (out / "baseline" / d.name / "baseline_table.csv").is_file():
            tasks.append(Task("baseline", path, str(out / "baseline" / d.name), prof, manifest=manifest,
                              volumes=_cache(path, manifest, prof, caches)))
    for r in study_grid(study, profile, seeds, cli):
        path, manifest = data[r.dataset.name]
        target = r.folder(out)
        spec = RunSpec(path, r.arm.strategy, r.init, r.seed, r.profile)
        if reuse is not None and not target.exists():
            reuse_run(spec, manifest, r.folder(Path(reuse)), target)
        if not ActiveLearningRun(spec, target, manifest=manifest).is_finished():
            unfinished.append(Task("run", path, str(target), r.profile, r.init, r.arm.strategy, r.seed,
                                   manifest=manifest, volumes=_cache(path, manifest, r.profile, caches)))
    for group in lockstep_groups(unfinished, pack_size):
        if len(group) == 1:
            tasks += group
        else:
            tasks.append(Task("lockstep", group[0].data_dir, str(Path(group[0].out).parents[2]), profile,
                              seed=group[0].seed, runs=group, manifest=group[0].manifest, volumes=group[0].volumes))
    return tasks


def _run_grid(out: Path, study: Study, profile: Profile, cli: dict, seeds: int, executor: Executor,
              progress: bool, pack_size: int, reuse: str | Path | None = None, work=None) -> None:
    from fairal.loop import schedule
    from fairal.progress import GridProgress

    if reuse is not None:
        reuse_datasets(out, study, profile, cli, Path(reuse))
    for d in study.datasets:  # made with a progress bar of its own, before the grid's
        ensure_dataset(out, d, study.profile_for(profile, d, None, cli), progress)
    tasks = grid_tasks(out, study, profile, seeds, pack_size, cli, reuse)
    runs = {r.folder(out): len(schedule(r.profile)) for r in study_grid(study, profile, seeds, cli)}
    n_baselines = len(study.datasets) if study.baselines else 0
    with GridProgress(n_baselines + sum(runs.values()), len(runs) + n_baselines, enabled=progress) as bar:
        def refresh() -> None:
            bar.update(*_units_done(out, runs, study))

        refresh()
        failures = executor.run(tasks, work or grid_task, refresh)
        refresh()
    if failures:
        lines = "; ".join(f"{describe(t)}: {err}" for t, err in failures[:5])
        raise FairalError(f"{len(failures)} of {len(tasks)} grid tasks failed ({lines}); finished runs are kept, "
                          "run the same command again to retry the rest")


def _units_done(out: Path, runs: dict[Path, int], study: Study) -> tuple[int, int]:
    """Progress from the records on disk: (finished baselines plus complete rounds of the study's runs, finished
    baselines and runs)."""
    names = [d.name for d in study.datasets] if study.baselines else []
    done = finished = sum(1 for n in names if (out / "baseline" / n / "baseline_table.csv").is_file())
    for run in runs:
        try:
            state = json.loads((run / "state.json").read_text())
            done += int(state["completed_round"]) + 1
            finished += bool(state.get("finished"))
        except (OSError, ValueError, KeyError):
            pass  # not started, or being replaced right now: counted at the next refresh
    return done, finished


def grid_task(task: Task) -> Task:
    """One unit of the grid in a worker process: a dataset's baselines, one AL run, or a group of AL runs of one
    dataset and seed in lockstep; the volumes come from the cache the driver built."""
    import warnings

    from fairal.loop import ActiveLearningRun, RunSpec, run_lockstep

    warnings.simplefilter("ignore", RuntimeWarning)  # collapse warnings are recorded in state.json
    profile: Profile = task.profile
    if task.kind == "baseline":
        run_baseline(task.data_dir, task.out, profile, seed=0, progress=False)
        return task
    volumes = read_volume_cache(task.volumes, task.manifest, profile.downsample) if task.volumes else None
    runs = [ActiveLearningRun(RunSpec(r.data_dir, r.strategy, r.init, r.seed, profile), r.out, volumes=volumes,
                              manifest=task.manifest) for r in (task.runs if task.kind == "lockstep" else [task])]
    if task.kind == "lockstep":
        failures = run_lockstep(runs)
        if failures:
            raise FairalError("; ".join(f"{r.out}: {err}" for r, err in failures))
    else:
        runs[0].run()
    return task

"""The grid of a study: its runs, the checks of its results folder, its tasks (baselines, AL runs alone or in lockstep)
on an executor of :mod:`fairal.grid.executors`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fairal.acquisition import parse_strategy
from fairal.config import Profile
from fairal.data.volumes import load_volumes, read_manifest, read_volume_cache, volume_cache
from fairal.errors import FairalError
from fairal.grid import ladder
from fairal.grid.baselines import run_baseline
from fairal.grid.datasets import (
    DATASETS,
    check_cohort_files,
    check_data,
    check_made_dataset,
    dataset_folder,
    ensure_dataset,
    link_tree,
    reuse_datasets,
    simulation_settings,
)
from fairal.grid.executors import Executor, LocalExecutor, Task, describe, make_executor
from fairal.grid.spec import Arm, Study, check_settings, other_study, paper_study, study_seeds
from fairal.io import (
    FolderLock,
    check_output_folder,
    check_own_folder,
    is_fairal_folder,
    make_own_folder,
    within,
    write_json,
)
from fairal.limits import check_room
from fairal.plugins import for_workers
from fairal.plugins import record as extensions
from fairal.progress import GridProgress
from fairal.records import INITS
from fairal.run.loop import ActiveLearningRun, RunSpec, run_lockstep, same_run_elsewhere, same_settings, schedule
from fairal.run.network import network_of


def run_dir(out: Path, dataset: str, init: str, strategy: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / init / strategy / f"seed-{seed}"


@dataclass(frozen=True)
class GridRun:
    """One AL run of a study: its dataset's name, its arm (a strategy under its name) and the run itself, typed
    (:class:`fairal.run.loop.RunSpec`: data folder, parsed strategy, initial set, seed, settings), which the grid's
    task carries to the worker unchanged."""

    dataset: str
    arm: Arm
    spec: RunSpec

    @property
    def init(self) -> str:
        return self.spec.init

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def profile(self) -> Profile:
        return self.spec.profile

    def folder(self, out: Path) -> Path:
        return run_dir(out, self.dataset, self.spec.init, self.arm.name, self.spec.seed)


def study_grid(out: Path, study: Study, base: Profile, seeds: int, cli: dict | None = None) -> list[GridRun]:
    """Every run of the study, datasets x initial sets x arms x seeds in that order, each made once: its data
    folder in ``out`` (:func:`fairal.grid.datasets.dataset_folder`), its arm's strategy parsed once
    (:attr:`fairal.grid.spec.Arm.parsed`), its settings once per dataset and arm."""
    arms = study.resolved_arms(base)
    runs = []
    for d in study.datasets:
        data = str(dataset_folder(out, d))
        profiles = {a.name: study.profile_for(base, d, a, cli or {}) for a in arms}
        runs += [GridRun(d.name, a, RunSpec(data, a.parsed, i, seed, profiles[a.name]))
                 for i in study.inits for a in arms for seed in range(seeds)]
    return runs


def grid(seeds: int, strategies: tuple[str, ...] | list[str]) -> list[tuple[str, str, str, int]]:
    """Every (dataset, initial set, strategy, seed) of the paper's experiment; strategy names are checked first."""
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


def check_before_writing(out: Path, study: Study, runs: list[GridRun]) -> None:
    """What a study finds in ``out``, checked before it writes anything there (a refusal leaves ``out`` as it was,
    its ``study.json`` too): ``out`` holds no other study (:func:`fairal.grid.spec.other_study`), every path of the
    study's plan (its ``runs``: :func:`study_grid`), resolved, lies inside ``out`` (no symbolic link planted in it
    leads a write elsewhere), and every run already there has this study's settings."""
    _check_same_study(out, study)
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
    """``out`` holds no study (no ``study.json``) or this one (:func:`fairal.grid.spec.other_study`)."""
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
    """Every run of the plan already in ``out`` has its settings there (as :class:`fairal.run.loop.ActiveLearningRun`
    reads a run's state: the same settings, or the same on the same data files under another path)."""
    manifests: dict = {}
    for r in runs:
        folder, spec, data = r.folder(out), r.spec, Path(r.spec.data_dir)
        if not (folder / "state.json").is_file():
            continue
        try:
            config = json.loads((folder / "config.json").read_text())
            if same_settings(config.get("settings", {}), spec.settings()):
                continue
        except (OSError, ValueError, AttributeError) as err:
            raise FairalError(f"{study.source}: {folder} holds an unreadable run ({err}); delete it or choose "
                              "another OUT") from None
        if (data / "manifest.csv").is_file() and r.dataset not in manifests:
            manifests[r.dataset] = read_manifest(data, test_per_group=r.profile.test_per_group)
        if r.dataset in manifests and same_run_elsewhere(folder, config, spec, manifests[r.dataset]):
            continue
        raise FairalError(f"{study.source}: {folder} holds a run with other settings than this study's dataset "
                          f"{r.dataset}, initial set {r.init}, strategy {r.arm.name}, seed {r.seed} (a setting, "
                          "the strategy or the data changed); choose a new OUT (--reuse links the runs of identical "
                          "settings) or delete that run")


def run_study(
    study: Study, out: str | Path, profile: Profile, cli: dict | None = None, seeds: int | None = None,
    jobs: int = 0, progress: bool = True, executor: str | Executor = "local", address: str | None = None,
    cpus_per_task: int = 1, gpus_per_task: float = 0.0, max_retries: int = 3, pack: str = "auto",
    pack_size: int = 0, reuse: str | Path | None = None, only: list[str] | None = None,
    checked: Callable[[], object] | None = None,
) -> None:
    """A study (:mod:`fairal.grid.spec`): its datasets, their baselines if it has them, and its grid of AL runs (its
    datasets x initial sets x strategies x seeds), skipping finished work. A ladder's calibration
    (:mod:`fairal.grid.ladder`) comes first: the knob of each target gap is fixed before any dataset is made.
    ``only``: run the grid of these datasets alone (the study's records and calibrations stay the whole study's).
    ``profile``: the base settings (the study's, dataset's and arm's overrides apply on top, then ``cli``'s).

    ``executor``: an :class:`fairal.grid.executors.Executor` or its name, ``"local"`` (a process pool on this machine,
    ``jobs`` workers) or ``"ray"`` (one Ray task per AL run and per dataset's baselines, on a local Ray or the
    cluster at ``address``, ``cpus_per_task`` / ``gpus_per_task`` each, retried ``max_retries`` times). Either
    way every task writes its records into ``out`` itself, so ``out`` must be on a filesystem that the workers
    share; a task that fails or whose worker is lost resumes after its last complete round. The results folder is
    locked while the grid runs: a second study or ``reproduce`` into it is refused.

    ``pack``: the unfinished runs of one dataset and seed (the same schedule: the same number of steps at every
    round) become one task that trains them in lockstep on one device (:func:`fairal.run.loop.run_lockstep`), at most
    ``pack_size`` runs a task (0: all of them). ``"auto"`` packs when the runs train on a GPU; on a CPU packing is
    slower than a process per core. ``reuse``: another results folder; its finished runs of identical settings on
    the same data files are linked into ``out`` instead of run again (:func:`reuse_run`). ``checked``: called once
    every check has passed, before anything is written (the command line prints its warnings there, so a refused
    study prints only its refusal).
    """
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
    for prof in profiles:  # each device and network a run is set to (the study's, a dataset's or an arm's)
        executor.check(prof)
        network_of(prof)
    out = check_results_folder(out)
    study = ladder.resolve(out, study, profile, cli, compute=False)  # a calibration made before: the same knob
    runs = study_grid(out, study, profile, seeds, cli)  # every run typed once; a calibration moves no run
    check_before_writing(out, study, runs)
    _check_datasets_in(out, study, profile, cli)
    if checked is not None:
        checked()
    with FolderLock(out, f"fairal study {study.name}"):
        make_own_folder(out, RESULTS)
        study = ladder.resolve(out, study, profile, cli, compute=True, progress=progress)
        packed = pack == "on" or (pack == "auto" and any(executor.trains_on_gpu(p) for p in profiles))
        if packed and isinstance(executor, LocalExecutor) and not executor.jobs:
            executor = LocalExecutor(jobs=1)  # one process drives the GPU; --jobs N runs N lockstep groups
        _write_study(out, study, profile, seeds, cli)
        if only:
            study = dataclasses.replace(study, datasets=tuple(d for d in study.datasets if d.name in only))
            runs = [r for r in runs if r.dataset in only]
        _run_grid(out, study, profile, cli, runs, executor, progress, pack_size if packed else 1, reuse, work)


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
    info = {"study": study.as_dict(), "profile": profile.as_dict(), "seeds": seeds, "cli_overrides": cli}
    if (extended := extensions()) is not None:
        info["extensions"] = extended
    write_json(within(out, "study.json"), info)


def _check_datasets_in(out: Path, study: Study, profile: Profile, cli: dict) -> None:
    """Each dataset of the study in ``out/data`` made with these settings (:func:`check_made_dataset`), or, not
    made yet, a CSV cohort's files as its dataset will read them (:func:`fairal.grid.datasets.check_cohort_files`: no
    group's labels all empty among them), a simulation's subjects within the free disk and memory
    (:func:`fairal.limits.check_room`): refused before the study writes anything."""
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
        groups.setdefault((r.data_dir, r.spec.seed), []).append(r)
    size = pack_size or max((len(g) for g in groups.values()), default=1)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def _dataset_data(out: Path, study: Study, profile: Profile, cli: dict) -> dict:
    """Each dataset made (or reused) and its manifest: name -> (path, manifest, its settings)."""
    data = {}
    for d in study.datasets:
        prof = study.profile_for(profile, d, None, cli)
        path = ensure_dataset(out, d, prof, progress=False)
        data[d.name] = (str(path), read_manifest(path, test_per_group=prof.test_per_group), prof)
    return data


def _cache(data_dir: str, manifest: pd.DataFrame, profile: Profile, caches: dict) -> str:
    """The volume cache of a dataset at a profile's crop and resolution, built once by the driver."""
    key = (data_dir, profile.crop_margin, profile.downsample)
    if key not in caches:
        load_volumes(data_dir, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
        caches[key] = str(volume_cache(Path(data_dir), manifest, profile.crop_margin, profile.downsample))
    return caches[key]


def reuse_run(spec: RunSpec, manifest: pd.DataFrame, source: Path, target: Path) -> bool:
    """Link a finished run of another results folder into ``target`` when it is this run: the same settings
    (:func:`fairal.run.loop.same_settings`: strategy, initial set, seed, profile) on the same data files (its
    ``data.json``: every case's group, split, file sizes and modification times, as linked datasets keep them).
    Its files are hard links (:func:`link_tree`); returns whether it was."""
    try:
        state = json.loads((source / "state.json").read_text())
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not (state.get("finished") and same_run_elsewhere(source, config, spec, manifest)):
        return False
    link_tree(source, target)
    return True


def grid_tasks(out: Path, study: Study, profile: Profile, runs: list[GridRun], pack_size: int,
               cli: dict | None = None, reuse: str | Path | None = None) -> list[Task]:
    """The unfinished work of the study as tasks: each dataset's baselines (if the study has them), then its
    ``runs`` (:func:`study_grid`; alone, or in lockstep groups), each task holding its run's spec as the grid made
    it. The datasets are made and their volume caches built here, once, so that workers only read them.
    ``reuse``: a results folder whose finished runs of identical settings and data are linked instead of run again
    (:func:`reuse_run`)."""
    cli = cli or {}
    tasks, unfinished, caches = [], [], {}
    data = _dataset_data(out, study, profile, cli)
    for d in study.datasets if study.baselines else ():
        path, manifest, prof = data[d.name]
        if not (out / "baseline" / d.name / "baseline_table.csv").is_file():
            tasks.append(Task("baseline", path, str(out / "baseline" / d.name), prof, manifest=manifest,
                              volumes=_cache(path, manifest, prof, caches)))
    for r in runs:
        _, manifest, _ = data[r.dataset]
        target = r.folder(out)
        if reuse is not None and not target.exists():
            reuse_run(r.spec, manifest, r.folder(Path(reuse)), target)
        if not ActiveLearningRun(r.spec, target, manifest=manifest).is_finished():
            unfinished.append(Task.for_run(r.spec, str(target), manifest,
                                           _cache(r.spec.data_dir, manifest, r.profile, caches)))
    for group in lockstep_groups(unfinished, pack_size):
        tasks += group if len(group) == 1 else [Task.for_lockstep(group, str(Path(group[0].out).parents[2]))]
    return tasks


def _run_grid(out: Path, study: Study, profile: Profile, cli: dict, grid_runs: list[GridRun], executor: Executor,
              progress: bool, pack_size: int, reuse: str | Path | None = None, work=None) -> None:
    if reuse is not None:
        reuse_datasets(out, study, profile, cli, Path(reuse))
    for d in study.datasets:  # made with a progress bar of its own, before the grid's
        ensure_dataset(out, d, study.profile_for(profile, d, None, cli), progress)
    tasks = grid_tasks(out, study, profile, grid_runs, pack_size, cli, reuse)
    runs = {r.folder(out): len(schedule(r.profile)) for r in grid_runs}
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
    dataset and seed in lockstep, each run as its task's spec says; the volumes come from the cache the driver
    built."""
    import warnings


    warnings.simplefilter("ignore", RuntimeWarning)  # collapse warnings are recorded in state.json
    if task.kind == "baseline":
        run_baseline(task.data_dir, task.out, task.profile, seed=0, progress=False)
        return task
    caches: dict = {}
    runs = [ActiveLearningRun(t.spec, t.out, volumes=_read_cache(t, caches), manifest=t.manifest,
                              extensions=extensions())
            for t in (task.runs if task.kind == "lockstep" else [task])]
    if task.kind == "lockstep":
        failures = run_lockstep(runs)
        if failures:
            raise FairalError("; ".join(f"{r.out}: {err}" for r, err in failures))
    else:
        runs[0].run()
    return task


def _read_cache(task: Task, caches: dict):
    """A run task's volumes from the cache the driver built (each cache read once per worker task); None without
    one."""
    if not task.volumes:
        return None
    if task.volumes not in caches:
        caches[task.volumes] = read_volume_cache(task.volumes, task.manifest, task.spec.profile.downsample)
    return caches[task.volumes]

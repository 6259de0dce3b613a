"""Experiments: the baseline cohorts of the paper's Table 1 and the grid of the paper's experiment (its tasks, run
on an executor of :mod:`fairal.executors`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fairal.config import Profile
from fairal.data import load_volumes, read_manifest, read_volume_cache, volume_cache
from fairal.engine import evaluate, model_factory
from fairal.errors import FairalError
from fairal.executors import Executor, LocalExecutor, Task, describe, make_executor
from fairal.io import FolderLock, check_output_folder, check_own_folder, make_own_folder, within, write_csv, write_json
from fairal.metrics import EVAL_PREFIX, METRICS, fairness_columns, fairness_summary, prefixed_summary
from fairal.sampling import draw_per_group, split_evenly, stream, stream_seed
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


# --- the paper's grid ----------------------------------------------------------------------------------------

#: The paper's datasets: name -> (bias preset, subject seed). Different seeds: the two share no subject draw, so
#: a claim pooled over them counts independent data (the deformation models, the population, are shared).
DATASETS = {"strong": ("strong", 0), "weak": ("weak", 1)}


def run_dir(out: Path, dataset: str, init: str, strategy: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / init / strategy / f"seed-{seed}"


def ensure_dataset(out: Path, name: str, profile: Profile, progress: bool) -> Path:
    """Simulate the dataset with the profile's size, or reuse it if one with the same settings is there."""
    from fairal.simulate.dataset import SimulationConfig, simulate_dataset
    from fairal.simulate.settings import same_scenario

    bias, seed = DATASETS[name]
    cfg = SimulationConfig(bias=bias, n_subjects=profile.n_subjects, shape=profile.sim_shape,
                           test_per_group=profile.test_per_group, eval_per_group=profile.eval_per_group, seed=seed)
    path = Path(out) / "data" / name
    info = path / "dataset.json"
    if info.is_file():
        settings = json.loads(info.read_text()).get("settings", {})
        same = (settings.get("n_subjects") == cfg.n_subjects and settings.get("bias") == cfg.bias
                and list(settings.get("shape", [])) == list(cfg.shape)
                and settings.get("test_per_group", 15) == cfg.test_per_group
                and settings.get("eval_per_group", 0) == cfg.eval_per_group and settings.get("seed", 0) == cfg.seed
                and same_scenario(settings, cfg))
        if same:
            return path
        raise FairalError(f"{path} holds a dataset of other settings than profile {profile.name}'s; "
                          "use another output folder or delete it")
    return simulate_dataset(cfg, path, progress=progress)


def grid(seeds: int, strategies: tuple[str, ...] | list[str]) -> list[tuple[str, str, str, int]]:
    """Every (dataset, initial set, strategy, seed) of the experiment; strategy names are checked first."""
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
    """The whole paper experiment: both datasets, their baselines, and the grid 2 datasets x 3 initial sets x
    the profile's strategies (the paper's 4, and more at ``smoke``/``standard``) x seeds, skipping finished work.

    ``executor``: an :class:`fairal.executors.Executor` or its name, ``"local"`` (a process pool on this machine,
    ``jobs`` workers) or ``"ray"`` (one Ray task per AL run and per dataset's baselines, on a local Ray or the
    cluster at ``address``, ``cpus_per_task`` / ``gpus_per_task`` each, retried ``max_retries`` times). Either
    way every task writes its records into ``out`` itself, so ``out`` must be on a filesystem that the workers
    share; a task that fails or whose worker is lost resumes after its last complete round. The results folder is
    locked while the grid runs: a second ``reproduce`` into it is refused.

    ``pack``: the unfinished runs of one dataset and seed (the same schedule: the same number of steps at every
    round) become one task that trains them in lockstep on one device (:func:`fairal.loop.run_lockstep`), at most
    ``pack_size`` runs a task (0: all of them). ``"auto"`` packs when the runs train on a GPU; on a CPU packing is
    slower than a process per core.
    """
    if pack not in ("auto", "on", "off"):
        raise FairalError(f"--pack must be auto, on or off, got {pack!r}")
    if isinstance(pack_size, bool) or not isinstance(pack_size, int) or pack_size < 0:
        raise FairalError(f"--pack-size must be a whole number >= 0 (0: no limit), got {pack_size!r}")
    if isinstance(executor, str):
        executor = make_executor(executor, jobs=jobs, address=address, cpus_per_task=cpus_per_task,
                                 gpus_per_task=gpus_per_task, max_retries=max_retries)
    executor.check(profile)
    out = check_output_folder(out, "the results folder")
    with FolderLock(out, "fairal reproduce"):
        packed = pack == "on" or (pack == "auto" and executor.trains_on_gpu(profile))
        if packed and isinstance(executor, LocalExecutor) and not executor.jobs:
            executor = LocalExecutor(jobs=1)  # one process drives the GPU; --jobs N runs N lockstep groups
        _reproduce(out, profile, seeds or profile.seeds, executor, progress, pack_size if packed else 1)


def lockstep_groups(runs: list[Task], pack_size: int) -> list[list[Task]]:
    """The runs in groups of one dataset and seed, at most ``pack_size`` a group (0: no limit; 1: every run
    alone), in the order given."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r.data_dir, r.seed), []).append(r)
    size = pack_size or max((len(g) for g in groups.values()), default=1)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def grid_tasks(out: Path, profile: Profile, seeds: int, pack_size: int) -> list[Task]:
    """The unfinished work of the grid as tasks: each dataset's baselines, then its runs (alone, or in lockstep
    groups). The datasets are simulated and their volume caches built here, once, so that workers only read them."""
    from fairal.loop import ActiveLearningRun, RunSpec

    tasks, unfinished, data = [], [], {}
    for name in DATASETS:
        path = ensure_dataset(out, name, profile, progress=False)
        manifest = read_manifest(path, test_per_group=profile.test_per_group)
        load_volumes(path, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
        cache = str(volume_cache(path, manifest, profile.crop_margin, profile.downsample))
        data[name] = (str(path), manifest, cache)
        if not (out / "baseline" / name / "baseline_table.csv").is_file():
            tasks.append(Task("baseline", str(path), str(out / "baseline" / name), profile, manifest=manifest,
                              volumes=cache))
    for name, init, strategy, seed in grid(seeds, profile.strategies):
        path, manifest, cache = data[name]
        target = run_dir(out, name, init, strategy, seed)
        if not ActiveLearningRun(RunSpec(path, strategy, init, seed, profile), target, manifest=manifest).is_finished():
            unfinished.append(Task("run", path, str(target), profile, init, strategy, seed, manifest=manifest,
                                   volumes=cache))
    for group in lockstep_groups(unfinished, pack_size):
        if len(group) == 1:
            tasks += group
        else:
            tasks.append(Task("lockstep", group[0].data_dir, str(Path(group[0].out).parents[2]), profile,
                              seed=group[0].seed, runs=group, manifest=group[0].manifest, volumes=group[0].volumes))
    return tasks


def _reproduce(out: Path, profile: Profile, seeds: int, executor: Executor, progress: bool, pack_size: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fairal.loop import schedule

    n_rounds = len(schedule(profile))
    for name in DATASETS:  # simulated with a progress bar of its own, before the grid's
        ensure_dataset(out, name, profile, progress)
    tasks = grid_tasks(out, profile, seeds, pack_size)
    keys = {run_dir(out, *r) for r in grid(seeds, profile.strategies)}
    columns = (TextColumn("grid (baselines + rounds)"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        task_id = bar.add_task("grid", total=len(DATASETS) + len(keys) * n_rounds,
                               completed=_units_done(out, n_rounds, keys))

        def refresh() -> None:
            bar.update(task_id, completed=_units_done(out, n_rounds, keys))

        failures = executor.run(tasks, grid_task, refresh)
        refresh()
    if failures:
        lines = "; ".join(f"{describe(t)}: {err}" for t, err in failures[:5])
        raise FairalError(f"{len(failures)} of {len(tasks)} grid tasks failed ({lines}); finished runs are kept, "
                          "run the same command again to retry the rest")


def _units_done(out: Path, n_rounds: int, runs: set[Path]) -> int:
    """Progress from the records on disk: finished baselines plus complete rounds of the grid's runs."""
    done = sum(1 for _ in out.glob("baseline/*/baseline_table.csv"))
    for state in out.glob("runs/*/*/*/seed-*/state.json"):
        if state.parent not in runs:
            continue
        try:
            done += int(json.loads(state.read_text())["completed_round"]) + 1
        except (OSError, ValueError, KeyError):
            pass  # being replaced right now: counted at the next refresh
    return done


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

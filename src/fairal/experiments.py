"""Experiments: the baseline cohorts of the paper's Table 1 (and, later, the active-learning grid)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch

from fairal.config import Profile
from fairal.data import load_volumes, read_manifest
from fairal.engine import evaluate, model_factory
from fairal.errors import FairalError
from fairal.io import FolderLock, check_output_folder, check_own_folder, make_own_folder, within, write_csv, write_json
from fairal.metrics import EVAL_PREFIX, fairness_columns, fairness_summary, prefixed_summary
from fairal.sampling import draw_per_group, split_evenly, stream, stream_seed
from fairal.train import check_device, save_checkpoint, train_model

#: The paper's training cohorts: balanced (an equal share of each group), then one cohort of each group alone.
COHORTS = ("all", "g1", "g2")


def baseline_columns(groups: list) -> list[str]:
    """``baseline_table.csv``'s columns; for the paper's groups: cohort, dice_g1, dice_g2, dice_all, essp, delta
    (on the test split), then eval_dice_all, eval_dice_g1, eval_dice_g2, eval_delta, eval_essp (on the evaluation
    split; empty without one)."""
    return ["cohort", *[f"dice_g{g}" for g in groups], "dice_all", "essp", "delta",
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
                and settings.get("eval_per_group", 0) == cfg.eval_per_group and settings.get("seed", 0) == cfg.seed)
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
    executor: str = "local", address: str | None = None, cpus_per_task: int = 1, gpus_per_task: float = 0.0,
    max_retries: int = 3, pack: str = "auto", pack_size: int = 0,
) -> None:
    """The whole paper experiment: both datasets, their baselines, and the grid 2 datasets x 3 initial sets x
    the profile's strategies (the paper's 4, and more at ``smoke``/``standard``) x seeds, skipping finished work.

    ``executor="local"`` runs the tasks in a process pool on this machine; ``"ray"`` runs one Ray task per AL run
    (and per dataset's baselines) on a local Ray or the cluster at ``address``. Either way every task writes its
    records into ``out`` itself, so ``out`` must be on a filesystem that the workers share; a task that fails or
    whose worker is lost is retried by Ray (``max_retries``) and resumes after its last complete round.
    ``gpus_per_task`` may be fractional (the U-Net is tiny: 0.25 runs four tasks per GPU); with the profile's
    ``device=auto`` a task then trains on the GPU that Ray gives it. The results folder is locked while the grid
    runs: a second ``reproduce`` into it is refused.

    ``pack``: the unfinished runs of one dataset and seed (the same schedule: the same number of steps at every
    round) become one task that trains them in lockstep on one device (:func:`fairal.loop.run_lockstep`), at most
    ``pack_size`` runs a task (0: all of them). ``"auto"`` packs when the runs train on a GPU (the profile's
    device resolves to CUDA here, or Ray tasks get GPUs); on a CPU packing is slower than a process per core.
    """
    if executor not in ("local", "ray"):
        raise FairalError(f"--executor must be local or ray, got {executor!r}")
    if pack not in ("auto", "on", "off"):
        raise FairalError(f"--pack must be auto, on or off, got {pack!r}")
    if isinstance(pack_size, bool) or not isinstance(pack_size, int) or pack_size < 0:
        raise FairalError(f"--pack-size must be a whole number >= 0 (0: no limit), got {pack_size!r}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise FairalError("--executor ray needs Ray: pip install 'fairal[ray]'") from err
    out = check_output_folder(out, "the results folder")
    if executor == "local":  # Ray's workers may have GPUs that this driver has not
        check_device(profile.device)
    with FolderLock(out, "fairal reproduce"):
        packed = pack == "on" or (pack == "auto" and _trains_on_gpu(profile, executor, gpus_per_task))
        _reproduce(out, profile, seeds, jobs, progress, executor, address, cpus_per_task, gpus_per_task, max_retries,
                   pack_size if packed else 1)


def _trains_on_gpu(profile: Profile, executor: str, gpus_per_task: float) -> bool:
    """Whether the grid's runs train on a GPU: the profile's device is CUDA here, or Ray tasks are given GPUs."""
    from fairal.train import resolve_device

    if profile.device == "cpu":
        return False
    return resolve_device(profile.device).type == "cuda" or (executor == "ray" and gpus_per_task > 0)


def lockstep_groups(runs: list[dict], pack_size: int) -> list[list[dict]]:
    """The runs (dicts with data_dir, seed, ...) in groups of one dataset and seed, at most ``pack_size`` a group
    (0: no limit; 1: every run alone), in the order given."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["data_dir"], r["seed"]), []).append(r)
    size = pack_size or max((len(g) for g in groups.values()), default=1)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def _reproduce(out: Path, profile: Profile, seeds, jobs, progress, executor, address, cpus_per_task, gpus_per_task,
               max_retries, pack_size: int = 1) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fairal.loop import ActiveLearningRun, RunSpec, schedule

    seeds = seeds or profile.seeds
    n_rounds = len(schedule(profile))
    runs = grid(seeds, profile.strategies)
    data = {name: ensure_dataset(out, name, profile, progress) for name in DATASETS}
    manifests = {name: read_manifest(path, test_per_group=profile.test_per_group) for name, path in data.items()}
    tasks = []
    for name, path in data.items():
        # Build the volume cache once here, so that the workers only read it.
        load_volumes(path, manifests[name], crop_margin=profile.crop_margin, downsample=profile.downsample)
        base_out = out / "baseline" / name
        if not (base_out / "baseline_table.csv").is_file():
            tasks.append({"kind": "baseline", "data_dir": str(path), "out": str(base_out), "profile": profile})
    unfinished = []
    for name, init, strategy, seed in runs:
        target = run_dir(out, name, init, strategy, seed)
        run = ActiveLearningRun(RunSpec(str(data[name]), strategy, init, seed, profile), target,
                                manifest=manifests[name])
        if not run.is_finished():
            unfinished.append({"kind": "run", "data_dir": str(data[name]), "out": str(target), "profile": profile,
                               "init": init, "strategy": strategy, "seed": seed})
    for group in lockstep_groups(unfinished, pack_size):
        if len(group) == 1:
            tasks += group
        else:
            where = Path(group[0]["out"]).parents[2]
            tasks.append({"kind": "lockstep", "data_dir": group[0]["data_dir"], "profile": profile, "runs": group,
                          "out": f"{where}/*/*/seed-{group[0]['seed']} ({len(group)} runs in lockstep)"})
    if pack_size != 1 and executor == "local" and not jobs:
        jobs = 1  # one process drives the GPU; --jobs N runs N lockstep groups side by side
    total = len(DATASETS) + len(runs) * n_rounds
    columns = (TextColumn("grid (baselines + rounds)"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        keys = {run_dir(out, *r) for r in runs}
        task_id = bar.add_task("grid", total=total, completed=_units_done(out, n_rounds, keys))

        def refresh() -> None:
            bar.update(task_id, completed=_units_done(out, n_rounds, keys))

        if executor == "ray":
            failures = _execute_ray(tasks, address, cpus_per_task, gpus_per_task, max_retries, refresh)
        else:
            failures = _execute_local(tasks, jobs, refresh)
        refresh()
    if failures:
        lines = "; ".join(f"{t.get('out')}: {err}" for t, err in failures[:5])
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


def _execute_local(tasks: list[dict], jobs: int, refresh) -> list:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if not tasks:
        return []
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(tasks)))
    threads = max(1, cores // jobs)
    failures = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
        pending = {pool.submit(_grid_task, t): t for t in tasks}
        while pending:
            finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            refresh()
            for fut in finished:
                t = pending.pop(fut)
                try:
                    fut.result()
                except Exception as err:  # one broken run must not stop the grid
                    failures.append((t, err))
    return failures


def _execute_ray(
    tasks: list[dict], address: str | None, cpus_per_task: int, gpus_per_task: float, max_retries: int, refresh
) -> list:
    import ray

    if not tasks:
        return []
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=max_retries,
                        retry_exceptions=True)(_ray_task)
    refs = {remote.remote(t, cpus_per_task): t for t in tasks}
    failures = []
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        refresh()
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as err:  # retries used up
                failures.append((refs[ref], err))
    return failures


def _ray_task(task: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    return _grid_task(task)


def _grid_task(task: dict) -> dict:
    """One unit of the grid in a worker process: a dataset's baselines, one AL run, or a group of AL runs of one
    dataset and seed in lockstep."""
    import warnings

    from fairal.loop import ActiveLearningRun, RunSpec

    warnings.simplefilter("ignore", RuntimeWarning)  # collapse warnings are recorded in state.json
    profile: Profile = task["profile"]
    if task["kind"] == "baseline":
        run_baseline(task["data_dir"], task["out"], profile, seed=0, progress=False)
    elif task["kind"] == "lockstep":
        from fairal.loop import run_lockstep

        manifest = read_manifest(task["data_dir"], test_per_group=profile.test_per_group)
        volumes = load_volumes(task["data_dir"], manifest, crop_margin=profile.crop_margin,
                               downsample=profile.downsample)
        runs = [ActiveLearningRun(RunSpec(task["data_dir"], r["strategy"], r["init"], r["seed"], profile), r["out"],
                                  volumes=volumes, manifest=manifest) for r in task["runs"]]
        failures = run_lockstep(runs)
        if failures:
            raise FairalError("; ".join(f"{r.out}: {err}" for r, err in failures))
    else:
        spec = RunSpec(task["data_dir"], task["strategy"], task["init"], task["seed"], profile)
        ActiveLearningRun(spec, task["out"]).run()
    return task


def _init_worker(threads: int, parent: int) -> None:
    """A grid worker: its torch threads, and it dies with the driver (a driver killed with kill -9 must not
    leave workers writing runs that a rerun would write too)."""
    torch.set_num_threads(threads)
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)




"""Experiments: the baseline cohorts of the paper's Table 1 (and, later, the active-learning grid)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fairal.config import Profile
from fairal.data import load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.fit import evaluate, model_factory, train_config
from fairal.io import write_csv, write_json
from fairal.metrics import fairness_summary
from fairal.train import save_checkpoint, train_model

#: The paper's training cohorts: balanced (half of each group), Group 1 only, Group 2 only.
COHORTS = ("all", "g1", "g2")
BASELINE_TABLE_COLUMNS = ["cohort", "dice_g1", "dice_g2", "dice_all", "essp", "delta"]


def baseline_cohorts(manifest: pd.DataFrame, size: int, seed: int = 0) -> dict[str, list[str]]:
    """The three training cohorts drawn (seeded) from the pool, never from the test split.

    ``all`` = size/2 of each group (the paper: 63 + 63), ``g1`` / ``g2`` = ``size`` of one group (126).
    """
    groups = set(manifest["group"])
    if not groups <= {1, 2}:
        raise FairalError(f"the baseline compares groups 1 and 2; the manifest has unknown group(s) "
                          f"{sorted(map(str, groups - {1, 2}))}")
    pool = manifest[manifest["split"] == "pool"]
    ids = {g: sorted(pool.loc[pool["group"] == g, "case_id"]) for g in (1, 2)}
    need = {"all": {1: size // 2, 2: size - size // 2}, "g1": {1: size, 2: 0}, "g2": {1: 0, 2: size}}
    rng = np.random.default_rng([seed, 3])
    cohorts = {}
    for name in COHORTS:
        chosen: list[str] = []
        for g, n in need[name].items():
            if n > len(ids[g]):
                raise FairalError(
                    f"cohort {name} needs {n} Group {g} cases for training but the pool has {len(ids[g])} "
                    f"(test cases excluded): lower the cohort size (--set cohort_size=N)"
                )
            chosen += rng.choice(ids[g], size=n, replace=False).tolist() if n else []
        cohorts[name] = sorted(chosen)
    return cohorts


def run_baseline(
    data_dir: str | Path, out: str | Path, profile: Profile, seed: int = 0, progress: bool = True
) -> pd.DataFrame:
    """Train the U-Net on each cohort and evaluate it on the fixed test split; write the records to ``out``.

    Writes ``baseline_cases.csv`` (cohort, case_id, group, dice), ``baseline_table.csv`` (cohort, dice_g1,
    dice_g2, dice_all, essp, delta), ``baseline.json`` (settings, versions, training diagnostics) and the three
    models under ``checkpoints/``. Everything is validated before any file is written, and each file is moved
    into place whole.
    """
    data_dir, out = Path(data_dir), Path(out)
    manifest = read_manifest(data_dir, test_per_group=profile.test_per_group, seed=0)
    cohorts = baseline_cohorts(manifest, profile.cohort_size, seed)
    test_ids = manifest.loc[manifest["split"] == "test", "case_id"].tolist()
    if not test_ids:
        raise FairalError(f"{data_dir}: the test split is empty")
    volumes = load_volumes(data_dir, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)
    test_rows = volumes.rows(test_ids)
    test_groups = volumes.groups[test_rows]
    case_rows, table_rows, diagnostics = [], [], {}
    for name in COHORTS:
        rows = volumes.rows(cohorts[name])
        result = train_model(volumes.images[rows], volumes.labels[rows], train_config(profile, seed),
                             model_factory(profile, volumes, rows), progress=progress)
        dices = evaluate(result.model, volumes, test_rows, profile.batch_size)
        summary = fairness_summary(dices, test_groups)
        table_rows.append({"cohort": name, **{k: summary[k] for k in BASELINE_TABLE_COLUMNS[1:]}})
        case_rows += [{"cohort": name, "case_id": c, "group": g, "dice": d}
                      for c, g, d in zip(test_ids, test_groups, dices, strict=True)]
        diagnostics[name] = {"n_train": len(rows), "train_dice": result.train_dice, "restarts": result.restarts,
                             "collapsed": result.collapsed, "seconds": round(result.seconds, 2),
                             "final_loss": result.losses[-1] if result.losses else None}
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        save_checkpoint(result.model, out / "checkpoints" / f"baseline-{name}.pt",
                        {"cohort": name, "profile": profile.name, "seed": seed})
    table = pd.DataFrame(table_rows, columns=BASELINE_TABLE_COLUMNS)
    write_csv(out / "baseline_cases.csv", pd.DataFrame(case_rows))
    write_csv(out / "baseline_table.csv", table)
    info = {"data_dir": str(data_dir.resolve()), "profile": profile.as_dict(), "seed": seed,
            "cohorts": {k: len(v) for k, v in cohorts.items()}, "n_test": len(test_ids),
            "grid": list(volumes.spatial_shape), "crop_box": volumes.box, "training": diagnostics}
    write_json(out / "baseline.json", info)
    return table


# --- the paper's grid ----------------------------------------------------------------------------------------

DATASETS = {"strong": "strong", "weak": "weak"}  # dataset name -> bias preset


def run_dir(out: Path, dataset: str, init: str, strategy: str, seed: int) -> Path:
    return Path(out) / "runs" / dataset / init / strategy / f"seed-{seed}"


def ensure_dataset(out: Path, name: str, profile: Profile, progress: bool) -> Path:
    """Simulate the dataset with the profile's size, or reuse it if one with the same settings is there."""
    from fairal.simulate.dataset import SimulationConfig, simulate_dataset

    cfg = SimulationConfig(bias=DATASETS[name], n_subjects=profile.n_subjects, shape=profile.sim_shape,
                           test_per_group=profile.test_per_group, seed=0)
    path = Path(out) / "data" / name
    info = path / "dataset.json"
    if info.is_file():
        settings = json.loads(info.read_text()).get("settings", {})
        same = (settings.get("n_subjects") == cfg.n_subjects and settings.get("bias") == cfg.bias
                and list(settings.get("shape", [])) == list(cfg.shape)
                and settings.get("test_per_group", 15) == cfg.test_per_group)
        if same:
            return path
        raise FairalError(f"{path} holds a dataset of other settings than profile {profile.name}'s; "
                          "use another output folder or delete it")
    return simulate_dataset(cfg, path, progress=progress)


def grid(seeds: int) -> list[tuple[str, str, str, int]]:
    from fairal.acquisition import STRATEGIES
    from fairal.loop import INITS

    return [(d, i, s, seed) for d in DATASETS for i in INITS for s in STRATEGIES for seed in range(seeds)]


_QUEUE = None


def _init_grid_worker(threads: int, queue) -> None:
    global _QUEUE
    torch.set_num_threads(threads)
    _QUEUE = queue


def _grid_task(task: dict) -> dict:
    """One unit of the grid in a worker process: a dataset's baselines or one AL run."""
    import warnings

    from fairal.loop import ActiveLearningRun, RunSpec

    warnings.simplefilter("ignore", RuntimeWarning)  # collapse warnings are recorded in state.json
    profile: Profile = task["profile"]

    def tick(_rnd=None):
        if _QUEUE is not None:
            _QUEUE.put(1)

    if task["kind"] == "baseline":
        run_baseline(task["data_dir"], task["out"], profile, seed=0, progress=False)
        tick()
    else:
        spec = RunSpec(task["data_dir"], task["strategy"], task["init"], task["seed"], profile)
        ActiveLearningRun(spec, task["out"]).run(on_round=tick)
    return task


def reproduce(
    out: str | Path, profile: Profile, seeds: int | None = None, jobs: int = 0, progress: bool = True
) -> None:
    """The whole paper experiment on this machine: both datasets, their baselines, and the grid
    2 datasets x 3 initial sets x 4 strategies x seeds, run in a process pool, skipping finished work."""
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fairal.loop import ActiveLearningRun, RunSpec, schedule

    out = Path(out)
    seeds = seeds or profile.seeds
    n_rounds = len(schedule(profile))
    data = {name: ensure_dataset(out, name, profile, progress) for name in DATASETS}
    manifests = {name: read_manifest(path, test_per_group=profile.test_per_group) for name, path in data.items()}
    tasks, done_units = [], 0
    for name, path in data.items():
        # Build the volume cache once here, so that the workers only read it.
        load_volumes(path, manifests[name], crop_margin=profile.crop_margin, downsample=profile.downsample)
        base_out = out / "baseline" / name
        if (base_out / "baseline_table.csv").is_file():
            done_units += 1
        else:
            tasks.append({"kind": "baseline", "data_dir": str(path), "out": str(base_out), "profile": profile})
    for name, init, strategy, seed in grid(seeds):
        target = run_dir(out, name, init, strategy, seed)
        run = ActiveLearningRun(RunSpec(str(data[name]), strategy, init, seed, profile), target,
                                manifest=manifests[name])
        state = target / "state.json"
        if run.is_finished():
            done_units += n_rounds
            continue
        if state.is_file():
            done_units += int(json.loads(state.read_text())["completed_round"]) + 1
        tasks.append({"kind": "run", "data_dir": str(data[name]), "out": str(target), "profile": profile,
                      "init": init, "strategy": strategy, "seed": seed})
    total = len(DATASETS) + len(grid(seeds)) * n_rounds
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, max(len(tasks), 1)))
    threads = max(1, cores // jobs)
    failures = []
    columns = (TextColumn("grid (baselines + rounds)"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        task_id = bar.add_task("grid", total=total, completed=done_units)
        if tasks:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Manager() as manager:
                q = manager.Queue()
                with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_grid_worker,
                                         initargs=(threads, q)) as pool:
                    pending = {pool.submit(_grid_task, t): t for t in tasks}
                    while pending:
                        finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                        while True:
                            try:
                                q.get_nowait()
                                bar.advance(task_id)
                            except queue_mod.Empty:
                                break
                        for fut in finished:
                            t = pending.pop(fut)
                            try:
                                fut.result()
                            except Exception as err:  # one broken run must not stop the grid
                                failures.append((t, err))
    if failures:
        lines = "; ".join(f"{t.get('out')}: {err}" for t, err in failures[:5])
        raise FairalError(f"{len(failures)} of {len(tasks)} grid tasks failed ({lines}); finished runs are kept, "
                          "run the same command again to retry the rest")

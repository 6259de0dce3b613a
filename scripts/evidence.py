"""The experiments behind docs/REPRODUCTION.md, as one resumable job, and their tidy records.

Parts (run in this order of priority, each task resumable, on a process pool):

- ``baselines``: Table 1 (cohorts all / g1 / g2) on the anchored strong and weak datasets, one training per seed
  (the seed draws the cohorts and the training);
- ``seeds``: the paper's 24 active-learning runs (2 datasets x 3 initial sets x 4 strategies) per seed;
- ``ablations``: entropy and localized entropy on the strong dataset under single changes of the ``standard``
  profile (whole volume instead of the crop, ROI dilation 1 / 5, 1 mm instead of 2 mm, cold-started rounds);
- ``extras``: the strategies beyond the paper of the ``standard`` grid, per seed;
- ``sweep``: the bias scale at 0.5x / 2x of the anchored unit: datasets and Table 1 per seed.

Tasks run seed by seed (a seed's baselines, then its runs), so that whole seeds finish first.

The datasets are the grid's (:data:`fairal.grid.datasets.DATASETS`: independent subject seeds) with the profile's
evaluation split. The job refuses to start while ``docs/analysis-plan.md`` has uncommitted changes (the plan is
fixed before the records it judges exist); the plan's commit and git blob hash are recorded in
``OUT/analysis_plan.json`` and in the exported ``settings.json`` (``analysis_plan``).

``--deadline S`` stops starting tasks after S seconds and stops the running ones at S + ``--grace``; what finished
is kept (a run stopped halfway resumes after its last complete round when started again). ``--export DIR`` writes
the tidy tables of what finished (``DIR/NAME`` with ``--name``, default ``standard``; ``DIR/ablations``,
``DIR/sweep``)::

    python scripts/evidence.py evidence-v2 --parts baselines,seeds --seeds 10 --baseline-seeds 10 --jobs 2
    python scripts/evidence.py evidence-v2 --export docs/results --name v2 --seeds 10 --whole-seeds
    python scripts/evidence.py evidence --parts sweep --scales 0.5,2 --baseline-seeds 3 --jobs 2

A job folder lives on one machine. With ``--whole-seeds`` the export also writes the finished tasks of the seeds
not yet whole to ``DIR/NAME-pending.tar.gz`` (their records, no checkpoints: ``scripts/task_archive.py``); on a new
machine, ``--restore`` puts them into the new job folder before the job starts with ``--first-seed``, and the job
finds them finished::

    python scripts/evidence.py evidence-v2 --restore docs/results/v2-pending.tar.gz
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_records import dataset_cases  # noqa: E402
from task_archive import archived_tasks, finished_tasks, restore_tasks, save_tasks, seed_of  # noqa: E402

from fairal.records import INITS, ROUND_CASE_KEYS, RUN_KEYS, TEST  # noqa: E402

DATASETS = ("strong", "weak")
#: Single changes of the standard profile, for entropy and localized entropy on the strong dataset. The ROI
#: dilation only changes localized entropy (entropy does not use the ROI).
ABLATIONS = {
    "whole-volume": ({"crop_margin": "none"}, ("entropy", "localized-entropy")),
    "dilation-1": ({"roi_dilation": "1"}, ("localized-entropy",)),
    "dilation-5": ({"roi_dilation": "5"}, ("localized-entropy",)),
    "1mm": ({"downsample": "1"}, ("entropy", "localized-entropy")),
    "cold-start": ({"warm_start": "false", "steps": "300"}, ("entropy", "localized-entropy")),
}


def _data(out: Path, scale: float) -> Path:
    return out / "data" if scale == 1 else out / "sweep" / f"x{scale:g}" / "data"


def ensure_dataset(out: Path, name: str, scale: float, jobs: int, profile: str) -> Path:
    """The anchored dataset ``name`` (the grid's bias and subject seed) with the local PC1 scaled by ``scale``, of
    the profile's size and evaluation split; simulated once."""
    from fairal.config import get_profile
    from fairal.grid.datasets import DATASETS as GRID_DATASETS
    from fairal.simulate.dataset import SimulationConfig, simulate_dataset
    from fairal.simulate.deformation import DEFAULT_LOCAL_SD_MM

    path = _data(out, scale) / name
    if not (path / "manifest.csv").is_file():
        p = get_profile(profile)
        bias, seed = GRID_DATASETS[name]
        cfg = SimulationConfig(bias=bias, seed=seed, local_sd_mm=DEFAULT_LOCAL_SD_MM * scale, jobs=jobs,
                               n_subjects=p.n_subjects, shape=p.sim_shape, test_per_group=p.test_per_group,
                               eval_per_group=p.eval_per_group)
        simulate_dataset(cfg, path, progress=False)
    return path


PLAN = Path(__file__).resolve().parents[1] / "docs" / "analysis-plan.md"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=PLAN.parents[1])
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def analysis_plan() -> dict:
    """The committed analysis plan: its path, the commit that last changed it and its git blob hash. Refuses a
    plan that is missing, not committed or changed since its commit."""
    rel = PLAN.relative_to(PLAN.parents[1]).as_posix()
    if not PLAN.is_file():
        raise SystemExit(f"no analysis plan at {rel}: commit the plan before the records it judges exist")
    if _git("status", "--porcelain", "--", rel):
        raise SystemExit(f"{rel} has uncommitted changes: commit the plan before the records it judges exist")
    commit = _git("log", "-1", "--format=%H", "--", rel)
    if not commit:
        raise SystemExit(f"{rel} is not committed: commit the plan before the records it judges exist")
    return {"path": rel, "commit": commit, "blob": _git("hash-object", rel)}


def tasks(out: Path, parts: list[str], seeds: int, baseline_seeds: int, ablation_seeds: int, scales: list[float],
          ablation_inits: list[str], profile: str = "standard", ablations: list[str] | None = None,
          first_seed: int = 0) -> list[dict]:
    """Every task of ``parts``, for the seeds ``first_seed`` .. ``seeds - 1`` (baselines: .. ``baseline_seeds - 1``;
    a later session continues a job whose earlier seeds are already exported)."""
    from fairal.config import PAPER_STRATEGIES, STANDARD_EXTRAS

    todo = []
    for part in parts:
        if part == "baselines":
            todo += [{"kind": "baseline", "data": str(_data(out, 1) / d), "seed": s, "profile": profile,
                      "out": str(out / "baseline" / d / f"seed-{s}")}
                     for s in range(first_seed, baseline_seeds) for d in DATASETS]
        elif part in ("seeds", "extras"):
            strategies = PAPER_STRATEGIES if part == "seeds" else STANDARD_EXTRAS
            todo += [{"kind": "run", "data": str(_data(out, 1) / d), "init": i, "strategy": st, "seed": s,
                      "overrides": {}, "profile": profile, "out": str(out / "runs" / d / i / st / f"seed-{s}")}
                     for s in range(first_seed, seeds) for d in DATASETS for i in INITS for st in strategies]
        elif part == "ablations":
            for s in range(ablation_seeds):
                for variant, (overrides, strategies) in ABLATIONS.items():
                    if ablations and variant not in ablations:
                        continue
                    todo += [{"kind": "run", "data": str(_data(out, 1) / "strong"), "init": i, "strategy": st,
                              "seed": s, "overrides": overrides, "profile": profile,
                              "out": str(out / "ablations" / variant / "runs" / "strong" / i / st / f"seed-{s}")}
                             for i in ablation_inits for st in strategies]
        elif part == "sweep":
            todo += [{"kind": "baseline", "data": str(_data(out, sc) / d), "seed": s, "profile": profile,
                      "out": str(_data(out, sc).parent / "baseline" / d / f"seed-{s}")}
                     for s in range(baseline_seeds) for sc in scales for d in DATASETS]
        else:
            raise SystemExit(f"unknown part {part!r}")
    todo.sort(key=lambda t: t["seed"])  # stable: seed by seed, parts in their order within a seed
    return todo


def _init_worker(threads: int, parent: int) -> None:
    import torch

    from fairal.grid.executors import die_with_parent

    torch.set_num_threads(threads)
    die_with_parent(parent)
    # Deterministic convolution algorithms on a GPU: the same seed gives the same records there too.
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def run_task(task: dict) -> dict:
    import warnings

    from fairal.config import get_profile
    from fairal.grid.baselines import run_baseline
    from fairal.run.loop import ActiveLearningRun, RunSpec

    warnings.simplefilter("ignore", RuntimeWarning)
    start = time.perf_counter()
    if task["kind"] == "baseline":
        if not (Path(task["out"]) / "baseline_table.csv").is_file():
            run_baseline(task["data"], task["out"], get_profile(task["profile"]), seed=task["seed"], progress=False)
    else:
        profile = get_profile(task["profile"], task["overrides"])
        spec = RunSpec(task["data"], task["strategy"], task["init"], task["seed"], profile)
        ActiveLearningRun(spec, task["out"]).run()
    return {**task, "seconds": round(time.perf_counter() - start, 1)}


def execute(todo: list[dict], jobs: int, deadline: float | None, grace: float, log, threads: int | None = None) -> None:
    import multiprocessing

    t0 = time.monotonic()
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    queue = list(todo)
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads, os.getpid()))
    running: dict = {}
    try:
        while queue or running:
            late = deadline is not None and time.monotonic() - t0 > deadline
            while queue and len(running) < jobs and not late:
                t = queue.pop(0)
                running[pool.submit(run_task, t)] = t
            if not running:
                break
            done, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
            for fut in done:
                t = running.pop(fut)
                try:
                    r = fut.result()
                    log(f"{time.monotonic() - t0:7.1f}s done {r['seconds']:6.1f}s {t['out']}")
                except Exception as err:  # one broken task must not stop the others
                    log(f"{time.monotonic() - t0:7.1f}s FAILED {t['out']}: {err!r}")
            if deadline is not None and time.monotonic() - t0 > deadline + grace:
                log(f"deadline: stopping {len(running)} running and {len(queue)} queued tasks")
                break
    finally:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def _planned_seeds(out: Path) -> int | None:
    """The number of seeds the job was started for (``--seeds``), which the report waits for before any claim."""
    started = out / "job.json"
    return json.loads(started.read_text()).get("seeds") if started.is_file() else None


def _run_commit(out: Path) -> str:
    """The commit the job ran at (recorded when it started), else this checkout's."""
    started = out / "job.json"
    if started.is_file():
        return json.loads(started.read_text()).get("commit", "")
    return _git("rev-parse", "HEAD")


def _round_cases(out: Path, rounds: pd.DataFrame) -> pd.DataFrame:
    """The per-case test Dice of every round of the runs in ``rounds`` (read from their run folders)."""

    frames = []
    for key in rounds[RUN_KEYS].drop_duplicates().itertuples(index=False, name=None):
        dataset, init, strategy, seed = key
        c = pd.read_csv(out / "runs" / dataset / init / strategy / f"seed-{seed}" / "cases.csv")
        c = c[c["split"] == TEST]
        frames.append(c.assign(**dict(zip(RUN_KEYS, key, strict=True)))[ROUND_CASE_KEYS])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ROUND_CASE_KEYS)


def _cases_file(folder: Path) -> Path:
    """The exported final per-case table: ``cases.csv.gz``, or the plain ``cases.csv`` of an earlier export."""
    return folder / "cases.csv.gz" if (folder / "cases.csv.gz").is_file() else folder / "cases.csv"


def _merge(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """The table at ``path`` (if any) without the seeds of ``new``, then ``new``: a seed is exported whole, once."""
    if not path.is_file() or not len(new):
        return new if len(new) or not path.is_file() else pd.read_csv(path)
    old = pd.read_csv(path)  # (pandas reads back the values it wrote to the last bit)
    return pd.concat([old[~old["seed"].isin(set(new["seed"]))], new], ignore_index=True).sort_values(
        "seed", kind="stable")


def _whole_seeds(rounds: pd.DataFrame, base: pd.DataFrame, seeds: int) -> list[int]:
    """The seeds below ``seeds`` whose every run (the paper's grid) and baseline finished."""
    from fairal.config import PAPER_STRATEGIES

    whole = []
    for s in range(seeds):
        runs = rounds[(rounds["seed"] == s) & rounds["strategy"].isin(PAPER_STRATEGIES)]
        n_runs = len(runs.drop_duplicates(["dataset", "init", "strategy"]))
        n_base = len(base[base["seed"] == s].drop_duplicates(["dataset"])) if len(base) else 0
        if n_runs == len(DATASETS) * len(INITS) * len(PAPER_STRATEGIES) and n_base == len(DATASETS):
            whole.append(s)
    return whole


def _baselines(root: Path, scale: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    tables, cases = [], []
    for table in sorted(root.glob("baseline/*/seed-*/baseline_table.csv")):
        key = {"scale": scale, "dataset": table.parent.parent.name, "seed": int(table.parent.name.split("-")[1])}
        t = pd.read_csv(table)
        tables.append(t.assign(**key)[[*key, *t.columns]])
        c = pd.read_csv(table.parent / "baseline_cases.csv")
        cases.append(c.assign(**key)[[*key, *c.columns]])
    empty = pd.DataFrame()
    return (pd.concat(tables, ignore_index=True) if tables else empty,
            pd.concat(cases, ignore_index=True) if cases else empty)


def _volumes(data: Path, scale: float) -> pd.DataFrame:
    frames = []
    for d in DATASETS:
        m = data / d / "manifest.csv"
        if m.is_file():
            t = pd.read_csv(m)[["case_id", "group", "bias_scale", "split", "label_volume_mm3", "dice_to_template"]]
            frames.append(t.assign(scale=scale, dataset=d)[["scale", "dataset", *t.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


#: A finished task in ``evidence.log``: the job's clock, the task's own seconds, its folder.
DONE = re.compile(r"^\s*(?P<clock>[\d.]+)s done\s+(?P<seconds>[\d.]+)s (?P<task>\S+)\s*$")


def task_times(out: Path) -> pd.DataFrame:
    """Each task's seconds as ``OUT/evidence.log`` has them, per session of the job (a session starts at each
    ``N tasks`` line): ``session, task, seconds`` with the task's folder relative to ``out``. A task that a session
    found finished takes ~0.1 s; a task resumed after an interrupted session counts only its resumed part (the
    work lost when a session ended is not in the log). With one torch thread per task, seconds are core-seconds."""
    rows, session = [], 0
    log = out / "evidence.log"
    for line in log.read_text().splitlines() if log.is_file() else []:
        if line.strip().endswith(" tasks"):
            session += 1
        elif (m := DONE.match(line)) is not None:
            task = Path(m["task"])
            rows.append({"session": session, "task": str(task.relative_to(out) if task.is_absolute() and
                                                         task.is_relative_to(out) else task),
                         "seconds": float(m["seconds"])})
    return pd.DataFrame(rows, columns=["session", "task", "seconds"])


def _check_restorable(archive: Path, out: Path) -> None:
    """A run names its data by the job folder's absolute path, so its folder restored into a job folder elsewhere
    would be taken for a run of other settings: refused before anything is restored, naming the path to use."""
    import tarfile

    if not archive.is_file():
        raise SystemExit(f"{archive}: no such archive")
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith("runs/") and m.name.endswith("/config.json"):
                data = Path(json.loads(tar.extractfile(m).read())["settings"]["data_dir"])
                if not data.is_relative_to(out.resolve()):
                    raise SystemExit(f"{archive}: its runs used the data at {data}: the job folder must be "
                                     f"{data.parents[1]} (the path the runs record), not {out}")


def _pending_folders(out: Path, whole: list[int], seeds: int) -> list[Path]:
    """The finished runs and baselines under ``out`` of the seeds below ``seeds`` that are not whole yet."""
    return [f for f in finished_tasks(out) if seed_of(f) is not None and seed_of(f) < seeds and
            seed_of(f) not in whole]


def _merge_task_times(out: Path, path: Path, times: pd.DataFrame) -> pd.DataFrame:
    """``times`` (this job folder's log) after the sessions that ``path`` holds from earlier job folders (a job
    restarted on another machine has a new log): the first export from a folder into ``path`` records how many
    sessions came before it (``OUT/export.json``: ``session_offset``, per destination), so that exporting again
    replaces this folder's own rows."""
    old = pd.read_csv(path) if path.is_file() else times.iloc[:0]
    record = out / "export.json"
    info = json.loads(record.read_text()) if record.is_file() else {}
    offsets = info.get("session_offset", {})
    key = str(path.resolve())
    if key not in offsets:
        offsets[key] = int(old["session"].max()) if len(old) else 0
        record.write_text(json.dumps({**info, "session_offset": offsets}, indent=2) + "\n")
    earlier = old[old["session"] <= offsets[key]]
    return pd.concat([earlier, times.assign(session=times["session"] + offsets[key])], ignore_index=True)


def _recorded(out: Path, rounds: pd.DataFrame, folder: Path) -> dict:
    """What the exported runs recorded (every ``config.json`` of the runs in ``rounds``): their one profile and
    versions, checked against the seeds exported before (``folder/settings.json``: seeds merged into one table were
    made with the same profile and versions), and their devices; the earlier export's where no run is exported."""
    before = json.loads((folder / "settings.json").read_text()) if (folder / "settings.json").is_file() else {}
    configs = [json.loads((out / "runs" / d / i / st / f"seed-{s}" / "config.json").read_text())
               for d, i, st, s in rounds[["dataset", "init", "strategy", "seed"]].drop_duplicates().itertuples(
                   index=False, name=None)]
    if not configs:
        return {"versions": before.get("versions"), "device": before.get("device"),
                "settings": before.get("run_settings")}
    then = {"versions": before.get("versions"), "profile": (before.get("run_settings") or {}).get("profile")}
    for c in configs:
        now = {"versions": c.get("versions"), "profile": (c.get("settings") or {}).get("profile")}
        differ = [k for k in now if (then[k] is not None and now[k] != then[k])]
        if differ:
            raise SystemExit(f"the runs of this job folder differ from the seeds exported in {folder} in "
                             f"{', '.join(differ)}: {', '.join(f'{now[k]} (before: {then[k]})' for k in differ)}; "
                             "nothing was written")
        then = {k: then[k] if then[k] is not None else now[k] for k in then}
    devices = sorted({str(d) for d in (before.get("device"), *(c.get("device") for c in configs)) if d})
    return {**configs[0], "device": " / ".join(devices) if devices else None}


def _pending(out: Path, path: Path, whole: list[int], seeds: int) -> list[Path]:
    """The finished tasks of the seeds still running (:func:`_pending_folders`), refused where ``path`` (the
    archive of an earlier session) holds one of them that this folder lacks: restore it first (``--restore``)."""
    folders = _pending_folders(out, whole, seeds)
    if path.is_file():
        have = {f.relative_to(out).as_posix() for f in folders}
        lost = [t for t in archived_tasks(path) if t not in have and (seed_of(Path(t)) or 0) not in whole]
        if lost:
            raise SystemExit(f"{path} holds finished tasks this job folder lacks ({', '.join(lost[:3])}"
                             f"{', ...' if len(lost) > 3 else ''}): restore them first (--restore {path}); "
                             "nothing was written")
    return folders


def export(out: Path, dest: Path, scales: list[float], profile: str = "standard", name: str = "standard",
           seeds: int | None = None) -> None:
    """The tidy tables of what finished under ``out`` (with ``seeds``, only the runs and baselines of whole
    seeds: every run and baseline of the seed finished, merged with the seeds exported before; the finished tasks
    of the others go to ``DEST/NAME-pending.tar.gz``). Everything is checked before anything is written."""
    from fairal import versions
    from fairal.report.tidy import tidy_records

    std = dest / name
    rounds, cases = tidy_records(out)
    base, base_cases = _baselines(out, 1.0)
    gz = {"method": "gzip", "mtime": 0}  # the same bytes for the same table
    if seeds is not None:
        whole = _whole_seeds(rounds, base, seeds)
        rounds, cases = rounds[rounds["seed"].isin(whole)], cases[cases["seed"].isin(whole)]
        base, base_cases = (t[t["seed"].isin(whole)] if len(t) else t for t in (base, base_cases))
    recorded = _recorded(out, rounds, std)  # checked before any write
    pending = _pending(out, dest / f"{name}-pending.tar.gz", whole, seeds) if seeds is not None else []
    std.mkdir(parents=True, exist_ok=True)
    if seeds is not None:
        # Every round's per-case test Dice (the two-level bootstrap of the ESSP AUC on the test split needs them).
        test_rounds = _merge(std / "test_cases.csv.gz", _round_cases(out, rounds))
        test_rounds.to_csv(std / "test_cases.csv.gz", index=False, float_format="%.6g", compression=gz)
        # seeds exported before (by an earlier session's job) are kept
        rounds, cases = _merge(std / "rounds.csv", rounds), _merge(_cases_file(std), cases)
        base, base_cases = _merge(std / "baselines.csv", base), _merge(std / "baseline_cases.csv", base_cases)
        # the finished tasks of a seed still running, for the next machine's job (--restore)
        save_tasks(out, dest / f"{name}-pending.tar.gz", pending)
    rounds = rounds.sort_values([*RUN_KEYS, "round"]) if "round" in rounds.columns else rounds
    rounds.to_csv(std / "rounds.csv", index=False)
    cases.to_csv(std / "cases.csv.gz", index=False, compression=gz)  # the final per-case Dice (~6 MB plain)
    if (std / "cases.csv").is_file():  # an earlier export's plain copy of the same table
        (std / "cases.csv").unlink()
    base.drop(columns="scale", errors="ignore").to_csv(std / "baselines.csv", index=False)
    base_cases.drop(columns="scale", errors="ignore").to_csv(std / "baseline_cases.csv", index=False)
    data = dataset_cases({d: _data(out, 1.0) / d for d in DATASETS})
    if len(data):  # the cases the runs were measured on (a study may take these records as its arms)
        data.to_csv(std / "datasets.csv", index=False)
    plan = out / "analysis_plan.json"
    info = {"profile": profile, "commit": _run_commit(out), "versions": recorded.get("versions") or versions(),
            "analysis_plan": json.loads(plan.read_text()) if plan.is_file() else None,
            "seeds": sorted(int(v) for v in set(rounds["seed"])) if len(rounds) else [],
            "planned_seeds": _planned_seeds(out),
            "device": recorded.get("device"), "run_settings": recorded.get("settings")}
    (std / "settings.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    times = _merge_task_times(out, std / "tasks.csv", task_times(out))
    if len(times):  # the compute the records cost, as the job's logs have it
        times.to_csv(std / "tasks.csv", index=False)
    if name != "standard":  # a named export (v2) holds its own grid only; ablations and sweep are v1's
        return
    abl_rounds, abl_cases = [], []
    for variant in ABLATIONS:
        r, c = tidy_records(out / "ablations" / variant)
        if len(r):
            abl_rounds.append(r.assign(variant=variant))
            abl_cases.append(c.assign(variant=variant))
    if abl_rounds:
        (dest / "ablations").mkdir(parents=True, exist_ok=True)
        pd.concat(abl_rounds).to_csv(dest / "ablations" / "rounds.csv", index=False)
        pd.concat(abl_cases).to_csv(dest / "ablations" / "cases.csv", index=False)
    sweep_tables, sweep_cases, vols = [], [], []
    for scale in sorted({1.0, *scales}):
        root = out if scale == 1 else out / "sweep" / f"x{scale:g}"
        t, c = _baselines(root, scale)
        sweep_tables.append(t)
        sweep_cases.append(c)
        vols.append(_volumes(_data(out, scale), scale))
    if any(len(t) for t in sweep_tables) or any(len(v) for v in vols):
        (dest / "sweep").mkdir(parents=True, exist_ok=True)
        pd.concat(sweep_tables).to_csv(dest / "sweep" / "baselines.csv", index=False)
        pd.concat(sweep_cases).to_csv(dest / "sweep" / "baseline_cases.csv", index=False)
        pd.concat(vols).to_csv(dest / "sweep" / "volumes.csv", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--parts", default="")
    ap.add_argument("--profile", default="standard")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--baseline-seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="run seeds from this one on (the earlier ones are exported already)")
    ap.add_argument("--ablation-seeds", type=int, default=3)
    ap.add_argument("--ablation-inits", default="balanced")
    ap.add_argument("--ablations", default="", help=f"variants to run (default all): {', '.join(ABLATIONS)}")
    ap.add_argument("--scales", default="0.5,2")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / jobs)")
    ap.add_argument("--deadline", type=float, default=None)
    ap.add_argument("--grace", type=float, default=60.0)
    ap.add_argument("--export", type=Path, default=None)
    ap.add_argument("--name", default="standard", help="the exported folder's name under --export")
    ap.add_argument("--whole-seeds", action="store_true",
                    help="export only seeds whose runs and baselines all finished (of --seeds); the finished tasks "
                         "of the others go to DIR/NAME-pending.tar.gz")
    ap.add_argument("--restore", type=Path, default=None,
                    help="first put the task folders of this NAME-pending.tar.gz into OUT (those OUT lacks)")
    args = ap.parse_args()
    scales = [float(s) for s in args.scales.split(",") if s]
    parts = [p for p in args.parts.split(",") if p]
    ablations = [a for a in args.ablations.split(",") if a]
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise SystemExit(f"unknown ablations {', '.join(unknown)}; ablations: {', '.join(ABLATIONS)}")
    if args.restore is not None:  # checked before the job folder is made
        _check_restorable(args.restore, args.out)
    log_file = (args.out / "evidence.log")
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(log_file, "a") as f:
            f.write(msg + "\n")

    if args.restore is not None:
        restored, kept = restore_tasks(args.restore, args.out)
        log(f"restored {len(restored)} finished task folders from {args.restore}"
            + (f"; kept {len(kept)} this folder had: {', '.join(kept)}" if kept else ""))
    if parts:
        if parts != ["sweep"]:  # records judged by the analysis plan: the plan must be committed first
            plan, recorded = analysis_plan(), args.out / "analysis_plan.json"
            if recorded.is_file() and json.loads(recorded.read_text()) != plan:
                raise SystemExit(f"{recorded} records another analysis plan than {plan['path']} at "
                                 f"{plan['commit'][:10]}: the plan changed after the job started")
            recorded.write_text(json.dumps(plan, indent=2) + "\n")
            log(f"analysis plan {plan['path']} at {plan['commit'][:10]} (blob {plan['blob'][:10]})")
        job = args.out / "job.json"
        if not job.is_file():
            job.write_text(json.dumps({"commit": _git("rev-parse", "HEAD"), "parts": parts, "seeds": args.seeds,
                                       "baseline_seeds": args.baseline_seeds}, indent=2) + "\n")
        t0 = time.monotonic()
        for d in DATASETS:
            for scale in ([1.0] if parts != ["sweep"] else []) + (scales if "sweep" in parts else []):
                ensure_dataset(args.out, d, scale, jobs=0, profile=args.profile)
                log(f"{time.monotonic() - t0:7.1f}s dataset {d} x{scale:g}")
        todo = tasks(args.out, parts, args.seeds, args.baseline_seeds, args.ablation_seeds, scales,
                     [i for i in args.ablation_inits.split(",") if i], args.profile, ablations, args.first_seed)
        log(f"{len(todo)} tasks")
        deadline = None if args.deadline is None else max(args.deadline - (time.monotonic() - t0), 0.0)
        execute(todo, args.jobs, deadline, args.grace, log, args.threads)
    if args.export is not None:
        export(args.out, args.export, scales, args.profile, args.name, args.seeds if args.whole_seeds else None)
        log(f"tidy tables in {args.export}")


if __name__ == "__main__":
    sys.exit(main())

"""The grid per run and in lockstep (``fairal reproduce --pack off / on``): wall time of each, and how far apart
their records are.

    python benchmarks/bench_lockstep.py /tmp/lockstep                        # smoke profile, fp32, this machine
    python benchmarks/bench_lockstep.py /tmp/lockstep --profile quick --set device=cuda

Simulates the profile's datasets once (``OUT/per-run/data``, copied to ``OUT/lockstep``; a new OUT each time),
runs the grid per run (``--jobs`` processes) and in lockstep (one task per dataset and seed, ``--lockstep-jobs``
processes), then compares every run's records with :func:`fairal.report.tidy.compare_runs`: how many runs
selected the same cases in the same rounds, and the largest difference of any number per record file.
``bf16=off`` unless ``--set bf16=...``: bf16 would make both sides differ by bf16 rounding, not summation order.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd

from fairal.config import get_profile, parse_overrides
from fairal.grid.datasets import ensure_dataset
from fairal.grid.driver import reproduce
from fairal.report.tidy import compare_runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="profile setting KEY=VALUE")
    ap.add_argument("--jobs", type=int, default=0, help="processes of the per-run grid (0: one per core)")
    ap.add_argument("--lockstep-jobs", type=int, default=0, help="processes of the lockstep grid (0: one)")
    args = ap.parse_args()
    profile = get_profile(args.profile, {"bf16": "off", **parse_overrides(args.set_)})
    single, packed = args.out / "per-run", args.out / "lockstep"
    for folder in (single, packed):
        if (folder / "runs").exists():
            raise SystemExit(f"{folder} holds runs already: the timings need a fresh folder (another OUT)")
    for name in ("strong", "weak"):
        ensure_dataset(single, name, profile, progress=False)
    if not packed.exists():
        shutil.copytree(single / "data", packed / "data")
    times = {}
    ways = (("per run", single, "off", args.jobs), ("lockstep", packed, "on", args.lockstep_jobs))
    for label, out, pack, jobs in ways:
        start = time.perf_counter()
        reproduce(out, profile, jobs=jobs, progress=False, pack=pack)
        times[label] = time.perf_counter() - start
        print(f"{label:9s} grid: {times[label]:7.1f} s", flush=True)
    tables = []
    for run in sorted(p.parent for p in single.glob("runs/*/*/*/seed-*/rounds.csv")):
        tables.append(compare_runs(run, packed / run.relative_to(single)).assign(run=str(run.relative_to(single))))
    table = pd.concat(tables, ignore_index=True)
    runs = table.groupby("run")["same_rows"].all()
    print(f"lockstep / per run wall time: {times['lockstep'] / times['per run']:.2f}x "
          f"(profile {profile.name}, {len(runs)} runs, device {profile.device})")
    print(f"runs with the same cases selected in the same rounds: {int(runs.sum())} of {len(runs)}")
    print(table.groupby("file")["max_abs_diff"].max().rename("largest difference of any number").to_string())
    final = pd.DataFrame([(pd.read_csv(single / run / "rounds.csv").iloc[-1]
                           - pd.read_csv(packed / run / "rounds.csv").iloc[-1])[["dice_all", "essp", "delta"]].abs()
                          for run in runs.index])
    print("final round, |per run - lockstep| over the runs: "
          + ", ".join(f"{k} mean {final[k].mean():.4f} max {final[k].max():.4f}" for k in final))


if __name__ == "__main__":
    main()

"""Throughput of the local grid executor: how many worker processes and threads per worker pay on this machine.

Run on demand: ``python benchmarks/bench_grid.py [--profile smoke] [--runs 4]``. Simulates (or reuses) the profile's
strong dataset in a temporary folder, then runs the same ``--runs`` AL runs three ways, timing each in the same run:
one process with all cores' threads, one process per core with one thread each, and one process per core with
two threads each (oversubscribed). Prints wall time, runs per minute and the ratio to the first layout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fairal.config import get_profile
from fairal.data.volumes import load_volumes, read_manifest
from fairal.grid.datasets import ensure_dataset


def _one(args) -> float:
    import torch

    from fairal.run.loop import ActiveLearningRun, RunSpec

    data, out, strategy, init, seed, profile, threads = args
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ActiveLearningRun(RunSpec(data, strategy, init, seed, profile), out).run()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    profile = get_profile(args.profile)
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="fairal-grid-bench-"))
    try:
        data = ensure_dataset(work, "strong", profile, progress=False)
        load_volumes(data, read_manifest(data), crop_margin=profile.crop_margin, downsample=profile.downsample)
        strategies = ["random", "entropy", "localized-entropy", "weighted-localized-entropy"]
        layouts = [(1, cores), (cores, 1), (cores, 2)]
        base = None
        print(f"profile {profile.name}, {args.runs} AL runs, {cores} cores")
        for jobs, threads in layouts:
            tasks = [(str(data), str(work / f"{jobs}x{threads}" / str(i)), strategies[i % 4], "balanced", i // 4,
                      profile, threads) for i in range(args.runs)]
            ctx = multiprocessing.get_context("spawn")
            t0 = time.perf_counter()
            with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                list(pool.map(_one, tasks))
            wall = time.perf_counter() - t0
            base = base or wall
            print(f"{jobs} worker(s) x {threads} thread(s): {wall:6.1f} s, {60 * args.runs / wall:5.2f} runs/min, "
                  f"speed-up {base / wall:.2f}x against 1 x {cores}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

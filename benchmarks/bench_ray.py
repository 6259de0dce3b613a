"""Grid wall time, local executor against Ray, on this machine, and Ray's overhead per run.

Run on demand: ``python benchmarks/bench_ray.py [--profile smoke]``. Simulates the profile's two datasets once in a
temporary folder, then runs the same grid (baselines and 24 AL runs, one seed) with ``--executor local`` and with
``--executor ray`` (a local Ray with one CPU per task), timing each in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from fairal.config import get_profile
from fairal.grid.datasets import DATASETS, ensure_dataset
from fairal.grid.driver import grid, reproduce


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="smoke")
    args = ap.parse_args()
    profile = get_profile(args.profile)
    work = Path(tempfile.mkdtemp(prefix="fairal-ray-bench-"))
    try:
        for name in DATASETS:
            ensure_dataset(work / "local", name, profile, progress=False)
        shutil.copytree(work / "local" / "data", work / "ray" / "data")
        times = {}
        for executor in ("local", "ray"):
            t0 = time.perf_counter()
            reproduce(work / executor, profile, progress=False, executor=executor)
            times[executor] = time.perf_counter() - t0
        n_runs = len(grid(profile.seeds, profile.strategies))
        print(f"profile {profile.name}: {n_runs} AL runs + {len(DATASETS)} baseline tasks (datasets made beforehand)")
        print(f"local executor: {times['local']:.1f} s; Ray (local, 1 CPU per task): {times['ray']:.1f} s; "
              f"ratio {times['ray'] / times['local']:.2f}x")
        print(f"Ray overhead per task (start-up included): {(times['ray'] - times['local']) / (n_runs + 2):+.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

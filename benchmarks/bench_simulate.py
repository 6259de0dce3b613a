"""Time and peak memory of `fairal simulate` at the paper's size (312 subjects, 170x170x76 at 1 mm).

Run on demand: ``python benchmarks/bench_simulate.py [--n-subjects 312] [--jobs 0] [--bias strong] [--keep DIR]``.
Prints the wall time (target on a 2-core laptop: at most 120 s, files included), the time per subject, the peak
resident memory of the driver and of the largest worker, and the output size. As a reference measured in the
same run, it also times a few subjects in one process, so the parallel speed-up is reported as a ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from fairal.simulate.dataset import SimulationConfig, simulate_dataset


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-subjects", type=int, default=312)
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--bias", default="strong")
    ap.add_argument("--reference-subjects", type=int, default=8, help="subjects timed in a single process")
    ap.add_argument("--keep", type=Path, default=None, help="keep the dataset in this folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fairal-bench-"))
    try:
        ref_n = args.reference_subjects
        t0 = time.perf_counter()
        simulate_dataset(SimulationConfig(bias=args.bias, n_subjects=ref_n, jobs=1, preview=False), work / "ref",
                         progress=False)
        ref_s = (time.perf_counter() - t0) / ref_n

        out = args.keep or work / "data"
        t0 = time.perf_counter()
        simulate_dataset(SimulationConfig(bias=args.bias, n_subjects=args.n_subjects, jobs=args.jobs), out,
                         overwrite=True, progress=True)
        wall = time.perf_counter() - t0
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"cores: {os.cpu_count()}, subjects: {args.n_subjects}, bias: {args.bias}")
        print(f"wall time, everything (models, {args.n_subjects} subjects, files, preview): {wall:.1f} s "
              f"(target <= 120 s on 2 cores)")
        print(f"per subject: {wall / args.n_subjects:.3f} s; one process, same run, {ref_n} subjects "
              f"incl. set-up: {ref_s:.3f} s/subject; speed-up {ref_s * args.n_subjects / wall:.2f}x")
        print(f"peak resident memory: driver {own:.0f} MiB, largest worker {child:.0f} MiB")
        print(f"output: {_du(out) / 2**20:.0f} MiB in {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

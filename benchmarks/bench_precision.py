"""Does bfloat16 autocast keep the results? Table 1's trainings in bf16 and in fp32 on the same seeds, paired.

    python benchmarks/bench_precision.py /tmp/precision                    # the quick profile, 3 seeds
    python benchmarks/bench_precision.py /tmp/precision --seeds 5 --set device=cuda

Simulates the profile's strong-bias dataset into ``OUT/data`` (once), trains the three baseline cohorts (balanced,
Group 1 only, Group 2 only) per seed with ``bf16=off`` and ``bf16=on`` (``fairal.grid.baselines.run_baseline``: the
same cohorts, initial weights and batches; only the precision differs) and prints, per metric, the mean paired
difference bf16 - fp32 with its 95% t interval over the cohort x seed pairs, the largest difference, and the
spread between seeds of the fp32 results for scale. bf16 keeps the results when the interval holds 0 and the
differences are small against the seeds' spread. Resumable: finished trainings are read back.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fairal.config import get_profile, parse_overrides
from fairal.grid.baselines import run_baseline
from fairal.grid.datasets import ensure_dataset
from fairal.run.train import describe_device
from fairal.stats import paired

METRICS = ("dice_all", "dice_g1", "dice_g2", "essp", "delta")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", dest="set_", action="append", default=[], help="profile setting KEY=VALUE")
    args = ap.parse_args()
    base = get_profile(args.profile, parse_overrides(args.set_))
    start = time.perf_counter()
    data = ensure_dataset(args.out, "strong", base, progress=False)
    print(f"profile {base.name}, device {describe_device(base.device)}, {args.seeds} seeds; dataset {data} "
          f"({time.perf_counter() - start:.0f} s)")
    tables = {}
    for precision in ("off", "on"):
        profile = get_profile(args.profile, {**parse_overrides(args.set_), "bf16": precision})
        rows = []
        for seed in range(args.seeds):
            folder = args.out / f"bf16-{precision}" / f"seed-{seed}"
            if not (folder / "baseline_table.csv").is_file():
                t = time.perf_counter()
                run_baseline(data, folder, profile, seed=seed, progress=False)
                print(f"  bf16={precision} seed {seed}: 3 trainings in {time.perf_counter() - t:.0f} s", flush=True)
            rows.append(pd.read_csv(folder / "baseline_table.csv").assign(seed=seed))
        tables[precision] = pd.concat(rows, ignore_index=True).set_index(["seed", "cohort"]).sort_index()
    fp32, bf16 = tables["off"], tables["on"]
    print(f"\n{'metric':10s} {'fp32 mean':>9s} {'bf16 - fp32 [95% CI], sign-flip p':>35s} {'max |diff|':>10s} "
          f"{'fp32 SD over seeds':>18s}")
    for metric in METRICS:
        if metric not in fp32:
            continue
        e = paired(bf16[metric].to_numpy(), fp32[metric].to_numpy())
        spread = fp32[metric].groupby(level="cohort").std().mean()
        print(f"{metric:10s} {fp32[metric].mean():9.4f} {e.mean:+10.4f} [{e.ci_low:+.4f}, {e.ci_high:+.4f}] "
              f"p {e.p_value:.2f} {np.abs(bf16[metric] - fp32[metric]).max():10.4f} {spread:18.4f}")
    print(f"\n{len(fp32)} pairs (3 cohorts x {args.seeds} seeds); {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()

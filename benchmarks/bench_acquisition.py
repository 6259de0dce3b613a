"""Cost of scoring a pool under each strategy family (run on demand; not a test).

    python benchmarks/bench_acquisition.py [--cases 280] [--shape 19 35 28] [--samples 8] [--repeats 3]

Scores the same pool of random volumes (the ``standard`` profile's 2 mm crop is 19 x 35 x 28 voxels; its pool
holds ~280 cases) with the same U-Net, as one active-learning round does:

* reference: the deterministic pass of every strategy (mean entropy, ROI, localized entropy);
* BALD: the same plus ``--samples`` MC-dropout passes and the mutual information in the ROI;
* stochastic batches: the selection alone (``stochastic_batches`` random batches of 4) against the top-4.

and prints seconds (median of ``--repeats``) and the ratio to the reference, measured in the same run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_train import _median_seconds  # the benchmarks' shared timer (this script's folder is on sys.path)

from fairal.acquisition import select
from fairal.config import get_profile
from fairal.run.model import UNet3D
from fairal.run.rounds import uncertainty_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=280)
    ap.add_argument("--shape", type=int, nargs=3, default=(19, 35, 28))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    profile = get_profile("standard", {"mc_samples": str(args.samples)})
    images = torch.rand(args.cases, 1, *args.shape)
    model = UNet3D(features=profile.features, dropout=profile.mc_dropout)
    fallback = np.zeros(args.shape, bool)

    def timed(fn) -> float:
        return _median_seconds(fn, args.repeats, warmup=0)

    ref = timed(lambda: uncertainty_stats(model, images, fallback, profile, dropout=False, seed=0))
    bald = timed(lambda: uncertainty_stats(model, images, fallback, profile, dropout=True, seed=0))
    ids = [f"c{i:04d}" for i in range(args.cases)]
    scores = np.random.default_rng(0).random(args.cases)
    top = timed(lambda: select("localized-entropy", ids, scores, 4, 50, np.random.default_rng(0)))
    stoch = timed(lambda: select("stochastic-localized-entropy", ids, scores, 4, profile.stochastic_batches,
                                 np.random.default_rng(0)))
    print(f"pool of {args.cases} cases of {tuple(args.shape)} voxels, {torch.get_num_threads()} threads")
    print(f"deterministic scoring (entropy, localized entropy): {ref:.2f} s")
    print(f"+ MC-dropout BALD, {args.samples} samples:            {bald:.2f} s  ({bald / ref:.1f}x)")
    print(f"top-4 selection: {top * 1e3:.2f} ms; stochastic batches ({profile.stochastic_batches} of 4): "
          f"{stoch * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

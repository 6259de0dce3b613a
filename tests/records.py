"""Comparing the records of two run folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def same_records(a: Path, b: Path) -> None:
    """Two run folders hold the same records: the same cases selected in the same rounds, the numbers equal within
    the float tolerance of training in another summation order."""
    for name in ("rounds.csv", "cases.csv", "selections.csv"):
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        # the same cases selected in the same rounds; the numbers equal within float tolerance
        assert x[[c for c in x.columns if x[c].dtype == object or x[c].dtype == bool]].equals(
            y[[c for c in y.columns if y[c].dtype == object or y[c].dtype == bool]]), (a, name)
        # Dice within 0.01: a batched convolution sums in another order than a single one, Adam turns last-bit
        # differences of near-zero gradients into steps of size lr, and one voxel at the 0.5 threshold moves a
        # tiny volume's Dice by ~0.004 (measured: at most 0.0041 per case, 0.0025 for a summary; 1e-4 for entropy)
        num = [c for c in x.columns if x[c].dtype.kind in "if"]
        np.testing.assert_allclose(x[num].to_numpy(float), y[num].to_numpy(float), atol=1e-2, rtol=0,
                                   equal_nan=True, err_msg=f"{a} {name}")

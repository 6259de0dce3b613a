"""Comparing the records of two run folders in tests."""

from __future__ import annotations

from pathlib import Path

from fairal.report.tidy import compare_runs


def same_records(a: Path, b: Path, tolerance: float = 1e-2) -> None:
    """Two run folders hold the same records: the same cases selected in the same rounds, and every number within
    ``tolerance``. Why 0.01 for runs trained in lockstep: a batched convolution sums in another order than a
    single one, Adam turns last-bit differences of near-zero gradients into steps of size lr, and one voxel at the
    0.5 threshold moves a tiny volume's Dice by ~0.004 (measured: at most 0.0041 per case, 0.0025 for a summary,
    1e-4 for an entropy)."""
    table = compare_runs(a, b)
    assert table["same_rows"].all(), (a, table)
    assert (table["max_abs_diff"] <= tolerance).all(), (a, table)

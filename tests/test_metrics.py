"""Tests of the Dice and fairness measures (paper section 4.2) against hand-computed values and libraries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairal.errors import FairalError
from fairal.metrics import delta, dice, dice_from_proba, essp, fairness_summary, group_means


def test_dice_hand_computed_2x2x2() -> None:
    pred = np.zeros((2, 2, 2), dtype=bool)
    target = np.zeros((2, 2, 2), dtype=bool)
    pred[0, 0, 0] = pred[0, 0, 1] = pred[1, 1, 1] = True  # |A| = 3
    target[0, 0, 0] = target[0, 0, 1] = target[0, 1, 0] = target[1, 0, 0] = True  # |B| = 4
    # |A ∩ B| = 2 -> Dice = 2 * 2 / (3 + 4) = 4/7
    assert dice(pred, target) == pytest.approx(4 / 7)
    assert dice(target, pred) == pytest.approx(4 / 7)  # symmetric
    assert dice(pred.astype(np.uint8), target.astype(np.float32)) == pytest.approx(4 / 7)


def test_dice_identical_and_disjoint() -> None:
    a = np.array([[[1, 0], [1, 0]]], dtype=np.uint8)
    assert dice(a, a) == 1.0
    assert dice(a, 1 - a) == 0.0


def test_dice_empty_conventions() -> None:
    empty = np.zeros((3, 3, 3), dtype=bool)
    one = empty.copy()
    one[1, 1, 1] = True
    assert dice(empty, empty) == 1.0
    assert dice(empty, one) == 0.0
    assert dice(one, empty) == 0.0


def test_dice_input_errors() -> None:
    with pytest.raises(FairalError, match=r"same shape.*\(2, 2, 2\).*\(2, 2, 3\)"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(FairalError, match="binary"):
        dice(np.full((2, 2, 2), 0.7), np.zeros((2, 2, 2)))
    with pytest.raises(FairalError, match="binary"):
        dice(np.zeros((2, 2, 2)), np.full((2, 2, 2), 2))


def test_dice_from_proba_thresholds_at_half_inclusive() -> None:
    proba = np.array([0.2, 0.5, 0.7, 0.49])
    target = np.array([0, 1, 1, 1])
    # prediction = [0, 1, 1, 0]: |A| = 2, |B| = 3, |A ∩ B| = 2 -> 4/5
    assert dice_from_proba(proba, target) == pytest.approx(0.8)
    # threshold 0.6 -> prediction [0, 0, 1, 0]: 2 * 1 / (1 + 3) = 0.5
    assert dice_from_proba(proba, target, threshold=0.6) == pytest.approx(0.5)
    with pytest.raises(FairalError, match="NaN"):
        dice_from_proba(np.array([np.nan, 1.0]), np.array([0, 1]))


def test_dice_matches_monai_dice_metric() -> None:
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    pred = rng.random((6, 1, 7, 9, 5)) < 0.3
    target = rng.random((6, 1, 7, 9, 5)) < 0.4
    ours = np.array([dice(p, t) for p, t in zip(pred, target, strict=True)])
    metric = DiceMetric(include_background=True, reduction="none")
    theirs = metric(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32))
    np.testing.assert_allclose(ours, theirs.numpy()[:, 0], rtol=1e-6)
    assert len(set(np.round(ours, 6))) > 1  # the cases really differ


def test_group_means_hand_computed() -> None:
    means = group_means([0.8, 0.6, 0.9, 0.5, 0.7, 0.6], ["a", "a", "b", "c", "c", "c"])
    assert list(means) == ["a", "b", "c"]
    assert means["a"] == pytest.approx(0.7)
    assert means["b"] == pytest.approx(0.9)
    assert means["c"] == pytest.approx(0.6)


def test_group_means_numpy_keys_become_python_and_sorted() -> None:
    means = group_means(np.array([1.0, 0.0, 0.5]), np.array([2, 1, 2]))
    assert list(means) == [1, 2]
    assert all(type(k) is int for k in means)
    assert means == {1: 0.0, 2: 0.75}


def test_group_means_errors() -> None:
    with pytest.raises(FairalError, match="3 values and 2 groups"):
        group_means([1.0, 0.5, 0.2], [1, 2])
    with pytest.raises(FairalError, match="at least one"):
        group_means([], [])
    with pytest.raises(FairalError, match="finite"):
        group_means([np.nan], [1])


def test_delta_and_essp_hand_computed() -> None:
    # overall 0.75; groups 0.7 and 0.9 -> Delta = 0.05 + 0.15 = 0.2; ESSP = 0.75 / 1.2 = 0.625
    d = delta(0.75, {1: 0.7, 2: 0.9})
    assert d == pytest.approx(0.2)
    assert essp(0.75, d) == pytest.approx(0.625)
    # perfectly fair: Delta = 0, ESSP = overall
    assert delta(0.8, {"x": 0.8, "y": 0.8}) == 0.0
    assert essp(0.8, 0.0) == pytest.approx(0.8)


def test_delta_essp_errors() -> None:
    with pytest.raises(FairalError):
        delta(0.5, {})
    with pytest.raises(FairalError, match="negative"):
        essp(0.5, -0.1)


def test_fairness_summary_three_groups_by_hand() -> None:
    values = [0.8, 0.6, 0.9, 0.5, 0.7, 0.6]
    groups = [1, 1, 2, 3, 3, 3]
    # DSC_overall = 4.1 / 6 = 0.683333 (mean over all cases; the mean of group means would be 0.733333)
    # DSC_1 = 0.7, DSC_2 = 0.9, DSC_3 = 0.6
    # Delta = |0.683333 - 0.7| + |0.683333 - 0.9| + |0.683333 - 0.6|
    #       = 0.016667 + 0.216667 + 0.083333 = 0.316667 (= 0.95 / 3)
    # ESSP = 0.683333 / 1.316667 = 4.1 / 7.9 = 0.518987
    s = fairness_summary(values, groups)
    assert list(s) == ["dice_all", "dice_g1", "dice_g2", "dice_g3", "delta", "essp"]
    assert s["dice_all"] == pytest.approx(4.1 / 6)
    assert s["dice_g1"] == pytest.approx(0.7)
    assert s["dice_g2"] == pytest.approx(0.9)
    assert s["dice_g3"] == pytest.approx(0.6)
    assert s["delta"] == pytest.approx(0.95 / 3)
    assert s["essp"] == pytest.approx(4.1 / 7.9)


def test_fairness_summary_string_groups_and_key_collision() -> None:
    s = fairness_summary([1.0, 0.0], ["male", "female"])
    # overall 0.5; Delta = 0.5 + 0.5 = 1; ESSP = 0.5 / 2 = 0.25
    assert s == pytest.approx(
        {"dice_all": 0.5, "dice_gfemale": 0.0, "dice_gmale": 1.0, "delta": 1.0, "essp": 0.25}
    )
    with pytest.raises(FairalError, match="collide"):
        fairness_summary([1.0, 0.0], [1, "1"])


def test_delta_matches_fairlearn_metric_frame() -> None:
    from fairlearn.metrics import MetricFrame

    rng = np.random.default_rng(3)
    dice_values = rng.random(40)
    groups = rng.choice(["g1", "g2", "g3"], size=40, p=[0.5, 0.3, 0.2])

    def mean_dice(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        # a per-sample metric column: the Dice of each case, averaged over the cases selected by fairlearn
        return float(np.mean(y_true))

    frame = MetricFrame(metrics=mean_dice, y_true=dice_values, y_pred=dice_values, sensitive_features=groups)
    expected_delta = float(np.abs(frame.overall - frame.by_group).sum())
    s = fairness_summary(dice_values, groups)
    assert s["dice_all"] == pytest.approx(frame.overall)
    for g, value in frame.by_group.items():
        assert s[f"dice_g{g}"] == pytest.approx(value)
    assert s["delta"] == pytest.approx(expected_delta)
    assert s["essp"] == pytest.approx(frame.overall / (1 + expected_delta))
    assert s["delta"] > 0.01  # unequal groups, so the check is not 0 == 0


def test_every_measure_knows_its_range() -> None:
    import math

    from fairal.metrics import Metric, register_metric, unregister_metric
    from fairal.records import bounds

    assert bounds("dice_all") == bounds("dice_g2") == bounds("eval_dice_g1") == (0.0, 1.0)
    assert bounds("essp") == bounds("eval_essp") == bounds("essp_auc") == bounds("dice_auc") == (0.0, 1.0)
    assert bounds("delta") == bounds("eval_delta") == (0.0, math.inf)  # a sum of absolute differences
    assert bounds("g1_ratio") == bounds("g1_acquired_share") == bounds("w_g1") == bounds("w_g3") == (0.0, 1.0)
    assert bounds("dice_gap") == (-1.0, 1.0)  # Dice G2 - Dice G1, not a group's Dice
    assert bounds("delta_reduction_vs_entropy") == (-math.inf, 1.0)
    assert bounds("n_labeled") == (-math.inf, math.inf)
    register_metric(Metric("worst", "worst-group Dice", True, lambda overall, means: means.min(axis=-1), (0.0, 1.0)))
    try:
        assert bounds("worst") == bounds("eval_worst") == (0.0, 1.0)
    finally:
        unregister_metric("worst")

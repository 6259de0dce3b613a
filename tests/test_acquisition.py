"""Strategies, group weights and selection against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from fairal.acquisition import (
    case_weights,
    group_weights,
    localized_entropy,
    mean_entropy,
    roi_mask,
    select_top_k,
    strategy_scores,
    voxel_entropy,
)
from fairal.errors import FairalError

H01 = 0.1 * np.log(10) + 0.9 * np.log(1 / 0.9)  # 0.3250830 nats


def test_voxel_entropy_by_hand():
    h = voxel_entropy(np.array([0.5, 0.1, 0.9, 0.0, 1.0]))
    np.testing.assert_allclose(h[:3], [np.log(2), H01, H01], rtol=1e-9)
    assert h[3] < 1e-5 and h[4] < 1e-5


def test_localized_entropy_is_the_roi_mean():
    proba = np.array([0.9, 0.5, 0.1, 0.0, 0.0]).reshape(1, 1, 5)
    roi = np.array([True, True, True, False, False]).reshape(1, 1, 5)
    # Eq. 1: (H(0.9) + H(0.5) + H(0.1)) / 3 = (0.325083 + 0.693147 + 0.325083) / 3
    assert localized_entropy(proba, roi) == pytest.approx((2 * H01 + np.log(2)) / 3, rel=1e-9)
    assert mean_entropy(proba) == pytest.approx((2 * H01 + np.log(2)) / 5, abs=3e-6)
    with pytest.raises(FairalError, match="empty"):
        localized_entropy(proba, np.zeros_like(roi))


def test_localized_entropy_is_size_normalised():
    """Two predictions with the same boundary uncertainty but different sizes score the same (Eq. 1)."""
    small = np.zeros((9, 9, 9))
    small[4, 4, 4] = 0.9
    big = np.zeros((9, 9, 9))
    big[3:6, 3:6, 3:6] = 0.9
    s = localized_entropy(small, roi_mask(small, 0)[0])
    b = localized_entropy(big, roi_mask(big, 0)[0])
    assert s == pytest.approx(b) == pytest.approx(H01)


def test_roi_mask_dilation_and_fallbacks():
    proba = np.zeros((5, 5, 5))
    proba[2, 2, 2] = 0.8
    roi, src = roi_mask(proba, 1)
    assert src == "predicted" and roi.sum() == 7  # the voxel and its 6 face neighbours (ball of radius 1)
    fallback = np.zeros((5, 5, 5), bool)
    fallback[0, 0, 0] = True
    roi, src = roi_mask(np.zeros((5, 5, 5)), 1, fallback)
    assert src == "template" and roi.sum() == 4  # a corner voxel and its 3 neighbours inside the volume
    roi, src = roi_mask(np.zeros((5, 5, 5)), 1, None)
    assert src == "volume" and roi.all()


def test_group_weights_by_hand():
    # mean 0.75; population SD sqrt(0.0125) = 0.111803; z = -/+0.894427; softmax -> 1 / (1 + e^1.788854) = 0.143213
    w = group_weights([0.9, 0.8, 0.6, 0.7], [1, 1, 2, 2], [1, 2])
    assert w[1] == pytest.approx(0.143213, abs=1e-6) and w[2] == pytest.approx(0.856787, abs=1e-6)
    # temperature 2 halves z: 1 / (1 + exp(-0.894427)) = 0.709803
    assert group_weights([0.9, 0.8, 0.6, 0.7], [1, 1, 2, 2], [1, 2], temperature=2.0)[2] == pytest.approx(
        0.709803, abs=1e-6)


def test_group_weights_edge_cases():
    assert group_weights([0.8, 0.8, 0.8], [1, 2, 2], [1, 2]) == {1: 0.5, 2: 0.5}  # std 0
    assert group_weights([0.7], [1], [1, 2]) == {1: 0.5, 2: 0.5}  # one labeled case: std 0
    # group 3 has no labeled case: its mean is the worst case's, 0.6 -> z3 = 1.341641;
    # softmax(-0.894427, 0.894427, 1.341641) = (0.408842, 2.445960, 3.825312) / 6.680114
    w = group_weights([0.9, 0.8, 0.6, 0.7], [1, 1, 2, 2], [1, 2, 3])
    assert [w[g] for g in (1, 2, 3)] == pytest.approx([0.061203, 0.366153, 0.572644], abs=1e-6)
    with pytest.raises(FairalError):
        group_weights([], [], [1, 2])
    with pytest.raises(FairalError, match="temperature"):
        group_weights([0.5, 0.6], [1, 2], [1, 2], temperature=0)


def test_strategy_scores_and_selection():
    ids, groups = ["a", "b", "c"], [1, 2, 2]
    stats = {"entropy": [0.3, 0.2, 0.1], "localized_entropy": [0.5, 0.4, 0.45], "bald": [np.nan] * 3}
    w_case = case_weights(groups, {1: 0.2, 2: 0.8})
    np.testing.assert_allclose(w_case, [0.2, 0.8, 0.8])
    rng = np.random.default_rng(0)
    s, w = strategy_scores("weighted-localized-entropy", stats, w_case, rng)
    np.testing.assert_allclose(s, [0.1, 0.32, 0.36])  # Eq. 2: w_g * H_hat
    np.testing.assert_allclose(w, [0.2, 0.8, 0.8])
    assert select_top_k(ids, s, 2) == ["c", "b"]
    assert select_top_k(ids, strategy_scores("entropy", stats, w_case, rng)[0], 1) == ["a"]
    assert select_top_k(ids, strategy_scores("localized-entropy", stats, w_case, rng)[0], 1) == ["a"]
    # random: one uniform per case from the generator, default_rng(3).random(3), unweighted (weights 1)
    r, used = strategy_scores("random", stats, w_case, np.random.default_rng(3))
    np.testing.assert_allclose(r, [0.085649, 0.236811, 0.801274], atol=1e-6)
    np.testing.assert_array_equal(used, [1.0, 1.0, 1.0])
    with pytest.raises(FairalError, match="unknown strategy"):
        strategy_scores("coreset", stats, w_case, rng)
    with pytest.raises(FairalError, match="needs the statistic 'bald'"):
        strategy_scores("bald", stats, w_case, rng)


def test_selection_ties_break_by_case_id():
    assert select_top_k(["b", "a", "c"], [1.0, 1.0, 0.5], 2) == ["a", "b"]
    assert select_top_k(["b", "a"], [0.1, 0.2], 5) == ["a", "b"]


# --- strategies beyond the paper ---------------------------------------------------------------------------------

def test_strategy_names_compose():
    from fairal.acquisition import ALL_STRATEGIES, parse_strategy

    s = parse_strategy("stochastic-weighted-localized-entropy")
    assert (s.base, s.weighted, s.stochastic, s.temperature) == ("localized-entropy", True, True, None)
    s = parse_strategy("weighted-bald-t0.5")
    assert (s.base, s.weighted, s.temperature, s.needs_dropout) == ("bald", True, 0.5, True)
    assert all(parse_strategy(n).name == n for n in ALL_STRATEGIES)
    for bad, message in (("coreset", "unknown strategy"), ("localized-entropy-t2", "needs group weights"),
                         ("stochastic-random", "just 'random'"), ("weighted-entropy-t0", "must be > 0")):
        with pytest.raises(FairalError, match=message):
            parse_strategy(bad)


def test_mutual_information_by_hand():
    from fairal.acquisition import mutual_information

    # two samples that agree (0.5, 0.5): no disagreement, MI 0; samples 0 and 1: H(0.5) - 0 = ln 2
    mi, mean = mutual_information(np.array([[0.5, 0.0, 0.2], [0.5, 1.0, 0.6]]))
    np.testing.assert_allclose(mean, [0.5, 0.5, 0.4])
    h = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))  # noqa: E731
    # p is clipped to [1e-7, 1 - 1e-7], so H(0) is 1.7e-6, not 0
    np.testing.assert_allclose(mi, [0.0, np.log(2), h(0.4) - (h(0.2) + h(0.6)) / 2], atol=1e-5)
    with pytest.raises(FairalError, match="at least 2"):
        mutual_information(np.ones((1, 3)))


def test_stochastic_batch_picks_the_best_random_batch():
    from fairal.acquisition import select, stochastic_batch

    ids = ["a", "b", "c", "d", "e"]
    scores = [0.9, 0.1, 0.8, 0.2, 0.3]
    # With every 2-subset drawn often enough, the best batch is the top 2: {a, c}, in score order.
    assert stochastic_batch(ids, scores, 2, 500, np.random.default_rng(0)) == ["a", "c"]
    # One candidate batch: the generator's first draw, default_rng(5).choice(5, 2, replace=False) = [4, 2]: e and c,
    # in score order.
    assert stochastic_batch(ids, scores, 2, 1, np.random.default_rng(5)) == ["c", "e"]
    # Four batches of 3 from default_rng(1): [c, b, d], [d, e, a], [b, c, e], [c, e, b], mean scores 0.367, 0.467,
    # 0.4, 0.4: the second, in score order a, e, d (not the top 3, a, c, e).
    a = select("stochastic-localized-entropy", ids, scores, 3, 4, np.random.default_rng(1))
    assert a == ["a", "e", "d"]
    assert select("localized-entropy", ids, scores, 2, 4, np.random.default_rng(1)) == ["a", "c"]
    assert stochastic_batch(ids, scores, 9, 3, np.random.default_rng(0)) == ["a", "c", "e", "d", "b"]


def test_expected_weights_and_three_groups():
    from fairal.acquisition import expected_weights

    w = {"A": 0.2, "B": 0.3, "C": 0.5}
    got = expected_weights(np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]]), w, ["A", "B", "C"])
    np.testing.assert_allclose(got, [0.2, 0.5 * 0.2 + 0.25 * 0.3 + 0.25 * 0.5])
    with pytest.raises(FairalError, match="sum to 1"):
        expected_weights(np.array([[0.5, 0.2, 0.2]]), w, ["A", "B", "C"])
    # three groups: DSC 0.9, 0.8 (A), 0.6 (B), 0.7 (C); mean 0.75, population std sqrt(0.0125)
    weights = group_weights([0.9, 0.8, 0.6, 0.7], ["A", "A", "B", "C"], ["A", "B", "C"])
    sd = np.sqrt(0.0125)
    z = np.array([0.75 - 0.85, 0.75 - 0.6, 0.75 - 0.7]) / sd
    np.testing.assert_allclose([weights[g] for g in "ABC"], np.exp(z) / np.exp(z).sum())
    # a labeled case of unknown group counts in the overall mean and std only
    weights = group_weights([0.9, 0.8, 0.6, 0.7], ["A", None, "B", "B"], ["A", "B"])
    z = np.array([0.75 - 0.9, 0.75 - 0.65]) / sd
    np.testing.assert_allclose([weights["A"], weights["B"]], np.exp(z) / np.exp(z).sum())
    # an unknown group gets the expected weight: 0.5 * 0.5 + 0.5 * 0.2 = 0.35
    w_case = case_weights([None, "A"], {"A": 0.2, "B": 0.5}, np.array([[0.5, 0.5], [1.0, 0.0]]), ["A", "B"])
    np.testing.assert_allclose(w_case, [0.35, 0.2])
    s, used = strategy_scores("weighted-localized-entropy", {"localized_entropy": [0.4, 0.2]}, w_case,
                              np.random.default_rng(0))
    np.testing.assert_allclose(s, [0.14, 0.04])
    np.testing.assert_allclose(used, [0.35, 0.2])


# --- one implementation (torch) against an independent NumPy/SciPy reference --------------------------------------


def _ref_entropy(p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def _ref_roi(p, dilation, fallback):
    from scipy import ndimage

    from fairal.acquisition import _ball

    pred = p > 0.5
    if not pred.any():
        if fallback is None or not fallback.any():
            return np.ones(p.shape, bool), "volume"
        pred = fallback
        source = "template"
    else:
        source = "predicted"
    return (ndimage.binary_dilation(pred, structure=_ball(dilation)) if dilation else pred), source


def test_roi_entropy_and_mutual_information_against_numpy_and_scipy():
    import torch

    from fairal.acquisition import mutual_information, roi_mask, voxel_entropy

    rng = np.random.default_rng(0)
    proba = rng.random((9, 11, 8)).astype(np.float32) * 0.6  # a few voxels above 0.5, some at the border
    empty = proba * 0.5
    fallback = np.zeros(proba.shape, bool)
    fallback[4:6, 5:7, 3:5] = True
    for p, fb in ((proba, None), (empty, fallback), (empty, None), (empty, np.zeros_like(fallback))):
        for dilation in (0, 1, 3):
            want, source = _ref_roi(p, dilation, fb)
            got, got_source = roi_mask(p, dilation, fb)  # arrays in, arrays out
            assert isinstance(got, np.ndarray) and got_source == source and np.array_equal(got, want)
            as_t, _ = roi_mask(torch.from_numpy(p), dilation, None if fb is None else torch.from_numpy(fb))
            assert isinstance(as_t, torch.Tensor) and np.array_equal(as_t.numpy(), want)
    np.testing.assert_allclose(voxel_entropy(proba), _ref_entropy(proba), rtol=1e-13)
    samples = rng.random((4, 5, 6, 7)).astype(np.float32)
    s64 = samples.astype(np.float64)
    want_mi = np.maximum(_ref_entropy(s64.mean(0)) - _ref_entropy(s64).mean(0), 0)
    np.testing.assert_allclose(mutual_information(samples)[0], want_mi, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(mutual_information(torch.from_numpy(samples))[0].numpy(), want_mi, rtol=1e-10,
                               atol=1e-15)


@pytest.mark.parametrize("prior,source", [(0.4, "predicted"), (1e-3, "template")])
def test_round_statistics_against_a_numpy_reference(prior, source):
    import torch

    from fairal.config import get_profile
    from fairal.run.model import UNet3D
    from fairal.run.rounds import uncertainty_stats
    from fairal.run.train import predict_mc_dropout, predict_proba

    torch.manual_seed(0)
    model = UNet3D(features=(4, 8), foreground_prior=prior, dropout=0.2).eval()
    images = torch.rand((5, 1, 12, 14, 10), generator=torch.Generator().manual_seed(1))
    fallback = np.zeros((12, 14, 10), bool)
    fallback[5:8, 6:9, 4:6] = True
    profile = get_profile("smoke", {"mc_samples": "3", "roi_dilation": "2"})
    got = uncertainty_stats(model, images, fallback, profile, dropout=True, seed=7, batch_size=2)
    assert got["roi_source"] == [source] * 5  # R from the prediction, or from the template when none is predicted
    probas = list(predict_proba(model, images, batch_size=2))
    draws = list(predict_mc_dropout(model, images, 3, 7, batch_size=2))
    for i, (p, s) in enumerate(zip(probas, draws, strict=True)):
        roi, _ = _ref_roi(p, 2, fallback)
        h = _ref_entropy(p)
        s = s.astype(np.float64)
        mi = np.maximum(_ref_entropy(s.mean(0)) - _ref_entropy(s).mean(0), 0)
        assert got["entropy"][i] == pytest.approx(h.mean(), rel=1e-12)
        assert got["localized_entropy"][i] == pytest.approx(h[roi].mean(), rel=1e-12)
        assert got["bald"][i] == pytest.approx(mi[roi].mean(), rel=1e-9)
        assert got["predicted_voxels"][i] == int((p > 0.5).sum())
    plain = uncertainty_stats(model, images, fallback, profile, dropout=False, seed=7, batch_size=2)
    assert plain["entropy"] == got["entropy"] and np.isnan(plain["bald"]).all()

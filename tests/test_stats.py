"""Statistics over seeds against hand-computed examples, and the verdict rule on constructed cases."""

from __future__ import annotations

import math

import pytest

from fairal.errors import FairalError
from fairal.stats import (
    Estimate,
    all_scenarios_verdict,
    conjunction_verdict,
    direction_verdict,
    magnitude_verdict,
    mean_ci,
    one_sample,
    paired,
    reduction,
    seeds_for_a_verdict,
    sign_flip_test,
    smallest_sign_flip_p,
)


def test_mean_ci_by_hand():
    # mean 2, sample SD 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3) = 2.484138
    e = mean_ci([1.0, 2.0, 3.0])
    assert e.mean == pytest.approx(2.0)
    assert (e.ci_low, e.ci_high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert e.n == 3
    one = mean_ci([0.7])  # one value: a mean, no interval
    assert (one.mean, one.n) == (0.7, 1) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    with pytest.raises(FairalError):
        mean_ci([1.0, float("nan")])


def test_sign_flip_test_by_hand():
    # d = 1, 2, 3: observed |mean| 2; of the 8 sign patterns only +++ and --- reach |mean| >= 2 -> p = 2/8
    assert sign_flip_test([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    # five positive differences: the smallest possible p with five pairs, 2/32
    assert sign_flip_test([0.1, 0.2, 0.1, 0.3, 0.2]) == pytest.approx(0.0625)
    assert sign_flip_test([1.0, -1.0]) == 1.0
    assert sign_flip_test([0.0, 0.0]) == 1.0
    # n > 16: seeded Monte Carlo; all 20 differences positive -> exact p would be 2 / 2^20
    # (hits + 1) / (100,000 + 1): with seed 0 no random pattern reaches the all-positive mean (expected 0.19 hits)
    assert sign_flip_test([1.0] * 20) == pytest.approx(1 / 100_001)
    # 17 differences of +-1 summing to 1: every sign pattern's sum is odd, so |sum| >= 1 always: p = 1 exactly
    assert sign_flip_test([1.0, -1.0] * 8 + [1.0]) == 1.0
    # 17 differences of +-1 summing to 3 (10 positive): |sum| >= 3 unless 8 or 9 of 17 are positive, so the exact
    # p = 1 - 2 C(17, 8) / 2^17 = 1 - 48620 / 131072 = 0.629059; the Monte Carlo estimate's SE is 0.0015
    assert abs(sign_flip_test([1.0] * 10 + [-1.0] * 7) - 0.629059) < 0.006


def test_paired_and_one_sample_by_hand():
    # d = (3 - 1, 5 - 2) = (2, 3): mean 2.5, SD 0.707107, t(0.975, 1) = 12.706205 -> half 6.353102;
    # sign patterns: means 2.5, 0.5, -0.5, -2.5 -> p = 2/4
    e = paired([3.0, 5.0], [1.0, 2.0])
    assert e.mean == pytest.approx(2.5)
    assert (e.ci_low, e.ci_high) == pytest.approx((2.5 - 6.353102, 2.5 + 6.353102), abs=1e-5)
    assert e.p_value == pytest.approx(0.5)
    s = one_sample([0.6, 0.8], 0.5)  # differences 0.1, 0.3
    assert s.mean == pytest.approx(0.2) and s.p_value == pytest.approx(0.5)
    with pytest.raises(FairalError):
        paired([1.0], [1.0, 2.0])


def test_reduction_by_hand():
    # Delta 0.01 and 0.03 against entropy's 0.04 and 0.04: 1 - 0.02 / 0.04 = 0.5; b - a = 0.03, 0.01 -> p = 2/4
    e = reduction([0.01, 0.03], [0.04, 0.04])
    assert e.mean == pytest.approx(0.5)
    # bootstrap resamples of two pairs: reductions 1 - 0.01/0.04, 1 - 0.02/0.04, 1 - 0.03/0.04 with probabilities
    # 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are the outer two (no resampling would give 0.5, 0.5)
    assert (e.ci_low, e.ci_high) == pytest.approx((0.25, 0.75))
    assert e.p_value == pytest.approx(0.5)
    const = reduction([0.01, 0.01], [0.04, 0.04])
    assert (const.mean, const.ci_low, const.ci_high) == pytest.approx((0.75, 0.75, 0.75))


WIN = Estimate(0.10, 0.05, 0.15, 30, 0.001)
TIE = Estimate(0.00, -0.05, 0.05, 30, 0.90)
LOSS = Estimate(-0.10, -0.15, -0.05, 30, 0.001)


def test_direction_verdict_on_a_win_a_tie_and_a_loss():
    assert direction_verdict(WIN) == "confirmed"
    assert direction_verdict(TIE) == "inconclusive"
    assert direction_verdict(LOSS) == "refuted"
    # a CI above 0 is not enough: five pairs cannot reach p < 0.05
    assert direction_verdict(Estimate(0.1, 0.02, 0.18, 5, 0.0625)) == "inconclusive"


def test_all_scenarios_conjunction_and_magnitude():
    assert all_scenarios_verdict(WIN, [WIN, TIE]) == "confirmed"
    assert all_scenarios_verdict(WIN, [WIN, Estimate(-0.1, -0.2, -0.01, 5, 0.0625)]) == "refuted"
    assert conjunction_verdict(["confirmed", "confirmed"]) == "confirmed"
    assert conjunction_verdict(["confirmed", "inconclusive"]) == "inconclusive"
    assert conjunction_verdict(["confirmed", "inconclusive", "refuted"]) == "refuted"
    good = Estimate(0.70, 0.60, 0.80, 15, 0.001)
    assert magnitude_verdict(good, 0.75) == "confirmed"
    assert magnitude_verdict(good, 0.86) == "refuted"
    assert magnitude_verdict(Estimate(0.5, 0.1, 0.9, 15, 0.01), 0.75) == "inconclusive"  # CI too wide
    assert magnitude_verdict(Estimate(0.5, -0.1, 0.8, 15, 0.2), 0.75) == "inconclusive"  # direction undecided
    assert magnitude_verdict(Estimate(-0.5, -0.8, -0.2, 15, 0.001), 0.75) == "refuted"


def test_the_smallest_p_a_number_of_seeds_allows():
    # 5 seeds: 32 sign patterns, the observed and its mirror as extreme: 2/32; the test reaches it
    assert smallest_sign_flip_p(5) == 0.0625 == sign_flip_test([0.01, 0.02, 0.03, 0.04, 0.05])
    assert smallest_sign_flip_p(10) == 2 / 1024 and smallest_sign_flip_p(17) == 1 / 100_001
    # Holm's first step multiplies by the family's size: 6 comparisons need 2/2^n * 6 < 0.05, n = 8 (0.047; 7: 0.094)
    assert (seeds_for_a_verdict(1), seeds_for_a_verdict(3), seeds_for_a_verdict(6)) == (6, 7, 8)
    # beyond 16 units the Monte Carlo floor 1/100,001: a family of 5,001 can never reach 0.05
    assert seeds_for_a_verdict(5000) == 17 and seeds_for_a_verdict(5001) is None

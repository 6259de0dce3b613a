"""The strategy grammar's steering, selection and fair-influence parts against hand-computed selections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fairal.acquisition import parse_strategy, power_order, select, steering_groups, strategy_names, strategy_scores
from fairal.errors import FairalError
from fairal.influence import fair_influence

IDS = ["a", "b", "c", "d", "e", "f"]
GROUPS = [1, 1, 2, 2, 2, 1]
SCORES = [0.9, 0.1, 0.5, 0.7, 0.3, 0.4]
WEIGHTS = {1: 0.3, 2: 0.7}  # group 2 is the worse served: it leads every steering


def test_worst_group_takes_the_largest_weight_then_fills_from_the_next():
    # group 2 by score: d 0.7, c 0.5, e 0.3; then group 1: a 0.9, f 0.4, b 0.1
    rng = np.random.default_rng(0)
    assert select("worst-group-entropy", IDS, SCORES, 2, 1, rng, groups=GROUPS, weights=WEIGHTS) == ["d", "c"]
    assert select("worst-group-entropy", IDS, SCORES, 4, 1, rng, groups=GROUPS, weights=WEIGHTS) == \
        ["d", "c", "e", "a"]
    assert select("worst-group-entropy", IDS, SCORES, 4, 1, rng, groups=GROUPS, weights={1: 0.6, 2: 0.4}) == \
        ["a", "f", "b", "d"]


def test_a_tie_of_group_weights_is_broken_by_the_seeded_stream():
    # equal weights: default_rng(3).permutation(2) = [1, 0] puts group 2 first, default_rng(0)'s [0, 1] group 1
    tie = {1: 0.5, 2: 0.5}
    assert select("worst-group-entropy", IDS, SCORES, 2, 1, np.random.default_rng(3), groups=GROUPS,
                  weights=tie) == ["d", "c"]
    assert select("worst-group-entropy", IDS, SCORES, 2, 1, np.random.default_rng(0), groups=GROUPS,
                  weights=tie) == ["a", "f"]


def test_balanced_interleaves_the_groups_worst_first():
    rng = np.random.default_rng(0)
    assert select("balanced-entropy", IDS, SCORES, 4, 1, rng, groups=GROUPS, weights=WEIGHTS) == \
        ["d", "a", "c", "f"]
    # an exhausted group is skipped: groups 2 (d, c, e) and 3 (x) -> d, x, c, e
    ids, groups, scores = ["c", "d", "e", "x"], [2, 2, 2, 3], [0.5, 0.7, 0.3, 0.1]
    assert select("balanced-entropy", ids, scores, 4, 1, rng, groups=groups, weights={2: 0.5, 3: 0.2}) == \
        ["d", "x", "c", "e"]


def test_group_drawn_draws_each_slot_s_group_by_weight():
    # default_rng(4).random(): 0.943056, 0.511328, 0.976244, 0.080836; groups by weight (2, 1), cumulative
    # shares 0.7, 1.0: u >= 0.7 -> group 1, else group 2: 1, 2, 1, 2 -> a, d, f, c
    rng = np.random.default_rng(4)
    assert select("group-drawn-entropy", IDS, SCORES, 4, 1, rng, groups=GROUPS, weights=WEIGHTS) == \
        ["a", "d", "f", "c"]


def test_group_drawn_random_is_wle_steering_with_a_uniform_case_of_the_group():
    # default_rng(4).random(10): the base scores first (0.943056 0.511328 0.976244 0.080836 0.607356 0.376487),
    # group 1 by score: a, b, f; group 2: c, e, d; then the groups' draws 0.801901 0.174528 0.871635 0.543941
    # -> groups 1, 2, 1, 2 -> a, c, b, e
    rng = np.random.default_rng(4)
    w = np.array([WEIGHTS[g] for g in GROUPS])
    scores, used = strategy_scores("group-drawn-random", {}, w, rng)
    np.testing.assert_allclose(scores[:2], [0.943056, 0.511328], atol=1e-6)
    np.testing.assert_array_equal(used, w)  # recorded, not multiplied into the score
    assert select("group-drawn-random", IDS, scores, 4, 1, rng, groups=GROUPS, weights=WEIGHTS) == \
        ["a", "c", "b", "e"]
    # the same draw of scores under min-max: group 2 first (c, e, d), then group 1's best, a
    rng = np.random.default_rng(4)
    scores, _ = strategy_scores("worst-group-random", {}, w, rng)
    assert select("worst-group-random", IDS, scores, 4, 1, rng, groups=GROUPS, weights=WEIGHTS) == \
        ["c", "e", "d", "a"]


def test_power_sampling_by_hand():
    # default_rng(1).gumbel(size=3) = 0.332576, -1.100294, 1.860008; T = 0.5:
    # a: ln 0.5 / 0.5 + 0.332576 = -1.053718, b: ln 0.25 / 0.5 - 1.100294 = -3.872883,
    # c: ln 0.125 / 0.5 + 1.860008 = -2.298875 -> a, c, b
    ids, scores = ["a", "b", "c"], [0.5, 0.25, 0.125]
    assert power_order(ids, scores, np.random.default_rng(1), 0.5) == ["a", "c", "b"]
    # a high T flattens the scores: the noise decides, c (1.86) first
    assert power_order(ids, scores, np.random.default_rng(1), 100.0) == ["c", "a", "b"]
    assert select("power-entropy", ids, scores, 2, 1, np.random.default_rng(1), power_temperature=0.5) == ["a", "c"]
    # a score of 0 has probability 0: last, whatever its noise
    assert power_order(ids, [0.0, 0.25, 0.125], np.random.default_rng(1), 0.5)[-1] == "a"
    with pytest.raises(FairalError, match="power temperature"):
        power_order(ids, scores, np.random.default_rng(1), 0.0)


def test_power_steered_by_group_orders_each_group_by_its_draw():
    # groups by weight: 2 (c, d, e) then 1 (a, b, f); one Gumbel draw per case, group 2's first:
    # default_rng(1).gumbel(size=6) = 0.332576, -1.100294, 1.860008, -1.088252, 0.984244, 0.596967; T = 1:
    # c: ln 0.5 + 0.332576 = -0.360572, d: ln 0.7 - 1.100294 = -1.456969, e: ln 0.3 + 1.860008 = 0.656035 -> e, c, d;
    # a: ln 0.9 - 1.088252 = -1.193613, b: ln 0.1 + 0.984244 = -1.318341, f: ln 0.4 + 0.596967 = -0.319324 -> f, a, b
    # (both unlike the scores' own order, d, c, e and a, f, b: a steering that dropped the noise would fail)
    got = select("power-worst-group-entropy", IDS, SCORES, 4, 1, np.random.default_rng(1), groups=GROUPS,
                 weights=WEIGHTS, power_temperature=1.0)
    assert got == ["e", "c", "d", "f"]
    got = select("power-balanced-entropy", IDS, SCORES, 4, 1, np.random.default_rng(1), groups=GROUPS,
                 weights=WEIGHTS, power_temperature=1.0)
    assert got == ["e", "f", "c", "a"]  # the same draws, the groups interleaved, worst first


def test_grammar_names_and_refusals():
    s = parse_strategy("power-group-drawn-localized-entropy-t0.5")
    assert (s.selection, s.steering, s.base, s.temperature, s.steered, s.weighted) == \
        ("power", "group-drawn", "localized-entropy", 0.5, True, False)
    assert parse_strategy("weighted-localized-entropy").weighted
    assert parse_strategy("fair-influence").spec.statistic == "fair_influence"
    names = strategy_names()
    assert "worst-group-random" in names and "stochastic-balanced-entropy" not in names
    assert "worst-group-fair-influence" in names and "weighted-fair-influence" not in names
    assert parse_strategy("stochastic-fair-influence").selection == "stochastic"  # a batch's mean: signed is fine
    assert parse_strategy("power-weighted-random").selection == "power"  # draws ∝ (u w_g)^(1/T): not random's
    assert parse_strategy("group-drawn-random-t2").temperature == 2.0  # the draw's shares follow the values
    for bad, why in (("stochastic-balanced-entropy", "cannot fill slots group by group"),
                     ("power-random", "is just 'random'"), ("entropy-t2", "needs group weights"),
                     ("weighted-fair-influence", "signed .* weighted- needs scores >= 0"),
                     ("power-worst-group-fair-influence", "signed .* power- needs scores >= 0"),
                     ("power-worst-group-random", "is just 'worst-group-random' \\(a random order within each"),
                     ("power-group-drawn-random", "is just 'group-drawn-random'"),
                     ("worst-group-random-t2", "worst-group- follows only the order of the group weights"),
                     ("balanced-entropy-t0.5", "balanced- follows only the order"),
                     ("weighted-random-t-1", "the softmax temperature must be > 0")):
        with pytest.raises(FairalError, match=why):
            parse_strategy(bad)
    with pytest.raises(FairalError, match="needs each candidate's group"):
        select("balanced-entropy", IDS, SCORES, 2, 1, np.random.default_rng(0))


def test_hidden_groups_steer_by_the_most_probable_group():
    p = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    assert steering_groups([None, None, 2], p, [1, 2]) == [1, 2, 2]
    assert steering_groups([None, 1], None, [1, 2]) == [None, 1]


class _Head(nn.Module):
    """A network whose penultimate features are its input: its last layer ``z = w f + b`` is the whole model."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.head = nn.Conv3d(1, 1, kernel_size=1)
        with torch.no_grad():
            self.head.weight.fill_(w)
            self.head.bias.fill_(b)

    def forward(self, x):
        return self.head(x)


def _volume(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, len(values))


def test_fair_influence_by_hand():
    """Two labeled cases of two voxels, w = 1, b = 0, labels [1, 0]:
    A (group 1), f = [2, -2]: p = [0.880797, 0.119203], soft Dice 0.880797, dd/dw 0.209988, dd/db 0.012516;
    B (group 2), f = [1, 1]: p = 0.731059 twice, soft Dice 0.593839, dd/dw = dd/db = 0.064877.
    Gap |dA - dB| (dA > dB): grad = (0.145111, -0.052361).
    Candidate x, f = [3, -1]: y_hat = [1, 0], p - y_hat = [-0.047426, 0.268941]: grad l = (-0.205610, 0.110758),
    score -0.035636. Candidate y, f = [-3, 0.5]: p - y_hat = [0.047426, -0.377541]: grad l = (-0.165524,
    -0.165058), score -0.015377: y is expected to shrink the gap more."""
    model = _Head(1.0, 0.0)
    labeled = torch.stack([_volume(2, -2), _volume(1, 1)])
    labels = torch.stack([_volume(1, 0), _volume(1, 0)])
    cands = torch.stack([_volume(3, -1), _volume(-3, 0.5)])
    got = fair_influence(model, cands, labeled, labels, [1, 2])
    assert got == pytest.approx([-0.035636, -0.015377], abs=2e-5)
    # one labeled group: no gap to reduce, every score 0
    assert fair_influence(model, cands, labeled, labels, [1, 1]) == pytest.approx([0.0, 0.0], abs=1e-12)
    with pytest.raises(FairalError, match="last layer"):
        fair_influence(nn.Sequential(nn.Conv3d(1, 1, 3)), cands, labeled, labels, [1, 2])


def test_fair_influence_needs_the_network_not_saved_probabilities():
    from fairal.owndata.api import rank_for_annotation

    maps = {"x": np.full((2, 2, 2), 0.6), "y": np.full((2, 2, 2), 0.4)}
    with pytest.raises(FairalError, match="needs the network"):
        rank_for_annotation(maps, {"x": 1, "y": 2}, {1: 0.5, 2: 0.5}, strategy="fair-influence", budget=1)


# --- pool-wide base scores: a score that sees the whole pool at once --------------------------------------------


@pytest.fixture
def far_scorer():
    """A pool-wide scorer registered for a test: each candidate's distance to the nearest labeled case."""
    from fairal.acquisition import Base, PoolScore, register, unregister

    def far(view):
        return np.abs(view.features[:, None, 0] - view.labeled_features[None, :, 0]).min(axis=1)

    register(Base("far", None, "far", "far from the labeled cases", pool=PoolScore("far_score", far, "distance")))
    yield
    unregister("far")


def _view(k=3):
    from fairal.acquisition import PoolView

    # candidates at 1, 5, 9, 10 and 2 on a line, the labeled cases at 0 and 4: distances 1, 1, 5, 6, 2
    return PoolView(IDS[:5], np.array([[1.0], [5.0], [9.0], [10.0], [2.0]]), np.array([[0.0], [4.0]]), {}, k,
                    np.random.default_rng(0))


def test_core_set_chooses_by_greedy_k_center_and_takes_no_steering_or_selection():
    from fairal.acquisition import BASES, k_center_greedy, pool_values

    # farthest from {0, 4}: 10 (d); then from {0, 4, 10}: 2 (e, at 2); then 1, 5 and 9 are all at 1: the first (a)
    assert k_center_greedy(_view().features, _view().labeled_features, 3) == [3, 4, 0]
    values = pool_values(BASES["core-set"].pool, _view())
    assert values.tolist() == [1 / 3, 0.0, 0.0, 1.0, 2 / 3]  # the batch as scores: its top k, in its order
    scores, used = strategy_scores("core-set", {"core_set": values}, np.ones(5), np.random.default_rng(0))
    assert select("core-set", IDS[:5], scores, 3, 1, np.random.default_rng(0)) == ["d", "e", "a"]
    assert used.tolist() == [1.0] * 5 and "core-set" in strategy_names()
    for name, part in (("stochastic-core-set", "stochastic-"), ("weighted-core-set", "weighted-"),
                       ("power-worst-group-core-set", "power- and worst-group-")):
        with pytest.raises(FairalError, match=f"chooses the whole batch itself .* takes no {part}"):
            parse_strategy(name)
        assert name not in strategy_names()
    with pytest.raises(FairalError, match="needs the pool-wide score 'core_set'"):
        strategy_scores("core-set", {"entropy": [0.1] * 5}, np.ones(5), np.random.default_rng(0))


def test_a_pool_wide_scorer_composes_with_every_steering_and_selection(far_scorer):
    """Its values are one score per case: every part of the grammar takes them as it takes a statistic's."""
    from fairal.acquisition import BASES, pool_values

    d = pool_values(BASES["far"].pool, _view())
    assert d.tolist() == [1.0, 1.0, 5.0, 6.0, 2.0]
    w = np.array([WEIGHTS[g] for g in GROUPS[:5]])
    for prefix in ("", "weighted-", "worst-group-", "balanced-", "group-drawn-", "power-", "stochastic-weighted-",
                   "power-worst-group-"):
        got, used = strategy_scores(f"{prefix}far", {"far_score": d}, w, np.random.default_rng(0))
        ref, ref_used = strategy_scores(f"{prefix}entropy", {"entropy": d}, w, np.random.default_rng(0))
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(used, ref_used)
        kw = {"groups": GROUPS[:5], "weights": WEIGHTS}
        assert select(f"{prefix}far", IDS[:5], got, 2, 4, np.random.default_rng(1), **kw) == \
            select(f"{prefix}entropy", IDS[:5], ref, 2, 4, np.random.default_rng(1), **kw)
    assert select("far", IDS[:5], d, 2, 1, np.random.default_rng(0)) == ["d", "c"]


def test_a_pool_wide_score_is_checked_where_registered_and_where_it_answers(far_scorer):
    from fairal.acquisition import Base, PoolScore, Statistic, pool_values, register

    with pytest.raises(FairalError, match="a pool-wide score ranks by itself"):
        register(Base("both", "entropy", "both", "both", pool=PoolScore("both_score", lambda v: [], "both")))
    with pytest.raises(FairalError, match="a pool-wide score ranks by itself"):
        register(Base("again", None, "again", "again", pool=PoolScore("far_score", lambda v: [], "again")))
    with pytest.raises(FairalError, match="exists already"):
        register(Base("margin2", "far_score", "m", "m"), Statistic("far_score", lambda m: 0.0, "m"))
    with pytest.raises(FairalError, match="gave 2 values for 5 candidates"):
        pool_values(PoolScore("short", lambda v: [1.0, 2.0], "short"), _view())
    with pytest.raises(FairalError, match="must pick 3 distinct candidates"):
        pool_values(PoolScore("twice", lambda v: [0, 0, 1], "twice", chooses=True), _view())


def test_the_documented_pool_wide_score_registers_and_composes():
    """docs/api.md's pool-wide score, as written."""
    import re
    from pathlib import Path

    from fairal.acquisition import BASES, pool_values, unregister

    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "PoolScore(" in b)
    exec(compile(block, "docs/api.md", "exec"), {})  # noqa: S102 - the documentation's own example
    try:
        assert parse_strategy("power-worst-group-farthest").base == "farthest"
        assert pool_values(BASES["farthest"].pool, _view()).tolist() == [1.0, 1.0, 5.0, 6.0, 2.0]
    finally:
        unregister("farthest")

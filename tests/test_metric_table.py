"""The metric table: one entry per metric carries its words, direction, range, equivalence margin and one
implementation that works on a batch; a metric registered by one entry reaches a run's rounds.csv, the baselines'
table, the study report's tables and the plan's statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairal.config import get_profile
from fairal.metrics import (
    DELTA,
    DICE,
    ESSP,
    METRICS,
    Metric,
    fairness_summary,
    group_means,
    register_metric,
    table_measures,
    unregister_metric,
)
from fairal.records import equivalence_margin

from .test_baseline import SMOKE
from .test_loop import _spec
from .test_plan import _records

# Two groups, five cases: group 1 has Dice 0.8 and 0.6 (mean 0.7), group 2 has 0.9, 1.0 and 0.8 (mean 0.9).
# Dice of all cases: (0.8 + 0.6 + 0.9 + 1.0 + 0.8) / 5 = 4.1 / 5 = 0.82 (not the mean of the group means, 0.8).
# Δ = |0.82 - 0.7| + |0.82 - 0.9| = 0.12 + 0.08 = 0.20; ESSP = 0.82 / (1 + 0.20) = 0.68333...;
# worst-group Dice = min(0.7, 0.9) = 0.7.
DICES = np.array([0.8, 0.6, 0.9, 1.0, 0.8])
GROUPS = np.array([1, 1, 2, 2, 2])


def _worst(overall, means):
    return means.min(axis=-1)


def _worst_dice() -> Metric:
    return Metric("worst_dice", "worst-group Dice", True, _worst, (0.0, 1.0), 0.02)


@pytest.fixture
def worst_dice():
    """Worst-group Dice, registered by one entry (and gone afterwards)."""
    yield register_metric(_worst_dice())
    unregister_metric("worst_dice")


def test_each_formula_by_hand(worst_dice):
    s = fairness_summary(DICES, GROUPS)
    assert s["dice_all"] == pytest.approx(0.82) and s["dice_g1"] == pytest.approx(0.7)
    assert s["delta"] == pytest.approx(0.20) and s["essp"] == pytest.approx(0.82 / 1.2)
    assert s["worst_dice"] == pytest.approx(0.7)
    # a batch of two sets at once: the one above, and one whose groups are equal (Δ 0, ESSP = its Dice 0.5)
    batch = table_measures(np.array([0.82, 0.5]), np.array([[0.7, 0.9], [0.5, 0.5]]))
    assert batch["delta"] == pytest.approx([0.20, 0.0]) and batch["essp"] == pytest.approx([0.82 / 1.2, 0.5])
    assert batch["worst_dice"] == pytest.approx([0.7, 0.5])


def test_the_plans_resampled_measures_by_hand(worst_dice):
    """The plan's bootstrap: replicate 1 takes every case once (the numbers above); replicate 2 takes case 1 twice
    and cases 3 and 4 once: group 1 mean 0.8, group 2 mean (0.9 + 1.0) / 2 = 0.95, all (2 * 0.8 + 0.9 + 1.0) / 4 =
    0.875, Δ = 0.075 + 0.075 = 0.15, ESSP = 0.875 / 1.15, worst-group Dice 0.8."""
    from fairal.report.plan import CaseMatrix

    m = CaseMatrix(pd.DataFrame({"run": [0]}), DICES[None, :], GROUPS)
    got = m.measures(np.array([[1, 1, 1, 1, 1], [2, 0, 1, 1, 0]], dtype=float))
    assert got["dice_all"][0] == pytest.approx([0.82, 0.875])
    assert got["delta"][0] == pytest.approx([0.20, 0.15])
    assert got["essp"][0] == pytest.approx([0.82 / 1.2, 0.875 / 1.15])
    assert got["worst_dice"][0] == pytest.approx([0.7, 0.8])


def test_one_row_of_a_batch_is_the_scalar_codes_floats():
    """The run's values keep their bits: the batch form of one set of cases gives exactly the floats of the scalar
    sum (``0 + |o - m_1| + |o - m_2| + ...`` in the groups' order, then ``o / (1 + Δ)``), with 2 to 9 groups; and a
    row of a batch is the same floats as that row alone."""
    rng = np.random.default_rng(0)
    for n_groups in range(2, 10):
        dice = rng.uniform(0.3, 1.0, 6 * n_groups)
        groups = np.repeat(np.arange(1, n_groups + 1), 6)
        per_group = group_means(dice, groups)
        overall = float(np.mean(dice))
        by_hand = float(sum(abs(float(overall) - float(v)) for v in per_group.values()))
        s = fairness_summary(dice, groups)
        assert s["delta"] == by_hand and s["essp"] == overall / (1.0 + by_hand)  # exactly, not approximately
        overall_batch, means = rng.uniform(0.3, 1.0, (4, 7)), rng.uniform(0.3, 1.0, (4, 7, n_groups))
        batch = table_measures(overall_batch, means)
        for i, j in np.ndindex(4, 7):
            alone = table_measures(np.float64(overall_batch[i, j]), means[i, j])
            assert batch["delta"][i, j] == alone["delta"] and batch["essp"][i, j] == alone["essp"]
            assert alone["delta"] == sum(abs(overall_batch[i, j] - v) for v in means[i, j])


def test_the_table_carries_labels_directions_bounds_and_the_plans_margins():
    assert [(m.name, m.label, m.direction, m.bounds) for m in (DELTA, ESSP, DICE)] == [
        ("delta", "Δ", "lower", (0.0, float("inf"))), ("essp", "ESSP", "higher", (0.0, 1.0)),
        ("dice_all", "Dice", "higher", (0.0, 1.0))]
    # docs/analysis-plan.md's margins: a metric's own, an area under its curve has its metric's
    margins = {c: equivalence_margin(c) for c in ("essp", "essp_auc", "dice_all", "dice_auc", "delta",
                                                  "g1_acquired_share", "dice_gap", "dice_g1", "n_labeled")}
    assert margins == {"essp": 0.005, "essp_auc": 0.005, "dice_all": 0.01, "dice_auc": 0.01, "delta": 0.005,
                       "g1_acquired_share": 0.05, "dice_gap": 0.01, "dice_g1": None, "n_labeled": None}


def test_a_registered_metric_reaches_the_run_and_the_baselines(worst_dice, tiny_dataset, tmp_path):
    from fairal.grid.baselines import run_baseline
    from fairal.run.loop import ActiveLearningRun

    rounds = ActiveLearningRun(_spec(tiny_dataset), tmp_path / "run").run()
    written = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert list(written.columns) == list(rounds.columns)
    assert written.columns.get_loc("worst_dice") == written.columns.get_loc("essp") + 1  # after the table's others
    assert (written["worst_dice"] == written[["dice_g1", "dice_g2"]].min(axis=1)).all()
    assert "eval_worst_dice" in written.columns and written["eval_worst_dice"].isna().all()  # no evaluation split
    table = run_baseline(tiny_dataset, tmp_path / "base", get_profile("smoke", SMOKE), progress=False)
    assert list(table.columns[:7]) == ["cohort", "dice_g1", "dice_g2", "dice_all", "essp", "delta", "worst_dice"]
    assert (table["worst_dice"] == table[["dice_g1", "dice_g2"]].min(axis=1)).all()


def test_a_registered_metric_reaches_the_study_report_and_the_plan(worst_dice, tmp_path):
    from fairal.report.plan import plan_tables
    from fairal.report.study import build_study_report
    from fairal.report.tidy import Results

    rounds, cases, round_cases = _records(seeds=3)  # fairness_summary: the registered metric is a column
    assert {"worst_dice", "eval_worst_dice"} <= set(rounds.columns)
    keys = set(rounds[["dataset", "init", "strategy", "seed"]].itertuples(index=False, name=None))
    results = Results(rounds=rounds, baselines=pd.DataFrame(), finished=keys, expected=sorted(keys), cases=cases,
                      round_cases=round_cases)
    build_study_report(tmp_path, tmp_path, results, {"study": {"name": "t", "text": "x"}})
    summary = pd.read_csv(tmp_path / "study_summary.csv")
    measures = [c for c in summary.columns if c.endswith("_ci")]
    assert measures == ["essp_ci", "delta_ci", "worst_dice_ci", "dice_all_ci", "essp_auc_ci", "g1_acquired_share_ci"]
    last = rounds[rounds["round"] == 2].groupby(["dataset", "init", "strategy"])["eval_worst_dice"].mean()
    mine = summary.set_index(["dataset", "init", "strategy"])["worst_dice"]
    assert mine.to_numpy() == pytest.approx(last.loc[mine.index].to_numpy())  # measured on the evaluation split
    paired = pd.read_csv(tmp_path / "study_paired.csv")
    worst = paired[paired["metric"] == "worst_dice"]
    assert len(worst) == 6 and (worst["family"] == "secondary").all() and (worst["margin"] == 0.02).all()
    assert worst["statistic"].str.startswith("final worst-group Dice: weighted-localized-entropy - ").all()
    tables = plan_tables(rounds, cases, round_cases, pd.DataFrame(), None)
    d = tables.decomposition[tables.decomposition["id"].str.startswith("D-worst_dice-")]
    assert set(d["split"]) == {"eval", "test"} and len(d) == 2 * 3 * 7  # 3 comparisons, pooled and 6 scenarios
    assert np.isfinite(d["case_var"]).all() and (d["case_var"] > 0).all()  # resampled through the table's entry


def test_unregistered_afterwards():
    """A metric registered then unregistered is gone from the table and from every summary (checked within this
    test, whichever worker ran the others)."""
    register_metric(_worst_dice())
    try:
        assert "worst_dice" in METRICS and "worst_dice" in fairness_summary(DICES, GROUPS)
    finally:
        unregister_metric("worst_dice")
    assert "worst_dice" not in METRICS and "worst_dice" not in fairness_summary(DICES, GROUPS)

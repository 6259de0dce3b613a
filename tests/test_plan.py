"""The statistics of docs/analysis-plan.md: TOST, Holm, the v2 verdicts, the revised rule 4, the two-level
bootstrap and the claims on constructed records with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fairal.metrics import fairness_summary
from fairal.report.plan import MIN_SEEDS_FOR_CLAIMS, CaseMatrix, Part, plan_tables, verdict_rows
from fairal.stats import (
    Estimate,
    conjunction_verdict_v2,
    holm,
    magnitude_verdict,
    magnitude_verdict_v2,
    stratified_counts,
    tost,
    verdict,
)

# --- hand-computed examples ------------------------------------------------------------------------------------


def test_tost_by_hand():
    # mean 0.002, SD 0.001, n 3: se = 0.001 / sqrt(3); against +0.005: t = -0.003 / se = -3 sqrt(3), 2 df.
    # The t CDF with 2 df is 1/2 + t / (2 sqrt(2 + t^2)).
    p_high = 0.5 - 3 * math.sqrt(3) / (2 * math.sqrt(2 + 27))
    t_low = 0.007 / (0.001 / math.sqrt(3))
    p_low = 0.5 - t_low / (2 * math.sqrt(2 + t_low**2))
    assert p_low < p_high
    assert tost([0.001, 0.002, 0.003], 0.005) == pytest.approx(p_high, rel=1e-9)
    assert tost([0.001, 0.002, 0.003], 0.005) < 0.05  # equivalent at 0.005
    t = 0.0005 / (0.001 / math.sqrt(3))  # at margin 0.0025 the mean is 0.0005 from it: not equivalent
    assert tost([0.001, 0.002, 0.003], 0.0025) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t**2)), rel=1e-9)
    assert tost([0.001, 0.002, 0.003], 0.0025) > 0.05
    assert tost([0.004, 0.004], 0.005) == 0.0 and tost([0.006, 0.006], 0.005) == 1.0  # no spread
    assert math.isnan(tost([0.001], 0.005))  # one value tests nothing


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.02, float("nan"), 0.04])  # NaN does not count: m = 2
    assert got[0] == pytest.approx(0.04) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


@pytest.mark.parametrize("e,p_adj,p_tost,expected", [
    (Estimate(0.010, 0.008, 0.012, 10), 0.006, 0.9, ("confirmed", False)),  # a clear win
    (Estimate(0.002, 0.001, 0.003, 10), 0.01, 0.01, ("confirmed", True)),  # real, smaller than the margin
    (Estimate(0.0005, -0.001, 0.002, 10), 0.4, 0.01, ("equivalent", False)),  # a tie inside the margin
    (Estimate(-0.010, -0.012, -0.008, 10), 0.002, 0.9, ("refuted", False)),  # a loss
    (Estimate(0.003, -0.004, 0.010, 10), 0.3, 0.4, ("inconclusive", False)),  # undecided
    (Estimate(0.010, 0.008, 0.012, 10), 0.06, 0.9, ("inconclusive", False)),  # CI above 0, but Holm p >= 0.05
])
def test_v2_verdicts(e, p_adj, p_tost, expected):
    assert verdict(e, p_adj, p_tost, 0.005) == expected


def test_revised_magnitude_rule():
    good = Estimate(0.75, 0.70, 0.80, 30)
    assert magnitude_verdict_v2(good, 0.75, 0.001) == "confirmed"
    assert magnitude_verdict_v2(good, 0.86, 0.001) == "refuted"  # decided, narrow, excludes 0.86
    undecided = Estimate(0.40, -0.10, 0.80, 30)
    assert magnitude_verdict(Estimate(0.40, -0.10, 0.80, 30, 0.2), 0.86) == "refuted"  # v1: excludes x first
    assert magnitude_verdict_v2(undecided, 0.86, 0.2) == "inconclusive"  # v2: undecided direction first
    wide = Estimate(0.50, 0.10, 0.90, 30)
    assert magnitude_verdict_v2(wide, 0.95, 0.01) == "inconclusive"  # wider than 0.5, before asking about x
    assert magnitude_verdict_v2(Estimate(-0.5, -0.8, -0.2, 30), 0.75, 0.001) == "refuted"  # direction refuted


def test_conjunction_v2():
    assert conjunction_verdict_v2(["confirmed", "confirmed"]) == "confirmed"
    assert conjunction_verdict_v2(["confirmed", "equivalent"]) == "equivalent"
    assert conjunction_verdict_v2(["confirmed", "inconclusive"]) == "inconclusive"
    assert conjunction_verdict_v2(["equivalent", "refuted"]) == "refuted"


def test_resampled_measures_by_hand():
    m = CaseMatrix(pd.DataFrame({"run": [0]}), np.array([[0.8, 0.6, 0.9, 0.7]]), np.array([1, 1, 2, 2]))
    obs = m.measures()
    assert obs["dice_all"][0] == pytest.approx(0.75) and obs["delta"][0] == pytest.approx(0.1)
    # case 0 twice, case 1 never: G1 0.8, G2 0.8 -> Δ 0, ESSP 0.8; then case 2 twice: G1 0.7, G2 0.9 -> Δ 0.2
    got = m.measures(np.array([[2, 0, 1, 1], [1, 1, 2, 0]], float))
    assert got["dice_all"][0] == pytest.approx([0.8, 0.8])
    assert got["delta"][0] == pytest.approx([0.0, 0.2])
    assert got["essp"][0] == pytest.approx([0.8, 0.8 / 1.2])
    assert got["dice_gap"][0] == pytest.approx([0.0, 0.2])


def test_stratified_counts_keep_each_group_size():
    counts = stratified_counts([1, 1, 1, 2, 2], 500, np.random.default_rng(0))
    assert counts.shape == (500, 5)
    assert (counts[:, :3].sum(axis=1) == 3).all() and (counts[:, 3:].sum(axis=1) == 2).all()
    assert counts[:, 0].mean() == pytest.approx(1.0, abs=0.15)  # each case drawn once on average


# --- claims on constructed records -----------------------------------------------------------------------------

STRATEGIES = ("random", "entropy", "localized-entropy", "weighted-localized-entropy")


def _records(seeds=10, lift=0.02, seed_noise=0.004, case_sd=0.03, per_group=(15, 40)):
    """Rounds and per-case Dice of a grid whose per-case Dice are a run level (WLE ``lift`` above the others, a
    seed effect shared by the strategies of a seed) plus a fixed effect per case: on each split the run measures
    are computed from the cases, so the records agree as fairal's do."""
    rng = np.random.default_rng(1)
    n_test, n_eval = per_group
    case_effect = {split: rng.normal(0, case_sd, 2 * n) for split, n in (("test", n_test), ("eval", n_eval))}
    rounds, cases, round_cases = [], [], []
    for dataset in ("strong", "weak"):
        for init in ("balanced", "g1-heavy", "g2-heavy"):
            n1 = {"balanced": 5, "g1-heavy": 8, "g2-heavy": 2}[init]
            for seed in range(seeds):
                level = 0.85 + rng.normal(0, seed_noise)
                for strategy in STRATEGIES:
                    g1_per_round = {"weighted-localized-entropy": 4, "entropy": 0}.get(strategy, 2)
                    lifted = lift.get((dataset, init), 0.0) if isinstance(lift, dict) else lift
                    up = lifted if strategy == "weighted-localized-entropy" else 0.0
                    for rnd in range(3):
                        row = {"dataset": dataset, "init": init, "strategy": strategy, "seed": seed, "round": rnd,
                               "n_labeled": 10 + 4 * rnd, "n_labeled_g1": n1 + g1_per_round * rnd}
                        row["n_labeled_g2"] = row["n_labeled"] - row["n_labeled_g1"]
                        for split, n in (("test", n_test), ("eval", n_eval)):
                            groups = np.repeat([1, 2], n)
                            gap = 0.02 if strategy != "weighted-localized-entropy" else 0.005
                            dice = level + up + 0.01 * rnd + case_effect[split] - gap * (groups == 1)
                            s = fairness_summary(dice, groups)
                            pre = "" if split == "test" else "eval_"
                            row.update({pre + k: v for k, v in s.items()})
                            ids = [f"{split}-{i:03d}" for i in range(2 * n)]
                            key = {k: row[k] for k in ("dataset", "init", "strategy", "seed", "round")}
                            frame = pd.DataFrame({**key, "case_id": ids, "group": groups, "split": split,
                                                  "dice": dice})
                            if rnd == 2:
                                cases.append(frame)
                            if split == "test":
                                round_cases.append(frame.drop(columns="split"))
                        rounds.append(row)
    return pd.DataFrame(rounds), pd.concat(cases), pd.concat(round_cases)


@pytest.fixture(scope="module")
def constructed():
    rounds, cases, round_cases = _records()
    return rounds, cases, round_cases, plan_tables(rounds, cases, round_cases, pd.DataFrame(), None)


def test_plan_claims_on_a_constructed_grid(constructed):
    *_, tables = constructed
    claims = tables.claims.set_index(["split", "id"])
    assert set(claims["verdict"]) <= {"confirmed", "refuted", "equivalent", "inconclusive"}
    for split in ("eval", "test"):
        c = claims.loc[split]
        assert c.loc["P1", "value"] == pytest.approx(c.loc["C1a", "value"])
        assert c.loc["C1", "verdict"] == "confirmed"  # WLE +0.02 ESSP-ish in every pair, n = 10 seeds
        assert c.loc["C1a", "n"] == 10 and c.loc["C1a", "p_value"] == pytest.approx(2 / 2**10)
        assert c.loc["C1a", "p_holm"] >= c.loc["C1a", "p_value"]
        assert c.loc["C3b", "verdict"] == "equivalent"  # LE and random identical: a tie inside the margin
        assert c.loc["C3", "verdict"] == "equivalent"
        assert c.loc["C6", "verdict"] == "confirmed" and c.loc["C6", "value"] == pytest.approx(0.5)
        assert c.loc["C8", "verdict"] == "equivalent"  # exactly half
        assert c.loc["C4", "value"] > 0.5  # Δ 0.005 against 0.02 in Dice-gap terms
    test = claims.loc["test"]
    assert "two-level bootstrap" in test.loc["C1a", "test"]
    assert "t CI" in claims.loc[("eval", "C1a"), "test"]


def test_one_statistic_has_one_interval_in_every_table(constructed):
    """P1 and C1a are the same statistic (final ESSP, WLE - random, the same pairs): on the test split their
    two-level bootstrap intervals come from one draw of cases and seeds, so claims.csv and primary.csv print one
    interval (they were separate Monte Carlo draws: [-0.0020, +0.0034] against [-0.0020, +0.0032])."""
    *_, tables = constructed
    claims = tables.claims.set_index(["split", "id"])
    primary = tables.primary.set_index(["split", "id"])
    p1, c1a = claims.loc[("test", "P1")], claims.loc[("test", "C1a")]
    assert (p1["ci_low"], p1["ci_high"]) == (c1a["ci_low"], c1a["ci_high"])
    assert (primary.loc[("test", "P1"), "two_level_ci_low"], primary.loc[("test", "P1"), "two_level_ci_high"]) == (
        c1a["ci_low"], c1a["ci_high"])
    assert p1["ci_low"] < p1["value"] < p1["ci_high"]


def test_a_seed_draw_is_made_once_per_split():
    from fairal.report.plan import Analysis, Measure

    a = Analysis(Measure(runs=pd.DataFrame(), keys=[]), "test", seed=0)
    first = a.seed_draw(4000, 10)
    assert a.seed_draw(4000, 10) is first  # the same replicates for every statistic of the split
    assert first.shape == (4000, 10) and first.min() == 0 and first.max() == 9
    assert a.seed_draw(10_000, 10).shape == (10_000, 10)  # another replicate count: a draw of its own


def test_case_noise_shows_in_the_two_level_interval_and_the_decomposition():
    # No seed effect and no WLE lift: every seed gives the same difference, only the cases vary.
    rounds, cases, round_cases = _records(seeds=10, lift=0.0, seed_noise=0.0, case_sd=0.05)
    tables = plan_tables(rounds, cases, round_cases, pd.DataFrame(), None)
    d = tables.decomposition.set_index(["split", "id"])
    c = tables.claims.set_index(["split", "id"])
    # Strategies other than WLE are identical: seed variance 0 and (the same cases for both) case variance 0.
    assert d.loc[("test", "C3b"), "seed_var"] == pytest.approx(0.0, abs=1e-20)
    assert d.loc[("test", "C3b"), "case_var"] == pytest.approx(0.0, abs=1e-20)
    # WLE's smaller Group 1 gap makes its Δ move differently under resampled cases: case variance > 0.
    assert d.loc[("test", "P1"), "case_var"] > 0 and d.loc[("eval", "P1"), "case_var"] > 0
    # More cases per group on the evaluation split: less case variance than on the 15 + 15 test cases.
    assert d.loc[("eval", "P1"), "case_var"] < d.loc[("test", "P1"), "case_var"]
    low, high = c.loc[("test", "P1"), ["ci_low", "ci_high"]]
    assert high - low > 0  # the two-level CI sees the cases although every seed agrees
    primary = tables.primary.set_index(["split", "id"])
    assert primary.loc[("eval", "P1"), "two_level_ci_high"] > primary.loc[("eval", "P1"), "two_level_ci_low"]


def test_primary_rows_carry_their_own_two_level_intervals():
    # WLE's lift differs by scenario: a row given another comparison's interval would not contain its own value.
    lifts = {("strong", "balanced"): 0.0, ("strong", "g1-heavy"): 0.01, ("strong", "g2-heavy"): 0.02,
             ("weak", "balanced"): 0.03, ("weak", "g1-heavy"): 0.04, ("weak", "g2-heavy"): 0.05}
    rounds, cases, round_cases = _records(seeds=5, lift=lifts, seed_noise=0.0005, case_sd=0.01)
    primary = plan_tables(rounds, cases, round_cases, pd.DataFrame(), None).primary
    assert len(primary) == 2 * (3 + 18)
    for r in primary.itertuples(index=False):
        assert r.two_level_ci_low <= r.value <= r.two_level_ci_high, r.id
    p = primary.set_index(["split", "id"])
    assert p.loc[("eval", "P1-weak-g2-heavy"), "two_level_ci_low"] > p.loc[("eval", "P1"), "two_level_ci_high"]


def test_a_loss_is_refuted_and_sensitivity_moves_ties(constructed):
    rounds, cases, round_cases, _ = constructed
    loss = rounds.copy()
    wle = loss["strategy"] == "weighted-localized-entropy"
    loss.loc[wle, "eval_essp"] -= 0.05
    tables = plan_tables(loss, cases, round_cases, pd.DataFrame(), None)
    c = tables.claims.set_index(["split", "id"])
    assert c.loc[("eval", "C1a"), "verdict"] == "refuted" and c.loc[("eval", "C1"), "verdict"] == "refuted"
    sens = tables.sensitivity
    assert set(sens["margin_factor"]) == {0.5, 1.0, 2.0}
    tie = sens[(sens["split"] == "eval") & (sens["id"] == "C3b")]
    assert tie.set_index("margin_factor")["margin"].to_dict() == pytest.approx({0.5: 0.0025, 1.0: 0.005, 2.0: 0.01})


def test_report_withholds_claims_until_the_planned_seeds_are_in(tmp_path, constructed):
    from typer.testing import CliRunner

    from fairal.cli import app

    rounds, cases, round_cases, _ = constructed
    folder = tmp_path / "v2"
    folder.mkdir()
    rounds[rounds["seed"] < 5].to_csv(folder / "rounds.csv", index=False)
    cases[cases["seed"] < 5].to_csv(folder / "cases.csv", index=False)
    plan = {"path": "docs/analysis-plan.md", "commit": "0" * 40, "blob": "1" * 40}
    (folder / "settings.json").write_text(json.dumps({"profile": "standard", "analysis_plan": plan,
                                                      "planned_seeds": 10}))
    res = CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "r" / "claims.csv").exists()
    assert "5 of the 10 pre-registered seeds" in (tmp_path / "r" / "report.html").read_text()
    rounds.to_csv(folder / "rounds.csv", index=False)
    (folder / "cases.csv").unlink()
    cases.to_csv(folder / "cases.csv.gz", index=False)  # as scripts/evidence.py exports it
    round_cases.to_csv(folder / "test_cases.csv.gz", index=False)
    rng = np.random.default_rng(2)
    base = [{"dataset": d, "seed": s, "cohort": c, **{f"{pre}{k}": v for pre in ("", "eval_") for k, v in
                                                      fairness_summary(rng.uniform(0.9, 0.95, 8),
                                                                       np.repeat([1, 2], 4)).items()}}
            for d in ("strong", "weak") for s in range(10) for c in ("all", "g1", "g2")]
    pd.DataFrame(base).to_csv(folder / "baselines.csv", index=False)
    from fairal.report.tidy import load_tidy
    assert len(load_tidy(folder).cases) == len(cases)
    res = CliRunner().invoke(app, ["report", str(folder), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    claims = pd.read_csv(tmp_path / "r" / "claims.csv")
    assert list(claims.columns[:10]) == ["id", "claim", "statistic", "value", "ci_low", "ci_high", "test",
                                         "p_value", "n", "verdict"]
    assert {"split", "p_holm", "p_tost", "within_margin"} <= set(claims.columns)
    html = (tmp_path / "r" / "report.html").read_text()
    assert "0000000000" in html  # the plan's commit is printed
    for name in ("claims_sensitivity.csv", "primary.csv", "variance_decomposition.csv", "claims.md",
                 "fig1_essp_eval.png", "fig2_delta_eval.png", "final_stats_eval.csv"):
        assert (tmp_path / "r" / name).is_file()
    # the final-budget table of the primary endpoint measures on the evaluation split, the paper's on the test split
    last = rounds[rounds["round"] == rounds["round"].max()]
    for name, column in (("final_budget_eval.csv", "eval_essp"), ("final_budget.csv", "essp")):
        table = pd.read_csv(tmp_path / "r" / name).set_index(["dataset", "init", "strategy"])
        expected = last.groupby(["dataset", "init", "strategy"])[column].mean()
        assert table["essp"].to_numpy() == pytest.approx(expected.loc[table.index].to_numpy())
    assert "Final budget (evaluation split, 150 + 150 subjects)" not in html  # the constructed profile has none
    assert "Final budget (evaluation split)" in html and "Final budget (paper&#x27;s test split)" in html
    assert "Table 1: baselines by training cohort (evaluation split)" in html
    assert html.count("Where the paper does not add up") == 1  # once, under the first Table 1
    t1 = pd.read_csv(tmp_path / "r" / "table1_baselines_eval.csv").set_index(["dataset", "cohort"])
    means = pd.DataFrame(base).groupby(["dataset", "cohort"])["eval_essp"].mean()
    assert t1["essp"].to_numpy() == pytest.approx(means.loc[t1.index].to_numpy())


def test_evaluation_split_view_swaps_the_measures_and_mixes_none():
    from fairal.report.tidy import Results, on_evaluation_split

    rounds = pd.DataFrame({"dataset": ["d"], "init": ["i"], "strategy": ["s"], "seed": [0], "round": [0],
                           "n_labeled": [10], "dice_all": [0.9], "dice_g1": [0.8], "dice_g2": [0.95],
                           "dice_g3": [0.7], "delta": [0.1], "essp": [0.8], "eval_dice_all": [0.5],
                           "eval_dice_g1": [0.4], "eval_dice_g2": [0.6], "eval_delta": [0.2], "eval_essp": [0.4]})
    results = Results(rounds, pd.DataFrame(), {("d", "i", "s", 0)}, [("d", "i", "s", 0)])
    ev = on_evaluation_split(results).rounds
    assert ev.loc[0, ["dice_all", "dice_g1", "dice_g2", "delta", "essp"]].tolist() == [0.5, 0.4, 0.6, 0.2, 0.4]
    assert "dice_g3" not in ev.columns  # a test measure without an evaluation counterpart is not carried over
    assert not any(c.startswith("eval_") for c in ev.columns)
    assert on_evaluation_split(Results(rounds.assign(eval_essp=np.nan, eval_delta=np.nan, eval_dice_all=np.nan,
                                                     eval_dice_g1=np.nan, eval_dice_g2=np.nan),
                                       pd.DataFrame(), set(), [])) is None  # a lab's data: no evaluation split
    assert on_evaluation_split(Results(rounds.drop(columns=[c for c in rounds if c.startswith("eval_")]),
                                       pd.DataFrame(), set(), [])) is None  # records before the split


def test_no_verdict_from_fewer_than_three_seeds():
    """The same clear win (CI above 0, p 0.001) is confirmed from 3 seeds; from 2 the row has its numbers and no
    verdict (a study run with too few seeds is described, not judged)."""
    def row(n):
        part = Part("x", "a > b", "essp: a - b", "essp", pairs=None, family="pooled",
                    estimate=Estimate(0.02, 0.01, 0.03, n, 0.001), p_tost={1.0: 0.9})
        return verdict_rows([part])[0]

    assert MIN_SEEDS_FOR_CLAIMS == 3
    assert row(3)["verdict"] == "confirmed"
    two = row(2)
    assert two["verdict"] == "" and not two["within_margin"] and two["value"] == 0.02 and two["p_value"] == 0.001


def test_reproduction_tables_print_the_reports_numbers(tmp_path, constructed, capsys):
    from .conftest import load_script

    *_, tables = constructed
    tables.claims.to_csv(tmp_path / "claims.csv", index=False)
    tables.primary.to_csv(tmp_path / "primary.csv", index=False)
    tables.sensitivity.to_csv(tmp_path / "claims_sensitivity.csv", index=False)
    tables.decomposition.to_csv(tmp_path / "variance_decomposition.csv", index=False)
    script = load_script("reproduction_tables")
    assert script.main([str(tmp_path), str(tmp_path / "v1")]) == 2  # no v1 report: refused, naming the file
    assert "v1/claims.csv is missing" in capsys.readouterr().err
    assert script.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    p1 = tables.primary.set_index(["split", "id"]).loc[("eval", "P1")]
    pooled = next(line for line in text.splitlines() if line.startswith("| P1 | WLE − random |"))
    assert f"{p1['value']:+.4f} [{p1['ci_low']:+.4f}, {p1['ci_high']:+.4f}]" in pooled
    assert "**confirmed**" in pooled
    c3 = next(line for line in text.splitlines() if line.startswith("| C3 |"))
    assert "**equivalent**" in c3  # the tie inside the margin, on both splits
    assert c3.count("**equivalent**") == 2


def test_evaluation_curves_come_before_the_test_splits():
    from fairal.report.build import figure_order

    keys = ["fig1_essp", "fig2_delta_dice_strong", "fig10_examples", "fig1_essp_eval", "fig2_delta_eval"]
    assert figure_order(dict.fromkeys(keys)) == ["fig1_essp_eval", "fig1_essp", "fig2_delta_eval",
                                                 "fig2_delta_dice_strong", "fig10_examples"]


def test_one_scenario_against_refutes_a_pooled_win():
    """Rule 5: WLE ahead pooled over the six scenarios, but one scenario's own CI below 0, is ``refuted``. The
    random effect is the mean of the six scenario means with a t interval over them (5 df), and the seed variance
    of the decomposition is var(seed means) / n; both recomputed here from the rounds table."""
    lifts = {(d, i): 0.03 for d in ("strong", "weak") for i in ("balanced", "g1-heavy", "g2-heavy")}
    lifts[("weak", "g2-heavy")] = -0.03  # every seed of this scenario loses
    rounds, cases, round_cases = _records(seeds=10, lift=lifts, seed_noise=0.004, case_sd=0.01)
    tables = plan_tables(rounds, cases, round_cases, pd.DataFrame(), None)
    c1a = tables.claims.set_index(["split", "id"]).loc[("eval", "C1a")]
    assert c1a["ci_low"] > 0 and c1a["p_holm"] < 0.05  # pooled, a clear win ...
    assert c1a["verdict"] == "refuted"  # ... that one scenario against overrides
    final = rounds[rounds["round"] == rounds["round"].max()].set_index(["dataset", "init", "seed", "strategy"])
    diff = (final["eval_essp"].xs("weighted-localized-entropy", level="strategy")
            - final["eval_essp"].xs("random", level="strategy"))
    scenario_means = diff.groupby(level=["dataset", "init"]).mean().to_numpy()
    assert scenario_means.min() < 0 < scenario_means.mean()
    half = 2.570582 * scenario_means.std(ddof=1) / math.sqrt(6)  # t(0.975, 5)
    assert c1a["re_value"] == pytest.approx(scenario_means.mean())
    assert (c1a["re_ci_low"], c1a["re_ci_high"]) == pytest.approx((scenario_means.mean() - half,
                                                                    scenario_means.mean() + half))
    seed_means = diff.groupby(level="seed").mean().to_numpy()
    d = tables.decomposition.set_index(["split", "id"]).loc[("eval", "C1a")]
    assert d["seed_var"] == pytest.approx(seed_means.var(ddof=1) / 10)
    assert d["seed_sd"] == pytest.approx(seed_means.std(ddof=1))
    assert d["case_share"] == pytest.approx(d["case_var"] / (d["case_var"] + d["seed_var"]))


def test_the_reduction_and_its_seed_bootstrap_by_hand():
    """Rule 7 (C4, strong bias) on the evaluation split: Δ(WLE) 0.01 in every strong-bias scenario of seed 0 and 0.03
    of seed 1, Δ(entropy) 0.04:
    1 - 0.02 / 0.04 = 0.5. Resampling two seeds gives 1 - 0.01/0.04, 1 - 0.02/0.04 or 1 - 0.03/0.04 with
    probabilities 1/4, 1/2, 1/4: the 95% interval is [0.25, 0.75]."""
    rounds, cases, round_cases = _records(seeds=2)
    strong = rounds["dataset"] == "strong"
    rounds.loc[strong & (rounds["strategy"] == "entropy"), "eval_delta"] = 0.04
    for seed, delta in ((0, 0.01), (1, 0.03)):
        rounds.loc[strong & (rounds["strategy"] == "weighted-localized-entropy") & (rounds["seed"] == seed),
                   "eval_delta"] = delta
    c4 = plan_tables(rounds, cases, round_cases, pd.DataFrame(), None).claims.set_index(["split", "id"]).loc[
        ("eval", "C4")]
    assert c4["value"] == pytest.approx(0.5)
    assert (c4["ci_low"], c4["ci_high"]) == pytest.approx((0.25, 0.75))
    assert c4["n"] == 2 and c4["verdict"] == ""  # two seeds: no verdict

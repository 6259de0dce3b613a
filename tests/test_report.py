"""The report on a small synthetic records fixture: numbers, figures, the HTML page, partial grids."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.report import build_report
from fairal.report.records import area_under_curve, final_table, load_results, seed_band

ROUND_COLS = ["round", "n_labeled", "n_labeled_g1", "n_labeled_g2", "g1_ratio", "dice_all", "dice_g1", "dice_g2",
              "delta", "essp", "w_g1", "w_g2"]


def _write_run(folder, dataset, init, strategy, seed, essp, delta, finished=True):
    d = folder / "runs" / dataset / init / strategy / f"seed-{seed}"
    d.mkdir(parents=True)
    rows = []
    for r, (e, dl) in enumerate(zip(essp, delta, strict=True)):
        n = 10 + 4 * r
        rows.append([r, n, n // 2, n - n // 2, 0.5, e * (1 + dl), 0.8, 0.9, dl, e, 0.5, 0.5])
    pd.DataFrame(rows, columns=ROUND_COLS).to_csv(d / "rounds.csv", index=False)
    (d / "state.json").write_text(json.dumps({"completed_round": len(rows) - 1, "finished": finished}))
    (d / "config.json").write_text(json.dumps({"settings": {"strategy": strategy, "profile": {"name": "smoke"}}}))


@pytest.fixture
def records(tmp_path):
    for dataset in ("strong", "weak"):
        for init in ("balanced", "g1-heavy", "g2-heavy"):
            for seed in (0, 1):
                _write_run(tmp_path, dataset, init, "entropy", seed, [0.7, 0.7, 0.7], [0.3, 0.25, 0.2])
                _write_run(tmp_path, dataset, init, "weighted-localized-entropy", seed, [0.6, 0.7, 0.8 + 0.1 * seed],
                           [0.1, 0.08, 0.05])
        base = tmp_path / "baseline" / dataset
        base.mkdir(parents=True)
        pd.DataFrame({"cohort": ["all", "g1", "g2"], "dice_g1": [0.9, 0.9, 0.7], "dice_g2": [0.95, 0.9, 0.95],
                      "dice_all": [0.925, 0.9, 0.825], "essp": [0.88, 0.9, 0.66], "delta": [0.05, 0.0, 0.25]}
                     ).to_csv(base / "baseline_table.csv", index=False)
    return tmp_path


def test_area_under_curve_by_hand():
    # ((0.6 + 0.7) / 2 * 4 + (0.7 + 0.8) / 2 * 4) / 8 = (2.6 + 3.0) / 8 = 0.7
    assert area_under_curve(np.array([10, 14, 18]), np.array([0.6, 0.7, 0.8])) == pytest.approx(0.7)
    assert area_under_curve(np.array([18, 10, 14]), np.array([0.8, 0.6, 0.7])) == pytest.approx(0.7)  # any order
    assert area_under_curve(np.array([10]), np.array([0.5])) == 0.5


def test_seed_band():
    # mean 0.8, sample SD 0.141421, t(0.975, 1) = 12.706205 -> half width 12.706205 * 0.141421 / sqrt(2) = 1.270620
    mean, lo, hi = seed_band(np.array([0.7, 0.9]))
    assert (mean, lo, hi) == pytest.approx((0.8, 0.8 - 1.270620, 0.8 + 1.270620), abs=1e-5)
    assert seed_band(np.array([0.4])) == (0.4, 0.4, 0.4)


def test_final_table_numbers(records):
    table = final_table(load_results(records)).set_index(["dataset", "init", "strategy"])
    wle = table.loc[("strong", "balanced", "weighted-localized-entropy")]
    ent = table.loc[("strong", "balanced", "entropy")]
    assert wle["n_seeds"] == 2 and wle["n_labeled"] == 18
    assert wle["essp"] == pytest.approx(0.85)  # mean of 0.8 and 0.9
    assert wle["delta_reduction_vs_entropy"] == pytest.approx(1 - 0.05 / 0.2)  # 75%
    assert ent["delta_reduction_vs_entropy"] == pytest.approx(0.0)
    # ESSP AUC: seed 0 -> 0.7; seed 1 -> ((0.6+0.7)*2 + (0.7+0.9)*2) / 8 = 0.725; mean 0.7125
    assert wle["essp_auc"] == pytest.approx(0.7125)
    assert ent["essp_auc"] == pytest.approx(0.7)


def test_report_files_and_html(records):
    html_path = build_report(records)
    out = html_path.parent
    for name in ("fig1_essp", "fig2_delta_dice_strong", "fig3_group1_ratio", "fig4_delta_dice_weak"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        assert (out / f"{name}.svg").stat().st_size > 10_000
    t1 = pd.read_csv(out / "table1_baselines.csv")
    assert t1.loc[(t1["dataset"] == "strong") & (t1["cohort"] == "g2"), "delta_paper"].item() == 0.18
    md = (out / "final_budget.md").read_text()
    assert md.startswith("| dataset | init | strategy |") and "| strong | balanced | entropy |" in md
    page = html_path.read_text()
    # the paper's four figures, then Dice per group (7) and Group 1's weight (8) over the rounds, in order
    assert page.count("data:image/png;base64,") == 6
    order = [page.index(f"Figure {k}:") for k in (1, 2, 3, 4, 7, 8)]
    assert order == sorted(order)
    assert "smoke profile: a pipeline check, not evidence" in page  # the fixture's runs say profile smoke
    assert "Not tested: 2 seeds per run" in page  # no verdicts from two seeds
    assert not re.search(r"""(src|href)=["']?(https?:|//|[\w./-]+\.(png|svg|css|js))""", page)  # self-contained
    assert "Table 1" in page and "How to read this" in page
    assert "mean of 2 seeds; bands: 95% t interval of the mean across seeds" in page


def test_partial_grid_lists_missing_runs(records):
    _write_run(records, "weak", "g2-heavy", "localized-entropy", 0, [0.5, 0.6], [0.2, 0.1], finished=False)
    results = load_results(records)
    assert ("weak", "g2-heavy", "localized-entropy", 0) in results.missing
    # random and localized entropy were never run: 2 datasets x 3 inits x 2 strategies x 2 seeds = 24 missing
    assert len(results.missing) == 24
    table = final_table(results)
    assert "localized-entropy" not in set(table["strategy"])  # unfinished runs stay out of the final table
    page = build_report(records).read_text()
    assert "Partial results:</b> 24 runs" in page and "weak / g2-heavy / localized-entropy / 0" in page


def test_report_command_errors_and_output(records, tmp_path):
    res = CliRunner().invoke(app, ["report", str(records), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.html").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty-folder")])
    assert res.exit_code == 2 and "results folder not found" in res.output


def test_strategies_beyond_the_paper_get_their_own_figures(records):
    for dataset in ("strong", "weak"):
        for init in ("balanced", "g1-heavy", "g2-heavy"):
            for seed in (0, 1):
                _write_run(records, dataset, init, "weighted-bald", seed, [0.65, 0.75, 0.85], [0.1, 0.06, 0.04])
    out = build_report(records).parent
    for name in ("fig5_beyond_essp", "fig6_beyond_delta"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    final = pd.read_csv(out / "final_budget.csv")
    row = final[(final["dataset"] == "strong") & (final["init"] == "balanced") & (final["strategy"] == "weighted-bald")]
    assert row["delta_reduction_vs_entropy"].item() == pytest.approx(1 - 0.04 / 0.2)
    assert final["strategy"].tolist()[:3] == ["entropy", "weighted-localized-entropy", "weighted-bald"]


def test_three_groups_in_the_final_table(tmp_path):
    d = tmp_path / "runs" / "mine" / "balanced" / "entropy" / "seed-0"
    d.mkdir(parents=True)
    pd.DataFrame([[0, 10, 4, 3, 3, 0.8, 0.9, 0.8, 0.7, 0.2, 0.667, 0.3, 0.3, 0.4],
                  [1, 14, 5, 5, 4, 0.85, 0.9, 0.85, 0.8, 0.1, 0.773, 0.3, 0.3, 0.4]],
                 columns=["round", "n_labeled", "n_labeled_g1", "n_labeled_g2", "n_labeled_g3", "dice_all", "dice_g1",
                          "dice_g2", "dice_g3", "delta", "essp", "w_g1", "w_g2", "w_g3"]).to_csv(d / "rounds.csv",
                                                                                                index=False)
    (d / "state.json").write_text(json.dumps({"completed_round": 1, "finished": True}))
    final = final_table(load_results(tmp_path))
    assert final[["dice_g1", "dice_g2", "dice_g3"]].iloc[0].tolist() == [0.9, 0.85, 0.8]
    out = build_report(tmp_path).parent
    assert (out / "fig1_essp.png").is_file() and not (out / "fig3_group1_ratio.png").exists()  # no g1_ratio column


def test_a_single_run_folder_has_a_report(tiny_dataset, tmp_path):
    from fairal.config import get_profile
    from fairal.loop import ActiveLearningRun, RunSpec

    tiny = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2",
            "crop_margin": "4", "downsample": "1", "test_per_group": "6"}
    run = tmp_path / "my-run"
    ActiveLearningRun(RunSpec(str(tiny_dataset), "entropy", "balanced", 0, get_profile("smoke", tiny)), run).run()
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report" / "report.html").read_text()
    assert "1 finished active-learning run of" in page and "Figure 1:" in page


def test_compare_runs_by_hand(tmp_path):
    from fairal.report.records import compare_runs

    for name, dice, picked in (("a", 0.50, "True"), ("b", 0.53, "True"), ("c", 0.50, "False")):
        d = tmp_path / name
        d.mkdir()
        (d / "rounds.csv").write_text(f"round,n_labeled,dice_all,delta\n0,4,{dice},\n")  # delta NaN in both
        (d / "cases.csv").write_text("round,case_id,group,split,dice\n0,s1,1,test,0.25\n")
        (d / "selections.csv").write_text(f"round,case_id,group,score,selected\n0,s2,2,0.1,{picked}\n")
    ab = compare_runs(tmp_path / "a", tmp_path / "b").set_index("file")
    assert ab["same_rows"].all()
    assert ab.loc["rounds.csv", "max_abs_diff"] == pytest.approx(0.03)
    assert ab.loc["cases.csv", "max_abs_diff"] == 0.0
    ac = compare_runs(tmp_path / "a", tmp_path / "c").set_index("file")
    assert not ac.loc["selections.csv", "same_rows"] and ac.loc["rounds.csv", "same_rows"]

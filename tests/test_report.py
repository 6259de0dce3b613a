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
from fairal.report.tidy import area_under_curve, final_table, load_results, seed_band

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
    config = {"settings": {"strategy": strategy, "profile": {"name": "smoke", "lr": 0.001, "seeds": 1,
                                                             "device": "auto"}},
              "versions": {"fairal": "0.1.0", "torch": "2.11.0"}, "device": "cpu"}
    (d / "config.json").write_text(json.dumps(config))
    return d


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
    # uneven sizes weigh each step by its width: ((0.6 + 0.8) / 2 * 2 + (0.8 + 0.7) / 2 * 8) / 10 = (1.4 + 6.0) / 10;
    # equal steps would give 0.725, the plain mean 0.7
    assert area_under_curve(np.array([10, 12, 20]), np.array([0.6, 0.8, 0.7])) == pytest.approx(0.74)


def test_the_resampled_auc_weighs_as_the_trapezoid():
    from fairal.report.plan import _auc_weights

    # sizes 10, 12, 20: half-steps 1 and 4 -> weights (1, 1 + 4, 4) / 10; they turn 0.6, 0.8, 0.7 into 0.74 as above
    w = _auc_weights(np.array([10, 12, 20]))
    assert w == pytest.approx([0.1, 0.5, 0.4])
    assert w @ np.array([0.6, 0.8, 0.7]) == pytest.approx(0.74)
    assert _auc_weights(np.array([10])).tolist() == [1.0]


def test_seed_band():
    # mean 0.8, sample SD 0.141421, t(0.975, 1) = 12.706205 -> half width 12.706205 * 0.141421 / sqrt(2) = 1.270620
    mean, lo, hi = seed_band(np.array([0.7, 0.9]))
    assert (mean, lo, hi) == pytest.approx((0.8, 0.8 - 1.270620, 0.8 + 1.270620), abs=1e-5)
    mean, lo, hi = seed_band(np.array([0.4]))  # one seed: the value, no band
    assert mean == 0.4 and np.isnan(lo) and np.isnan(hi)


def test_bands_stay_inside_what_a_measure_can_take():
    from fairal.records import bounds

    # shares 0.9 and 1.0: mean 0.95, SD 0.0707107, half width 12.706205 * 0.0707107 / sqrt(2) = 0.635310:
    # [0.314690, 1.585310] -> the upper end clipped to 1
    assert seed_band(np.array([0.9, 1.0]), bounds("g1_ratio")) == pytest.approx((0.95, 0.314690, 1.0), abs=1e-6)
    # Delta 0.001 and 0.003: mean 0.002, half width 12.706205 * 0.00141421 / sqrt(2) = 0.0127062 -> [0, 0.0147062]
    assert seed_band(np.array([0.001, 0.003]), bounds("delta")) == pytest.approx((0.002, 0.0, 0.0147062), abs=1e-6)
    assert seed_band(np.array([0.9, 1.0]), bounds("w_g2"))[2] == 1.0
    assert seed_band(np.array([0.9, 1.0]))[2] == pytest.approx(1.585310, abs=1e-6)  # no bounds: the t interval


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
    # the paper's four figures, then Dice per group and Group 1's weight over the rounds, each under its file's
    # number (no strategies beyond the paper: no fig5/fig6, and the page says why), each with its files
    assert page.count("data:image/png;base64,") == 6
    assert re.findall(r"<h3>Figure (\d+): [^<]*<span class='file'>(\w+)\.png", page) == [
        ("1", "fig1_essp"), ("2", "fig2_delta_dice_strong"), ("3", "fig3_group1_ratio"),
        ("4", "fig4_delta_dice_weak"), ("7", "fig7_dice_per_group"), ("8", "fig8_group_weights")]
    assert ("Not drawn from these records: 5: no strategy beyond the paper&#x27;s; 6: no strategy beyond the "
            "paper&#x27;s; 9: no per-case Dice recorded; 10: no finished weighted-localized-entropy run with its "
            "example slices (examples.npz; runs finished before fairal wrote that file have none).") in page
    assert "smoke profile: a pipeline check, not evidence" in page  # the fixture's runs say profile smoke
    assert "Not tested: 2 seeds per run" in page  # no verdicts from two seeds
    assert not re.search(r"""(src|href)=["']?(https?:|//|[\w./-]+\.(png|svg|css|js))""", page)  # self-contained
    assert "Table 1" in page and "How to read this" in page
    assert "mean of 2 seeds; bands: 95% t interval of the mean across seeds" in page


def test_every_figure_names_its_split_and_the_page_numbers_match_the_files(records):
    page = build_report(records).read_text()
    captions = re.findall(r"<h3>(Figure (\d+): [^<]*)<span class='file'>fig(\d+)_(\w+)\.png", page)
    assert len(captions) == 6
    for caption, number, file_number, _ in captions:
        assert number == file_number
        assert "on the test split" in caption or "on no split" in caption, caption
    on = {name: caption for caption, _, _, name in captions}
    assert "on the test split" in on["dice_per_group"]  # Figure 7 names its split
    assert "on no split" in on["group1_ratio"] and "on no split" in on["group_weights"]  # the labeled set's
    svg = (build_report(records).parent / "fig7_dice_per_group.svg").read_text()
    assert "test split" in svg  # and so does its y-axis


def test_a_caption_describes_only_the_columns_its_table_has(records):
    two = build_report(records).read_text()
    final = two[two.index("<h2>Final budget</h2>"):]
    final = final[:final.index("</table>")]
    assert "G1 share of acquisitions</i>: of the cases" in final and "<th>G1 share of acquisitions</th>" in final
    for run in records.glob("runs/*/*/*/seed-1"):  # one seed: no statistics across seeds, no such column
        for f in run.iterdir():
            f.unlink()
        run.rmdir()
    one = build_report(records).read_text()
    final = one[one.index("<h2>Final budget</h2>"):]
    final = final[:final.index("</table>")]
    assert "G1 share of acquisitions" not in final
    assert "<i>G1 share of labeled set</i>: Group 1's share of the final labeled set (initial set included)." in final
    assert "<th>G1 share of labeled set</th>" in final


def test_the_data_preview_takes_the_page_width(records):
    from fairal.report.html import HEAD

    preview = records / "data" / "strong" / "preview.png"
    preview.parent.mkdir(parents=True)
    preview.write_bytes(b"\x89PNG\r\n\x1a\n")  # embedded as it is
    page = build_report(records).read_text()
    section = page[page.index("<h2>The synthetic data</h2>"):page.index("<h2>", page.index("<h2>The synthetic"
                                                                                              " data</h2>") + 4)]
    assert "<figure><img alt=\"preview of the strong dataset\"" in section
    assert "wide" not in section and "1050px" not in "".join(HEAD)  # no fixed width: cut on a narrow screen
    assert "img{max-width:100%;height:auto}" in "".join(HEAD)


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
    page = (out / "report.html").read_text()
    numbers = re.findall(r"<h3>Figure (\d+): [^<]*<span class='file'>fig(\d+)_", page)
    assert numbers == [(str(k), str(k)) for k in range(1, 9)]  # fig1 ... fig8, in order, under their own numbers
    assert "Not drawn from these records: 9: no per-case Dice recorded; 10: no finished weighted-" in page
    final = pd.read_csv(out / "final_budget.csv")
    row = final[(final["dataset"] == "strong") & (final["init"] == "balanced") & (final["strategy"] == "weighted-bald")]
    assert row["delta_reduction_vs_entropy"].item() == pytest.approx(1 - 0.04 / 0.2)
    assert final["strategy"].tolist()[:3] == ["entropy", "weighted-localized-entropy", "weighted-bald"]


def test_a_strategy_keeps_its_colour_in_every_figure_and_others_get_free_ones():
    from fairal.report.figures import COLOURS, OKABE_ITO, colours_for

    study1 = colours_for(["localized-entropy", "random", "weighted-localized-entropy", "wle-groups-unknown"])
    study2 = colours_for(["entropy", "localized-entropy", "random", "weighted-localized-entropy"])
    assert study1["weighted-localized-entropy"] == study2["weighted-localized-entropy"] == "#D55E00"
    assert study1["localized-entropy"] == study2["localized-entropy"] == "#E69F00"
    assert study1["wle-groups-unknown"] == "#000000"  # Okabe-Ito's first, which no fixed colour of the figure has
    crowded = colours_for([*COLOURS, "mine", "yours"])  # all eight fixed colours taken: yellow, then tab10's brown
    assert len(set(crowded.values())) == 10 and (crowded["mine"], crowded["yours"]) == ("#F0E442", "#8C564B")
    assert OKABE_ITO[4] == "#F0E442"
    two = colours_for(["mine", "entropy", "yours"])  # entropy's blue (#0072B2) is skipped for the others
    assert two == {"mine": "#000000", "entropy": "#0072B2", "yours": "#E69F00"}


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
    from fairal.run.loop import ActiveLearningRun, RunSpec

    tiny = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2",
            "crop_margin": "4", "downsample": "1", "test_per_group": "6"}
    run = tmp_path / "my-run"
    ActiveLearningRun(RunSpec(str(tiny_dataset), "entropy", "balanced", 0, get_profile("smoke", tiny)), run).run()
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report" / "report.html").read_text()
    assert "1 finished active-learning run of" in page and "Figure 1:" in page


def test_compare_runs_by_hand(tmp_path):
    from fairal.report.tidy import compare_runs

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


def _settings(page: str) -> tuple[str, str]:
    """The settings block of a report page: the records' part and the line on the software that drew the page."""
    block = page[page.index("<h2>Settings</h2>"):]
    records, drawn = block.split("This page was drawn by")
    return records, drawn


def test_settings_are_the_records_own(tmp_path):
    """Tidy records: the seeds, device, versions, commit and analysis plan of settings.json and rounds.csv, not
    the profile's defaults or the software drawing the page."""
    from tests.test_claims import _tidy

    folder = tmp_path / "tidy"
    folder.mkdir()
    _tidy(seeds=3).to_csv(folder / "rounds.csv", index=False)
    plan = {"path": "docs/analysis-plan.md", "commit": "312e003abc", "blob": "88af053def"}
    (folder / "settings.json").write_text(json.dumps({
        "profile": "standard", "commit": "4f0b21a", "versions": {"fairal": "0.1.0", "torch": "9.9.9"},
        "device": "cuda:0 (NVIDIA H200)", "analysis_plan": plan, "planned_seeds": 10, "where": "one GPU",
        "run_settings": {"strategy": "entropy", "seed": 0, "profile": {
            "description": "warm-started rounds, 1 seed", "seeds": 1, "device": "auto", "lr": 0.001}}}))
    page = build_report(folder, tmp_path / "rep").read_text()
    records, drawn = _settings(page)
    assert "<th>seeds</th><td class=text>3 per run (0, 1, 2) of the 10 planned; the profile's default (its " \
           "<code>seeds</code> setting) is 1</td>" in records
    assert "<th>device</th><td class=text>cuda:0 (NVIDIA H200)</td>" in records
    assert "<th>versions</th><td class=text>fairal 0.1.0, torch 9.9.9</td>" in records
    assert "<th>commit</th><td class=text>4f0b21a</td>" in records
    assert "docs/analysis-plan.md at commit 312e003abc, git blob (hash of the file) 88af053def" in records
    assert "the profile's description of its defaults: &ldquo;warm-started rounds, 1 seed&rdquo;" in records
    assert "<code>device</code>&nbsp;=&nbsp;auto (asked for; where the runs ran: above)" in records
    assert "<code>seeds</code>&nbsp;=&nbsp;1 (default; the seeds of these records: above)" in records
    assert "mixed here" not in records  # one settings file holds for every run
    from fairal import versions

    assert f"torch {versions()['torch']}" in drawn and "9.9.9" not in drawn
    assert "Not computed: withheld: 3 of the 10 pre-registered seeds" in page


def test_run_folders_with_differing_settings_show_each_value(records):
    for seed in (0, 1):  # two of the 24 runs on a GPU with another torch and learning rate
        run = records / "runs" / "weak" / "g2-heavy" / "entropy" / f"seed-{seed}"
        config = json.loads((run / "config.json").read_text())
        config.update(device="cuda:0 (NVIDIA H200)", versions={"fairal": "0.1.0", "torch": "2.13.0"})
        config["settings"]["profile"]["lr"] = 0.0001
        (run / "config.json").write_text(json.dumps(config))
    records_part, _ = _settings(build_report(records).read_text())
    assert "cpu (22 runs); cuda:0 (NVIDIA H200) (2 runs)" in records_part
    assert "fairal 0.1.0, torch 2.11.0 (22 runs); fairal 0.1.0, torch 2.13.0 (2 runs)" in records_part
    assert "<code>lr</code>&nbsp;=&nbsp;<span class='mixed'>0.001 (22 runs); 0.0001 (2 runs)</span>" in records_part
    assert "Runs of different settings are mixed here: lr." in records_part
    assert "<th>seeds</th><td class=text>2 per run (0, 1); the profile's default" in records_part


def test_tables_bold_ties_alike_put_intervals_beside_values_and_print_the_paper_as_printed():
    from fairal.report.build import as_printed
    from fairal.report.html import html_table

    df = pd.DataFrame({"dataset": ["weak", "weak", "weak", "strong"], "essp": [0.9181, 0.9179, 0.5, 0.7],
                       "essp_ci_low": [0.9, 0.91, 0.4, 0.6], "essp_ci_high": [0.93, 0.92, 0.6, 0.8]})
    table = html_table(df, best={"essp": "max"}, within=["dataset"], ci={"essp": ("essp_ci_low", "essp_ci_high")})
    # 0.9181 and 0.9179 both read 0.918: both bold; the strong row is the best of its dataset
    assert table.count("<b>") == 3 and "<b>0.500</b>" not in table
    assert "<td><b>0.918</b> <span class='ci'>[0.900, 0.930]</span></td>" in table
    assert "CI low" not in table and "essp ci" not in table  # the interval's columns are not columns of their own
    assert [as_printed(v) for v in (0.88, 0.9, 0.002, 0.18)] == ["0.88", "0.90", "0.002", "0.18"]


def test_table1_prints_the_papers_values_with_its_decimals(records):
    out = build_report(records).parent
    md = (out / "table1_baselines.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| weak | g1 |"))
    assert "| 0.90 | 0.90 | 0.90 | 0.90 | 0.002 |" in row  # the paper's Dice G1, G2, all, ESSP, Δ as printed
    assert "0.900 |" in row  # our own numbers keep three decimals

"""Studies: the study file's checks, groups hidden from the strategies in an AL run, and a study of a simulated
dataset of another structure and a lab's CSV cohort end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.config import get_profile
from fairal.errors import FairalError
from fairal.grid.driver import grid, run_dir, study_grid
from fairal.grid.spec import load_study, paper_study
from fairal.run.loop import ActiveLearningRun, RunSpec

from .conftest import LABEL_VALUE, OUT_SHAPE, load_script, make_template

TINY = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2", "crop_margin": "4",
        "downsample": "1", "test_per_group": "6", "eval_per_group": "0", "n_subjects": "24"}


def _write(path, text):
    path.write_text(text)
    return path


def _refused(tmp_path, text, *needles):
    path = _write(tmp_path / "s.toml", text)
    with pytest.raises(FairalError) as err:
        load_study(path)
    for n in needles:
        assert n in str(err.value), str(err.value)
    return str(err.value)


def test_malformed_study_files_are_refused_naming_the_key(tmp_path):
    ok = '[datasets.a]\nsimulate = { bias = "weak" }\n'
    _refused(tmp_path, 'strategy = ["random"]\n' + ok, "unknown key 'strategy'", "did you mean 'strategies'")
    _refused(tmp_path, 'name = "x"\n', "names no dataset")
    _refused(tmp_path, 'strategies = ["weighted-localised-entropy"]\n' + ok, "weighted-localised-entropy")
    _refused(tmp_path, '[datasets.a]\nsimulate = { bias = "weak", n_subject = 3 }\n', "dataset a",
             "unknown key 'n_subject'", "n_subjects")
    _refused(tmp_path, '[datasets.a]\nsimulate = { bias = "medium" }\n', "dataset a", "medium")
    _refused(tmp_path, '[datasets.a]\nsimulate = {}\ncsv = "c.csv"\n', "exactly one of 'simulate'")
    _refused(tmp_path, '[datasets.a]\nsimulate = {}\ngroups_kown = false\n', "unknown key 'groups_kown'")
    _refused(tmp_path, 'reference = "bald"\nstrategies = ["random"]\n' + ok, "reference 'bald'")
    _refused(tmp_path, 'inits = ["g1-light"]\n' + ok, "g1-light")
    _refused(tmp_path, 'seeds = 0\n' + ok, "seeds must be")
    _refused(tmp_path, 'profile = "fast"\n' + ok, "unknown profile 'fast'")
    _refused(tmp_path, 'strategies = ["random", "random"]\n' + ok, "two strategies are named 'random'")
    _refused(tmp_path, 'name = [1\n', "not a valid TOML")
    with pytest.raises(FairalError, match="no such study file"):
        load_study(tmp_path / "missing.toml")


def test_a_csv_cohort_without_labels_or_groups_is_refused(tmp_path, tiny_dataset):
    m = pd.read_csv(tiny_dataset / "manifest.csv").head(6)
    rows = pd.DataFrame({"case_id": m["case_id"], "image": [str(tiny_dataset / p) for p in m["image"]],
                         "label": [str(tiny_dataset / p) for p in m["label"]], "site": m["group"].astype(str)})
    rows.loc[2, "label"] = ""
    rows.to_csv(tmp_path / "c.csv", index=False)
    text = '[datasets.lab]\ncsv = "c.csv"\ngroup_by = ["site"]\n'
    _refused(tmp_path, text, "c.csv", "every case needs a label", "1 have none", rows["case_id"][2])
    rows.loc[2, "label"] = str(tiny_dataset / m["label"][2])
    rows.loc[4, "site"] = ""
    rows.to_csv(tmp_path / "c.csv", index=False)
    _refused(tmp_path, text, "have no group in site")
    _refused(tmp_path, '[datasets.lab]\ncsv = "c.csv"\n', "needs group_by")
    _refused(tmp_path, '[datasets.lab]\ncsv = "c.csv"\ngroup_by = ["hospital"]\n', "hospital")


def test_a_bad_setting_is_refused_before_any_work(tmp_path):
    study = _write(tmp_path / "s.toml", '[set]\nstepz = 3\n[datasets.a]\nsimulate = { bias = "weak" }\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["study", str(study), str(out), "--profile", "smoke"])
    assert res.exit_code == 2 and "s.toml ([set]): unknown setting 'stepz'" in res.output, res.output
    assert not out.exists()
    _write(study, '[datasets.a]\nsimulate = { bias = "weak" }\nset = { stepz = 3 }\n')
    res = CliRunner().invoke(app, ["study", str(study), str(out), "--profile", "smoke"])
    assert res.exit_code == 2 and "s.toml (dataset a): unknown setting 'stepz'" in res.output, res.output


def test_the_paper_study_is_reproduces_grid():
    """`fairal reproduce` is the built-in study: the same runs, folders and settings."""
    prof = get_profile("smoke")
    runs = study_grid(Path("o"), paper_study(), prof, 2)
    keys = [(r.dataset, r.init, r.arm.name, r.seed) for r in runs]
    assert keys == grid(2, prof.strategies)
    assert all(r.profile == prof for r in runs)
    assert runs[0].folder("o") == run_dir("o", *keys[0])
    assert paper_study().baselines and [d.simulate for d in paper_study().datasets] == [
        {"bias": "strong", "seed": 0}, {"bias": "weak", "seed": 1}]


def test_settings_apply_in_order_profile_study_dataset_arm_command_line(tmp_path):
    text = ('[set]\nsteps = 7\nround_steps = 5\n[datasets.a]\nsimulate = { bias = "weak" }\ngroups_known = false\n'
            'set = { round_steps = 4 }\n[datasets.b]\nsimulate = { bias = "weak" }\n')
    text = 'strategies = ["random", { name = "w", strategy = "weighted-bald", set = { steps = 6 } }]\n' + text
    text = 'reference = "w"\n' + text
    s = load_study(_write(tmp_path / "s.toml", text))
    base = get_profile("smoke")
    a, b = s.datasets
    w = s.arms[1]
    assert (s.profile_for(base, a, w, {}).steps, s.profile_for(base, a, w, {}).round_steps) == (6, 4)
    assert s.profile_for(base, a, w, {}).groups_known is False
    assert s.profile_for(base, b, s.arms[0], {}).groups_known is True
    assert s.profile_for(base, a, w, {"steps": "2"}).steps == 2  # the command line last


def test_a_run_with_the_pool_groups_hidden(tiny_dataset, tmp_path):
    """groups_known false: the labeled cases keep their group (the weights), every candidate gets the expected
    weight sum_g p(g|x) w_g; with fewer than 5 labeled cases per group p(g|x) is the labeled set's group shares,
    so the weight is hand-computable from the round's records."""
    prof = get_profile("smoke", {**TINY, "groups_known": "false"})
    out = tmp_path / "run"
    rounds = ActiveLearningRun(RunSpec(str(tiny_dataset), "weighted-localized-entropy", "g1-heavy", 0, prof),
                               out).run()
    config = json.loads((out / "config.json").read_text())
    assert config["groups_known"] is False and config["settings"]["profile"]["groups_known"] is False
    sel = pd.read_csv(out / "selections.csv")
    assert set(sel["group"]) == {1, 2}  # the true groups stay in the records, for the metrics
    for _, r in rounds[rounds["round"] < rounds["round"].max()].iterrows():
        expected = (r["n_labeled_g1"] * r["w_g1"] + r["n_labeled_g2"] * r["w_g2"]) / r["n_labeled"]
        w = sel.loc[sel["round"] == r["round"], "weight"].to_numpy()
        assert np.allclose(w, expected, atol=1e-12)
        assert r["group_model"] == "frequencies" and 0 <= r["pool_group_accuracy"] <= 1
    known = ActiveLearningRun(RunSpec(str(tiny_dataset), "weighted-localized-entropy", "g1-heavy", 0,
                                      get_profile("smoke", TINY)), tmp_path / "known").run()
    assert "group_model" not in known.columns
    sel_known = pd.read_csv(tmp_path / "known" / "selections.csv")
    first = sel_known[sel_known["round"] == 0]
    w1, w2 = known.loc[0, "w_g1"], known.loc[0, "w_g2"]
    assert np.allclose(first["weight"], np.where(first["group"] == 1, w1, w2))


def _cohort_csv(tiny_dataset, tmp_path):
    m = pd.read_csv(tiny_dataset / "manifest.csv")
    rows = pd.DataFrame({"case_id": m["case_id"], "image": [str(tiny_dataset / p) for p in m["image"]],
                         "label": [str(tiny_dataset / p) for p in m["label"]],
                         "site": np.where(m["group"] == 1, "north", "south")})
    rows.to_csv(tmp_path / "cohort.csv", index=False)
    return tmp_path / "cohort.csv"


def test_a_study_of_another_structure_and_a_csv_cohort_end_to_end(tiny_dataset, tmp_path):
    tpl, lab = make_template(tmp_path)
    _cohort_csv(tiny_dataset, tmp_path)
    settings = "\n".join(f"{k} = {v}" for k, v in TINY.items())
    tiny = f'template = "{tpl}", label = "{lab}", shape = {list(OUT_SHAPE)}'
    three = '["1:bias=strong", "2", "3:contrast=1.2"]'
    study = _write(tmp_path / "study.toml", f'''
name = "structures-and-sites"
profile = "smoke"
seeds = 2
inits = ["balanced"]
strategies = ["random", "weighted-localized-entropy",
              {{ name = "wle-groups-unknown", strategy = "weighted-localized-entropy", groups_known = false }}]
reference = "weighted-localized-entropy"
[set]
{settings}
[datasets.right]    # the template's other caudate (label 7) as the segmented and biased structure
simulate = {{ template = "{tpl}", label = "{lab}", label_value = 7, shape = {list(OUT_SHAPE)}, seed = 3 }}
[datasets.three]    # three groups: the morphological bias, a scanner's contrast, neither
simulate = {{ {tiny}, label_value = {LABEL_VALUE}, seed = 4, group = {three} }}
[datasets.lab]
csv = "cohort.csv"
group_by = ["site"]
groups_known = false
spacing = 1.0
margin_mm = 3
''')
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["study", str(study), str(out), "--jobs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    for d in ("right", "three", "lab"):
        for arm in ("random", "weighted-localized-entropy", "wle-groups-unknown"):
            for seed in (0, 1):
                state = json.loads((run_dir(out, d, "balanced", arm, seed) / "state.json").read_text())
                assert state["finished"]
    hidden = json.loads((run_dir(out, "right", "balanced", "wle-groups-unknown", 0) / "config.json").read_text())
    shown = json.loads((run_dir(out, "right", "balanced", "weighted-localized-entropy", 0) / "config.json"
                        ).read_text())
    lab_wle = json.loads((run_dir(out, "lab", "balanced", "weighted-localized-entropy", 0) / "config.json"
                          ).read_text())
    assert (hidden["groups_known"], shown["groups_known"], lab_wle["groups_known"]) == (False, True, False)
    right = json.loads((out / "data" / "right" / "dataset.json").read_text())["settings"]
    assert right["label_value"] == 7 and right["n_subjects"] == 24  # the profile's size unless the file gives one
    manifest = pd.read_csv(out / "data" / "lab" / "manifest.csv")
    assert set(manifest["group"]) == {"north", "south"}
    assert manifest.groupby("group")["split"].apply(lambda s: (s == "test").sum()).tolist() == [6, 6]
    assert (tmp_path / "cohort.csv").read_text().count("\n") == 25  # the user's file is only read
    paired = pd.read_csv(out / "report" / "study_paired.csv")
    assert set(paired["dataset"]) == {"right", "three", "lab"}
    three = pd.read_csv(run_dir(out, "three", "balanced", "weighted-localized-entropy", 0) / "rounds.csv")
    assert {"w_g1", "w_g2", "w_g3", "dice_g3"} <= set(three.columns)
    assert {"random", "wle-groups-unknown"} <= set(paired["statistic"].str.extract(r"- (\S+)$")[0].dropna())
    assert paired["verdict"].isna().all()  # 2 seeds: estimates and tests, no verdict (it needs 3)
    summary = pd.read_csv(out / "report" / "study_summary.csv")
    assert len(summary) == 9 and (summary["n_seeds"] == 2).all()
    html = (out / "report" / "report.html").read_text()
    assert "2 seed(s) give no verdict" in html and "A verdict needs at least 3 seeds (equivalent)" in html
    assert "structures-and-sites" in html and "groups_known = false" in html  # the study file echoed
    assert all((out / "report" / f"study_{d}.png").is_file() for d in ("right", "three", "lab"))
    again = CliRunner().invoke(app, ["study", str(study), str(out), "--jobs", "1", "--quiet"])
    assert again.exit_code == 0, again.output  # everything finished: nothing to redo


def test_a_dataset_folder_and_runs_reused_from_another_study(tiny_dataset, tmp_path):
    """``folder``: a dataset made before, only read; ``--reuse``: finished runs of identical settings on the same
    data are linked (the same files), a run of other settings is run anew."""
    settings = "\n".join(f"{k} = {v}" for k, v in TINY.items())
    text = (f'profile = "smoke"\nseeds = 1\ninits = ["balanced"]\nstrategies = ["random"]\nreference = "random"\n'
            f'[set]\n{settings}\n[datasets.tiny]\nfolder = "{tiny_dataset}"\n')
    first = _write(tmp_path / "a.toml", text)
    res = CliRunner().invoke(app, ["study", str(first), str(tmp_path / "a"), "--jobs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "a" / "data").exists()  # the folder is used where it is
    res = CliRunner().invoke(app, ["study", str(first), str(tmp_path / "b"), "--jobs", "1", "--quiet", "--reuse",
                                   str(tmp_path / "a"), "--strategies", "random,entropy"])
    assert res.exit_code == 0, res.output
    a, b = (run_dir(tmp_path / x, "tiny", "balanced", "random", 0) / "rounds.csv" for x in "ab")
    assert a.stat().st_ino == b.stat().st_ino  # linked, not run again
    assert json.loads((run_dir(tmp_path / "b", "tiny", "balanced", "entropy", 0) / "state.json").read_text()
                      )["finished"]
    res = CliRunner().invoke(app, ["study", str(first), str(tmp_path / "c"), "--jobs", "1", "--quiet", "--reuse",
                                   str(tmp_path / "a"), "--set", "steps=4"])
    assert res.exit_code == 0, res.output
    c = run_dir(tmp_path / "c", "tiny", "balanced", "random", 0) / "rounds.csv"
    assert c.stat().st_ino != a.stat().st_ino  # other settings: run anew
    bad = CliRunner().invoke(app, ["study", str(first), str(tmp_path / "d"), "--reuse", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "no results folder" in bad.output


def test_runs_trained_in_lockstep_keep_their_own_settings(tiny_dataset, tmp_path):
    """A lockstep task carries each run's spec as the grid made it: the study's [set] and an arm's own settings
    reach the worker (not the command's base profile), in the records and in the training."""
    from fairal.grid.driver import run_study

    settings = "\n".join(f"{k} = {v}" for k, v in TINY.items())
    text = (f'seeds = 1\ninits = ["balanced"]\nreference = "random"\nstrategies = ["random", {{ name = "short", '
            f'strategy = "entropy", set = {{ round_steps = 1 }} }}]\n[set]\n{settings}\n[datasets.tiny]\n'
            f'folder = "{tiny_dataset}"\n')
    study = load_study(_write(tmp_path / "s.toml", text))
    run_study(study, tmp_path / "out", get_profile("smoke"), jobs=1, progress=False, pack="on")
    for arm, steps in (("random", 2), ("short", 1)):
        config = json.loads((run_dir(tmp_path / "out", "tiny", "balanced", arm, 0) / "config.json").read_text())
        profile = config["settings"]["profile"]
        assert (profile["round_steps"], profile["steps"], profile["final_size"]) == (steps, 3, 8), arm


def test_a_run_linked_with_its_data_under_another_path_is_the_same_run(tiny_dataset, tmp_path):
    """A simulated dataset reused from another results folder is linked into OUT/data (another path, the same
    files): the runs linked with it are finished runs there, not runs "with other settings"; other files are."""
    from fairal.grid.datasets import link_tree

    prof = get_profile("smoke", TINY)
    ActiveLearningRun(RunSpec(str(tiny_dataset), "random", "balanced", 0, prof), tmp_path / "a" / "run").run()
    link_tree(tiny_dataset, tmp_path / "b" / "data")
    link_tree(tmp_path / "a" / "run", tmp_path / "b" / "run")
    moved = RunSpec(str(tmp_path / "b" / "data"), "random", "balanced", 0, prof)
    assert ActiveLearningRun(moved, tmp_path / "b" / "run").is_finished()
    other = RunSpec(str(tmp_path / "b" / "data"), "random", "balanced", 1, prof)  # another seed: other settings
    with pytest.raises(FairalError, match="holds a run with other settings"):
        ActiveLearningRun(other, tmp_path / "b" / "run").is_finished()
    image = next((tmp_path / "b" / "data" / "images").iterdir())
    image.unlink()  # a linked file replaced by another one: other data
    image.write_bytes((tiny_dataset / "images" / image.name).read_bytes())
    with pytest.raises(FairalError, match="holds a run with other settings"):
        ActiveLearningRun(moved, tmp_path / "b" / "run").is_finished()


@pytest.mark.parametrize("name", ["groups-unknown", "acquisition-bias"])
def test_the_studies_of_docs_beyond_parse(name):
    from pathlib import Path

    from fairal.grid.spec import check_settings, seeds_warning

    study = load_study(Path(__file__).parents[1] / "studies" / f"{name}.toml")
    check_settings(study, get_profile(study.profile), {})
    assert study.seeds == 10 and study.profile == "standard"
    assert seeds_warning(study, get_profile(study.profile), study.seeds) == ""  # its seeds can reach a verdict


def test_the_study_report_has_the_baselines_with_group_1s_gap_on_its_split():
    from fairal.report.study import baseline_table
    from fairal.report.tidy import Results

    rows = [  # one training seed; the evaluation split's numbers differ from the test split's
        {"dataset": "scanner", "seed": 0, "cohort": "g2", "dice_g1": 0.90, "dice_g2": 0.95, "dice_all": 0.925,
         "essp": 0.88, "delta": 0.05, "eval_dice_g1": 0.80, "eval_dice_g2": 0.96, "eval_dice_all": 0.88,
         "eval_essp": 0.75, "eval_delta": 0.16},
        {"dataset": "scanner", "seed": 0, "cohort": "all", "dice_g1": 0.94, "dice_g2": 0.95, "dice_all": 0.945,
         "essp": 0.93, "delta": 0.01, "eval_dice_g1": 0.95, "eval_dice_g2": 0.93, "eval_dice_all": 0.94,
         "eval_essp": 0.92, "eval_delta": 0.02}]
    rounds = pd.DataFrame([{"dataset": "scanner", "init": "balanced", "strategy": "random", "seed": 0, "round": 0,
                            "n_labeled": 10, "dice_all": 0.9, "delta": 0.01, "essp": 0.89, "eval_dice_all": 0.9,
                            "eval_delta": 0.01, "eval_essp": 0.89}])
    results = Results(rounds=rounds, baselines=pd.DataFrame(rows), finished=set(), expected=[])
    ev = baseline_table(results, "eval").set_index("cohort")
    assert ev.loc["g2", "gap_g1_g2"] == pytest.approx(0.80 - 0.96)  # Group 1 segmented 0.16 worse
    assert ev.loc["all", "gap_g1_g2"] == pytest.approx(0.02)
    assert ev.loc["g2", "essp"] == pytest.approx(0.75) and not any(c.endswith("_paper") for c in ev.columns)
    test = baseline_table(results, "test").set_index("cohort")
    assert test.loc["g2", "gap_g1_g2"] == pytest.approx(-0.05)
    assert baseline_table(Results(rounds=rounds, baselines=pd.DataFrame(), finished=set(), expected=[]),
                          "eval").empty


def test_the_study_figures_draw_the_split_the_study_measures_on(tmp_path, monkeypatch):
    import fairal.report.study as study_report
    from fairal.report.tidy import Results

    rounds = pd.DataFrame([{"dataset": "scanner", "init": "balanced", "strategy": "random", "seed": seed,
                            "round": k, "n_labeled": 10 + 4 * k, "n_labeled_g1": 5 + 2 * k, "n_labeled_g2": 5 + 2 * k,
                            "dice_all": 0.90, "delta": 0.01, "essp": 0.89, "eval_dice_all": 0.80,
                            "eval_delta": 0.10, "eval_essp": 0.70 + 0.01 * seed} for seed in (0, 1) for k in (0, 1)])
    results = Results(rounds=rounds, baselines=None, finished=set(), expected=[])
    drawn = {}
    real_curves = study_report.curves

    def spy(res, metric):
        t = real_curves(res, metric)
        drawn[metric] = t
        return t

    monkeypatch.setattr(study_report, "curves", spy)
    (path,) = study_report.study_figures(results, tmp_path, "eval")
    assert path.name == "study_scanner.png" and path.stat().st_size > 0
    assert drawn["essp"]["mean"].tolist() == pytest.approx([0.705, 0.705])  # the evaluation split's, seeds' mean
    assert drawn["delta"]["mean"].tolist() == pytest.approx([0.10, 0.10])
    study_report.study_figures(results, tmp_path, "test")
    assert drawn["essp"]["mean"].tolist() == pytest.approx([0.89, 0.89])


def test_beyond_tables_print_the_study_reports_numbers(tmp_path, capsys):
    from fairal.report.study import build_study_report
    from fairal.report.tidy import Results

    lift = [0.010, 0.012, 0.008, 0.011, 0.009]  # the reference's final evaluation ESSP over random's, per seed
    rows = []
    for seed in range(5):
        for strategy, gain in (("wle", lift[seed]), ("random", 0.0)):
            for rnd, n in ((0, 10), (1, 14)):
                essp = 0.80 + 0.01 * seed + rnd * (0.05 + gain)
                rows.append({"dataset": "scanner", "init": "balanced", "strategy": strategy, "seed": seed,
                             "round": rnd, "n_labeled": n, "n_labeled_g1": 5 + 2 * rnd, "n_labeled_g2": 5,
                             "dice_g1": 0.9, "dice_g2": 0.9, "dice_all": 0.9, "delta": 0.0, "essp": 0.9,
                             "eval_dice_g1": essp, "eval_dice_g2": essp, "eval_dice_all": essp, "eval_delta": 0.0,
                             "eval_essp": essp, "pool_group_accuracy": 0.6 + 0.2 * rnd if strategy == "wle" else
                             float("nan")})
    rounds = pd.DataFrame(rows)
    finished = {("scanner", "balanced", s, k) for s in ("wle", "random") for k in range(5)}
    base = pd.DataFrame([{"dataset": "scanner", "seed": 0, "cohort": "g2", "dice_g1": 0.9, "dice_g2": 0.9,
                          "dice_all": 0.9, "essp": 0.9, "delta": 0.0, "eval_dice_g1": 0.81, "eval_dice_g2": 0.93,
                          "eval_dice_all": 0.87, "eval_essp": 0.77, "eval_delta": 0.12}])
    results = Results(rounds=rounds, baselines=base, finished=finished, expected=sorted(finished))
    report = tmp_path / "report"
    report.mkdir()
    build_study_report(tmp_path, report, results, {"study": {"name": "t", "reference": "wle", "text": "x"}})
    records = tmp_path / "records"
    records.mkdir()
    rounds.to_csv(records / "rounds.csv", index=False)
    assert load_script("beyond_tables").main([str(report), "--records", str(records)]) == 0
    text = capsys.readouterr().out
    pooled = next(line for line in text.splitlines() if "final ESSP: wle - random" in line and "| pooled |" in line)
    assert "+0.0100 [" in pooled and "| 5 |" in pooled  # the mean of the five lifts
    assert "| scanner | g2 | 0.8100 | 0.9300 | -0.1200 |" in text  # the baseline's gap, Group 1 0.12 behind
    assert "0.600 (0.600–0.600) | 0.800 (0.800–0.800) | 5 |" in text  # the classifier's accuracy by round
    assert "Eq. 2's weight" not in text  # records without the weights: no such table
    rounds.assign(w_g1=[0.5, 0.7] * 10).to_csv(records / "rounds.csv", index=False)
    shares = load_script("beyond_tables").weights(records, "wle")
    assert "| scanner | balanced | wle | 0.600 (0.500–0.700) | 0.500 (0.50–0.50) | 5 |" in shares
    assert "random" not in shares
    summary = pd.read_csv(report / "study_summary.csv").set_index("strategy")
    wle = summary.loc["wle"]  # final evaluation ESSP 0.85 + 0.01 seed + the lift: mean 0.85 + 0.02 + 0.01
    assert wle["essp"] == pytest.approx(0.88) and wle["essp_ci_low"] < 0.88 < wle["essp_ci_high"]
    assert wle["essp_ci"] == f"[{wle['essp_ci_low']:.3f}, {wle['essp_ci_high']:.3f}]"
    assert (wle["g1_acquired_share"], wle["g1_acquired_share_ci_low"]) == (0.5, 0.5)  # 2 of the 4 acquired
    assert load_script("beyond_tables").main([str(tmp_path / "nothing")]) == 2
    early = tmp_path / "early"  # a report drawn before any round finished: its tables are empty files
    early.mkdir()
    for name in ("study_paired.csv", "study_summary.csv"):
        (early / name).write_text("\n")
    assert load_script("beyond_tables").main([str(early)]) == 2
    assert "the study's tables are empty" in capsys.readouterr().err
    html = (report / "report.html").read_text()  # 5 seeds, 1 comparison: 2/32 = 0.0625 cannot reach 0.05
    assert "smallest two-sided p is 0.0625" in html and "only equivalence can be found" in html
    assert "confirmed or refuted at least 6" in html
    plan = {"name": "t", "reference": "wle", "text": "x", "datasets": [{"name": "scanner"}], "inits": ["balanced"],
            "arms": [{"name": "wle"}, {"name": "random"}]}
    for seeds, withheld in ((5, False), (6, True)):  # all 5 planned seeds in; 6 planned, seed 5 missing
        again = tmp_path / f"report-{seeds}"
        again.mkdir()
        build_study_report(tmp_path, again, results, {"study": plan, "seeds": seeds})
        paired = pd.read_csv(again / "study_paired.csv")
        page = (again / "report.html").read_text()
        assert paired.empty == withheld and ("Withheld: 2 run(s) of the plan (6 seeds) are not finished (first: "
                                             "scanner/balanced/wle/seed-5)" in page) == withheld
        assert load_script("beyond_tables").main([str(again)]) == 0
        assert ("no paired comparison: withheld" in capsys.readouterr().err) == withheld


def _checked_then_stop(*args, checked, **kwargs):
    """In place of ``run_study``: the study's checks have passed, so its warnings are printed; then no run."""
    checked()
    raise FairalError("stopped before the grid")


def test_a_study_whose_seeds_cannot_reach_a_verdict_is_warned_before_any_work(tmp_path, monkeypatch):
    from fairal.grid.spec import seeds_warning

    study = _write(tmp_path / "s.toml", """
name = "too-few"
profile = "smoke"
seeds = 5
strategies = ["random", "entropy", "localized-entropy", "weighted-localized-entropy"]
[datasets.a]
simulate = { bias = "strong" }
[datasets.b]
simulate = { bias = "weak" }
""")
    parsed = load_study(study)
    warning = seeds_warning(parsed, get_profile("smoke"), 5)  # 2 datasets x 3 comparisons: Holm over 6
    assert "0.0625 (2/2^5), 0.375 after Holm over the 6 comparison(s)" in warning
    assert "confirmed or refuted at least 8" in warning
    assert seeds_warning(parsed, get_profile("smoke"), 8) == ""
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep")  # a folder fairal did not make: refused, with no warning
    res = CliRunner().invoke(app, ["study", str(study), str(users), "--quiet"])
    assert res.exit_code == 2 and "cannot give a verdict" not in res.output, res.output
    assert (users / "notes.txt").read_text() == "keep" and sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    monkeypatch.setattr("fairal.grid.driver.run_study", _checked_then_stop)
    res = CliRunner().invoke(app, ["study", str(study), str(tmp_path / "out"), "--quiet"])
    assert "cannot give a verdict of superiority" in res.output and "stopped before the grid" in res.output


def test_names_settings_and_paths_a_study_file_cannot_hold_are_refused(tmp_path):
    ok = '[datasets.a]\nsimulate = { bias = "weak" }\n'
    _refused(tmp_path, 'strategies = [{ name = "../x", strategy = "random" }]\n' + ok, "strategy name '../x'",
             "cannot name a folder")
    _refused(tmp_path, 'strategies = [{ name = "", strategy = "random" }]\n' + ok, "strategy name ''")
    _refused(tmp_path, '[set]\nstrategies = ["random"]\n' + ok, "set.strategies", "key 'strategies'")
    _refused(tmp_path, '[datasets.a]\nsimulate = {}\ngroups_known = false\nset = { groups_known = true }\n',
             "dataset a", "groups_known is given twice")
    _refused(tmp_path, '[datasets.a]\nsimulate = {}\nseed = 3\n', "dataset a", "'seed' belongs to a CSV dataset")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.csv").write_text("case_id,group,image,label\n")
    _refused(tmp_path, '[datasets.a]\nfolder = "d"\ngroup_by = ["site"]\n', "'group_by' belongs to a CSV dataset")
    _refused(tmp_path, '[datasets.a]\ncsv = "c.csv"\ngroup_by = "site"\nseed = -1\n', "seed must be a whole "
             "number >= 0")
    # simulate's files are read relative to the study file, as csv and folder are
    _refused(tmp_path, '[datasets.a]\nsimulate = { template = "t.nii.gz", label = "l.nii.gz" }\n',
             "simulate.template: no such file", str(tmp_path / "t.nii.gz"))


def test_simulate_files_are_relative_to_the_study_file(tmp_path, monkeypatch):
    tpl, lab = make_template(tmp_path)
    sub = tmp_path / "studies"
    sub.mkdir()
    path = _write(sub / "s.toml", f'[datasets.a]\nsimulate = {{ template = "../{tpl.name}", label = "../{lab.name}",'
                                  f' label_value = {LABEL_VALUE} }}\n')
    monkeypatch.chdir(sub)  # elsewhere than the files: the study file's folder is what counts
    study = load_study(path)
    assert study.datasets[0].simulate["template"] == str(tpl.resolve())
    assert study.datasets[0].simulate["label"] == str(lab.resolve())


def _cli_refused(tmp_path, text, *args):
    study = _write(tmp_path / "s.toml", text)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["study", str(study), str(out), "--quiet", *args])
    assert not out.exists(), "nothing is made before the study is refused"
    return res


def test_what_the_datasets_cannot_give_is_refused_before_any_dataset_is_made(tmp_path, tiny_dataset):
    """The initial sets, budget and baselines against each dataset's groups and pool, before it is simulated or
    resampled: a CSV cohort's sites, a simulation's group sizes at the profile."""
    _cohort_csv(tiny_dataset, tmp_path)  # sites north and south, 12 cases each; smoke: 4 test, 8 pool each
    lab = '[datasets.lab]\ncsv = "cohort.csv"\ngroup_by = ["site"]\n'
    smoke = 'profile = "smoke"\nseeds = 9\n'
    res = _cli_refused(tmp_path, smoke + lab)  # smoke's final budget 18 against a pool of 16
    assert res.exit_code == 2 and "dataset lab, strategy random: impossible budget, 18 labeled cases asked for " \
        "(final_size) and the pool has 16" in res.output, res.output
    fits = '[set]\nfinal_size = 14\n'
    res = _cli_refused(tmp_path, smoke + 'inits = ["balanced", "g1-heavy"]\n' + fits + lab)
    assert res.exit_code == 2 and "dataset lab: initial set g1-heavy: the dataset has no group 1 (groups: north, " \
                                  "south)" in res.output, res.output
    res = _cli_refused(tmp_path, smoke + 'inits = ["gnorth-heavy"]\n[set]\ninit_size = 12\nfinal_size = 16\n' + lab)
    assert res.exit_code == 2 and "initial set gnorth-heavy takes 10 cases of group north, its pool has 8" \
        in res.output, res.output  # round(0.8 x 12) = 10
    sim = '[datasets.sim]\nsimulate = { bias = "strong", n_subjects = 40 }\n'  # 20 a group: 4 test, 16 pool
    res = _cli_refused(tmp_path, smoke + 'baselines = true\n' + sim, "--set", "cohort_size=20")
    assert res.exit_code == 2 and "dataset sim: the baselines train on 20 cases of each group alone " \
        "(cohort_size, from --set), group 1's pool has 16" in res.output, res.output
    three = '[datasets.sim]\nsimulate = { n_subjects = 40, group = ["1:bias=strong", "2", "3:share=0.05"] }\n'
    res = _cli_refused(tmp_path, smoke + three)
    assert res.exit_code == 2 and "group 3 has no test case" in res.output, res.output


def test_the_reference_and_the_seeds_warning_follow_the_strategies_run(tmp_path, monkeypatch):
    sim = '[datasets.a]\nsimulate = { bias = "strong" }\n'
    res = _cli_refused(tmp_path, 'profile = "smoke"\nreference = "weighted-localised-entropy"\n' + sim)
    assert res.exit_code == 2 and "the reference 'weighted-localised-entropy' is not among the strategies run" \
        in res.output, res.output
    res = _cli_refused(tmp_path, 'profile = "smoke"\n' + sim, "--set", "strategies=random")
    assert res.exit_code == 2 and "--set strategies" in res.output and "--strategies" in res.output
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep")  # a folder fairal did not make: refused, and only that is printed
    four = ('profile = "smoke"\nseeds = 6\nstrategies = ["random", "entropy", "localized-entropy", '
            '"weighted-localized-entropy"]\n' + sim)
    study = _write(tmp_path / "s.toml", four)
    res = CliRunner().invoke(app, ["study", str(study), str(users), "--quiet"])
    assert res.exit_code == 2 and "was not made by fairal" in res.output and "warning" not in res.output, res.output
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]

    monkeypatch.setattr("fairal.grid.driver.run_study", _checked_then_stop)
    out = str(tmp_path / "out")
    res = CliRunner().invoke(app, ["study", str(study), out, "--quiet"])  # 3 comparisons: 3 x 2/64 > 0.05
    assert "cannot give a verdict" in res.output and "after Holm over the 3 comparison(s)" in res.output
    res = CliRunner().invoke(app, ["study", str(study), out, "--quiet", "--strategies",
                                   "random,weighted-localized-entropy"])  # 1 comparison: 2/64 < 0.05
    assert "stopped before the grid" in res.output and "cannot give a verdict" not in res.output, res.output
    res = CliRunner().invoke(app, ["study", str(study), out, "--quiet", "--strategies", "random,entropy"])
    assert "the reference 'weighted-localized-entropy' is not among the strategies run (random, entropy): the " \
           "report has no paired comparisons" in res.output, res.output


def test_grid_settings_data_settings_and_folder_names_are_refused_where_they_cannot_apply(tmp_path, tiny_dataset):
    ok = '[datasets.a]\nsimulate = { bias = "weak" }\n'
    _refused(tmp_path, '[set]\nseeds = 8\n' + ok, "set.seeds: give it as the study file's key 'seeds' (or --seeds)")
    _refused(tmp_path, '[datasets.a]\nsimulate = {}\nset = { seeds = 8 }\n', "dataset a: set.seeds")
    _refused(tmp_path, 'strategies = [{ name = "r", strategy = "random", set = { n_subjects = 500 } }]\n' + ok,
             "strategy r: set.n_subjects makes the dataset", "the study's [set] or the dataset's set")
    _refused(tmp_path, 'strategies = [{ name = "r", strategy = "random", set = { "n-subjects" = 64 } }]\n' + ok,
             "strategy r: set.n-subjects makes the dataset")
    _refused(tmp_path, '[set]\n"seeds " = 8\n' + ok, "give it as the study file's key 'seeds'")
    _refused(tmp_path, 'strategies = [{ name = "a\\u0000b", strategy = "random" }]\n' + ok, "cannot name a folder")
    _refused(tmp_path, '[datasets."site:a"]\nsimulate = {}\n', "dataset name 'site:a' cannot name a folder")
    _refused(tmp_path, f'strategies = [{{ name = "{"x" * 101}", strategy = "random" }}]\n' + ok, "at most 100 bytes")
    _refused(tmp_path, 'inits = ["g1/F-heavy"]\n' + ok, "inits: 'g1/F-heavy' cannot name a folder",
             "intersectional group")
    msg = _refused(tmp_path, 'inits = [1]\n' + ok, "each initial set must be a name, got 1")
    assert msg.count("s.toml") == 1, msg  # the file named once
    cohort = _cohort_csv(tiny_dataset, tmp_path)
    _refused(tmp_path, '[datasets.lab]\ncsv = "cohort.csv"\ngroup_by = ["site", "site"]\n',
             "s.toml, dataset lab: ", f"{cohort}: group_by names the column 'site' twice")
    _refused(tmp_path, '[datasets.lab]\ncsv = "cohort.csv"\ngroup_by = ["scanner"]\n',
             "s.toml, dataset lab: ", "no column 'scanner' for group_by")
    res = _cli_refused(tmp_path, 'profile = "smoke"\n' + ok, "--set", "seeds=8")
    assert res.exit_code == 2 and "--set seeds: give it as the study file's key 'seeds' (or --seeds)" in res.output
    res = _cli_refused(tmp_path, 'profile = "smoke"\n' + ok, "--strategies", "random,random")
    assert res.exit_code == 2 and "--strategies names 'random' twice" in res.output, res.output
    res = _cli_refused(tmp_path, 'profile = "smoke"\nseeds = 2\n' + ok, "--set", "stepz=3")
    assert res.exit_code == 2 and "stepz" in res.output and "cannot give a verdict" not in res.output, res.output


def test_a_heavy_initial_set_names_its_group_as_the_manifest_reads_it():
    from fairal.run.loop import heavy_group, initial_counts

    assert heavy_group("g2-heavy") == 2 and heavy_group("g007-heavy") == "007" and heavy_group("balanced") is None
    assert initial_counts(["007", "008"], "g007-heavy", 10) == {"007": 8, "008": 2}  # round(0.8 x 10) = 8


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_the_machine_lacks_is_refused_for_any_arm_before_any_work(tmp_path):
    ok = '[datasets.a]\nsimulate = { bias = "weak" }\n'
    arms = 'strategies = ["random", { name = "gpu", strategy = "random", set = { device = "cuda" } }]\n'
    res = _cli_refused(tmp_path, 'profile = "smoke"\nseeds = 6\nreference = "gpu"\n' + arms + ok)
    assert res.exit_code == 2 and "cuda" in res.output.lower() and "Traceback" not in res.output, res.output


def test_a_dataset_of_other_settings_in_out_is_refused_before_the_study_writes(tmp_path):
    from fairal.grid.driver import RESULTS
    from fairal.io import make_own_folder

    out = tmp_path / "out"
    make_own_folder(out, RESULTS)
    held = out / "data" / "a"
    held.mkdir(parents=True)
    (held / "dataset.json").write_text(json.dumps({"settings": {"bias": "strong", "seed": 9}}))
    study = _write(tmp_path / "s.toml", 'profile = "smoke"\nseeds = 6\nstrategies = ["random", '
                                        '"weighted-localized-entropy"]\n[datasets.a]\nsimulate = { bias = "weak" }\n')
    res = CliRunner().invoke(app, ["study", str(study), str(out), "--quiet"])
    assert res.exit_code == 2 and f"{held} holds a dataset of other settings than dataset a" in res.output, \
        res.output
    assert sorted(p.name for p in out.iterdir()) == [".fairal", "data"], "no study.json, lock or run written"


def test_dataset_figures_get_one_file_name_each():
    from fairal.report.study import _file_names

    assert _file_names(["a.b", "a_b", "scanner", "a_b-2"]) == {"a.b": "a_b", "a_b": "a_b-2", "scanner": "scanner",
                                                               "a_b-2": "a_b-2-2"}
    assert _file_names(["é"]) == {"é": "_"}


def test_files_that_are_no_nifti_are_refused_before_any_dataset_is_made(tmp_path, tiny_dataset):
    cohort = _cohort_csv(tiny_dataset, tmp_path)
    rows = pd.read_csv(cohort)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    rows.loc[3, "label"] = str(tmp_path / "broken.nii.gz")
    rows.to_csv(cohort, index=False)
    sim = '[datasets.first]\nsimulate = { bias = "strong" }\n'  # listed first: it would be simulated first
    top = 'profile = "smoke"\nseeds = 6\ninits = ["balanced"]\nstrategies = ["random", "weighted-localized-entropy"]\n'
    res = _cli_refused(tmp_path, top + sim + '[datasets.lab]\ncsv = "cohort.csv"\ngroup_by = ["site"]\n'
                       '[datasets.lab.set]\nfinal_size = 14\n')
    assert res.exit_code == 2 and "dataset lab: case " in res.output and "broken.nii.gz is not a readable NIfTI" \
        in res.output, res.output
    (tmp_path / "t.nii.gz").write_text("text")
    _refused(tmp_path, '[datasets.a]\nsimulate = { template = "t.nii.gz" }\n', "dataset a: simulate.template",
             "is not a readable NIfTI image")


def test_a_simulated_datasets_outline_is_the_manifest_it_will_have(tmp_path, tiny_dataset):
    from fairal.grid.datasets import dataset_outline

    tpl, lab = tiny_dataset.parent / "template.nii.gz", tiny_dataset.parent / "labels.nii.gz"
    made = pd.read_csv(tiny_dataset / "manifest.csv")
    study = load_study(_write(tmp_path / "s.toml", f'''
[datasets.sim]
simulate = {{ template = "{tpl}", label = "{lab}", label_value = {LABEL_VALUE}, n_subjects = 24 }}
[datasets.made]
folder = "{tiny_dataset}"
'''))
    prof = get_profile("smoke").with_overrides({"test_per_group": "6", "eval_per_group": "0"})
    sim, folder = (dataset_outline(d, prof) for d in study.datasets)
    assert sim.to_dict("index") == folder.to_dict("index") == {1: {"test": 6, "pool": 6, "eval": 0},
                                                                 2: {"test": 6, "pool": 6, "eval": 0}}
    assert (made["split"] == "test").sum() == 12  # the folder's own manifest, as the outline reads it
    small = load_study(_write(tmp_path / "s.toml", '[datasets.sim]\nsimulate = { bias = "weak" }\n')).datasets[0]
    prof = prof.with_overrides({"n_subjects": "9", "eval_per_group": "3"})  # 5 + 4 subjects: a test split of half
    assert dataset_outline(small, prof).to_dict("index") == {1: {"test": 2, "pool": 3, "eval": 3},
                                                             2: {"test": 2, "pool": 2, "eval": 3}}


def test_beyond_tables_write_within_margin_only_on_a_verdict_of_a_difference():
    """docs/analysis-plan.md rule 4: 'confirmed (within margin)' / 'refuted (within margin)', never on equivalent."""
    verdict = load_script("beyond_tables").verdict
    assert verdict(pd.Series({"verdict": "confirmed", "within_margin": True})) == "**confirmed** (within margin)"
    assert verdict(pd.Series({"verdict": "refuted", "within_margin": "True"})) == "**refuted** (within margin)"
    assert verdict(pd.Series({"verdict": "equivalent", "within_margin": True})) == "**equivalent**"
    assert verdict(pd.Series({"verdict": "inconclusive", "within_margin": True})) == "**inconclusive**"
    assert verdict(pd.Series({"verdict": "confirmed", "within_margin": False})) == "**confirmed**"


def test_a_dataset_made_with_relative_template_paths_is_found_again(tmp_path, tiny_dataset):
    """An older dataset.json records the template and label as they were given (relative to where fairal ran):
    the same files where names and recorded checksums agree, a refusal where the file changed."""
    from fairal.grid.datasets import _same_simulation
    from fairal.simulate.dataset import SimulationConfig

    info = json.loads((tiny_dataset / "dataset.json").read_text())
    tpl, lab = info["settings"]["template"], info["settings"]["label"]
    cfg = SimulationConfig(n_subjects=24, shape=OUT_SHAPE, template=tpl, label=lab, label_value=LABEL_VALUE)
    assert _same_simulation(info, cfg)
    old = {**info, "settings": {**info["settings"], "template": "template.nii.gz", "label": "./labels.nii.gz"}}
    assert _same_simulation(old, cfg)
    changed = {**old, "template": {**old["template"], "sha256": {**old["template"]["sha256"],
                                                                 "template.nii.gz": "0" * 64}}}
    assert not _same_simulation(changed, cfg)
    elsewhere = {**info, "settings": {**info["settings"], "template": "other.nii.gz"}}
    assert not _same_simulation(elsewhere, cfg)

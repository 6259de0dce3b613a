"""Studies that must not lose work or touch what is not theirs: docs/studies.md's own example (a simulated dataset
with an evaluation split beside a lab's CSV cohort without one) to a report, a study refused in another study's
folder, a symbolic link planted in OUT, late refusals that leave OUT as it was, and the report's counts, banner,
splits and seed rule."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.stats import seed_rule

from .conftest import LABEL_VALUE, OUT_SHAPE
from .test_plugins import clean_tables  # noqa: F401  (a fixture: what a plugin registers is gone afterwards)

DOCS = Path(__file__).parents[1] / "docs" / "studies.md"
#: Tiny runs (seconds): the settings of tests/test_study.py's TINY, with an evaluation split for simulated data.
TINY = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2", "crop_margin": "4",
        "downsample": "1", "test_per_group": "6", "eval_per_group": "3", "n_subjects": "24"}
TINY_SET = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file and link under ``folder``: its path -> its content's sha256 (a link: where it points)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "link -> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "folder"
    return out


def cohort(tiny_dataset: Path, folder: Path, name: str = "cohort.csv") -> Path:
    """A lab's labeled cohort: the tiny dataset's 24 cases with their group as the column ``site`` (1, 2) and no
    evaluation split."""
    m = pd.read_csv(tiny_dataset / "manifest.csv")
    rows = pd.DataFrame({"case_id": m["case_id"], "image": [str(tiny_dataset / p) for p in m["image"]],
                         "label": [str(tiny_dataset / p) for p in m["label"]], "site": m["group"]})
    rows.to_csv(folder / name, index=False)
    return folder / name


def docs_example(tiny_dataset: Path, folder: Path) -> Path:
    """docs/studies.md's study file as the page prints it, beside the lab's cohort.csv, with tiny data: its simulated
    dataset 24 subjects of a 32 x 32 x 24 grid on the tiny template (not 312 of MNI152), and the cohort's margin
    3 mm (its images are 32 mm wide)."""
    text = DOCS.read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    tpl, lab = tiny_dataset.parent / "template.nii.gz", tiny_dataset.parent / "labels.nii.gz"
    tiny = (f'n_subjects = 24, template = "{tpl}", label = "{lab}", label_value = {LABEL_VALUE}, '
            f'shape = {list(OUT_SHAPE)}')
    assert example.count("n_subjects = 312") == 1, example
    cohort(tiny_dataset, folder)
    path = folder / "study.toml"
    assert example.count("groups_known = false ") == 1, example
    path.write_text(example.replace("n_subjects = 312", tiny).replace("groups_known = false ",
                                                                      "margin_mm = 3\ngroups_known = false "))
    return path


def test_the_docs_example_of_a_simulated_and_a_csv_dataset_runs_to_its_report(tiny_dataset, tmp_path):
    """The simulated dataset has an evaluation split, the CSV cohort none: each is measured on its own (never a
    NaN crash), the report says which split per dataset, and `fairal report OUT` rebuilds it."""
    study = docs_example(tiny_dataset, tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["study", str(study), str(out), "--profile", "smoke", "--seeds", "1", "--jobs",
                                   "1", *TINY_SET])
    assert res.exit_code == 0, res.output
    page = (out / "report" / "report.html").read_text()
    assert "16 finished runs of 16 expected" in page  # 2 datasets x 2 initial sets x 4 strategies x 1 seed
    assert "site: the evaluation split" in page and "lab: the test split (it has no evaluation split)" in page
    summary = pd.read_csv(out / "report" / "study_summary.csv")
    assert dict(zip(summary["dataset"], summary["split"], strict=True)) == {"site": "eval", "lab": "test"}
    assert summary["essp"].notna().all() and len(summary) == 16
    for dataset, split in (("site", "eval"), ("lab", "test")):  # the summary's numbers are those of its split
        rounds = pd.read_csv(out / "runs" / dataset / "balanced" / "random" / "seed-0" / "rounds.csv")
        final = rounds.iloc[-1]["eval_essp" if split == "eval" else "essp"]
        row = summary[(summary["dataset"] == dataset) & (summary["init"] == "balanced")
                      & (summary["strategy"] == "random")]
        assert row["essp"].iloc[0] == pytest.approx(final)
    assert "<b>smoke profile: a pipeline check, not evidence.</b>" in page  # the paper report's banner
    rule = seed_rule(1, 6)  # 2 datasets x 3 comparisons: the start-up warning and the report say the same
    assert "A verdict needs at least 3 seeds (equivalent), confirmed or refuted at least 8." in rule
    assert rule in res.output and html.escape(rule) in page
    # the terminal's table: each dataset on the split of the report's first table, the split named
    assert re.search(r"site\s+│\s+balanced\s+│\s+random\s+│\s+eval", res.output), res.output
    assert re.search(r"lab\s+│\s+balanced\s+│\s+random\s+│\s+test", res.output), res.output
    rebuilt = CliRunner().invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "lab: the test split" in (out / "report" / "report.html").read_text()


def tiny_study(folder: Path, tiny_dataset: Path, name: str = "a", dataset: str = "tiny") -> Path:
    """A study of one run a seed (random, balanced) on the tiny dataset's folder, in seconds."""
    settings = "\n".join(f"{k} = {v}" for k, v in {**TINY, "eval_per_group": "0"}.items() if k != "n_subjects")
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nprofile = "smoke"\nseeds = 1\ninits = ["balanced"]\nstrategies = ["random"]\n'
                    f'reference = "random"\n[set]\n{settings}\n[datasets.{dataset}]\nfolder = "{tiny_dataset}"\n')
    return path


def study_cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["study", *map(str, args), "--jobs", "1", "--quiet"])
    return res.exit_code, res.output


def test_a_study_into_another_studys_folder_is_refused_with_nothing_changed(tiny_dataset, tmp_path):
    """OUT holds study a: study b (another name), a study named a of other datasets, and a resume of a whose run
    has other settings are refused before anything is written (study.json included); a with more seeds goes on."""
    out = tmp_path / "out"
    a = tiny_study(tmp_path, tiny_dataset)
    code, text = study_cli(a, out)
    assert code == 0 and (out / "runs/tiny/balanced/random/seed-0/state.json").is_file(), text
    before = tree_hashes(out)
    code, text = study_cli(tiny_study(tmp_path, tiny_dataset, name="b"), out)
    assert code == 2 and f"{tmp_path / 'b.toml'}: OUT {out} holds another study, 'a' from {a} (its name is 'a', " \
        "not 'b')" in text, text
    assert "--out" not in text and tree_hashes(out) == before
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    renamed = tiny_study(elsewhere, tiny_dataset, dataset="lab")  # named a too: its datasets tell it apart
    code, text = study_cli(renamed, out)
    assert code == 2 and "holds another study, 'a'" in text and "its datasets are tiny, not lab" in text, text
    assert tree_hashes(out) == before
    code, text = study_cli(a, out, "--set", "steps=4")  # the same study, its run of other settings
    assert code == 2 and f"{a}: {out / 'runs/tiny/balanced/random/seed-0'} holds a run with other settings than " \
        "this study's dataset tiny, initial set balanced, strategy random, seed 0" in text, text
    assert "--out" not in text and tree_hashes(out) == before  # study.json not rewritten
    code, text = study_cli(a, out, "--seeds", "2")  # the same study with a seed more: it goes on
    assert code == 0, text
    assert json.loads((out / "study.json").read_text())["seeds"] == 2
    assert json.loads((out / "runs/tiny/balanced/random/seed-1/state.json").read_text())["finished"]


def test_a_symbolic_link_planted_in_out_is_refused_before_any_write(tiny_dataset, tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    a = tiny_study(tmp_path, tiny_dataset)
    assert study_cli(a, out)[0] == 0
    outside.mkdir()
    (outside / "keep.txt").write_text("a lab's file")
    (out / "runs/tiny/balanced/entropy").symlink_to(outside, target_is_directory=True)
    before, theirs = tree_hashes(out), tree_hashes(outside)
    code, text = study_cli(a, out, "--strategies", "random,entropy")
    assert code == 2 and f"{a}: refused to write {out / 'runs/tiny/balanced/entropy/seed-0'}: it lies outside the " \
        f"output folder {out}" in text, text
    assert tree_hashes(outside) == theirs and tree_hashes(out) == before
    fresh = tmp_path / "fresh"  # a results folder with nothing but the link: not even its lock is made
    (fresh / "runs" / "tiny").mkdir(parents=True)
    (fresh / ".fairal").write_text("results folder\n")
    (fresh / "runs" / "tiny" / "balanced").symlink_to(outside, target_is_directory=True)
    before = tree_hashes(fresh)
    code, text = study_cli(a, fresh)
    assert code == 2 and "lies outside the output folder" in text, text
    assert tree_hashes(outside) == theirs and tree_hashes(fresh) == before


def _nan_image(path: Path, target: Path) -> None:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[tuple(s // 2 for s in data.shape)] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(target))


@pytest.mark.parametrize("case", ["spacing", "margin", "huge-margin", "label-value", "truncated", "nan"])
def test_late_refusals_leave_out_as_it_was_and_name_the_study_file_dataset_and_key(tiny_dataset, tmp_path, case):
    """What only reading a CSV cohort's files tells (a grid too fine or too wide, a structure value no label map
    holds, a truncated or NaN image) is refused before OUT is made or touched."""
    rows = pd.read_csv(cohort(tiny_dataset, tmp_path))
    keys = {"spacing": "spacing = 1e-4", "margin": "margin_mm = 5000", "huge-margin": "margin_mm = 1e300",
            "label-value": "label_value = 7"}.get(case, "margin_mm = 3")
    broken = tmp_path / "broken.nii.gz"
    source = Path(rows.loc[5, "image"])
    if case == "truncated":
        broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif case == "nan":
        _nan_image(source, broken)
    rows.loc[5, "image"] = str(broken) if case in ("truncated", "nan") else rows.loc[5, "image"]
    rows.to_csv(tmp_path / "cohort.csv", index=False)
    study = tmp_path / "s.toml"
    study.write_text('profile = "smoke"\nseeds = 1\ninits = ["balanced"]\nstrategies = ["random"]\n'
                     f'reference = "random"\n[datasets.lab]\ncsv = "cohort.csv"\ngroup_by = ["site"]\n{keys}\n')
    absent, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (absent, empty):
        code, text = study_cli(study, out, *TINY_SET)
        assert code == 2 and f"{study}, dataset lab: " in text, text
        assert not absent.exists() and list(empty.iterdir()) == []  # no .fairal, .fairal.lock or study.json
    assert "--spacing" not in text and "--label-value" not in text and not re.search(r"\d{16}", text), text
    expected = {"spacing": "the analysis grid at spacing 0.0001 mm and margin_mm 12 mm has ",
                "margin": "the analysis grid at spacing 1 mm and margin_mm 5000 mm has ",
                "huge-margin": "e+900 voxels, more than fairal's limit",
                "label-value": "label_value 7 is absent from 24 of 24 label maps",
                "truncated": f"image {broken} is corrupt (truncated or damaged)",
                "nan": f"image {broken} holds NaN or infinite values"}[case]
    assert expected in text, text
    if case in ("spacing", "margin"):
        assert "; choose a larger spacing or a smaller margin_mm" in text


PLUGIN = '''
from pathlib import Path

from fairal.acquisition import Base, register

Path(__file__).with_name("ran.txt").write_text("the plugin ran")
register(Base("trusted", None, "trusted", "a seeded draw under another name"))
'''


@pytest.mark.usefixtures("clean_tables")
def test_a_study_files_plugins_load_after_the_rest_of_it_is_checked(tmp_path):
    from fairal.errors import FairalError
    from fairal.grid.spec import load_study

    (tmp_path / "p.py").write_text(PLUGIN)
    arms = 'strategies = ["trusted", "random"]\n'
    text = f'plugins = ["p.py"]\n{arms}reference = "trusted"\n[datasets.a]\nsimulate = {{ bias = "weak" }}\n'
    bad = tmp_path / "bad.toml"
    for mistake, why in (('inits = ["g1-light"]\n' + text, "g1-light"),
                         (text + '[datasets.b]\nsimulate = { bias = "medium" }\n', "medium"),
                         (text.replace(arms, 'strategies = [{ name = "../x", strategy = "trusted" }]\n'), "../x")):
        bad.write_text(mistake)
        with pytest.raises(FairalError) as err:
            load_study(bad)
        assert str(bad) in str(err.value) and why in str(err.value), str(err.value)
        assert not (tmp_path / "ran.txt").exists(), "a refused study file ran its plugin"
    good = tmp_path / "good.toml"
    good.write_text(text)
    study = load_study(good)  # the plugin's strategy, named in the file, is known once the plugin is loaded
    assert (tmp_path / "ran.txt").read_text() == "the plugin ran" and study.plugins == (str(tmp_path / "p.py"),)
    assert [a.strategy for a in study.arms] == ["trusted", "random"]


def _records(seeds: int = 3):
    """Two datasets' runs (reference wle against random, one initial set): sim measured on an evaluation split
    as well (its numbers there differ from the test split's), lab on the test split alone (its eval_ columns
    empty, as a CSV cohort's)."""
    from fairal.report.tidy import Results

    rows = []
    for dataset in ("sim", "lab"):
        for seed in range(seeds):
            for strategy, lift in (("wle", 0.02), ("random", 0.0)):
                for rnd, n in ((0, 10), (1, 14)):
                    test = 0.60 + 0.01 * seed + rnd * (0.1 + lift)
                    ev = test - 0.2 if dataset == "sim" else np.nan
                    rows.append({"dataset": dataset, "init": "balanced", "strategy": strategy, "seed": seed,
                                 "round": rnd, "n_labeled": n, "n_labeled_g1": 5 + 2 * rnd, "n_labeled_g2": 5,
                                 "dice_g1": test, "dice_g2": test, "dice_all": test, "delta": 0.0, "essp": test,
                                 "eval_dice_g1": ev, "eval_dice_g2": ev, "eval_dice_all": ev, "eval_delta": 0.0,
                                 "eval_essp": ev})
    keys = {(d, "balanced", s, k) for d in ("sim", "lab") for s in ("wle", "random") for k in range(seeds)}
    paper_grid = [(d, i, s, k) for d in ("sim", "lab") for i in ("balanced", "g1-heavy", "g2-heavy")
                  for s in ("wle", "random", "entropy", "localized-entropy") for k in range(seeds)]
    return Results(rounds=pd.DataFrame(rows), baselines=pd.DataFrame(), finished=keys, expected=paper_grid)


def test_each_dataset_is_measured_on_its_own_split_and_the_plan_counts_the_runs(tmp_path):
    from fairal.report.study import build_study_report
    from fairal.report.tidy import dataset_splits, primary_final_table

    results = _records()
    assert dataset_splits(results) == {"lab": "test", "sim": "eval"}
    info = {"study": {"name": "mixed", "reference": "wle", "text": "x", "inits": ["balanced"],
                      "datasets": [{"name": "sim"}, {"name": "lab"}], "arms": [{"name": "wle"}, {"name": "random"}]},
            "seeds": 3, "profile": {"name": "quick"}}
    build_study_report(tmp_path, tmp_path, results, info)
    summary = pd.read_csv(tmp_path / "study_summary.csv").set_index(["dataset", "strategy"])
    assert summary.loc[("sim", "wle"), "split"] == "eval" and summary.loc[("lab", "wle"), "split"] == "test"
    assert summary.loc[("sim", "wle"), "essp"] == pytest.approx(0.61 + 0.12 - 0.2)  # the evaluation split's mean
    assert summary.loc[("lab", "random"), "essp"] == pytest.approx(0.61 + 0.1)  # the test split's
    paired = pd.read_csv(tmp_path / "study_paired.csv")
    pooled = paired[paired["family"] == "pooled"].set_index("dataset")
    assert pooled["split"].to_dict() == {"sim": "eval", "lab": "test"}
    assert pooled["value"].to_numpy() == pytest.approx([0.02, 0.02])  # wle - random on each dataset's split
    assert pooled["p_holm"].to_numpy() == pytest.approx(2 * pooled["p_value"].to_numpy())  # Holm over both
    page = (tmp_path / "report.html").read_text()
    assert "Measured per dataset on sim: the evaluation split; lab: the test split (it has no evaluation split)." \
        in page
    assert "12 finished runs of 12 expected (the study's plan)" in page  # not the paper grid's 48
    assert "<b>quick profile: a pipeline check, not evidence.</b>" in page
    final = primary_final_table(results).set_index(["dataset", "strategy"])
    assert final.loc[("sim", "wle"), "split"] == "eval" and final.loc[("lab", "wle"), "split"] == "test"
    assert final.loc[("sim", "wle"), "essp"] == summary.loc[("sim", "wle"), "essp"]  # the report's first table
    assert final.loc[("lab", "wle"), "essp"] == summary.loc[("lab", "wle"), "essp"]
    more = _records()
    more.finished.add(("sim", "balanced", "wle", 3))  # a run beyond the plan: not counted as one of it
    build_study_report(tmp_path, tmp_path, more, {**info, "profile": {"name": "standard"}})
    page = (tmp_path / "report.html").read_text()
    assert "12 finished runs of 12 expected" in page and "1 finished run(s) beyond the plan" in page
    assert "pipeline check" not in page

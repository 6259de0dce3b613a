"""Bad input refused before any work, with a message naming the file, the key or the option: output folders that
are the user's, study files and their CSV datasets, command-line values, and the Python API's inputs."""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import fairal
from fairal.cli import app
from fairal.config import get_profile
from fairal.errors import FairalError, plain_warnings
from fairal.grid.executors import make_executor
from fairal.io import MARKER, check_output_file, check_output_folder

from .test_hostile_inputs import SMOKE, _hashes, _one_line_error, _sets

runner = CliRunner()


def _study(tmp_path, extra: str = "", dataset: str = 'simulate = { bias = "weak" }') -> str:
    path = tmp_path / "s.toml"
    path.write_text(f'profile = "smoke"\nseeds = 1\ninits = ["balanced"]\nstrategies = ["random"]\n'
                    f'reference = "random"\n{extra}[datasets.a]\n{dataset}\n')
    return str(path)


# --- output folders ---------------------------------------------------------------------------------------------------


def test_a_study_never_writes_into_a_folder_of_the_users(tmp_path, tiny_dataset):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns("cache"))
    study = _study(tmp_path)
    before = _hashes(tmp_path)
    for folder in (mine, data):  # the user's own folder, and a dataset (fairal's, but not a study's results)
        res = runner.invoke(app, ["study", study, str(folder)])
        _one_line_error(res, f"OUT {folder} is not empty", "not made by fairal for a results folder")
    assert _hashes(tmp_path) == before and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_report_never_replaces_a_folder_of_the_users(tmp_path):
    from .test_report import _write_run

    results = tmp_path / "results"
    _write_run(results, "strong", "balanced", "entropy", 0, [0.7, 0.7], [0.3, 0.2])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my own notes\n")
    res = runner.invoke(app, ["report", str(results), "--out", str(mine)])
    _one_line_error(res, f"--out {mine} is not empty", "not made by fairal for a report")
    assert (mine / "report.html").read_text() == "my own notes\n"
    ours = tmp_path / "ours"
    for _ in range(2):  # a folder the report made is the report's: written again
        res = runner.invoke(app, ["report", str(results), "--out", str(ours)])
        assert res.exit_code == 0, res.output
    assert (ours / MARKER).read_text() == "report\n" and (ours / "report.html").is_file()


def test_a_path_under_a_file_is_called_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FairalError, match="afile is a file, not a folder") as err:
        check_output_folder(tmp_path / "afile" / "sub")
    assert "permission" not in str(err.value)
    with pytest.raises(FairalError, match="is a folder; give a file name"):
        check_output_file(tmp_path)
    with pytest.raises(FairalError, match="exists: choose another file or add --overwrite"):
        check_output_file(tmp_path / "afile")
    assert check_output_file(tmp_path / "afile", overwrite=True) == tmp_path / "afile"


def test_calibrate_checks_its_out_file_before_the_computation(tmp_path, monkeypatch):
    import fairal.simulate.calibrate as calibrate

    def never(**kwargs):
        raise AssertionError("calibrated although --out cannot be written")

    monkeypatch.setattr(calibrate, "calibrate", never)
    (tmp_path / "c.json").write_text("{}")
    for out, needle in ((tmp_path, "is a folder"), (tmp_path / "c.json", "exists")):
        res = runner.invoke(app, ["calibrate", "--out", str(out)])
        _one_line_error(res, needle)
    assert (tmp_path / "c.json").read_text() == "{}"


def test_a_run_on_an_unreadable_image_leaves_no_folder(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns("cache"))
    m = pd.read_csv(data / "manifest.csv")
    broken = m.loc[m["split"] == "pool", "image"].iloc[-1]
    (data / broken).write_text("not an image\n")
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(data), "--strategy", "random", "--init", "balanced", "--profile", "smoke",
                              "--out", str(out), *_sets(SMOKE)])
    _one_line_error(res, broken.split("/")[-1])
    assert not out.exists()


# --- studies ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--seeds", "0"], "--seeds must be a whole number >= 1, got 0"),
    (["--seeds", "-1"], "--seeds must be a whole number >= 1, got -1"),
    (["--strategies", "foo"], "--strategies: unknown strategy 'foo'"),
    (["--strategies", ","], "--strategies names no strategy"),
    (["--cpus-per-task", "0"], "--cpus-per-task must be a whole number >= 1"),
    (["--gpus-per-task", "-1"], "--gpus-per-task must be a number >= 0"),
    (["--jobs", "-2"], "--jobs must be a whole number >= 0"),
])
def test_study_options_are_checked_before_any_work(tmp_path, args, needle):
    out = tmp_path / "out"
    res = runner.invoke(app, ["study", _study(tmp_path), str(out), *args])
    _one_line_error(res, needle)
    assert not out.exists()


@pytest.mark.parametrize("text, needle", [
    ('inits = []\n[datasets.a]\nsimulate = { bias = "weak" }\n', "inits is empty"),
    ('[set]\nstepz = 1\n[datasets.a]\nsimulate = { bias = "weak" }\n', "unknown setting 'stepz'"),
    ('[set]\nsteps = "abc"\n[datasets.a]\nsimulate = { bias = "weak" }\n', "setting steps: cannot read 'abc'"),
    ('[datasets.a]\nsimulate = { bias = "weak" }\nset = { stepz = 1 }\n', "unknown setting 'stepz'"),
])
def test_a_study_files_own_errors_name_the_file(tmp_path, text, needle):
    path = tmp_path / "s.toml"
    path.write_text('profile = "smoke"\n' + text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["study", str(path), str(out)])
    _one_line_error(res, str(path), needle)
    assert not out.exists()


def test_bad_strategy_and_initial_set_names_name_the_file(tmp_path):
    from fairal.grid.spec import load_study

    for text, needle in (('strategies = ["randm"]\n', "unknown strategy 'randm'"),
                         ('inits = ["balancd"]\n', "balancd")):
        path = tmp_path / "t.toml"
        path.write_text(text + '[datasets.a]\nsimulate = { bias = "weak" }\n')
        with pytest.raises(FairalError) as err:
            load_study(path)
        assert str(err.value).startswith(str(path)) and needle in str(err.value), str(err.value)


def _cohort(tmp_path, tiny_dataset, split: str | None = None) -> None:
    m = pd.read_csv(tiny_dataset / "manifest.csv").head(8)
    rows = pd.DataFrame({"case_id": m["case_id"], "image": [str(tiny_dataset / p) for p in m["image"]],
                         "label": [str(tiny_dataset / p) for p in m["label"]], "site": m["group"].astype(str)})
    if split is not None:
        rows["split"] = split
    rows.to_csv(tmp_path / "c.csv", index=False)


@pytest.mark.parametrize("keys, split, needles", [
    ("spacing = -1", None, ["dataset a: spacing must be > 0 mm"]),
    ("margin_mm = -5", None, ["margin_mm must be a finite number of mm >= 0"]),
    ("label_value = nan", None, ["label_value must be a finite number"]),
    ("", "pool", ["column 'split' gives group", "no test case"]),
])
def test_a_csv_dataset_is_checked_when_the_file_is_read(tmp_path, tiny_dataset, keys, split, needles):
    from fairal.grid.spec import load_study

    _cohort(tmp_path, tiny_dataset, split)
    path = tmp_path / "s.toml"
    path.write_text(f'[datasets.a]\ncsv = "c.csv"\ngroup_by = ["site"]\n{keys}\n')
    with pytest.raises(FairalError) as err:
        load_study(path)
    for n in needles:
        assert n in str(err.value), str(err.value)


def test_a_missing_group_column_names_the_study_key(tmp_path, tiny_dataset):
    from fairal.grid.spec import load_study

    _cohort(tmp_path, tiny_dataset)
    path = tmp_path / "s.toml"
    path.write_text('[datasets.a]\ncsv = "c.csv"\ngroup_by = ["hospital"]\n')
    with pytest.raises(FairalError, match="no column 'hospital' for group_by"):
        load_study(path)


# --- settings and other commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["8,x", "8,,16", "", "8;16"])
def test_a_list_setting_with_a_missing_part_is_refused(value):
    with pytest.raises(FairalError, match="setting features: cannot read .* as a list of whole numbers"):
        get_profile("smoke", {"features": value})
    assert get_profile("smoke", {"features": "8x16"}).features == (8, 16)


def test_a_query_names_its_own_settings_for_an_unknown_one(tmp_path):
    from fairal.owndata.query import query_profile

    with pytest.raises(FairalError, match=r"--set stepz: unknown setting \(did you mean 'steps'\?\); a query's"):
        query_profile("smoke", {"stepz": "3"})


def test_the_monailabel_app_checks_its_model_spacing_and_label_value(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    for bad, needle in ((["--model", str(tmp_path / "notes.txt")], "not a torch checkpoint"),
                        (["--spacing", "0"], "--spacing must be > 0 mm"),
                        (["--label-value", "nan"], "--label-value must be a finite number")):
        res = runner.invoke(app, ["monailabel-app", str(tmp_path / "app"), *bad])
        _one_line_error(res, needle)
        assert not (tmp_path / "app").exists()


def test_a_text_file_is_not_a_model_and_not_a_pickle(tmp_path):
    from fairal.simulate.deformation import DeformationModel

    (tmp_path / "m.npz").write_text("hello\n")
    with pytest.raises(FairalError, match="is not an .npz archive") as err:
        DeformationModel.load(tmp_path / "m.npz")
    assert "allow_pickle" not in str(err.value)
    from fairal.run.model import UNet3D, load_checkpoint

    with pytest.raises(FairalError, match=r"not a torch checkpoint \(the file is neither a zip archive nor a "
                                          r"pickle\)"):
        load_checkpoint(tmp_path / "m.npz", UNet3D(features=(4,)))


def test_a_plugin_that_is_no_py_file_says_so(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    for spec in ("notes.txt", str(tmp_path / "notes.txt")):
        res = runner.invoke(app, ["--plugin", spec, "strategies"])
        _one_line_error(res, "a plugin is a .py file or a module name")


def test_executor_options_are_checked_for_every_executor():
    with pytest.raises(FairalError, match="--cpus-per-task must be a whole number >= 1"):
        make_executor("local", jobs=1, cpus_per_task=0)
    with pytest.raises(FairalError, match="--max-retries must be a whole number >= 0"):
        make_executor("local", max_retries=-1)
    assert make_executor("local", jobs=2, cpus_per_task=1, gpus_per_task=0.5).jobs == 2


def test_warnings_on_the_command_line_are_one_line():
    before = warnings.formatwarning
    try:
        plain_warnings()
        text = warnings.formatwarning(RuntimeWarning("training collapsed: all background"), RuntimeWarning,
                                      "/x/loop.py", 261, "self.finish_round(...)")
    finally:
        warnings.formatwarning = before
    assert text == "warning: training collapsed: all background\n"


# --- the Python API -------------------------------------------------------------------------------------------------


def test_the_api_refuses_bad_inputs_with_fairal_error():
    p = np.full((4, 4, 4), 0.2)
    p[1:3, 1:3, 1:3] = 0.9
    with pytest.raises(FairalError, match="roi_mask and mutual_information return"):
        fairal.localized_entropy(p, fairal.roi_mask(p, 1))
    mask, source = fairal.roi_mask(p, 1)
    assert source == "predicted" and fairal.localized_entropy(p, mask) > 0
    with pytest.raises(FairalError, match="numeric array"):
        fairal.mean_entropy("abc")
    with pytest.raises(FairalError, match="overall must be a number"):
        fairal.essp("a", 0.1)
    with pytest.raises(FairalError, match="no group weight for group"):
        fairal.rank_for_annotation({"a": p}, {"a": "y"}, {"x": 1.0}, budget=1)
    with pytest.raises(FairalError, match="finite numbers >= 0"):
        fairal.rank_for_annotation({"a": p}, {"a": "x"}, {"x": -1.0}, budget=1)


def test_group_weights_refuse_a_group_they_were_not_told_of_and_bad_dice():
    with pytest.raises(FairalError, match="site-b that all_groups"):
        fairal.group_weights([0.9, 0.9, 0.7, 0.7], ["site-A", "site-A", "site-b", "site-b"], ["site-A", "site-B"])
    for bad in ([0.9, math.nan], [0.9, 1.9], [0.9, -0.1]):
        with pytest.raises(FairalError, match=r"Dice values in \[0, 1\]"):
            fairal.group_weights(bad, ["a", "b"], ["a", "b"])
    w = fairal.group_weights([0.9, 0.7], ["a", None], ["a", "b"])  # an unknown group counts in no group
    assert set(w) == {"a", "b"} and math.isclose(sum(w.values()), 1.0)

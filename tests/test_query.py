"""``fairal query`` on a tiny own-data study: three groups, unknown groups, unlabeled rows, any grid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.config import get_profile
from fairal.data.cohort import Grid, load_cases, read_cases, structure_grid
from fairal.errors import FairalError
from fairal.io import file_version
from fairal.owndata.query import (
    MIN_PER_GROUP,
    group_probabilities,
    missing_mark_warnings,
    run_query,
    weight_notes,
)

from .own_data import make_study
from .test_hostile_inputs import SLICER_STUB

FAST = {"steps": "30", "batch_size": "4", "mc_samples": "3", "stochastic_batches": "20"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return make_study(tmp_path_factory.mktemp("study"))


def _profile(**extra):
    return get_profile("smoke", {**FAST, **extra})


def test_read_cases_groups_and_intersections(study):
    t = read_cases(study, ["site"])
    assert len(t) == 24 and t["labeled"].sum() == 12
    assert set(t.loc[t["group_known"], "group"]) == {"A", "B", "C"}
    assert (~t["group_known"]).sum() == 3 and t.loc[~t["group_known"], "label_path"].eq("").all()
    both = read_cases(study, ["site", "sex"])
    assert {"A/F", "A/M", "C/F"} <= set(both["group"].dropna())
    assert both["group"].isna().sum() == 3  # an empty site makes the intersection unknown
    assert read_cases(study, [])["group"].eq("all").all()


def test_common_grid_aligns_any_size_spacing_and_orientation(study):
    t = read_cases(study, ["site"])
    grid = structure_grid(t, spacing=2.0, margin_mm=4.0)
    assert grid.spacing == (2.0, 2.0, 2.0)
    vol = load_cases(t, grid)
    labeled = t.index[t["labeled"]]
    masks = {t["case_id"][i]: vol.labels[i, 0].numpy().astype(bool) for i in labeled}
    for case, m in masks.items():  # 1 mm RAS (a), 1.5 mm (b), 1 mm LAS with x flipped (c): same place in the world
        centre = nib.affines.apply_affine(grid.affine, np.argwhere(m).mean(0))
        assert np.linalg.norm(centre - [4.0, 2.0, 0.0]) < 2.0, (case, centre)
    assert masks["c00"].sum() < 0.6 * masks["a00"].sum()  # site C's structure is smaller
    assert vol.images.shape[2:] == grid.shape and float(vol.images.max()) > 0.5


def test_query_is_deterministic_and_explains_its_ranks(study, tmp_path):
    prof = _profile()
    a = run_query(study, 4, "weighted-localized-entropy", tmp_path / "a", prof, group_by=["site"], seed=3,
                  progress=False)
    b = run_query(study, 4, "weighted-localized-entropy", tmp_path / "b", prof, group_by=["site"], seed=3,
                  progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "a" / "query.csv").read_text() == (tmp_path / "b" / "query.csv").read_text()
    assert list(a.columns[:6]) == ["rank", "case_id", "group", "score", "entropy", "weight"]
    assert a["rank"].tolist() == list(range(1, 13)) and a["selected"].sum() == 4
    assert a["score"].is_monotonic_decreasing
    info = json.loads((tmp_path / "a" / "query.json").read_text())
    w = info["weights"]
    assert set(w) == {"A", "B", "C"} and sum(w.values()) == pytest.approx(1.0)
    known = a[a["group_known"]]
    np.testing.assert_allclose(known["weight"], [w[g] for g in known["group"]])
    np.testing.assert_allclose(known["score"], known["weight"] * known["localized_entropy"])  # Eq. 2
    unknown = a[~a["group_known"]]
    assert len(unknown) == 3 and unknown["group"].fillna("").eq("").all()
    p = unknown[["p_group_A", "p_group_B", "p_group_C"]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(unknown["weight"], p @ np.array([w["A"], w["B"], w["C"]]))  # sum_g p(g|x) w_g
    assert info["unknown_groups"]["method"] == "classifier"  # 7 cases of known group per site: enough
    assert "expected weight" in unknown["reason"].iloc[0] and "weight" in known["reason"].iloc[0]
    assert (tmp_path / "a" / "montage.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_other_strategies_and_a_saved_model(study, tmp_path):
    prof = _profile()
    first = run_query(study, 3, "stochastic-weighted-localized-entropy", tmp_path / "s", prof, group_by=["site"],
                      progress=False)
    assert first["selected"].sum() == 3 and "random batches" in first["reason"].iloc[0]
    again = run_query(study, 3, "stochastic-weighted-localized-entropy", tmp_path / "s2", prof, group_by=["site"],
                      progress=False)
    assert first["case_id"].tolist() == again["case_id"].tolist()
    bald = run_query(study, 3, "weighted-bald", tmp_path / "bald", prof, group_by=["site"],
                     group_dice="cross-validated", model_path=tmp_path / "s" / "model.pt", progress=False)
    assert (bald["bald"] >= 0).all() and bald["bald"].notna().all()
    info = json.loads((tmp_path / "bald" / "query.json").read_text())
    assert info["training"] == {"trained": False} and info["group_dice"] == "cross-validated"
    with pytest.raises(FairalError, match="--group-dice must be one of"):
        run_query(study, 3, "weighted-bald", tmp_path / "x", prof, group_dice="test-set")


def test_query_command_and_clear_errors(study, tmp_path):
    args = ["query", str(study), "--budget", "2", "--group-by", "site", "--profile", "smoke"]
    for k, v in FAST.items():
        args += ["--set", f"{k}={v}"]
    ok = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "q")])
    assert ok.exit_code == 0, ok.output
    assert "annotate next" in ok.output and (tmp_path / "q" / "query.csv").is_file()
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "q")])
    assert again.exit_code == 2 and "exists and is not empty" in again.output

    def fails(table: pd.DataFrame, message: str, extra=()) -> None:
        path = tmp_path / "bad.csv"
        table.to_csv(path, index=False)
        res = CliRunner().invoke(app, ["query", str(path), "--budget", "2", "--out", str(tmp_path / "never"),
                                       "--profile", "smoke", "--set", "steps=2", *extra])
        assert res.exit_code == 2, res.output
        assert message in res.output, res.output
        assert not (tmp_path / "never").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]

    base = pd.read_csv(study, dtype=str, keep_default_na=False)
    base["image"] = [str(study.parent / p) for p in base["image"]]
    base["label"] = [str(study.parent / p) if p else "" for p in base["label"]]
    missing = base.copy()
    missing.loc[2, "image"] = str(study.parent / "images" / "gone.nii.gz")
    fails(missing, "case a02: image file not found")
    mismatch = base.copy()
    shutil.copyfile(base.loc[8, "label"], tmp_path / "other.nii.gz")  # another case's 1.5 mm label (22x22x19)
    mismatch.loc[0, "label"] = str(tmp_path / "other.nii.gz")  # for a 1 mm image (32x32x28)
    fails(mismatch, "case a00: label shape (22, 22, 19) differs from its image's (32, 32, 28)")
    fails(base.assign(label=""), "no labeled case in any group")
    fails(base, "impossible budget: 20 cases asked for", extra=["--budget", "20"])
    fails(base, "no column 'scanner' for --group-by", extra=["--group-by", "scanner"])
    fails(base, "--group-by names the column 'image', which says where a case is, not its group",
          extra=["--group-by", "image"])
    fails(base, "--spacing and --model: the model keeps the grid it was trained on",
          extra=["--model", str(tmp_path / "q" / "model.pt"), "--spacing", "1.5"])
    fails(base, "--spacing and --probabilities: the saved outputs are read on each scan's own voxels",
          extra=["--probabilities", str(tmp_path), "--spacing", "2"])
    fails(base.drop(columns=["label"]), "lacks the column(s) label")
    fails(base, "unknown strategy 'coreset'", extra=["--strategy", "coreset"])
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a nifti file")
    broken = base.copy()
    broken.loc[1, "image"] = str(corrupt)
    fails(broken, "case a01: image")
    no_group = base.copy()
    no_group.loc[no_group["label"] != "", "site"] = ""
    fails(no_group, "no labeled case has a known group", extra=["--group-by", "site"])


def test_group_probabilities_frequencies_and_classifier():
    order = ["A", "B", "C"]
    groups = np.array(["A", "A", "B", "C", None, None], dtype=object)
    known = np.array([True, True, True, True, False, False])
    gm = group_probabilities(np.zeros((6, 2)), groups, known, order)
    assert gm.method == "frequencies"
    np.testing.assert_allclose(gm.proba, [[0.5, 0.25, 0.25]] * 2)  # 2 A, 1 B, 1 C among the known
    rng = np.random.default_rng(0)
    n = MIN_PER_GROUP + 3
    centres = {"A": [0, 0], "B": [6, 0], "C": [0, 6]}
    feats = np.concatenate([rng.normal(centres[g], 0.5, (n, 2)) for g in order] + [np.array([[6.0, 0.0]])])
    groups = np.array([g for g in order for _ in range(n)] + [None], dtype=object)
    known = np.array([True] * (3 * n) + [False])
    gm = group_probabilities(feats, groups, known, order)
    assert gm.method == "classifier" and gm.cv_accuracy > 0.9 and gm.chance_accuracy == pytest.approx(1 / 3)
    assert gm.proba.shape == (1, 3) and gm.proba[0, 1] > 0.8  # the unknown case sits in B's cluster


def test_query_needs_no_folder_copy(study, tmp_path):
    # paths in the CSV are relative to the CSV: the study folder moved elsewhere still works
    moved = tmp_path / "moved"
    shutil.copytree(study.parent, moved)
    t = read_cases(moved / "study.csv", ["site"])
    assert all(str(moved) in p for p in t["image_path"])
    with pytest.raises(FairalError, match="must be > 0 mm"):
        structure_grid(t, spacing=0, margin_mm=1)


def test_no_known_group_is_fine_without_weights(study, tmp_path):
    t = pd.read_csv(study, dtype=str, keep_default_na=False).assign(site="")
    t["image"] = [str(study.parent / p) for p in t["image"]]
    t["label"] = [str(study.parent / p) if p else "" for p in t["label"]]
    t.to_csv(tmp_path / "blind.csv", index=False)
    ranked = run_query(tmp_path / "blind.csv", 2, "localized-entropy", tmp_path / "q", _profile(), group_by=["site"],
                       progress=False)
    assert (ranked["weight"] == 1.0).all() and not ranked["group_known"].any()
    np.testing.assert_allclose(ranked["score"], ranked["localized_entropy"])
    with pytest.raises(FairalError, match="no labeled case has a known group"):
        run_query(tmp_path / "blind.csv", 2, "weighted-localized-entropy", tmp_path / "w", _profile(),
                  group_by=["site"], progress=False)


@pytest.fixture(scope="module")
def handoff(study, tmp_path_factory):
    """A query's output folder (3 cases selected) and its table."""
    out = tmp_path_factory.mktemp("handoff") / "batch"
    return out, run_query(study, 3, "weighted-localized-entropy", out, _profile(), group_by=["site"], progress=False)


def test_annotators_get_predictions_on_each_scans_own_grid(handoff):
    out, table = handoff
    batch = table[table["selected"]]
    assert list(table.columns[:6]) == ["rank", "case_id", "group", "score", "entropy", "weight"]
    assert {"image", "label", "prediction"} <= set(table.columns)
    for row in batch.itertuples():
        scan = nib.load(row.image)
        pred = nib.load(str(out / row.prediction))
        assert pred.shape == scan.shape  # the scan's own grid: sizes, spacings and orientations differ by site
        np.testing.assert_allclose(pred.affine, scan.affine, atol=1e-6)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}
    annotate = pd.read_csv(out / "annotate.csv")
    assert annotate["case_id"].tolist() == batch["case_id"].tolist()
    assert all(c in (out / "open_in_slicer.py").read_text() for c in batch["case_id"])
    assert (out / "open_in_itksnap.sh").read_text().count("itksnap -g") == 3


def test_a_multi_label_map_with_label_value(tmp_path):
    study = make_study(tmp_path / "study", per_site=5, labeled_per_site=3, unknown=1)  # its own copy: rewritten
    t = pd.read_csv(study, dtype=str, keep_default_na=False)
    for rel in t.loc[t["label"] != "", "label"]:  # the structure as value 11 of a multi-label map
        img = nib.load(str(study.parent / rel))
        data = np.asarray(img.dataobj).astype(np.int16)
        nib.save(nib.Nifti1Image(np.where(data > 0, 11, 3).astype(np.int16), img.affine), str(study.parent / rel))
    with pytest.raises(FairalError, match="not binary.*structure's value"):
        run_query(study, 2, "entropy", tmp_path / "a", _profile(), group_by=["site"], progress=False)
    table = run_query(study, 2, "entropy", tmp_path / "b", _profile(), group_by=["site"], progress=False,
                      label_value=11)
    assert table["selected"].sum() == 2


def _slicer(script_args: list[str], cwd, tmp_path, name: str) -> list:
    """Run Python as 3D Slicer would (``script_args``), with a stub ``slicer`` module that records what it opens."""
    stub, log = tmp_path / f"stub-{name}", tmp_path / f"log-{name}"
    stub.mkdir()
    log.mkdir()
    (stub / "slicer.py").write_text(SLICER_STUB)
    res = subprocess.run([sys.executable, *script_args], cwd=cwd, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(stub), "STUB_LOG": str(log)})
    if res.returncode:
        return [res.stderr]
    return [json.loads(line) for line in (log / "slicer.jsonl").read_text().splitlines()]


def test_the_slicer_script_runs_as_the_docs_say_from_any_folder(handoff, tmp_path):
    out, table = handoff
    batch = table[table["selected"]]
    want = []
    for case, img in zip(batch["case_id"], batch["image"], strict=True):
        want += [["volume", img], ["segmentation", str(out / "predictions" / f"{case}.nii.gz")],
                 ["name", f"{case} (fairal prediction)"]]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Slicer's console: exec(open(PATH).read()), with no __file__ and the working folder anyone's
    doc_way = f"exec(open({str(out / 'open_in_slicer.py')!r}).read())"
    assert _slicer(["-c", doc_way], elsewhere, tmp_path, "exec") == want
    # the folder moved: run as a file, the script finds the predictions beside itself
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    try:
        want_moved = [[k, v.replace(str(out), str(moved)) if k == "segmentation" else v] for k, v in want]
        assert _slicer([str(moved / "open_in_slicer.py")], elsewhere, tmp_path, "file") == want_moved
        # under exec, a moved folder has no __file__ to find it by: a clear error, not a wrong folder
        [message] = _slicer(["-c", f"exec(open({str(moved / 'open_in_slicer.py')!r}).read())"], elsewhere,
                            tmp_path, "moved")
        assert "no predictions/ folder in" in message and "__file__=PATH" in message
    finally:
        shutil.move(moved, out)


def test_a_group_named_as_a_missing_value_is_warned_about():
    assert missing_mark_warnings(["NA", "F/NA", "B", "NAB", "A/F"]) == [
        "group NA: 'NA' is a value of its own here (values are taken as written), not a missing one; leave the cell "
        "empty where the group is unknown",
        "group F/NA: 'NA' is a value of its own here (values are taken as written), not a missing one; leave the "
        "cell empty where the group is unknown"]


def test_weight_notes_say_when_there_is_nothing_to_weigh_or_too_little():
    notes, warnings = weight_notes([], ["all"], ["all"] * 20, {"all": 1.0}, "labeled")
    assert notes == ["no groups given (--group-by): every case is in one group, so there are no weights to steer "
                     "by and the ranking is the unweighted score's"] and warnings == []
    notes, _ = weight_notes(["site"], ["A"], ["A"] * 6, {"A": 1.0}, "labeled")
    assert notes[0].startswith("one group only (A)")
    notes, _ = weight_notes(["site"], ["A", "B"], ["A"] * 3 + ["B"] * 3, {"A": 0.5, "B": 0.5}, "labeled")
    assert notes[0].startswith("the weights are equal: the model segments its labeled cases equally well")
    notes, _ = weight_notes(["site"], ["A", "B"], ["A"] * 3 + ["B"] * 3, {"A": 0.5, "B": 0.5}, "cross-validated")
    assert notes == []
    notes, warnings = weight_notes(["dx", "site"], ["x/A", "x/B", "y/A"], ["x/A"] * 5 + ["x/B"] * 2 + [None],
                                   {"x/A": 0.2, "x/B": 0.5, "y/A": 0.3}, "labeled")
    assert notes == [] and warnings == [
        "group x/B has 2 labeled cases: its Dice, and so its weight (0.500), rests on them; label at least 3 of "
        "each group, or group more coarsely",
        "group y/A has no labeled case: its Dice is taken as the worst labeled case's, which gives it a high weight "
        "(0.300) and brings its cases forward; label a few of group y/A to measure it"]



def test_weight_notes_warn_when_the_model_segments_next_to_nothing_in_every_group():
    # an nnU-Net trained for 10 iterations: out-of-fold Dice 0.0001 and 0.0, yet Eq. 2's weights were 0.40/0.60
    six = ["A"] * 3 + ["B"] * 3
    _, warnings = weight_notes(["site"], ["A", "B"], six, {"A": 0.397, "B": 0.603}, "labeled",
                               {"A": 0.0001, "B": 0.0})
    assert warnings == ["the model's mean Dice on the labeled cases is below 0.1 in every group (best 0.000): the "
                        "group weights come from noise, not from a gap; check that the model is trained and that "
                        "--class (or --label-value) names the structure"]
    for fine in ({"A": 0.05, "B": 0.1}, {"A": 0.9, "B": 0.8}, None):  # one group at 0.1 segments something
        assert weight_notes(["site"], ["A", "B"], six, {"A": 0.5, "B": 0.5}, "labeled", fine)[1] == []

def test_the_console_says_no_groups_were_given_and_warns_of_small_groups(study, tmp_path):
    args = ["query", str(study), "--budget", "2", "--profile", "smoke", "--quiet"]
    for k, v in FAST.items():
        args += ["--set", f"{k}={v}"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "none"), "--no-quiet"])
    assert res.exit_code == 0, res.output
    assert "no groups given (--group-by)" in res.output and "equally well" not in res.output
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "both"), "--no-quiet", "--group-by", "site",
                                   "--group-by", "sex"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "both" / "query.json").read_text())
    assert len(info["warnings"]) == 6  # 4 labeled cases per site, 2 of each sex: six groups of 2
    assert all(f"warning: {w}" in res.output for w in info["warnings"])
    assert "group A/F has 2 labeled cases" in res.output
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "quiet"), "--group-by", "site", "--group-by",
                                   "sex"])  # --quiet: no table, the warnings all the same
    assert res.exit_code == 0 and "annotate next" not in res.output, res.output
    assert all(f"warning: {w}" in res.output for w in info["warnings"])


def test_an_absent_label_value_is_named(study, tmp_path):
    res = CliRunner().invoke(app, ["query", str(study), "--budget", "2", "--out", str(tmp_path / "q"),
                                   "--label-value", "11", "--profile", "smoke"])
    assert res.exit_code == 2 and "--label-value 11 is absent from 12 of 12 label maps" in res.output, res.output


def test_empty_label_maps_are_named_as_such(tmp_path):
    study = make_study(tmp_path / "study", per_site=2, labeled_per_site=1, unknown=1)
    t = read_cases(study, ["site"])
    for path in t.loc[t["labeled"], "label_path"]:
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), path)
    with pytest.raises(FairalError, match=r"every label map of the 3 labeled cases is empty \(no voxel is 1\)"):
        structure_grid(t, spacing=2.0, margin_mm=4.0)


def test_out_of_fold_dice_measures_cases_labeled_after_the_model_by_the_fold_models(study, tmp_path, monkeypatch):
    """Out of fold with ``--model``: the folds run over the model's training cases still labeled (trained, or given
    back from an earlier query whose folds ran over exactly those, their models loaded from its folder); a case
    labeled after the model was trained is out of sample for every fold model and gets the mean of their Dice; the
    note says so. Training cases too few in a group, or a model that records none: folds over every labeled case."""
    import torch

    from fairal.acquisition import group_weights
    from fairal.owndata import query as query_module
    from fairal.owndata.query import Folds, train_query_model
    from fairal.run.rounds import evaluate

    prof = _profile()
    full = pd.read_csv(study)
    for col in ("image", "label"):
        full[col] = [str(study.parent / v) if isinstance(v, str) else v for v in full[col]]
    full.to_csv(tmp_path / "now.csv", index=False)

    def model_on(cases: list[str], name: str):
        full.assign(label=full["label"].where(full["case_id"].isin(cases))).to_csv(tmp_path / f"{name}.csv",
                                                                                   index=False)
        train_query_model(tmp_path / f"{name}.csv", tmp_path / f"{name}.pt", prof, group_by=["site"])
        return tmp_path / f"{name}.pt"

    trained = [f"{s}0{i}" for s in "abc" for i in range(3)]  # a03, b03, c03: labeled after the model was trained
    model = model_on(trained, "early")
    calls = []

    def perturbed(k: int):  # a fold model of its own: the model's weights with seeded noise
        net = query_module.load_query_model(model, prof, 0.0)[0]
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for w in net.parameters():
                w.add_(0.3 * w.abs().mean() * torch.randn(w.shape, generator=gen))
        return net

    def folds(vol, rows, groups, *args, models=None, **kwargs):  # each case a value of its own: 0.5 + its row / 100
        ids = {r: c for c, r in vol.index.items()}
        calls.append(sorted(ids[r] for r in rows))
        models.extend(perturbed(k) for k in range(5))
        return [0.5 + r / 100 for r in rows]

    monkeypatch.setattr(query_module, "out_of_fold_dice", folds)
    wle = "weighted-localized-entropy"
    own = run_query(tmp_path / "now.csv", 2, wle, tmp_path / "own", prof, group_by=["site"], model_path=model,
                    progress=False).attrs["query"]["labeled_case_dice"]
    kw = {"group_by": ["site"], "progress": False, "group_dice": "cross-validated"}
    first = run_query(tmp_path / "now.csv", 2, wle, tmp_path / "cv", prof, model_path=model, **kw)
    info = first.attrs["query"]
    assert calls == [trained]  # the folds: over the 9 training cases, no other
    vol = load_cases(read_cases(tmp_path / "now.csv", ["site"]), Grid.from_meta(
        torch.load(model, weights_only=True)["meta"]["grid"], model))
    later = ["a03", "b03", "c03"]
    by_fold = np.mean([evaluate(perturbed(k), vol, vol.rows(later), batch_size=8) for k in range(5)], axis=0)
    assert np.abs(by_fold - [own[c] for c in later]).max() > 1e-3  # the fold models measure otherwise than the model
    # each training case its own fold value, in its place; a case labeled since: the mean of the 5 fold models' Dice
    expected = {c: 0.5 + vol.index[c] / 100 if c in trained else float(by_fold[later.index(c)]) for c in own}
    assert info["labeled_case_dice"] == pytest.approx(expected)
    assert info["group_dice_sources"] == {"out_of_fold": 9, "out_of_sample": 3, "folds": "trained",
                                          "folds_over": "training cases"}
    assert info["fold_dice"] == pytest.approx({c: expected[c] for c in trained})
    assert info["fold_models"] == [f"folds/fold-{k}.pt" for k in range(1, 6)]
    assert all((tmp_path / "cv" / m).is_file() for m in info["fold_models"])
    assert any("3 cases labeled after the model was trained measured by the fold models" in n
               for n in info["notes"]), info["notes"]
    want = group_weights(list(expected.values()), [c[0].upper() for c in expected], ["A", "B", "C"],
                         prof.temperature)
    assert info["weights"] == pytest.approx(want)
    again = run_query(tmp_path / "now.csv", 2, wle, tmp_path / "cv2", prof, model_path=model,
                      folds=Folds.of_query(tmp_path / "cv"), **kw).attrs["query"]
    assert len(calls) == 1 and again["group_dice_sources"]["folds"] == "reused"  # no fold trained again
    assert again["weights"] == pytest.approx(info["weights"])
    assert again["labeled_case_dice"] == pytest.approx(expected)  # the fold models, loaded, measure the same
    assert any("the folds of an earlier ranking with this model" in n for n in again["notes"])
    saved = torch.load(model, weights_only=True)
    saved["meta"]["another"] = True  # the same training cases, another model file: the kept folds are not its
    torch.save(saved, tmp_path / "another.pt")
    run_query(tmp_path / "now.csv", 2, wle, tmp_path / "cv-other", prof, model_path=tmp_path / "another.pt",
              folds=Folds.of_query(tmp_path / "cv"), **kw)
    assert len(calls) == 2 and calls[-1] == trained
    relabeled = full.copy()  # a training case's label saved again (another file): trained again
    (tmp_path / "a00-again.nii.gz").write_bytes(Path(relabeled.loc[relabeled["case_id"] == "a00", "label"].iloc[0])
                                                .read_bytes())
    relabeled.loc[relabeled["case_id"] == "a00", "label"] = str(tmp_path / "a00-again.nii.gz")
    relabeled.to_csv(tmp_path / "relabeled.csv", index=False)
    run_query(tmp_path / "relabeled.csv", 2, wle, tmp_path / "cv-relabeled", prof, model_path=model,
              folds=Folds.of_query(tmp_path / "cv"), **kw)
    assert len(calls) == 3
    assert json.loads((tmp_path / "cv" / "query.json").read_text())["fold_key"]["models"][0] == file_version(model)
    kept = Folds.of_query(tmp_path / "cv")
    partial = Folds(dict(list(kept.dice.items())[:-1]), kept.models)  # folds of another set of cases: trained again
    run_query(tmp_path / "now.csv", 2, wle, tmp_path / "cv3", prof, model_path=model, folds=partial, **kw)
    assert calls[-1] == trained and len(calls) == 4
    superset = Folds({**kept.dice, "a03": 0.5}, kept.models)
    run_query(tmp_path / "now.csv", 2, wle, tmp_path / "cv4", prof, model_path=model, folds=superset, **kw)
    assert len(calls) == 5
    (tmp_path / "cv" / "folds" / "fold-3.pt").write_bytes(b"PK\x03\x04 damaged")  # unreadable: trained again
    run_query(tmp_path / "now.csv", 2, wle, tmp_path / "cv5", prof, model_path=model, folds=kept, **kw)
    assert len(calls) == 6
    labeled = sorted(own)
    few = model_on(["a00", "a01", *trained[3:]], "few")  # site A: 2 training cases of its 4 labeled
    short = run_query(tmp_path / "now.csv", 2, wle, tmp_path / "few", prof, model_path=few, **kw).attrs["query"]
    assert calls[-1] == labeled and short["group_dice_sources"]["out_of_sample"] == 0
    assert any("too few to cross-validate" in n for n in short["notes"]), short["notes"]
    saved = torch.load(model, weights_only=True)
    assert sorted(saved["meta"]["trained_on"]) == trained
    saved["meta"].pop("trained_on")  # a model saved before fairal recorded its training cases
    torch.save(saved, tmp_path / "old.pt")
    old = run_query(tmp_path / "now.csv", 2, wle, tmp_path / "old", prof, model_path=tmp_path / "old.pt",
                    **kw).attrs["query"]
    assert calls[-1] == labeled and old["group_dice_sources"] == {
        "out_of_fold": 12, "out_of_sample": 0, "folds": "trained", "folds_over": "every labeled case"}
    assert not any("group Dice:" in n for n in old["notes"])  # folds over every labeled case, as without --model

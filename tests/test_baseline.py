"""Data loading and validation, the baseline cohorts, and `fairal baseline` end to end on a tiny dataset."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.config import get_profile, parse_overrides
from fairal.data.volumes import load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.grid.baselines import BASELINE_TABLE_COLUMNS, baseline_cohorts
from fairal.metrics import fairness_summary

runner = CliRunner()


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


SMOKE = {"cohort_size": "4", "steps": "4", "crop_margin": "4", "downsample": "1"}


def test_cohorts_composition(tiny_dataset):
    m = read_manifest(tiny_dataset)
    cohorts = baseline_cohorts(m, 6, seed=0)
    group = dict(zip(m["case_id"], m["group"], strict=True))
    test = set(m.loc[m["split"] == "test", "case_id"])
    assert [group[c] for c in cohorts["all"]].count(1) == 3 and len(cohorts["all"]) == 6
    assert {group[c] for c in cohorts["g1"]} == {1} and len(cohorts["g1"]) == 6
    assert {group[c] for c in cohorts["g2"]} == {2} and len(cohorts["g2"]) == 6
    assert not test & set(sum(cohorts.values(), []))
    assert baseline_cohorts(m, 6, seed=0) == cohorts and baseline_cohorts(m, 6, seed=1) != cohorts


def test_cohort_larger_than_pool_is_refused(tiny_dataset):
    m = read_manifest(tiny_dataset)
    with pytest.raises(FairalError, match="cohort all needs 63 Group 1 cases for training but the pool has 6"):
        baseline_cohorts(m, 126)


def test_volumes_are_cropped_and_binary(tiny_dataset):
    m = read_manifest(tiny_dataset)
    v = load_volumes(tiny_dataset, m, crop_margin=3, downsample=1, cache=False)
    lab = np.asarray(nib.load(str(tiny_dataset / "template" / "label.nii.gz")).dataobj)
    extent = np.ptp(np.argwhere(lab), axis=0) + 1
    assert v.spatial_shape == tuple(int(e + 6) for e in extent)
    assert set(np.unique(v.labels.numpy()).tolist()) <= {0, 1}
    assert 0.5 < float(v.images.max()) < 2.0  # normalised by the 99.5th percentile
    v2 = load_volumes(tiny_dataset, m, crop_margin=3, downsample=2, cache=False)
    assert v2.spatial_shape == tuple(-(-s // 2) for s in v.spatial_shape)


def test_volume_cache_gives_the_same_data(dataset_copy):
    m = read_manifest(dataset_copy)
    a = load_volumes(dataset_copy, m, crop_margin=3, downsample=2)
    assert any((dataset_copy / "cache").iterdir())
    b = load_volumes(dataset_copy, m, crop_margin=3, downsample=2)
    assert (a.images == b.images).all() and (a.labels == b.labels).all() and a.box == b.box


def _baseline(data, out, *extra):
    args = ["baseline", str(data), "--out", str(out), "--profile", "smoke", "--quiet"]
    for k, v in SMOKE.items():
        args += ["--set", f"{k}={v}"]
    return runner.invoke(app, args + list(extra))


def test_baseline_writes_consistent_records(dataset_copy, tmp_path):
    res = _baseline(dataset_copy, tmp_path / "base")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "base" / "baseline_table.csv")
    cases = pd.read_csv(tmp_path / "base" / "baseline_cases.csv")
    assert list(table.columns) == BASELINE_TABLE_COLUMNS and table["cohort"].tolist() == ["all", "g1", "g2"]
    assert list(cases.columns) == ["cohort", "case_id", "group", "dice", "split"]
    test_ids = set(read_manifest(dataset_copy).query("split == 'test'")["case_id"])
    for cohort, sub in cases.groupby("cohort"):
        assert set(sub["case_id"]) == test_ids
        want = fairness_summary(sub["dice"].to_numpy(), sub["group"].to_numpy())
        got = table.set_index("cohort").loc[cohort]
        for key in BASELINE_TABLE_COLUMNS[1:]:
            if key.startswith("eval_"):  # no evaluation split in this dataset: empty
                assert np.isnan(got[key])
            else:
                assert np.isclose(got[key], want[key], atol=1e-9)
    assert (tmp_path / "base" / "checkpoints" / "baseline-g2.pt").is_file()


def _no_output(path):
    return not path.exists()


def test_baseline_errors_are_clear(dataset_copy, tmp_path):
    res = _baseline(dataset_copy, tmp_path / "o1", "--set", "cohort_size=500")
    assert res.exit_code == 2 and "cohort all needs 250 Group 1 cases" in res.output and _no_output(tmp_path / "o1")
    res = _baseline(dataset_copy, tmp_path / "o2", "--set", "stepz=3")
    assert res.exit_code == 2 and "unknown setting 'stepz'" in res.output and _no_output(tmp_path / "o2")
    res = _baseline(tmp_path / "nowhere", tmp_path / "o3")
    assert res.exit_code == 2 and "nowhere does not exist" in res.output and _no_output(tmp_path / "o3")
    (tmp_path / "empty").mkdir()
    res = _baseline(tmp_path / "empty", tmp_path / "o4")
    assert res.exit_code == 2 and "no manifest.csv" in res.output and _no_output(tmp_path / "o4")


def _edit_manifest(folder, fn):
    m = pd.read_csv(folder / "manifest.csv", keep_default_na=False)
    fn(m)
    m.to_csv(folder / "manifest.csv", index=False)


def test_bad_datasets_name_the_case(dataset_copy, tmp_path):
    m = pd.read_csv(dataset_copy / "manifest.csv")
    first = m["case_id"].iloc[0]
    # missing file
    (dataset_copy / "labels" / f"{first}.nii.gz").rename(tmp_path / "keep.nii.gz")
    with pytest.raises(FairalError, match=f"case {first}: label file not found"):
        read_manifest(dataset_copy)
    (tmp_path / "keep.nii.gz").rename(dataset_copy / "labels" / f"{first}.nii.gz")
    # image/label shape mismatch
    lab_path = dataset_copy / "labels" / f"{first}.nii.gz"
    lab = nib.load(str(lab_path))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:-1], lab.affine), str(lab_path))
    with pytest.raises(FairalError, match=f"case {first}: label shape"):
        load_volumes(dataset_copy, read_manifest(dataset_copy), cache=False)
    # non-binary label
    data = np.zeros(lab.shape, np.uint8)
    data[5, 5, 5] = 3
    nib.save(nib.Nifti1Image(data, lab.affine), str(lab_path))
    with pytest.raises(FairalError, match=f"case {first}: label is not binary"):
        load_volumes(dataset_copy, read_manifest(dataset_copy), cache=False)
    # other and more groups: one cohort per group; then a missing column
    def third_group(m):  # every other Group 2 case of the pool becomes Group 3
        twos = m.index[(m["group"] == 2) & (m["split"] == "pool")]
        m.loc[twos[::2], "group"] = 3

    _edit_manifest(dataset_copy, third_group)
    m3 = read_manifest(dataset_copy)
    cohorts = baseline_cohorts(m3, 3)
    assert list(cohorts) == ["all", "g1", "g2", "g3"] and all(len(c) == 3 for c in cohorts.values())
    group_of = m3.set_index("case_id")["group"]
    assert sorted(group_of[cohorts["all"]]) == [1, 2, 3] and set(group_of[cohorts["g3"]]) == {3}
    # one rule for every per-group draw (fairal.sampling.split_evenly): the first groups get the remainder
    assert sorted(group_of[baseline_cohorts(m3, 2)["all"]]) == [1, 2]
    _edit_manifest(dataset_copy, lambda m: m.pop("group"))
    with pytest.raises(FairalError, match="lacks the column"):
        read_manifest(dataset_copy)


def test_profiles_and_overrides():
    p = get_profile("standard", parse_overrides(["steps=7", "crop_margin=none", "warm_start=false"]))
    assert (p.steps, p.crop_margin, p.warm_start) == (7, None, False)
    assert get_profile("paper").epochs == 200 and get_profile("paper").downsample == 1
    with pytest.raises(FairalError, match="unknown profile"):
        get_profile("fast")
    with pytest.raises(FairalError, match="cannot read 'x'"):
        get_profile("smoke", {"steps": "x"})

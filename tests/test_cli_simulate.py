"""`fairal simulate` and `fairal build-model` as a user runs them: clear errors, non-zero exit, no partial data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairal.cli import app
from fairal.errors import FairalError

from .conftest import LABEL_VALUE, make_template

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _small(tpl, lab, out, *extra):
    return _run("simulate", out, "--template", tpl, "--label", lab, "--label-value", LABEL_VALUE, "--shape", 32, 32,
                24, "--n-subjects", 4, "--jobs", 1, "--quiet", *extra)


def test_simulate_writes_a_dataset(tiny_template, tmp_path):
    tpl, lab = tiny_template
    res = _small(tpl, lab, tmp_path / "out", "--bias", "weak")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "preview.png").stat().st_size > 10_000
    assert len(list((tmp_path / "out" / "labels").iterdir())) == 4


def _no_output(tmp_path, name="out"):
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in tmp_path.iterdir())


def test_corrupt_template_is_a_clear_error(tiny_template, tmp_path):
    _, lab = tiny_template
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not a nifti at all")
    res = _small(bad, lab, tmp_path / "out")
    assert res.exit_code == 2
    assert "broken.nii.gz" in res.output and "Traceback" not in res.output
    assert _no_output(tmp_path)


def test_missing_label_value_is_a_clear_error(tiny_template, tmp_path):
    tpl, lab = tiny_template
    res = _run("simulate", tmp_path / "out", "--template", tpl, "--label", lab, "--label-value", 42, "--quiet")
    assert res.exit_code == 2
    assert "label value 42 does not occur" in res.output and "labels.nii.gz" in res.output
    assert _no_output(tmp_path)


def test_mismatched_grids_are_a_clear_error(tmp_path):
    (tmp_path / "far").mkdir()
    tpl, lab = make_template(tmp_path / "far", shift_label_mm=200.0)
    res = _small(tpl, lab, tmp_path / "out")
    assert res.exit_code == 2
    assert "does not overlap" in res.output
    assert _no_output(tmp_path)


def test_local_model_of_another_template_is_refused(tiny_template, tmp_path):
    tpl, lab = tiny_template
    assert _small(tpl, lab, tmp_path / "first").exit_code == 0
    model = tmp_path / "first" / "models" / "local.npz"
    z = dict(np.load(model))
    z["affine"] = z["affine"].copy()
    z["affine"][:3, 3] += 100.0  # the same model moved 10 cm away
    np.savez(tmp_path / "moved.npz", **z)
    res = _small(tpl, lab, tmp_path / "out", "--local-model", tmp_path / "moved.npz")
    assert res.exit_code == 2 and "mismatched grids" in res.output
    assert _no_output(tmp_path)


def test_bad_bias_and_budget(tiny_template, tmp_path):
    tpl, lab = tiny_template
    res = _small(tpl, lab, tmp_path / "out", "--bias", "huge")
    assert res.exit_code == 2 and "--bias must be one of" in res.output
    res = _small(tpl, lab, tmp_path / "out", "--n-subjects", 1)
    assert res.exit_code == 2 and "at least 2" in res.output
    assert _no_output(tmp_path)


def test_build_model_command(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"f{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.standard_normal((5, 5, 5, 1, 3)).astype(np.float32), np.eye(4)), str(p))
        paths.append(p)
    res = _run("build-model", *paths, "--out", tmp_path / "m.npz", "--n-components", 2)
    assert res.exit_code == 0, res.output
    assert "2 components" in res.output and (tmp_path / "m.npz").is_file()
    res = _run("build-model", paths[0], "--out", tmp_path / "m1.npz")
    assert res.exit_code == 2 and "at least 2 fields" in res.output


def test_datasets_load_in_monai_and_export_to_nnunet(tiny_dataset, tmp_path):
    import json

    from monai.data import load_decathlon_datalist

    from fairal.data.export import export_nnunet

    info = json.loads((tiny_dataset / "dataset.json").read_text())
    assert "/" not in "".join(info["template"]["sources"].values())  # no absolute paths baked in
    train = load_decathlon_datalist(str(tiny_dataset / "dataset.json"), is_segmentation=True,
                                    data_list_key="training", base_dir=str(tiny_dataset))
    test = load_decathlon_datalist(str(tiny_dataset / "dataset.json"), data_list_key="test",
                                   base_dir=str(tiny_dataset))
    assert len(train) == 12 and len(test) == 12 and all(Path(d["image"]).is_file() for d in train + test)
    assert all(Path(d["label"]).is_file() for d in train)
    # nnU-Net v2's raw format, checked against its documented schema (dataset_format.md)
    res = CliRunner().invoke(app, ["export", "nnunet", str(tiny_dataset), str(tmp_path / "raw"), "--dataset-id", "7"])
    assert res.exit_code == 0, res.output
    ds = next((tmp_path / "raw").glob("Dataset007_*"))
    meta = json.loads((ds / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    assert meta["labels"]["background"] == 0 and sorted(meta["labels"].values()) == [0, 1]
    images = sorted(p.name for p in (ds / "imagesTr").iterdir())
    labels = sorted(p.name for p in (ds / "labelsTr").iterdir())
    assert len(images) == len(labels) == meta["numTraining"] == 12
    assert [i.replace("_0000.nii.gz", ".nii.gz") for i in images] == labels  # one channel, matching names
    assert len(list((ds / "imagesTs").iterdir())) == 12
    groups = pd.read_csv(ds / "groups.csv")
    assert list(groups.columns) == ["case_id", "group", "split"] and len(groups) == 24
    with pytest.raises(FairalError, match="dataset-id"):
        export_nnunet(tiny_dataset, tmp_path / "raw", 1000)
    with pytest.raises(FairalError, match=f"--dataset-id 7 is taken in .* by {ds.name}"):  # one folder per id
        export_nnunet(tiny_dataset, tmp_path / "raw", 7, name="Another")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [ds.name]

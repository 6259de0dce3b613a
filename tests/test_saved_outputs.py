"""``fairal query --probabilities``: a ranking from a model's saved outputs (nnU-Net's ``.npz`` written by nnU-Net's
own exporter, NIfTI maps in another orientation) equals :func:`fairal.rank_for_annotation`'s from the same arrays;
and what it refuses."""

from __future__ import annotations

import json
import pickle

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fairal
from fairal.cli import app
from fairal.config import get_profile
from fairal.errors import FairalError
from fairal.metrics import dice
from fairal.owndata.saved import run_saved_query

SHAPE = (14, 16, 12)
LABELED = {"la0": "A", "la1": "A", "la2": "A", "lb0": "B", "lb1": "B", "lb2": "B"}
UNLABELED = {"u0": "A", "u1": "A", "u2": "B", "u3": "B", "u4": "B", "u5": None}
#: A scan stored in another orientation (axes swapped and flipped: not RAS).
TURNED = "u3"
STRATEGY = "weighted-localized-entropy"


def _affine(case: str) -> np.ndarray:
    if case == TURNED:  # voxel axes (y, -x, z) at 1.2 mm, somewhere else in the world
        return np.array([[0, -1.2, 0, 10], [1.2, 0, 0, -8], [0, 0, 1.2, 3], [0, 0, 0, 1]], float)
    return np.diag([1.0, 1.0, 1.0, 1.0])


def _box(shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[4:10, 5:11, 3:8] = True
    return m


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Scans (zero on a one-voxel border, so that nnU-Net crops them), labels, groups, a CSV; per case a foreground
    logit field (scan voxel order) and its probabilities (softmax of (0, logit), as nnU-Net's export computes)."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(7)
    rows, logits, probas = [], {}, {}
    for case, group in {**LABELED, **UNLABELED}.items():
        shape = SHAPE if case != TURNED else (SHAPE[1], SHAPE[0], SHAPE[2])
        image = np.zeros(shape, np.float32)
        image[1:-1, 1:-1, 1:-1] = 100 + 10 * rng.random(np.array(shape) - 2)
        nib.save(nib.Nifti1Image(image, _affine(case)), root / f"{case}.nii.gz")
        label = ""
        if case in LABELED:
            nib.save(nib.Nifti1Image(_box(shape).astype(np.uint8), _affine(case)), root / f"{case}_seg.nii.gz")
            label = f"{case}_seg.nii.gz"
        f = (np.where(_box(shape), 2.0, -2.0) + rng.normal(0, 1.5 + rng.random(), shape)).astype(np.float32)
        f[image == 0] = -30.0
        logits[case] = f
        p = torch.softmax(torch.stack([torch.zeros(shape), torch.from_numpy(f)]), 0)[1].numpy()
        p[image == 0] = 0.0  # nnU-Net's export puts the background outside its crop
        probas[case] = p
        rows.append({"case_id": case, "image": f"{case}.nii.gz", "label": label, "site": group or ""})
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    segs = root / "validation"  # the labeled cases' out-of-fold segmentations: group B's worse
    segs.mkdir()
    for case in LABELED:
        m = _box(SHAPE)
        if LABELED[case] == "B":
            m[4:6 + int(case[-1])] = False
        nib.save(nib.Nifti1Image(m.astype(np.uint8), _affine(case)), segs / f"{case}.nii.gz")
    return root, logits, probas


def _reference(cohort, strategy: str = STRATEGY, budget: int = 3) -> pd.DataFrame:
    """fairal.rank_for_annotation from the arrays themselves, with the weights of the segmentations' Dice."""
    root, _, probas = cohort
    dice_of = [dice(nib.load(root / "validation" / f"{c}.nii.gz").get_fdata() > 0, _box(SHAPE)) for c in LABELED]
    weights = fairal.group_weights(dice_of, list(LABELED.values()), ["A", "B"])
    assert weights["B"] > weights["A"] + 0.1  # the gap the weights must carry
    known = [g for g in [*LABELED.values(), *UNLABELED.values()] if g]
    freq = {g: known.count(g) / len(known) for g in ("A", "B")}
    return fairal.rank_for_annotation({c: probas[c] for c in UNLABELED}, UNLABELED, weights, strategy, budget,
                                      p_group={"u5": freq})


def _profile():
    return get_profile("smoke")


def test_nifti_maps_in_another_orientation_rank_as_the_api_does(cohort, tmp_path):
    root, _, probas = cohort
    maps = tmp_path / "maps"
    maps.mkdir()
    for case in UNLABELED:
        img = nib.Nifti1Image(probas[case], _affine(case))
        if case == TURNED:  # the map written in RAS, as many tools write them: fairal turns it back
            img = img.as_reoriented(nib.orientations.io_orientation(img.affine))
            assert img.shape != probas[case].shape
        nib.save(img, maps / f"{case}.nii.gz")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["query", str(root / "cases.csv"), "--budget", "3", "--out", str(out),
                                      "--group-by", "site", "--probabilities", str(maps), "--segmentations",
                                      str(root / "validation"), "--profile", "smoke", "--quiet"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "query.csv", keep_default_na=False)
    ref = _reference(cohort)
    assert table["case_id"].tolist() == ref["case_id"].tolist()
    assert np.allclose(table["score"], ref["score"], rtol=1e-6)
    info = json.loads((out / "query.json").read_text())
    assert info["weights"]["B"] > info["weights"]["A"] and info["training"] == {"trained": False}
    assert info["saved"]["dice_from"] == {c: "segmentation" for c in LABELED}
    assert {"montage.png", "annotate.csv", "open_in_slicer.py"} <= {p.name for p in out.iterdir()}
    pred = nib.load(out / "predictions" / f"{table['case_id'][0]}.nii.gz")
    first = table["case_id"][0]
    assert np.allclose(pred.affine, _affine(first)) and (pred.get_fdata() > 0).sum() == (probas[first] > 0.5).sum()


def _nnunet_plans(reader: str) -> dict:
    """A plans file of nnU-Net's format for the exporter: no resampling (the scans' own spacing), axes transposed
    forward by (2, 0, 1) so that the export must transpose them back."""
    kwargs = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    return {"dataset_name": "Dataset001_Caudate", "plans_name": "nnUNetPlans", "image_reader_writer": reader,
            "transpose_forward": [2, 0, 1], "transpose_backward": [1, 2, 0], "label_manager": "LabelManager",
            "experiment_planner_used": "ExperimentPlanner", "original_median_spacing_after_transp": [1, 1, 1],
            "original_median_shape_after_transp": list(SHAPE), "foreground_intensity_properties_per_channel": {},
            "configurations": {"3d_fullres": {
                "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                "patch_size": list(SHAPE), "median_image_size_in_voxels": list(SHAPE), "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": kwargs,
                "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_seg_kwargs": kwargs,
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": kwargs, "batch_dice": False,
                "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}}}}


def _nnunet_export(root, logits: dict, folder, reader: str) -> None:
    """Each unlabeled scan's probabilities written by nnU-Net's own exporter, from logits laid out as nnU-Net's
    preprocessing lays out the scan: read by nnU-Net's reader, transposed forward, cropped to the non-zero box."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(_nnunet_plans(reader))
    rw = plans.image_reader_writer_class()
    forward = [0, *[i + 1 for i in plans.transpose_forward]]
    dataset = {"labels": {"background": 0, "caudate": 1}, "file_ending": ".nii.gz", "channel_names": {"0": "T1"}}
    for case in UNLABELED:
        image, props = rw.read_images([str(root / f"{case}.nii.gz")])
        field = folder / f"{case}_logit.nii.gz"  # the logits through the same reader: nnU-Net's own axis order
        nib.save(nib.Nifti1Image(logits[case], _affine(case)), field)
        f = rw.read_images([str(field)])[0].transpose(forward)
        image = image.transpose(forward)
        props["shape_before_cropping"] = image.shape[1:]
        cropped, _, bbox = crop_to_nonzero(image)
        props["bbox_used_for_cropping"] = bbox
        props["shape_after_cropping_and_before_resampling"] = cropped.shape[1:]
        f = f[(slice(None), *[slice(a, b) for a, b in bbox])][0]
        stacked = torch.stack([torch.zeros(f.shape), torch.from_numpy(np.ascontiguousarray(f, np.float32))])
        export_prediction_from_logits(stacked, props, plans.get_configuration("3d_fullres"), plans, dataset,
                                      str(folder / case), save_probabilities=True, num_threads_torch=1)
        field.unlink()
    (folder / "plans.json").write_text(json.dumps(_nnunet_plans(reader)))


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIOWithReorient"])
def test_nnunet_s_exporter_ranks_as_the_api_does(cohort, tmp_path, reader):
    pytest.importorskip("nnunetv2", reason="nnU-Net is installed by make nnunet (CI)")
    root, logits, _ = cohort
    folder = tmp_path / "nnunet"
    folder.mkdir()
    _nnunet_export(root, logits, folder, reader)
    assert {p.suffix for p in folder.iterdir()} >= {".npz", ".pkl", ".gz"}
    table = run_saved_query(root / "cases.csv", 3, STRATEGY, tmp_path / "out", _profile(), folder,
                            [root / "validation"], nnunet_plans=folder / "plans.json", group_by=["site"],
                            progress=False)
    ref = _reference(cohort)
    assert table["case_id"].tolist() == ref["case_id"].tolist()
    assert np.allclose(table["score"], ref["score"], rtol=1e-5)
    assert table.attrs["query"]["saved"]["nnunet_reader"] == reader


class _Planted:
    """A pickle that, when loaded, writes a file: it must never be."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _npz_folder(tmp_path, cohort, edit=None):
    """Each unlabeled case's probabilities as nnU-Net's .npz (SimpleITKIO's axis order), ``edit`` applied to u0's."""
    _, _, probas = cohort
    folder = tmp_path / "npz"
    folder.mkdir()
    for case in UNLABELED:
        p = probas[case].transpose(2, 1, 0)
        stack = np.stack([1 - p, p]).astype(np.float32)
        if case == "u0" and edit is not None:
            stack = edit(stack)
        np.savez_compressed(folder / f"{case}.npz", probabilities=stack)
    return folder


def test_a_pickle_is_never_opened(cohort, tmp_path):
    root, _, _ = cohort
    marker = tmp_path / "opened"
    folder = _npz_folder(tmp_path, cohort)
    for case in UNLABELED:  # nnU-Net's properties file beside each .npz, here a planted one
        (folder / f"{case}.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    run_saved_query(root / "cases.csv", 2, STRATEGY, tmp_path / "out", _profile(), folder, [root / "validation"],
                    group_by=["site"], progress=False)
    assert not marker.exists()
    background = run_saved_query(root / "cases.csv", 2, STRATEGY, tmp_path / "class0", _profile(), folder,
                                 [root / "validation"], fg_class=0, group_by=["site"], progress=False)
    assert "--class 0 is the background in nnU-Net's outputs and label maps" in " ".join(
        background.attrs["query"]["warnings"])
    np.savez(folder / "u1.npz", probabilities=np.array([_Planted(marker)], dtype=object))  # a pickle in the .npz
    with pytest.raises(FairalError, match="u1.npz is not a plain array file.*never unpickles"):
        run_saved_query(root / "cases.csv", 2, STRATEGY, tmp_path / "out2", _profile(), folder, [root / "validation"],
                        group_by=["site"], progress=False)
    assert not marker.exists() and not (tmp_path / "out2").exists()
    for wrong in (b"case_id,score\n", pickle.dumps(_Planted(marker))):  # a text file, a bare pickle named .npz
        (folder / "u1.npz").write_bytes(wrong)
        with pytest.raises(FairalError, match="u1.npz is not a .npz file \\(a zip archive of arrays"):
            run_saved_query(root / "cases.csv", 2, STRATEGY, tmp_path / "out2", _profile(), folder,
                            [root / "validation"], group_by=["site"], progress=False)
    assert not marker.exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize(("edit", "kwargs", "message"), [
    (lambda s: s[:, 1:], {}, r"u0.npz holds probabilities of shape \(2, 11, 16, 14\).*reads through SimpleITKIO as"),
    (None, {"fg_class": 2}, r"holds 2 classes \(0 to 1\): there is no class 2"),
    (lambda s: s * 4 - 1, {}, r"u0.npz class 1 holds values from -1 to 2.9\d*, outside \[0, 1\]"),
    (lambda s: np.where(s > 0.9, np.nan, s), {}, r"u0.npz holds NaN or infinite values"),
    (lambda s: np.round(s * 255), {}, r"class 1 holds values from 0 to 25\d, .*look like probabilities saved scaled"),
    (lambda s: s[1], {}, r"u0.npz holds one volume of shape \(12, 16, 14\), no class axis"),
    (None, {"fg_class": -1}, r"--class must be a whole number >= 0"),
])
def test_refusals_name_the_file_and_write_nothing(cohort, tmp_path, edit, kwargs, message):
    root, _, _ = cohort
    folder = _npz_folder(tmp_path, cohort, edit)
    with pytest.raises(FairalError, match=message):
        run_saved_query(root / "cases.csv", 2, STRATEGY, tmp_path / "out", _profile(), folder, [root / "validation"],
                        group_by=["site"], progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_map_on_another_grid_and_the_model_s_strategies_are_refused(cohort, tmp_path):
    root, _, probas = cohort
    maps = tmp_path / "maps"
    maps.mkdir()
    for case in UNLABELED:
        affine = _affine(case).copy()
        if case == "u2":
            affine[0, 3] += 2.0  # two voxels off
        nib.save(nib.Nifti1Image(probas[case], affine), maps / f"{case}.nii.gz")
    with pytest.raises(FairalError, match=r"case u2: probability map .*u2.nii.gz is not on its scan's grid"):
        run_saved_query(root / "cases.csv", 2, STRATEGY, tmp_path / "out", _profile(), maps, [root / "validation"],
                        group_by=["site"], progress=False)
    for strategy, reason in (("weighted-bald", "MC-dropout samples"), ("core-set", "network's features")):
        with pytest.raises(FairalError, match=reason):
            run_saved_query(root / "cases.csv", 2, strategy, tmp_path / "out", _profile(), maps, [], progress=False)
    result = CliRunner().invoke(app, ["query", str(root / "cases.csv"), "--budget", "2", "--out", str(tmp_path / "o"),
                                      "--segmentations", str(root / "validation")])
    assert result.exit_code == 2 and "only with --probabilities" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()

"""The synthetic data generator: deformations, groups, reproducibility, files and errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from fairal.errors import FairalError
from fairal.simulate.dataset import (
    Subject,
    draw_subjects,
    prepare,
    simulate_dataset,
    simulate_subject,
    subject_map,
)
from fairal.simulate.deformation import DEFAULT_LOCAL_SD_MM, DeformationModel, build_model
from fairal.simulate.template import load_template
from fairal.simulate.warp import integrate, jacobian_determinant, sample_world

from .conftest import LABEL_VALUE, OUT_SHAPE


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _subject(state, group: int, c: float | None, z: np.ndarray | None = None) -> Subject:
    n = state["global_model"].n_components
    return Subject(0, "sub-x", group, c, np.zeros(n) if z is None else z)


# --- deformations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [None, 4.0, 8.0, -8.0])
def test_deformation_is_diffeomorphic(tiny_config, c):
    """det(D psi) > 0 everywhere, with random global draws, at the default magnitudes and at |c| = 8."""
    state = prepare(tiny_config())
    rng = np.random.default_rng(1)
    for _ in range(3):
        z = rng.standard_normal(state["global_model"].n_components) * 2.0  # 2 SD: harder than typical
        psi = subject_map(state, _subject(state, 1 if c is not None else 2, c, z)).numpy()
        inv = np.linalg.inv(state["template"].affine)  # in template voxels
        jac = jacobian_determinant(psi @ inv[:3, :3].T + inv[:3, 3])
        assert jac.min() > 0, f"folding at c={c}: min det J = {jac.min():.3f}"


def test_group2_gets_no_local_field(tiny_config):
    """A Group 2 subject is the same whatever the local model's strength; a Group 1 subject is not."""
    weak = prepare(tiny_config(local_sd_mm=0.25))
    strong = prepare(tiny_config(local_sd_mm=1.5))
    z = np.random.default_rng(0).standard_normal(weak["global_model"].n_components)
    g2_a = simulate_subject(weak, _subject(weak, 2, None, z))[0]
    g2_b = simulate_subject(strong, _subject(strong, 2, None, z))[0]
    np.testing.assert_array_equal(g2_a, g2_b)
    g1_a = simulate_subject(weak, _subject(weak, 1, 3.0, z))[0]
    g1_b = simulate_subject(strong, _subject(strong, 1, 3.0, z))[0]
    assert np.abs(g1_a - g1_b).max() > 50


def test_change_from_template_grows_with_abs_c(tiny_config):
    # 0.75 mm per SD: on the tiny template's hard 1 mm label, the anchored 0.305 mm moves no voxel at c = 1
    state = prepare(tiny_config(local_sd_mm=0.75))
    ref = state["template_label_crop"]
    for sign in (+1, -1):
        dices, volumes = [], []
        for c in (0.0, 1.0, 2.0, 4.0, 8.0):
            _, lab = simulate_subject(state, _subject(state, 1, sign * c))
            dices.append(_dice(lab, ref))
            volumes.append(int(lab.sum()))
        assert dices[0] == 1.0  # no global, no local deformation: the template itself
        assert all(a > b for a, b in zip(dices, dices[1:], strict=False)), dices
        grows = [b > a for a, b in zip(volumes, volumes[1:], strict=False)]
        assert all(grows) if sign < 0 else not any(grows), volumes  # c > 0 shrinks, c < 0 enlarges


def test_zero_deformation_reproduces_the_template_crop(tiny_config):
    state = prepare(tiny_config(global_rms_mm=0.0))
    image, label = simulate_subject(state, _subject(state, 2, None))
    start = state["crop_start"]
    crop = tuple(slice(int(s), int(s) + n) for s, n in zip(start, OUT_SHAPE, strict=True))
    np.testing.assert_allclose(image, state["template"].image[crop], rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(label, state["template"].label[crop])


def test_integrate_constant_velocity_is_a_translation():
    """The flow of a constant velocity for unit time is the translation by it (exact under trilinear sampling)."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    v = np.zeros((3, 6, 7, 8), np.float32)
    v[0], v[1], v[2] = 1.5, -0.5, 0.25
    model = DeformationModel(v, np.zeros((0, 3, 6, 7, 8), np.float32), np.zeros(0), affine, np.ones((6, 7, 8), bool))
    u = integrate(model, v)
    np.testing.assert_allclose(u.numpy(), v, atol=1e-5)
    assert float(integrate(model, np.zeros_like(v)).abs().max()) == 0.0


def test_sample_world_is_exact_on_linear_fields():
    affine = np.array([[-1.0, 0, 0, 5], [0, 2.0, 0, -3], [0, 0, 1.5, 1], [0, 0, 0, 1]])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (5, 6, 7)], indexing="ij"), -1).astype(float)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    f = (2 * world[..., 0] - world[..., 1] + 0.5 * world[..., 2] + 3)[None].astype(np.float32)
    pts = torch.tensor([[2.5, -1.0, 4.0], [4.7, 6.2, 9.1]], dtype=torch.float32)
    got = sample_world(torch.as_tensor(f), affine, pts)[0].numpy()
    want = 2 * pts[:, 0] - pts[:, 1] + 0.5 * pts[:, 2] + 3
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    outside = sample_world(torch.as_tensor(f), affine, torch.tensor([[100.0, 0, 0]]))
    assert float(outside[0, 0]) == 0.0


# --- models --------------------------------------------------------------------------------------------------


def test_default_models_orthonormal_and_scaled(tiny_config, tmp_path):
    state = prepare(tiny_config(global_rms_mm=2.0))
    gm = state["global_model"]
    flat = gm.basis.reshape(gm.n_components, -1).astype(np.float64)
    np.testing.assert_allclose(flat @ flat.T, np.eye(gm.n_components), atol=1e-5)
    # E |v(x)|^2 averaged over the grid = sum(lambda) / N = rms^2
    assert np.isclose(gm.eigenvalues.sum() / np.prod(gm.shape), 4.0)
    lm = state["local_model"]
    speed = np.sqrt((lm.sample(np.array([1.0])) ** 2).sum(0))
    assert np.isclose(speed.max(), DEFAULT_LOCAL_SD_MM, rtol=1e-4)  # one SD of PC1 = its scale at its fastest
    gm.save(tmp_path / "g.npz")
    back = DeformationModel.load(tmp_path / "g.npz")
    np.testing.assert_array_equal(back.basis, gm.basis)
    assert back.kind == "velocity" and back.affine.tolist() == gm.affine.tolist()


def _write_field(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.moveaxis(data, 0, -1)[:, :, :, None, :], affine), str(path))
    return path


def test_build_model_from_two_fields_by_hand(tmp_path):
    """N = 2: mean = (f1 + f2) / 2, one component along d = f2 - f1 with eigenvalue |d|^2 / 2."""
    affine = np.eye(4)
    f1 = np.zeros((3, 4, 4, 4), np.float32)
    f2 = np.zeros((3, 4, 4, 4), np.float32)
    f2[0, 1, 1, 1] = 3.0
    f2[2, 2, 2, 2] = 4.0  # |d| = 5
    paths = [_write_field(tmp_path / "a.nii.gz", f1, affine), _write_field(tmp_path / "b.nii.gz", f2, affine)]
    model = build_model(paths)
    assert model.n_components == 1
    np.testing.assert_allclose(model.eigenvalues, [12.5])
    np.testing.assert_allclose(model.mean, (f1 + f2) / 2)
    np.testing.assert_allclose(np.abs(model.basis[0]), np.abs(f2) / 5, atol=1e-6)
    # one SD along PC1 from the mean reaches f2 (or f1): sqrt(12.5) * 5 / 5 = 3.54 = |d| / sqrt(2)
    assert np.isclose(np.linalg.norm(model.sample(np.array([1.0])) - model.mean), 5 / np.sqrt(2), rtol=1e-5)


def test_build_model_rejects_mismatched_grids(tmp_path):
    a = _write_field(tmp_path / "a.nii.gz", np.zeros((3, 4, 4, 4), np.float32), np.eye(4))
    b = _write_field(tmp_path / "b.nii.gz", np.ones((3, 5, 4, 4), np.float32), np.eye(4))
    with pytest.raises(FairalError, match="another grid"):
        build_model([a, b])


# --- template ------------------------------------------------------------------------------------------------


def test_default_template_is_the_left_caudate():
    tpl = load_template()
    assert tpl.shape == (182, 218, 182)
    vol_ml = tpl.label.sum() / 1000
    assert 3.0 < vol_ml < 4.5  # the Harvard-Oxford left caudate at 50%: ~3.6 mL
    centroid = np.argwhere(tpl.label).mean(0)
    x = (tpl.affine @ np.append(centroid, 1))[0]
    assert x < -5  # left hemisphere (RAS)
    assert np.all(tpl.image[tpl.label] > 0)


# --- datasets ------------------------------------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_identical_files_other_seed_different(tiny_config, tmp_path):
    a = simulate_dataset(tiny_config(preview=True), tmp_path / "a", progress=False)
    b = simulate_dataset(tiny_config(preview=True, jobs=2), tmp_path / "b", progress=False)
    c = simulate_dataset(tiny_config(seed=1), tmp_path / "c", progress=False)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db  # also: the number of worker processes does not change a single byte
    images = [k for k in da if k.startswith("images/")]
    assert images and all(da[k] != dc[k] for k in images)


def test_manifest_matches_files(tiny_config, tmp_path):
    out = simulate_dataset(tiny_config(n_subjects=7), tmp_path / "d", progress=False)
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert {"case_id", "group", "bias_scale", "image", "label"} <= set(m.columns)
    assert m["case_id"].is_unique and len(m) == 7
    assert m["group"].value_counts().to_dict() == {1: 4, 2: 3}
    assert (m.loc[m["group"] == 2, "bias_scale"] == "").all()
    assert m.loc[m["group"] == 1, "bias_scale"].astype(float).notna().all()
    info = json.loads((out / "dataset.json").read_text())
    affine = np.array(info["output_grid"]["affine"])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{c}.nii.gz" for c in m["case_id"])
    for _, row in m.iterrows():
        img = nib.load(str(out / row["image"]))
        lab = nib.load(str(out / row["label"]))
        assert img.shape == lab.shape == OUT_SHAPE
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        np.testing.assert_allclose(lab.affine, affine, atol=1e-5)
        values = np.unique(np.asarray(lab.dataobj))
        assert set(values.tolist()) <= {0, 1}
        assert np.isclose(np.asarray(lab.dataobj).sum(), row["label_volume_mm3"])
    assert info["n_per_group"] == {"1": 4, "2": 3}
    # the fixed test split: min(15, half of each group) per group
    assert m.loc[m["split"] == "test", "group"].value_counts().to_dict() == {1: 2, 2: 1}
    assert set(m["split"]) == {"test", "pool"}
    tpl_label = nib.load(str(out / "template" / "label.nii.gz"))
    assert tpl_label.shape == OUT_SHAPE and np.asarray(tpl_label.dataobj).sum() > 0
    assert (out / "models" / "global.npz").is_file() and (out / "models" / "local.npz").is_file()
    assert DeformationModel.load(out / "models" / "local.npz").n_components == 4


def test_groups_are_balanced_and_seeded(tiny_config):
    cfg = tiny_config(n_subjects=312)
    subjects = draw_subjects(cfg, 10)
    groups = [s.group for s in subjects]
    assert groups.count(1) == groups.count(2) == 156
    cs = np.array([s.bias_scale for s in subjects if s.group == 1])
    assert abs(cs.mean() - 4.0) < 0.5 and abs(cs.std() - 2.0) < 0.4  # strong: N(4, 2)
    assert [s.group for s in draw_subjects(cfg, 10)] == groups


def test_failed_run_leaves_nothing(tiny_config, tmp_path, monkeypatch):
    import fairal.simulate.dataset as ds

    calls = {"n": 0}
    real = ds._write_subject

    def flaky(subject):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(subject)

    monkeypatch.setattr(ds, "_write_subject", flaky)
    with pytest.raises(RuntimeError):
        simulate_dataset(tiny_config(), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == [p for p in tmp_path.iterdir() if p.name in {"template.nii.gz",
                                                                                    "labels.nii.gz"}]


def test_existing_output_needs_overwrite(tiny_config, tmp_path):
    out = simulate_dataset(tiny_config(n_subjects=2), tmp_path / "d", progress=False)
    with pytest.raises(FairalError, match="already exists"):
        simulate_dataset(tiny_config(n_subjects=2), out, progress=False)
    (out / "cache").mkdir()
    (out / "cache" / "volumes-0123.pt").write_bytes(b"fairal's volume cache")  # fairal's own, added later
    simulate_dataset(tiny_config(n_subjects=4), out, overwrite=True, progress=False)
    assert len(pd.read_csv(out / "manifest.csv")) == 4 and not (out / "cache").exists()
    # a file of the user's put into the dataset, or a label the user corrected: kept, the dataset not replaced
    label = sorted((out / "labels").iterdir())[0]
    for mine in (out / "notes.txt", label):
        mine.write_bytes(b"the user's")
        with pytest.raises(FairalError, match=f"holds 1 file.s. fairal did not write there, or that changed since "
                                              f"\\({mine.relative_to(out).as_posix()}\\)"):
            simulate_dataset(tiny_config(n_subjects=2), out, overwrite=True, progress=False)
        assert mine.read_bytes() == b"the user's" and len(pd.read_csv(out / "manifest.csv")) == 4
        if mine != label:
            mine.unlink()


def test_label_value_must_exist(tiny_template):
    tpl, lab = tiny_template
    with pytest.raises(FairalError, match="label value 3 does not occur"):
        load_template(tpl, lab, 3)
    assert load_template(tpl, lab, LABEL_VALUE).label.sum() > 0

"""The simulator's scenarios beyond the paper: acquisition differences by group (SimBA's contrast, BrainWeb's INU
and Rician noise), more than two groups of unequal sizes, any Harvard-Oxford structure, the settings-table
interface, and the byte-identity of the default datasets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fairal.cli import app
from fairal.errors import FairalError, SettingError
from fairal.sampling import stream
from fairal.simulate.dataset import SimulationConfig, draw_subjects, same_settings, simulate_dataset, simulation_config
from fairal.simulate.groups import Group, group_spec, split_by_shares
from fairal.simulate.scanner import (
    acquire,
    change_contrast,
    inu_field,
    rician_noise,
    white_matter_intensity,
)
from fairal.simulate.settings import parse_shape
from fairal.simulate.template import harvard_oxford_index

from .conftest import LABEL_VALUE

runner = CliRunner()


def _image(folder: Path, case_id: str) -> np.ndarray:
    return np.asarray(nib.load(str(folder / "images" / f"{case_id}.nii.gz")).dataobj)


def _same_files(a: Path, b: Path) -> None:
    """Every image and label and the manifest, byte for byte."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.parent.name in ("images", "labels"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*")
                                     if p.is_file() and p.parent.name in ("images", "labels"))
    for rel in [*files, Path("manifest.csv")]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# --- acquisition: formulas against hand-computed values ---------------------------------------------------


def test_contrast_is_simba_change_contrast_by_hand():
    """clip(f (v - h) + h, lo, hi) with h = (hi - lo) / 2 (SimBA's change_contrast), f = 1.2."""
    image = np.array([0.0, 100.0, 500.0, 800.0, 950.0, 1000.0])  # lo 0, hi 1000, h 500
    np.testing.assert_allclose(change_contrast(image, 1.2), [0.0, 20.0, 500.0, 860.0, 1000.0, 1000.0])
    # lo = 200, hi = 1000: h = 400 (SimBA's half range, not the midpoint 600): 600 -> 1.2 * 200 + 400 = 640
    np.testing.assert_allclose(change_contrast(np.array([200.0, 400.0, 600.0, 1000.0]), 1.2),
                               [200.0, 400.0, 640.0, 1000.0])
    np.testing.assert_array_equal(change_contrast(image, 1.0), image)


@pytest.mark.parametrize("level", [20.0, 40.0])
def test_inu_field_within_brainweb_range_reaching_both_ends(level):
    shape = (30, 34, 22)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    brain = ((i - 15) / 12) ** 2 + ((j - 17) / 14) ** 2 + ((k - 11) / 9) ** 2 < 1
    field = inu_field(stream(0, "acquisition-inu", "sub-0001"), shape, (1.0, 1.0, 1.0), brain, level)
    a = level / 100
    assert field.min() >= 1 - a / 2 - 1e-12 and field.max() <= 1 + a / 2 + 1e-12
    assert math.isclose(field[brain].min(), 1 - a / 2, abs_tol=1e-12)
    assert math.isclose(field[brain].max(), 1 + a / 2, abs_tol=1e-12)
    assert np.abs(np.diff(field, axis=0)).max() < 0.2 * a  # slowly varying, not voxel noise
    other = inu_field(stream(0, "acquisition-inu", "sub-0002"), shape, (1.0, 1.0, 1.0), brain, level)
    assert np.abs(field - other).max() > 0.05 * a  # each subject its own field
    threads = torch.get_num_threads()
    try:  # a worker process runs one thread: the same field
        torch.set_num_threads(1)
        one = inu_field(stream(0, "acquisition-inu", "sub-0001"), shape, (1.0, 1.0, 1.0), brain, level)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(field, one)


def test_rician_noise_sd_and_rayleigh_background_by_hand():
    """Noise p% of white matter W: SD p/100 W in a bright region, mean sigma sqrt(pi/2) where the image is 0."""
    w, p = 1000.0, 3.0
    image = np.zeros((40, 40, 40))
    image[:20] = w
    group = Group(1, False, None, None, noise=p)
    out = acquire(image, group, 0, "sub-0001", w, np.ones(image.shape, bool), (1.0, 1.0, 1.0))
    sigma = p / 100 * w  # 30
    assert abs(out[:20].std() / sigma - 1) < 0.03
    assert abs(out[:20].mean() - math.sqrt(w**2 + sigma**2)) < 1.0  # Rician mean ~ sqrt(v^2 + sigma^2)
    assert abs(out[20:].mean() / (sigma * math.sqrt(math.pi / 2)) - 1) < 0.015  # Rayleigh: 37.6
    assert out.min() >= 0
    again = rician_noise(image, sigma, stream(0, "acquisition-noise", "sub-0001"))
    np.testing.assert_array_equal(out, again)  # the subject's own stream, whatever else was drawn


def test_white_matter_intensity_of_the_tiny_template(tiny_template):
    """The fixture's brain: rim 1000, inner 'white matter' 1600 (59% of the brain), caudates 900, ventricles 150."""
    image = np.asarray(nib.load(str(tiny_template[0])).dataobj).astype(float)
    assert white_matter_intensity(image) == pytest.approx(1600.0, abs=1.0)
    # a GM/WM mixture: 60% at 500, 40% at 800 (with a little spread): the bright class's peak
    rng = np.random.default_rng(0)
    mix = np.concatenate([rng.normal(500, 20, 6000), rng.normal(800, 20, 4000), np.zeros(3000)])
    assert white_matter_intensity(mix) == pytest.approx(800.0, abs=10.0)


# --- groups: spec, shares, draws --------------------------------------------------------------------------


def test_largest_remainder_split_by_hand():
    assert split_by_shares(10, [2, 1, 1]) == [5, 3, 2]  # quotas 5, 2.5, 2.5: the tie goes to the earlier group
    assert split_by_shares(10, [3, 2, 1]) == [5, 3, 2]  # 5, 3.33, 1.67: the largest remainder (0.67) gets one
    assert split_by_shares(7, [1, 1, 1]) == [3, 2, 2]
    assert split_by_shares(3, [1, 1]) == [2, 1]  # the paper's rule: ceil(n/2) Group 1
    assert split_by_shares(100, [0.1, 0.2, 0.7]) == [10, 20, 70]  # exact fractions, no float drift


def test_three_groups_with_unequal_shares(tiny_config):
    cfg = tiny_config(n_subjects=10, eval_per_group=2, group=["1:bias=strong,share=2", "2", "3:contrast=1.2"])
    subjects = draw_subjects(cfg, 10)
    pool = pd.Series([s.group for s in subjects[:10]]).value_counts().to_dict()
    assert pool == {1: 5, 2: 3, 3: 2}
    assert pd.Series([s.group for s in subjects[10:]]).value_counts().to_dict() == {1: 2, 2: 2, 3: 2}
    assert all((s.bias_scale is not None) == (s.group == 1) for s in subjects)
    g1, g2, g3 = cfg.resolved_groups()
    assert (g1.bias_mean, g1.bias_std, g3.contrast, g3.biased) == (4.0, 2.0, 1.2, False)


def test_a_three_group_dataset_records_its_groups(tiny_config, tmp_path):
    cfg = tiny_config(n_subjects=8, test_per_group=1, group=["1:bias=weak,share=2,inu=20", "2:contrast=1.2", "3"],
                      noise_all=3.0)
    out = simulate_dataset(cfg, tmp_path / "d", progress=False)
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["group"].value_counts().to_dict() == {1: 4, 2: 2, 3: 2}
    by_group = manifest.groupby("group")[["contrast", "inu", "noise"]].first()
    assert by_group.to_dict("index") == {1: {"contrast": 1.0, "inu": 20.0, "noise": 3.0},
                                         2: {"contrast": 1.2, "inu": 0.0, "noise": 3.0},
                                         3: {"contrast": 1.0, "inu": 0.0, "noise": 3.0}}
    info = json.loads((out / "dataset.json").read_text())
    assert info["groups"]["2"].startswith("global deformation only; contrast factor 1.2")
    assert "intensity non-uniformity 20% (a field within 0.9-1.1)" in info["groups"]["1"]
    assert info["group_settings"]["1"]["bias_mean"] == 2.0 and info["group_settings"]["1"]["share"] == 2.0
    assert info["acquisition"]["white_matter_intensity"] == pytest.approx(1600.0, abs=1.0)
    assert info["acquisition"]["noise_sd"]["3"] == pytest.approx(48.0, abs=0.1)  # 3% of 1600
    assert info["n_per_group"] == {"1": 4, "2": 2, "3": 2} and info["settings"]["bias"] is None


def test_acquisition_changes_the_image_never_the_label(tiny_config, tmp_path):
    """Group 1 at contrast 1.2: its images are the default images under SimBA's contrast change (to rounding),
    its labels and all of Group 2 unchanged."""
    plain = simulate_dataset(tiny_config(), tmp_path / "a", progress=False)
    contrast = simulate_dataset(tiny_config(contrast=1.2), tmp_path / "b", progress=False)
    manifest = pd.read_csv(contrast / "manifest.csv")
    assert set(manifest.loc[manifest["group"] == 1, "contrast"]) == {1.2}
    assert set(manifest.loc[manifest["group"] == 2, "contrast"]) == {1.0}
    for case, group in zip(manifest["case_id"], manifest["group"], strict=True):
        a, b = _image(plain, case).astype(float), _image(contrast, case).astype(float)
        lab = f"labels/{case}.nii.gz"
        assert (plain / lab).read_bytes() == (contrast / lab).read_bytes()
        if group == 2:
            np.testing.assert_array_equal(a, b)
        else:
            assert np.abs(b - change_contrast(a, 1.2)).max() <= 1.2 * 0.5 + 0.5 + 1e-9  # the two roundings
            assert np.abs(b - a).max() > 50


# --- structure --------------------------------------------------------------------------------------------


def test_structure_names_resolve_to_the_atlas_index():
    assert harvard_oxford_index("Left_Accumbens") == 104
    assert harvard_oxford_index("left_hippocampus") == 102
    assert harvard_oxford_index("Left_Caudate") == 98 and harvard_oxford_index("Left_Putamen") == 99
    with pytest.raises(SettingError, match="close names: Left_Accumbens"):
        harvard_oxford_index("Left_Acumbens")


def test_structure_conflicts_are_refused(tiny_template):
    with pytest.raises(FairalError, match="--structure sets the label value: give --structure or --label-value"):
        SimulationConfig(structure="Left_Accumbens", label_value=104).validate()
    tpl, lab = tiny_template
    with pytest.raises(FairalError, match="--structure names a structure of the default Harvard-Oxford atlas"):
        SimulationConfig(structure="Left_Accumbens", template=str(tpl), label=str(lab)).validate()


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("0", "the name must be a whole number >= 1, got 0"),
    ("g1", "the name must be a whole number >= 1, got 'g1'"),
    ("1:foo=2", "unknown key 'foo' (keys: bias, bias_mean"),
    ("1:contrast", "'contrast' is not key=value"),
    ("1:contrast=abc", "contrast must be a number, got 'abc'"),
    ("1:contrast=0", "contrast must be > 0, got 0.0"),
    ("1:bias=huge", "bias must be one of strong, weak, none, got 'huge'"),
    ("1:inu=150", "inu must be <= 100, got 150.0"),
    ("1:share=1,share=2", "key 'share' given twice"),
    ({"bias": "strong"}, "has no name"),
])
def test_bad_group_spec(spec, message):
    with pytest.raises(SettingError, match="^--group ") as err:
        group_spec(spec)
    assert message in str(err.value)


def test_settings_table_errors_name_where_and_key():
    with pytest.raises(FairalError) as err:
        simulation_config({"n_subject": 3}, "study.toml [datasets.a]")
    assert str(err.value).startswith("study.toml [datasets.a]: unknown key 'n_subject'; known keys: bias, ")
    for options, message in (({"contrast": "1.2"}, "contrast must be a finite number, got '1.2'"),
                             ({"shape": [80, 96]}, "shape must be three sizes of at least 4 voxels"),
                             ({"group": "1"}, "group must be a list of group specs"),
                             ({"group": ["1", "1"]}, "group names each group once"),
                             ({"group": ["1", "2"], "bias": "weak"}, "bias sets Group 1 of the default groups"),
                             ({"group": ["1", "2"], "contrast": 1.2}, "contrast sets Group 1 of the default"),
                             ({"structure": "Left_Acumbens"}, "structure 'Left_Acumbens' is not a structure"),
                             ({"n_subjects": 2, "group": ["1", "2", "3"]}, "n_subjects must give every group a")):
        with pytest.raises(FairalError, match=f"^study.toml: {message}"):
            simulation_config(options, "study.toml")


def test_settings_table_gives_the_cli_settings():
    table = simulation_config({"n_subjects": 40, "shape": "80x96x56", "noise_all": 3,
                               "group": [{"name": 1, "bias": "strong", "share": 3}, "2:inu=40"]}, "study.toml")
    cli = SimulationConfig(n_subjects=40, shape=(80, 96, 56), noise_all=3.0,
                           group=["1:bias=strong,share=3", "2:inu=40"])
    assert table == cli and table.group_counts() == [30, 10]
    assert [g.inu for g in table.resolved_groups()] == [0.0, 40.0]
    assert [g.noise for g in table.resolved_groups()] == [3.0, 3.0]


def test_shape_forms():
    assert parse_shape("80,96,56") == parse_shape("80x96x56") == parse_shape([80, 96, 56]) == (80, 96, 56)
    for bad in ("80,96", "80;96;56", "80,96,2", (80, 96, 56.0)):
        with pytest.raises(SettingError, match="--shape must be"):
            parse_shape(bad)


# --- the command line -------------------------------------------------------------------------------------


def _cli(tpl, lab, out, *extra):
    return runner.invoke(app, [str(a) for a in ("simulate", out, "--template", tpl, "--label", lab, "--label-value",
                                                LABEL_VALUE, "--jobs", 1, "--no-preview", *extra)])


def test_cli_shape_forms_and_unequal_groups(tiny_template, tmp_path):
    tpl, lab = tiny_template
    help_text = runner.invoke(app, ["simulate", "--help"]).output
    assert "--shape X,Y,Z" in help_text and "<int,int,int>" not in help_text
    res = _cli(tpl, lab, tmp_path / "a", "--shape", "32x32x24", "--n-subjects", 3)
    assert res.exit_code == 0, res.output
    assert "± n/a" in res.output and "nan" not in res.output  # Group 2 has one subject: no SD
    assert "note: the groups are unequal (Group 1: 2, Group 2: 1; 3 subjects do not split evenly" in res.output
    res = _cli(tpl, lab, tmp_path / "b", "--shape", 32, 32, 24, "--n-subjects", 3, "--quiet")  # the older form
    assert res.exit_code == 0, res.output
    _same_files(tmp_path / "a", tmp_path / "b")


def test_cli_group_with_group1_option_is_refused(tiny_template, tmp_path):
    tpl, lab = tiny_template
    res = _cli(tpl, lab, tmp_path / "a", "--group", "1:bias=strong", "--group", "2", "--bias", "weak")
    assert res.exit_code == 2 and "--bias sets Group 1 of the default groups" in res.output
    res = _cli(tpl, lab, tmp_path / "a", "--group", "1:bias=strong", "--group", "1")
    assert res.exit_code == 2 and "--group names each group once" in res.output
    assert not (tmp_path / "a").exists()


# --- the defaults do not change ---------------------------------------------------------------------------


def test_neutral_scenario_settings_write_the_default_files(tiny_config, tmp_path):
    """Every new setting at its neutral value writes the same images, labels and manifest as the defaults."""
    default = simulate_dataset(tiny_config(n_subjects=7, eval_per_group=1), tmp_path / "a", progress=False)
    neutral = simulate_dataset(tiny_config(n_subjects=7, eval_per_group=1, contrast=1.0, inu=0.0, noise=0.0,
                                           inu_all=0.0, noise_all=0.0), tmp_path / "b", progress=False)
    spec = simulate_dataset(tiny_config(n_subjects=7, eval_per_group=1,
                                        group=["1:bias=strong,contrast=1,inu=0,noise=0,share=1", "2:share=1"]),
                            tmp_path / "c", progress=False)
    _same_files(default, neutral)
    _same_files(default, spec)
    assert list(pd.read_csv(default / "manifest.csv").columns) == [
        "case_id", "group", "bias_scale", "image", "label", "split", "label_volume_mm3", "dice_to_template"]
    info = json.loads((default / "dataset.json").read_text())
    assert info["groups"] == {"1": "local bias deformation of the structure", "2": "global deformation only"}


def test_a_dataset_of_before_the_scenarios_is_reused(tmp_path):
    """ensure_dataset reads a dataset.json without the new keys as the default scenario."""
    from fairal.config import get_profile
    from fairal.grid.datasets import ensure_dataset

    profile = get_profile("smoke")
    old = {"bias": "strong", "n_subjects": profile.n_subjects, "shape": list(profile.sim_shape), "seed": 0,
           "test_per_group": profile.test_per_group, "eval_per_group": profile.eval_per_group}
    folder = tmp_path / "data" / "strong"
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"settings": old}))
    assert ensure_dataset(tmp_path, "strong", profile, progress=False) == folder
    same = SimulationConfig(n_subjects=profile.n_subjects, shape=profile.sim_shape,
                            test_per_group=profile.test_per_group, eval_per_group=profile.eval_per_group)
    assert same_settings(old, same)
    assert not same_settings(old, SimulationConfig(**{**same.__dict__, "noise_all": 3.0}))
    assert not same_settings({**old, "group": [{"name": 1}]}, same)
    (folder / "dataset.json").write_text(json.dumps({"settings": {**old, "contrast": 1.2}}))
    with pytest.raises(FairalError, match="holds a dataset of other settings"):
        ensure_dataset(tmp_path, "strong", profile, progress=False)


def test_preview_shows_every_group(tiny_config, tmp_path):
    """Three groups: an example subject and a label-frequency panel for each, and the biased group's difference
    against the first group without a local bias."""
    import matplotlib.image as mpimg
    import pandas as pd

    from fairal.simulate.preview import COLUMN_INCHES, DPI, FONT, _comparisons, _examples

    cfg = tiny_config(n_subjects=6, test_per_group=1, group=["1:bias=strong", "2", "3:contrast=1.2"], preview=True)
    out = simulate_dataset(cfg, tmp_path / "three", progress=False)
    manifest = pd.read_csv(out / "manifest.csv")
    picks = _examples(manifest)
    assert [title.split(",")[0] for _, title in picks] == ["Group 1", "Group 2", "Group 3"]
    assert picks[2][1].endswith("no local bias, contrast 1.2")
    assert _comparisons(manifest) == [(1, 2)]
    # 3 frequency panels + 1 difference + the volumes: 5 columns of 2.3 inches at 110 dpi, 1265 px; a report shows it
    # at its page's width (about 1050 px), where a panel title of 11 points reads 11 * 110 / 72 * 1050 / 1265 px
    width = mpimg.imread(out / "preview.png").shape[1]
    assert width == round(5 * COLUMN_INCHES * DPI) == 1265
    assert FONT["panel"] * DPI / 72 * 1050 / width >= 13  # the text was 7 px at 8 points in 1650 px
    plain = manifest.assign(bias_scale=float("nan"))  # no local bias anywhere: Group 2 against Group 1 alone
    assert _comparisons(plain) == [(2, 1)]
    paper = manifest[manifest["group"] != 3]
    assert [title.split(",")[0] for _, title in _examples(paper)] == ["Group 1", "Group 1", "Group 2", "Group 2"]

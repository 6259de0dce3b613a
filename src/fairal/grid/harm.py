"""Harm as a setting: how large a gap a dataset recipe makes, as a function of one knob, and the knob for a target.

The gap is the one Table 1 reads: a model trained on Group 2 alone segments Group 1 worse, ``gap = mean Dice of
Group 2 - mean Dice of Group 1`` on held-out evaluation subjects. The calibration measures it over a ladder of
knob values on subjects and training seeds of its own (named streams ``harm-subjects``, ``harm-training``: never
a study's), so a study can ask for ``target_gap = 0.10`` and get the knob fixed before any active-learning run.

Cost is kept down with common random numbers: Group 2's subjects do not depend on the knob (it sets Group 1's
bias or scanner), so one Group 2 training cohort and its models serve every level, and each level only makes
Group 1's evaluation subjects (the same draws at every level: the same subjects, more or less harmed).

Each level also reports its anatomy: Group 1's structure volume against Group 2's in natural SDs (Group 2's own SD,
anchored to the healthy adult caudate: docs/simulation.md) and its smallest label on the profile's grid, so that a
pathology-sized bias is not read as a demographic one. A level where some Group 1 label vanishes on the profile's
grid is not used for a target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import isotonic_regression

from fairal import versions
from fairal.config import Profile
from fairal.data.volumes import load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.io import check_own_folder, make_own_folder, within, write_csv, write_json
from fairal.records import EVAL, POOL, TEST
from fairal.run.model import save_checkpoint
from fairal.run.network import load_network, network_meta
from fairal.run.rounds import evaluate, model_factory
from fairal.run.train import TrainConfig, describe_device, train_model
from fairal.sampling import stream, stream_seed
from fairal.simulate.dataset import simulate_dataset, simulation_config

#: The knobs a calibration can turn: Group 1's option of ``fairal simulate`` and what it is, with a default ladder.
KNOBS: dict[str, tuple[str, tuple[float, ...]]] = {
    "bias_mean": ("Group 1's morphological bias mean (SDs of its local model)", (0, 2, 4, 6, 8, 12, 16)),
    "contrast": ("Group 1's contrast factor (SimBA)", (1.0, 1.1, 1.2, 1.35, 1.5)),
    "inu": ("Group 1's intensity non-uniformity level (%)", (0, 10, 20, 30, 40)),
    "noise": ("Group 1's Rician noise level (% of white matter)", (0, 2, 4, 6, 9)),
}
#: Options a recipe may not give: the calibration sets them (its own subjects, sizes and the knob).
SET_BY_CALIBRATION = ("seed", "n_subjects", "test_per_group", "eval_per_group", "shape", "preview", "group", "jobs")
N_BOOT = 2000


@dataclass(frozen=True)
class HarmSettings:
    """What a calibration depends on besides the profile: the recipe (``fairal simulate`` options without the
    knob), the knob, its ladder, the training seeds, the evaluation subjects per group and the subjects' seed."""
    recipe: dict
    knob: str = "bias_mean"
    levels: tuple[float, ...] = ()
    seeds: int = 3
    eval_per_group: int = 150
    subject_seed: int = 0

    def __post_init__(self) -> None:
        if self.knob not in KNOBS:
            raise FairalError(f"unknown knob {self.knob!r}; knobs: {', '.join(KNOBS)}")
        levels = tuple(float(v) for v in (self.levels or KNOBS[self.knob][1]))
        if len(levels) < 2 or any(not math.isfinite(v) for v in levels) or len(set(levels)) != len(levels):
            raise FairalError(f"a calibration needs at least two distinct finite knob levels, got {list(levels)}")
        object.__setattr__(self, "levels", tuple(sorted(levels)))
        bad = [k for k in self.recipe if k in SET_BY_CALIBRATION or k == self.knob]
        if bad:
            raise FairalError(f"the recipe of a harm calibration cannot set {bad[0]!r}: the calibration sets it "
                              f"(its own subjects, sizes and the knob {self.knob})")
        for name, value, low in (("seeds", self.seeds, 1), ("eval_per_group", self.eval_per_group, 2),
                                 ("subject_seed", self.subject_seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FairalError(f"calibration {name} must be a whole number >= {low}, got {value!r}")

    def as_dict(self) -> dict:
        return {**asdict(self), "levels": list(self.levels)}


@dataclass
class HarmCurve:
    """The measured curve: one row per level (:data:`LEVEL_COLUMNS`), and the knob found for each target."""
    settings: HarmSettings
    levels: pd.DataFrame
    targets: dict = field(default_factory=dict)

    def reachable(self) -> tuple[float, float]:
        """The gaps the usable levels reach (the monotone fit's lowest and highest)."""
        fit = monotone_fit(self.levels)
        return float(fit.min()), float(fit.max())


class OutOfReach(FairalError):
    """A target gap the measured curve does not reach; ``curve``: that curve (kept in the folder all the same)."""

    def __init__(self, message: str, curve: HarmCurve):
        super().__init__(message)
        self.curve = curve


LEVEL_COLUMNS = ["level", "gap", "gap_ci_low", "gap_ci_high", "dice_g1", "dice_g2", "g1_volume_mm3",
                 "g2_volume_mm3", "g2_volume_sd_mm3", "volume_change_sd", "volume_change_pct", "g1_min_voxels",
                 "g1_empty", "usable"]


def gap_with_ci(dice_g1: np.ndarray, dice_g2: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT
                ) -> tuple[float, float, float]:
    """``mean(Dice_g2) - mean(Dice_g1)`` averaged over training seeds (rows of the (seeds, subjects) arrays), and
    its 95% two-level bootstrap interval: seeds resampled, then each group's subjects."""
    d1, d2 = np.asarray(dice_g1, dtype=float), np.asarray(dice_g2, dtype=float)
    gap = float((d2.mean(axis=1) - d1.mean(axis=1)).mean())
    s, n1, n2 = d1.shape[0], d1.shape[1], d2.shape[1]
    draws = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, s, s)
        i, j = rng.integers(0, n1, n1), rng.integers(0, n2, n2)
        draws[b] = (d2[seeds][:, j].mean(axis=1) - d1[seeds][:, i].mean(axis=1)).mean()
    low, high = np.percentile(draws, [2.5, 97.5])
    return gap, float(low), float(high)


def monotone_fit(levels: pd.DataFrame) -> np.ndarray:
    """The usable levels' gaps made non-decreasing in the knob (isotonic regression, pool adjacent violators)."""
    usable = levels[levels["usable"]].sort_values("level")
    if usable.empty:
        raise FairalError("no usable level: Group 1's structure vanishes on the profile's grid at every level")
    return np.asarray(isotonic_regression(usable["gap"].to_numpy(float), increasing=True).x)


def knob_for(levels: pd.DataFrame, target: float, knob: str = "bias_mean") -> float:
    """The knob at which the monotone fit of the usable levels reaches ``target`` (linear between levels; the
    first level of a flat stretch at the target). A target outside the reachable gaps is refused with them."""
    usable = levels[levels["usable"]].sort_values("level")
    fit = monotone_fit(levels)
    x = usable["level"].to_numpy(float)
    if fit.max() - fit.min() <= 1e-9:  # a gap that never grows: the isotonic fit pools it into one value
        raise FairalError(f"the gap does not grow with {knob} over the levels {x.min():g}..{x.max():g} (gaps "
                          f"{', '.join(f'{g:.4f}' for g in usable['gap'])}; Group 2's Dice "
                          f"{usable['dice_g2'].mean():.3f}): no knob can be found for a gap on it (a model that has "
                          "not learned the structure, e.g. at the smoke profile, gives such a curve: train longer)")
    if not (math.isfinite(target) and fit.min() - 1e-9 <= target <= fit.max() + 1e-9):
        vanished = levels.loc[~levels["usable"], "level"].tolist()
        note = (f" (levels {', '.join(f'{v:g}' for v in vanished)} left out: the structure vanishes)"
                if vanished else "")
        raise FairalError(f"a gap of {target:g} is out of reach of this recipe: the {knob} levels "
                          f"{x.min():g}..{x.max():g} give gaps {fit.min():.4f}..{fit.max():.4f}{note}")
    i = min(int(np.searchsorted(fit, target - 1e-9, side="left")), len(fit) - 1)
    if i == 0 or abs(fit[i] - target) <= 1e-9:
        return float(x[i])
    return float(x[i - 1] + (target - fit[i - 1]) * (x[i] - x[i - 1]) / (fit[i] - fit[i - 1]))


def anatomy(g1: pd.DataFrame, g2: pd.DataFrame, g1_voxels: Sequence[int]) -> dict:
    """Group 1's structure against Group 2's: mean volumes (mm³, the simulator's 1 mm labels), the change in
    Group 2's SDs and in %, and Group 1's smallest label on the profile's grid (voxels) and how many are empty."""
    v1, v2 = g1["label_volume_mm3"].astype(float), g2["label_volume_mm3"].astype(float)
    sd = float(v2.std(ddof=1))
    vox = np.asarray(g1_voxels, dtype=int)
    return {"g1_volume_mm3": float(v1.mean()), "g2_volume_mm3": float(v2.mean()), "g2_volume_sd_mm3": sd,
            "volume_change_sd": float((v1.mean() - v2.mean()) / sd) if sd > 0 else float("nan"),
            "volume_change_pct": float(100 * (v1.mean() / v2.mean() - 1)),
            "g1_min_voxels": int(vox.min()), "g1_empty": int((vox == 0).sum())}


def level_row(level: float, dice_g1: np.ndarray, dice_g2: np.ndarray, anat: dict, rng: np.random.Generator
              ) -> dict:
    """One row of :data:`LEVEL_COLUMNS`; a level is usable when no Group 1 label vanishes."""
    gap, low, high = gap_with_ci(dice_g1, dice_g2, rng)
    return {"level": float(level), "gap": gap, "gap_ci_low": low, "gap_ci_high": high,
            "dice_g1": float(np.mean(dice_g1)), "dice_g2": float(np.mean(dice_g2)), **anat,
            "usable": anat["g1_empty"] == 0}


def check_profile(profile: Profile) -> None:
    """The calibration trains on ``cohort_size`` Group 2 subjects with the baselines' training."""
    if profile.cohort_size < 2:
        raise FairalError(f"a harm calibration trains on cohort_size Group 2 subjects, got {profile.cohort_size}")


# --- measuring: the datasets, the Group 2 models, the Dice of each level ---------------------------------------

KIND = "harm calibration"
GROUP_HARMED, GROUP_REFERENCE = 1, 2


def _config(settings: HarmSettings, profile: Profile, value: float):
    """The simulation of one level: the recipe with the knob at ``value``, the calibration's own subjects (a
    Group 2 pool of ``cohort_size``, one test case a group, ``eval_per_group`` evaluation subjects a group)."""
    options = {**settings.recipe, settings.knob: value, "seed": settings.subject_seed,
               "n_subjects": 2 * (profile.cohort_size + 1), "test_per_group": 1,
               "eval_per_group": settings.eval_per_group, "shape": list(profile.sim_shape), "preview": False}
    return simulation_config(options, f"harm calibration ({settings.knob} = {value:g})")


def _dataset(out: Path, name: str, cfg, keep, progress: bool):
    """A level's dataset in ``out/data/NAME`` (made once: a dataset is published whole), its manifest and its
    volumes on the profile's grid."""
    path = within(out, "data", name)
    if not (path / "manifest.csv").is_file():
        simulate_dataset(cfg, path, progress=progress, keep=keep)
    return path, read_manifest(path)


def _volumes(path: Path, manifest: pd.DataFrame, profile: Profile):
    return load_volumes(path, manifest, crop_margin=profile.crop_margin, downsample=profile.downsample)


def _models(out: Path, settings: HarmSettings, profile: Profile, path: Path, manifest: pd.DataFrame) -> list:
    """The Group 2-only models, one per training seed (stream ``harm-training``), trained once and kept."""
    vol = _volumes(path, manifest, profile)
    pool = manifest.loc[(manifest["split"] == POOL) & (manifest["group"] == GROUP_REFERENCE), "case_id"].tolist()
    rows = vol.rows(pool[:profile.cohort_size])
    models = []
    for s in range(settings.seeds):
        ckpt = within(out, "models", f"seed-{s}.pt")
        if ckpt.is_file():
            model, _ = load_network(ckpt, profile)
        else:
            seed = stream_seed(settings.subject_seed, "harm-training", s)
            model = train_model(vol.images[rows], vol.labels[rows], TrainConfig.of(profile, seed),
                                model_factory(profile, vol, rows)).model
            ckpt.parent.mkdir(exist_ok=True)
            save_checkpoint(model, ckpt, {"harm_calibration": settings.as_dict(), "seed": s, **network_meta(profile)})
        models.append(model.eval())
    return models


def _dice(models: list, path: Path, manifest: pd.DataFrame, profile: Profile, group) -> tuple[np.ndarray, list,
                                                                                               list, pd.DataFrame]:
    """Every model's Dice on the evaluation subjects of ``group`` (seeds x subjects), their ids, their labels'
    voxels on the profile's grid and their manifest rows."""
    vol = _volumes(path, manifest, profile)
    cases = manifest[(manifest["split"] == EVAL) & (manifest["group"] == group)]
    rows = vol.rows(cases["case_id"].tolist())
    dice = np.array([evaluate(m, vol, rows, profile.batch_size) for m in models])
    voxels = [int(vol.labels[r].sum()) for r in rows]
    return dice, cases["case_id"].tolist(), voxels, cases


def measure(settings: HarmSettings, profile: Profile, out: str | Path, targets: Sequence[float] = (),
            progress: bool = False) -> HarmCurve:
    """Calibrate into ``out`` (a folder fairal makes and continues: datasets, models, ``levels.csv``,
    ``dice.csv``, ``calibration.json``): the gap at every level, and for each of ``targets`` the knob (rounded to
    3 decimals, the value a study simulates) and the gap measured again at it (``checked_gap``)."""
    check_profile(profile)
    for value in settings.levels:  # every level's simulation, checked before the folder is made or written
        _config(settings, profile, value)
    out = check_own_folder(out, KIND, what="OUT")
    _same_calibration(out, settings, profile)
    make_own_folder(out, KIND)
    write_json(within(out, "settings.json"), {"settings": settings.as_dict(),
                                              "profile": calibration_profile(profile)})
    ref_path, ref = _dataset(out, "reference", _config(settings, profile, settings.levels[0]),
                             lambda s, split: s.group == GROUP_REFERENCE and split != TEST, progress)
    models = _models(out, settings, profile, ref_path, ref)
    d2, ids2, _, g2 = _dice(models, ref_path, ref, profile, GROUP_REFERENCE)
    rows, dice_rows = [], _dice_rows("reference", ids2, d2, GROUP_REFERENCE)
    for value in settings.levels:
        d1, ids1, voxels, g1 = _level(out, settings, profile, value, models, progress)
        rows.append(level_row(value, d1, d2, anatomy(g1, g2, voxels), _rng(settings, value)))
        dice_rows += _dice_rows(f"{value:g}", ids1, d1, GROUP_HARMED)
    curve = HarmCurve(settings, pd.DataFrame(rows, columns=LEVEL_COLUMNS))
    _write(out, curve, profile, dice_rows)  # the curve is kept whether or not a target is in its reach
    for target in targets:
        try:
            value = round(knob_for(curve.levels, float(target), settings.knob), 3)
        except FairalError as err:
            raise OutOfReach(f"{err} (each level's gap: {within(out, 'levels.csv')})", curve) from None
        d1, ids1, voxels, g1 = _level(out, settings, profile, value, models, progress)
        checked = level_row(value, d1, d2, anatomy(g1, g2, voxels), _rng(settings, f"check-{value:g}"))
        within_ci = bool(checked["gap_ci_low"] <= float(target) <= checked["gap_ci_high"])
        curve.targets[f"{float(target):g}"] = {"target_gap": float(target), "knob": settings.knob, "value": value,
                                               "checked": checked, "target_within_ci": within_ci}
        dice_rows += _dice_rows(f"check-{value:g}", ids1, d1, GROUP_HARMED)
        _write(out, curve, profile, dice_rows)  # each target kept as it is found
    return curve


def _level(out: Path, settings: HarmSettings, profile: Profile, value: float, models: list, progress: bool):
    path, manifest = _dataset(out, f"level-{value:g}", _config(settings, profile, value),
                              lambda s, split: s.group == GROUP_HARMED and split == EVAL, progress)
    return _dice(models, path, manifest, profile, GROUP_HARMED)


def _rng(settings: HarmSettings, key) -> np.random.Generator:

    return stream(settings.subject_seed, "harm-bootstrap", f"{key:g}" if isinstance(key, float) else str(key))


def _dice_rows(level: str, ids: list, dice: np.ndarray, group) -> list[dict]:
    return [{"level": level, "seed": s, "group": group, "case_id": c, "dice": float(d)}
            for s, row in enumerate(dice) for c, d in zip(ids, row, strict=True)]


def calibration_profile(profile: Profile) -> dict:
    """The settings a calibration depends on: the data's grid and the training (not the AL schedule)."""
    keys = ("sim_shape", "crop_margin", "downsample", "features", "network", "lr", "steps", "epochs", "batch_size",
            "cohort_size", "device", "bf16")
    return {k: v for k, v in profile.as_dict().items() if k in keys}


def _same_calibration(out: Path, settings: HarmSettings, profile: Profile) -> None:
    """A calibration folder continues only the calibration it holds."""
    held = out / "settings.json"
    if not held.is_file():
        return
    try:
        info = json.loads(held.read_text())
    except (OSError, ValueError) as err:
        raise FairalError(f"{held} is unreadable ({err}); use another folder") from None
    mine = json.loads(json.dumps({"settings": settings.as_dict(), "profile": calibration_profile(profile)},
                                 default=str))
    if info != mine:
        raise FairalError(f"{out} holds a harm calibration of other settings (recipe, knob, levels, seeds or "
                          "profile); use another folder")


def _write(out: Path, curve: HarmCurve, profile: Profile, dice_rows: list[dict]) -> None:

    write_csv(within(out, "levels.csv"), curve.levels)
    write_csv(within(out, "dice.csv"), pd.DataFrame(dice_rows))
    write_json(within(out, "calibration.json"), {
        "format": "fairal-harm-calibration/1", "settings": curve.settings.as_dict(),
        "profile": calibration_profile(profile),
        "what": f"gap = mean Dice of Group {GROUP_REFERENCE} - of Group {GROUP_HARMED}, evaluation subjects, a "
                f"model trained on {profile.cohort_size} Group {GROUP_REFERENCE} subjects; knob: "
                f"{KNOBS[curve.settings.knob][0]}",
        "levels": curve.levels.to_dict(orient="records"),
        "reachable": list(curve.reachable()) if curve.levels["usable"].any() else None,
        "targets": curve.targets, "device": describe_device(profile.device),
        "versions": versions()})


def load_curve(out: str | Path) -> dict:
    """A calibration's ``calibration.json``."""
    path = Path(out) / "calibration.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FairalError(f"{path}: no readable harm calibration ({err})") from None
    if not isinstance(info, dict) or info.get("format") != "fairal-harm-calibration/1":
        raise FairalError(f"{path} is not a harm calibration")
    return info

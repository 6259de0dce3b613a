"""A study's ladders: datasets of one recipe at several levels of harm, resolved before any active-learning run.

A ladder's datasets share a recipe (their ``fairal simulate`` options but the knob and the subjects' seed) and one
harm calibration (:mod:`fairal.grid.harm`), kept in ``OUT/calibration/LADDER``: a dataset with a ``target_gap`` gets the
knob value the calibration finds for it, a dataset that sets the knob itself (e.g. the paper's ``strong`` preset,
bias mean 4) gets the gap measured at its value (its value is one of the calibration's levels). The knob is fixed
once, in the calibration's records, and read from them afterwards: a resumed study never moves it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

from fairal.config import Profile
from fairal.errors import FairalError
from fairal.grid.harm import KNOBS, SET_BY_CALIBRATION, HarmSettings, calibration_profile, load_curve, measure
from fairal.grid.spec import DatasetSpec, Study
from fairal.sampling import stream_seed
from fairal.simulate.dataset import simulation_config

#: Evaluation subjects per group of a ladder's calibration when its profile has none.
DEFAULT_EVAL = 150
DEFAULT_SEEDS = 3


def ladders(study: Study) -> dict[str, list[DatasetSpec]]:
    """The study's ladders by name, their datasets in the study's order."""
    out: dict[str, list[DatasetSpec]] = {}
    for d in study.datasets:
        if d.ladder:
            out.setdefault(d.ladder, []).append(d)
    return out


def knob_value(spec: DatasetSpec) -> float | None:
    """The knob's value a dataset sets itself (its preset's or its option's); None for a target."""
    if spec.target_gap is not None:
        return None
    cfg = simulation_config(spec.simulate, f"dataset {spec.name}")
    group1 = cfg.resolved_groups()[0]
    return float(cfg.resolved_bias()[0] if spec.knob == "bias_mean" else getattr(group1, spec.knob))


def recipe(spec: DatasetSpec) -> dict:
    """The dataset's simulate options that make its recipe: without the knob, the subjects' seed and the sizes."""
    return {k: v for k, v in spec.simulate.items() if k not in (*SET_BY_CALIBRATION, spec.knob)}


def _same_recipe(a: DatasetSpec, b: DatasetSpec) -> bool:
    """The two make the same population but for the knob: their settings at a common knob value agree (a bias
    preset counts as its mean and SD, so ``strong`` and ``weak`` differ only in the knob bias_mean)."""
    def norm(spec: DatasetSpec) -> dict:
        cfg = simulation_config({**recipe(spec), spec.knob: 0.0 if spec.knob == "bias_mean" else 1.0}, spec.name)
        fields = asdict(cfg)
        for k in ("bias", "bias_mean", "bias_std", "seed"):
            fields.pop(k)
        return {**fields, "groups": [asdict(g) for g in cfg.resolved_groups()]}

    return json.dumps(norm(a), default=str, sort_keys=True) == json.dumps(norm(b), default=str, sort_keys=True)


def ladder_settings(name: str, members: list[DatasetSpec], profile: Profile) -> HarmSettings:
    """The calibration of ladder ``name``: its recipe (the first target's, else the first dataset's), its levels
    (the calibration's, else the knob's default ladder, plus every value a member sets itself), training seeds and
    evaluation subjects, and subjects of its own (stream ``harm-subjects`` keyed by the ladder's name)."""
    lead = next((d for d in members if d.target_gap is not None), members[0])
    for d in members:
        if not _same_recipe(lead, d):
            raise FairalError(f"dataset {d.name} is not of ladder {name}'s recipe (dataset {lead.name}): a ladder's "
                              f"datasets differ only in {lead.knob} and their subjects")
        if d.simulate.get("group"):
            raise FairalError(f"ladder {name}: a harm calibration needs the default groups 1 (harmed) and 2")
    cal = lead.calibration
    fixed = [v for v in (knob_value(d) for d in members) if v is not None]
    levels = sorted(set(float(v) for v in cal.get("levels", KNOBS[lead.knob][1])) | set(fixed))
    return HarmSettings(recipe(lead), lead.knob, tuple(levels), seeds=cal.get("seeds", DEFAULT_SEEDS),
                        eval_per_group=cal.get("eval_per_group", profile.eval_per_group or DEFAULT_EVAL),
                        subject_seed=stream_seed(0, "harm-subjects", name))


def calibration_folder(out: Path, name: str) -> Path:
    return Path(out) / "calibration" / name


def _held(folder: Path, settings: HarmSettings, profile: Profile, targets: list[float]) -> dict | None:
    """The calibration in ``folder`` if it is this one (its settings and the profile's grid and training) and has
    every target, else None (then :func:`fairal.grid.harm.measure` continues it, or refuses one of other settings)."""
    if not (folder / "calibration.json").is_file():
        return None
    info = load_curve(folder)
    mine = json.loads(json.dumps({"settings": settings.as_dict(), "profile": calibration_profile(profile)},
                                 default=str))
    if {"settings": info.get("settings"), "profile": info.get("profile")} != mine or \
            any(f"{t:g}" not in info.get("targets", {}) for t in targets):
        return None
    return info


def resolve(out: str | Path, study: Study, profile: Profile, cli: dict, compute: bool, progress: bool = False
            ) -> Study:
    """The study with each ladder's datasets resolved: a target's knob value in its ``simulate`` options and
    every dataset's ``harm`` (the ladder, knob, value, target and the gap measured there with its CI and anatomy).
    A ladder's calibration is read from ``OUT/calibration/LADDER``, or, with ``compute``, made there first; a
    ladder left unresolved (not ``compute``) keeps its datasets as they were."""
    found = {}
    for name, members in ladders(study).items():
        prof = study.profile_for(profile, members[0], None, cli)
        settings = ladder_settings(name, members, prof)
        targets = sorted(d.target_gap for d in members if d.target_gap is not None)
        folder = calibration_folder(Path(out), name)
        info = _held(folder, settings, prof, targets)
        if info is None and compute:
            measure(settings, prof, folder, targets, progress=progress)
            info = load_curve(folder)
        if info is not None:
            found.update({d.name: _resolved(d, name, info) for d in members})
    return dataclasses.replace(study, datasets=tuple(found.get(d.name, d) for d in study.datasets))


def _resolved(spec: DatasetSpec, ladder: str, info: dict) -> DatasetSpec:
    if spec.target_gap is not None:
        t = info["targets"][f"{spec.target_gap:g}"]
        value, row = t["value"], t["checked"]
        simulate = {**spec.simulate, spec.knob: value}
    else:
        value = knob_value(spec)
        row = next(r for r in info["levels"] if abs(r["level"] - value) < 1e-9)
        simulate = spec.simulate
    harm = {"ladder": ladder, "knob": spec.knob, "value": value, "target_gap": spec.target_gap,
            **{k: row[k] for k in ("gap", "gap_ci_low", "gap_ci_high", "dice_g1", "dice_g2", "volume_change_sd",
                                   "volume_change_pct", "g1_min_voxels", "g1_empty")}}
    return dataclasses.replace(spec, simulate=simulate, harm=harm)


def unresolved(study: Study) -> list[str]:
    """The datasets whose target gap has no knob value yet."""
    return [d.name for d in study.datasets if d.target_gap is not None and d.harm is None]

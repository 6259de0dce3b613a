"""The settings of a synthetic dataset (:class:`SimulationConfig`) and their one validation, shared by the
command line (``fairal simulate``) and settings files (:func:`fairal.simulate.dataset.simulation_config`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from fairal.errors import SettingError
from fairal.limits import MAX_SUBJECTS, MAX_VOXELS
from fairal.simulate.deformation import DEFAULT_GLOBAL_RMS_MM, DEFAULT_LOCAL_SD_MM
from fairal.simulate.groups import (
    Group,
    GroupSpec,
    check_names,
    contrast_factor,
    group_spec,
    inu_level,
    noise_level,
    number,
    preset,
    resolve,
    split_by_shares,
)
from fairal.simulate.template import harvard_oxford_index

GLOBAL_SAMPLING = ("per-component", "one-scalar")
DEFAULT_SHAPE = (170, 170, 76)
#: The options that set Group 1 of the default groups: with a group spec each group says its own.
GROUP1_OPTIONS = ("bias", "bias_mean", "bias_std", "contrast", "inu", "noise")
PATHS = ("template", "label", "global_model", "local_model")


@dataclass
class SimulationConfig:
    """Every setting of a synthetic dataset. Recorded whole in ``dataset.json``.

    ``shape`` may be given as ``"80,96,56"`` or ``"80x96x56"``, ``group`` as spec texts or tables
    (:func:`fairal.simulate.groups.group_spec`); both are brought to one form here. The settings after
    ``preview`` are the scenarios beyond the paper (docs/simulation.md); at their defaults a dataset is the
    paper's two groups, byte for byte what it was before they existed."""

    bias: str = "strong"
    n_subjects: int = 312
    seed: int = 0
    bias_mean: float | None = None  # default: the preset's
    bias_std: float | None = None
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    global_sampling: str = "per-component"
    model_seed: int = 0
    global_rms_mm: float = DEFAULT_GLOBAL_RMS_MM
    global_components: int = 10
    local_sd_mm: float = DEFAULT_LOCAL_SD_MM
    local_components: int = 4
    test_per_group: int = 15
    eval_per_group: int = 0  # subjects per group of the evaluation split (split "eval"), beyond n_subjects
    template: str | None = None
    label: str | None = None
    label_value: float | None = None
    global_model: str | None = None
    local_model: str | None = None
    jobs: int = 0  # 0 = one per core (one process for fewer than 64 subjects)
    preview: bool = True
    structure: str | None = None  # a structure of the default Harvard-Oxford atlas by name: sets the label value
    contrast: float | None = None  # Group 1's contrast factor (default groups; None: 1.0)
    inu: float | None = None  # Group 1's INU level in % (default groups; None: inu_all)
    noise: float | None = None  # Group 1's noise level in % of white matter (default groups; None: noise_all)
    inu_all: float = 0.0  # the INU level of every group that sets none
    noise_all: float = 0.0  # the noise level of every group that sets none
    group: tuple[GroupSpec, ...] = ()  # replaces the default groups 1 and 2

    def __post_init__(self) -> None:
        self.shape = parse_shape(self.shape)
        if isinstance(self.group, str | Mapping) or not isinstance(self.group, list | tuple):
            raise SettingError("group", f"must be a list of group specs, got {self.group!r}")
        self.group = tuple(g if isinstance(g, GroupSpec) else group_spec(g) for g in self.group)

    def resolved_bias(self) -> tuple[float, float]:
        """Group 1's N(mu, sigma) of the default groups: the preset's, or ``bias_mean`` / ``bias_std``."""
        mu, sd = preset("bias", self.bias)
        mu = mu if self.bias_mean is None else number("bias_mean", self.bias_mean)
        sd = sd if self.bias_std is None else number("bias_std", self.bias_std, 0.0)
        return mu, sd

    def resolved_groups(self) -> list[Group]:
        """Each group's settings, in order: the spec's groups, or Group 1 (the bias, ``--contrast``, ``--inu``,
        ``--noise``) and Group 2 (global deformation only)."""
        specs = self.group or (GroupSpec(1, self.bias, self.bias_mean, self.bias_std, self.contrast, self.inu,
                                         self.noise), GroupSpec(2))
        return [resolve(s, float(self.inu_all), float(self.noise_all)) for s in specs]

    def group_counts(self) -> list[int]:
        """Subjects per group (before the evaluation split): ``n_subjects`` split by the shares."""
        return split_by_shares(self.n_subjects, [g.share for g in self.resolved_groups()])

    def validate(self) -> None:
        """Every setting in its range, as a SettingError naming it."""
        self.resolved_bias()
        for name, low in (("seed", 0), ("model_seed", 0), ("eval_per_group", 0), ("test_per_group", 1),
                          ("jobs", 0), ("global_components", 1), ("local_components", 1)):
            whole(name, getattr(self, name), low)
        if whole("n_subjects", self.n_subjects, 0) < 2:
            raise SettingError("n_subjects", f"must be at least 2 (one per group), got {self.n_subjects}")
        self._validate_size()
        if self.global_sampling not in GLOBAL_SAMPLING:
            raise SettingError("global_sampling",
                               f"must be one of {', '.join(GLOBAL_SAMPLING)}, got {self.global_sampling!r}")
        for name in ("global_rms_mm", "local_sd_mm"):
            number(name, getattr(self, name), 0.0)
        for name in PATHS:
            if not isinstance(getattr(self, name), str | Path | None):
                raise SettingError(name, f"must be a file name, got {getattr(self, name)!r}")
        if self.label_value is not None:
            number("label_value", self.label_value)
        if not isinstance(self.preview, bool):
            raise SettingError("preview", f"must be true or false, got {self.preview!r}")
        self._validate_scenario()

    def _validate_size(self) -> None:
        """The grid and the subjects within fairal's limits (docs/limits.md), before the groups are resolved."""
        size = " x ".join(map(str, self.shape))
        if math.prod(self.shape) > MAX_VOXELS:
            raise SettingError("shape", f"{size} has {math.prod(self.shape):,} voxels, more than fairal's limit of "
                               f"{MAX_VOXELS:,} (512^3, MAX_VOXELS, docs/limits.md)")
        for name in ("n_subjects", "test_per_group", "eval_per_group"):
            if getattr(self, name) > MAX_SUBJECTS:
                raise SettingError(name, f"asks for {getattr(self, name):,}, more than fairal's limit of "
                                   f"{MAX_SUBJECTS:,} subjects (MAX_SUBJECTS, docs/limits.md)")

    def total_subjects(self) -> int:
        """Every subject the dataset holds: ``n_subjects`` and the evaluation split of each group."""
        return self.n_subjects + self.eval_per_group * len(self.resolved_groups())

    def _validate_scenario(self) -> None:
        """The scenarios' settings: the structure, the acquisition levels and the groups."""
        if self.structure is not None:
            if self.label_value is not None:
                raise SettingError("structure", "sets the label value: give --structure or --label-value, not both")
            if self.template is not None or self.label is not None:
                raise SettingError("structure", "names a structure of the default Harvard-Oxford atlas; with "
                                   "--template/--label give its --label-value")
            harvard_oxford_index(self.structure)
        for name, check in (("contrast", contrast_factor), ("inu", inu_level), ("noise", noise_level)):
            if getattr(self, name) is not None:
                check(name, getattr(self, name))
        inu_level("inu_all", self.inu_all)
        noise_level("noise_all", self.noise_all)
        if self.group:
            given = [k for k in GROUP1_OPTIONS[1:] if getattr(self, k) is not None]
            if given or self.bias != "strong":
                raise SettingError((given or ["bias"])[0], "sets Group 1 of the default groups; with --group give "
                                   "it in each group's spec")
            check_names(self.group)
        if self.total_subjects() > MAX_SUBJECTS:
            raise SettingError("eval_per_group", f"makes {self.total_subjects():,} subjects with n_subjects, more than "
                               f"fairal's limit of {MAX_SUBJECTS:,} (MAX_SUBJECTS, docs/limits.md)")
        counts = self.group_counts()
        if min(counts) < 1:
            groups = self.resolved_groups()
            empty = [str(g.name) for g, n in zip(groups, counts, strict=True) if n < 1]
            raise SettingError("n_subjects", f"must give every group a subject: {self.n_subjects} split by the "
                               f"shares leaves Group {', '.join(empty)} empty")


def whole(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SettingError(name, f"must be a whole number >= {low}, got {value!r}")
    return value


def parse_shape(value) -> tuple[int, int, int]:
    """An output grid size from three whole numbers or a text ``X,Y,Z`` / ``XxYxZ`` (each at least 4 voxels)."""
    sizes = value
    if isinstance(value, str):
        parts = re.split(r"\s*[,x]\s*", value.strip().lower())
        if not all(p.isdigit() and p.isascii() for p in parts):
            raise SettingError("shape", f"must be X,Y,Z (three whole numbers, e.g. 80,96,56), got {value!r}")
        sizes = [int(p) for p in parts]
    if not isinstance(sizes, list | tuple) or len(sizes) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 4 for v in sizes):
        raise SettingError("shape", f"must be three sizes of at least 4 voxels, got {value!r}")
    return tuple(int(v) for v in sizes)  # type: ignore[return-value]


def build_config(options: Mapping) -> SimulationConfig:
    """The settings from ``fairal simulate``'s options by name (``_`` for ``-``), checked; an option left out is
    its default. A SettingError names the option (``--n-subjects must be ...``)."""
    known = [f.name for f in fields(SimulationConfig)]
    for key in options:
        if key not in known:
            raise SettingError(str(key), f"is not a setting of fairal simulate (known: {', '.join(known)})")
    if options.get("group") and "bias" in options:
        raise SettingError("bias", "sets Group 1 of the default groups; with --group give it in each group's spec")
    values = {k: str(v) if k in PATHS and isinstance(v, Path) else v for k, v in options.items()}
    cfg = SimulationConfig(**values)
    cfg.validate()
    return cfg

"""Studies: an experiment described by a file (TOML) or a built-in name — its datasets (simulated with any
``fairal simulate`` option, or a lab's labeled cohort from a CSV), initial sets, strategies, seeds and profile.
The paper's experiment is the built-in study ``paper``.

A study file (every key is checked; an unknown one is refused naming it)::

    name = "accumbens-site"
    profile = "standard"            # any profile; [set] overrides its settings
    seeds = 5
    strategies = ["random", "entropy", "localized-entropy", "weighted-localized-entropy"]
    inits = ["balanced", "g1-heavy"]
    reference = "weighted-localized-entropy"   # paired comparisons: the reference against each other strategy
    [set]
    steps = 400
    [datasets.site]                  # simulated: any `fairal simulate` option, by its name with _ for -
    simulate = { bias = "none", contrast = 1.2, n_subjects = 312 }
    [datasets.lab]                   # a lab's own labeled cohort, as an active-learning benchmark
    csv = "cohort.csv"               # case_id, image, label (all labeled), the group columns
    group_by = ["site"]
    groups_known = false             # the strategies see no group of a pool case: expected weights

A strategy may also be a table, an *arm* of the study with its own name and settings, e.g. the same strategy with
and without the pool's groups: ``{ name = "wle-groups-unknown", strategy = "weighted-localized-entropy",
groups_known = false }``. Settings apply in this order: the profile, the study's ``[set]``, the dataset's
(``groups_known``, ``set``), the arm's, and last the command line's ``--set``.
"""


import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tomllib

from fairal.acquisition import Strategy, parse_strategy
from fairal.config import PROFILES, Profile, setting_name
from fairal.data.cohort import check_label_value, check_spacing, read_cases
from fairal.errors import FairalError
from fairal.grid.harm import KNOBS
from fairal.limits import MAX_SEEDS, check_nesting, refuse_above
from fairal.nifti import load_nifti
from fairal.plugins import load_all
from fairal.records import PAPER_SOURCE, POOL, SPLITS, TEST, WLE
from fairal.run.loop import heavy_group
from fairal.sampling import stream_seed, test_split
from fairal.simulate.dataset import simulation_config
from fairal.simulate.settings import PATHS
from fairal.stats import primary_family, seed_rule, smallest_sign_flip_p

TOP_KEYS = ("name", "description", "profile", "seeds", "strategies", "inits", "reference", "set", "datasets",
            "baselines", "plugins")


DATASET_KEYS = ("simulate", "csv", "folder", "group_by", "groups_known", "set", "spacing", "margin_mm",
                "label_value", "seed", "target_gap", "target_gaps", "knob", "ladder", "calibration")


#: A simulated dataset's keys of harm as a setting (:mod:`fairal.grid.harm`).
HARM_KEYS = ("target_gap", "target_gaps", "knob", "ladder", "calibration")


CALIBRATION_KEYS = ("levels", "seeds", "eval_per_group")


ARM_KEYS = ("name", "strategy", "groups_known", "set")



@dataclass(frozen=True)
class Arm:
    """One strategy of a study, under its own name (the records' folder), with its own settings. ``strategy`` is the
    name as the study gives it (and records it); :attr:`parsed` is that name parsed, once."""

    name: str
    strategy: str
    overrides: dict = field(default_factory=dict)

    @functools.cached_property
    def parsed(self) -> Strategy:
        """The strategy, parsed on first use and kept (a study's checks and its grid share it)."""
        return parse_strategy(self.strategy)


@dataclass(frozen=True)
class DatasetSpec:
    """A study's dataset: simulated (``simulate``: ``fairal simulate`` options) or a lab's CSV (``csv``)."""

    name: str
    simulate: dict | None = None
    csv: Path | None = None
    folder: Path | None = None  # a dataset folder made before (fairal simulate): its files only read (the volume
    # cache goes into its cache/, as for every dataset; a read-only folder works without one)
    group_by: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)
    spacing: float = 1.0  # mm: the grid a CSV cohort is resampled to (the profile's downsample applies on top)
    margin_mm: float = 12.0  # around the labeled structures' union
    label_value: float | None = None
    seed: int = 0  # the CSV cohort's test split
    # harm as a setting: the gap a Group 2-only model shows (fairal.grid.harm), resolved before any run into the
    # simulation's knob; a ladder's datasets share one calibration and the study report's dose-response view
    target_gap: float | None = None
    knob: str = "bias_mean"
    ladder: str | None = None
    calibration: dict = field(default_factory=dict)  # levels, seeds, eval_per_group of the ladder's calibration
    harm: dict | None = None  # what the calibration found for this dataset (once resolved)

    @property
    def kind(self) -> str:
        return "simulate" if self.simulate is not None else "folder" if self.folder is not None else "csv"

    @functools.cached_property
    def _cases(self) -> pd.DataFrame:  # kept beside the fields, not one of them (nor in the records)
        return read_cases(self.csv, self.group_by, "group_by")

    def cohort(self) -> pd.DataFrame:
        """A CSV dataset's cases (:func:`fairal.data.cohort.read_cases`), read once for all the checks of a study
        (the file, its splits, its outline, its images' headers): a copy each call."""
        return self._cases.copy()


@dataclass(frozen=True)
class Study:
    """A parsed, checked study. ``arms`` None: the profile's strategies; ``seeds`` None: the profile's."""

    name: str
    source: str
    text: str
    datasets: tuple[DatasetSpec, ...]
    profile: str | None = None
    seeds: int | None = None
    arms: tuple[Arm, ...] | None = None
    inits: tuple[str, ...] = ("balanced", "g1-heavy", "g2-heavy")
    reference: str = WLE
    overrides: dict = field(default_factory=dict)
    baselines: bool = False
    description: str = ""
    plugins: tuple[str, ...] = ()  # loaded when the file is read, last (files: absolute paths)

    def profile_for(self, base: Profile, dataset: DatasetSpec, arm: Arm | None, cli: dict) -> Profile:
        """The settings of one dataset's runs of ``arm`` (None: its baselines): the profile, then the study's,
        the dataset's, the arm's and the command line's overrides."""
        layers = [self.overrides, dataset.overrides, arm.overrides if arm else {}, cli]
        merged = {k: v for layer in layers for k, v in layer.items()}
        return base.with_overrides(merged) if merged else base

    def resolved_arms(self, profile: Profile) -> tuple[Arm, ...]:
        return self.arms if self.arms is not None else tuple(Arm(s, s) for s in profile.strategies)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["plugins"]:
            del d["plugins"]  # the records of a study without plugins keep their form
        d["datasets"] = [{**dataclasses.asdict(s), "csv": str(s.csv) if s.csv else None,
                          "folder": str(s.folder) if s.folder else None} for s in self.datasets]
        return d


def paper_study() -> Study:
    """The paper's experiment: two datasets (strong and weak bias, independent subjects), the three initial sets,
    the profile's strategies, Table 1's baselines."""
    datasets = (DatasetSpec("strong", simulate={"bias": "strong", "seed": 0}),
                DatasetSpec("weak", simulate={"bias": "weak", "seed": 1}))
    return Study("paper", PAPER_SOURCE, PAPER_TEXT, datasets, baselines=True,
                 description="the paper's experiment: strong and weak caudate bias, three initial sets, Table 1")




PAPER_TEXT = """# the built-in study 'paper': the paper's experiment
name = "paper"
strategies = "the profile's"   # e.g. standard: the paper's four and three more
inits = ["balanced", "g1-heavy", "g2-heavy"]
reference = "weighted-localized-entropy"
baselines = true
[datasets.strong]
simulate = { bias = "strong", seed = 0 }
[datasets.weak]
simulate = { bias = "weak", seed = 1 }
"""


BUILTIN = {"paper": paper_study}


def _fail(where: str, text: str) -> FairalError:
    return FairalError(f"{where}: {text}")


def _unknown(where: str, keys, known) -> None:
    bad = [k for k in keys if k not in known]
    if bad:
        near = difflib.get_close_matches(bad[0], known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise _fail(where, f"unknown key {bad[0]!r}{hint}; keys: {', '.join(known)}")


def _typed(where: str, key: str, value, kind, what: str):
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise _fail(where, f"{key} must be {what}, got {value!r}")
    return value


#: Settings of the grid itself, not of its runs: a study file's key and an option each, never a ``set`` entry.
GRID_KEYS = {"strategies": "the study file's key 'strategies' (or --strategies)",
             "seeds": "the study file's key 'seeds' (or --seeds)"}


#: Settings that make a dataset (its subjects, grid and splits) or the baselines' cohorts: one value for all of a
#: dataset's runs, so the study's or the dataset's ``set``, never an arm's.
DATA_KEYS = ("n_subjects", "sim_shape", "test_per_group", "eval_per_group", "cohort_size")


def grid_key_refused(keys, prefix: str) -> None:
    """A grid setting (:data:`GRID_KEYS`) given as a ``set`` entry or ``--set`` is refused; ``prefix`` names where
    (``"study.toml: set."``, ``"--set "``)."""
    for key in keys:
        if (name := setting_name(key)) in GRID_KEYS:
            raise FairalError(f"{prefix}{key}: give it as {GRID_KEYS[name]}, not as a setting")


def _settings(where: str, table) -> dict[str, str]:
    """A ``set`` table as ``--set`` strings (TOML booleans as true/false, lists as comma lists)."""
    _typed(where, "set", table, dict, "a table of settings")
    grid_key_refused(table, f"{where}: set.")
    out = {}
    for key, value in table.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


def _folder_name(where: str, what: str, name: str) -> None:
    """A dataset's, arm's or initial set's name becomes a folder of the records: one plain folder name."""
    if (not name or name.startswith(".") or any(c in name for c in "/\\:") or name != name.strip()
            or any(not c.isprintable() for c in name) or len(name.encode()) > 100):
        raise _fail(where, f"{what} name {name!r} cannot name a folder (no '/', '\\', ':', leading '.', spaces "
                    "at either end or control characters; at most 100 bytes)")


def _groups_known(where: str, table: dict, overrides: dict) -> None:
    """``groups_known`` of a dataset or arm, into its settings; given once (not also in its ``set``)."""
    if "groups_known" in table:
        if "groups_known" in overrides:
            raise _fail(where, "groups_known is given twice (the key and set.groups_known): give it once")
        _typed(where, "groups_known", table["groups_known"], bool, "true or false")
        overrides["groups_known"] = "true" if table["groups_known"] else "false"


def _strategy(where: str, arm: Arm) -> None:
    """The arm's strategy parsed (:attr:`Arm.parsed`), or the study file's message."""
    try:
        _ = arm.parsed
    except FairalError as err:
        raise _fail(where, f"strategies: {err}") from None


def _arm(where: str, item) -> Arm:
    """An arm of the study file; its strategy name is parsed once the file's plugins are loaded
    (:func:`_load_plugins`), which may register it."""
    if isinstance(item, str):
        return Arm(item, item)
    _typed(where, "each strategy", item, dict, "a strategy name or a table {name, strategy, groups_known, set}")
    _unknown(where, item, ARM_KEYS)
    if "strategy" not in item:
        raise _fail(where, f"the strategy table {item!r} lacks the key 'strategy'")
    strategy = _typed(where, "strategy", item["strategy"], str, "a strategy name")
    name = _typed(where, "name", item.get("name", strategy), str, "a name")
    _folder_name(where, "strategy", name)
    overrides = _settings(f"{where}, strategy {name}", item.get("set", {}))
    for key in overrides:
        if setting_name(key) in DATA_KEYS:
            raise _fail(where, f"strategy {name}: set.{key} makes the dataset, the same for all its strategies: "
                        "give it in the study's [set] or the dataset's set")
    _groups_known(f"{where}, strategy {name}", item, overrides)
    return Arm(name, strategy, overrides)


def _dataset(where: str, name: str, table, base: Path) -> DatasetSpec:
    where = f"{where}, dataset {name}"
    _typed(where, f"datasets.{name}", table, dict, "a table")
    _unknown(where, table, DATASET_KEYS)
    if sum(k in table for k in ("simulate", "csv", "folder")) != 1:
        raise _fail(where, "give exactly one of 'simulate' (a table of fairal simulate options), 'csv' (a labeled "
                    "cohort) or 'folder' (a dataset folder made by fairal simulate)")
    if "simulate" not in table:
        for key in HARM_KEYS:
            if key in table:
                raise _fail(where, f"{key!r} belongs to a simulated dataset (harm is a setting of a simulation)")
    if "csv" not in table:
        for key in ("group_by", "spacing", "margin_mm", "label_value", "seed"):
            if key in table:
                raise _fail(where, f"{key!r} belongs to a CSV dataset (a simulated one takes its options in "
                            "'simulate'; a dataset folder has its own groups and grid)")
    overrides = _settings(where, table.get("set", {}))
    _groups_known(where, table, overrides)
    group_by = table.get("group_by", [])
    group_by = [group_by] if isinstance(group_by, str) else group_by
    if not isinstance(group_by, list) or not all(isinstance(c, str) for c in group_by):
        raise _fail(where, f"group_by must be a column name or a list of them, got {group_by!r}")

    spacing = check_spacing(_typed(where, "spacing", table.get("spacing", 1.0), int | float, "a number of mm"),
                            f"{where}: spacing")
    margin = _typed(where, "margin_mm", table.get("margin_mm", 12.0), int | float, "a number of mm")
    if not (math.isfinite(margin) and margin >= 0):
        raise _fail(where, f"margin_mm must be a finite number of mm >= 0, got {margin!r}")
    label_value = check_label_value(table.get("label_value"), f"{where}: label_value")
    seed = _typed(where, "seed", table.get("seed", 0), int, "a whole number")
    if seed < 0:
        raise _fail(where, f"seed must be a whole number >= 0, got {seed}")
    if "folder" in table:
        folder = base / _typed(where, "folder", table["folder"], str, "a folder name")
        if not (folder / "manifest.csv").is_file():
            raise _fail(where, f"{folder} is not a dataset folder (no manifest.csv)")
        return DatasetSpec(name, folder=folder.resolve(), overrides=overrides)
    if "simulate" in table:
        return DatasetSpec(name, simulate=_simulation(where, table["simulate"], base), overrides=overrides,
                           **_harm(where, table))
    if not group_by:
        raise _fail(where, "a CSV dataset needs group_by: the column(s) that name each case's group")
    csv = base / _typed(where, "csv", table["csv"], str, "a file name")
    spec = DatasetSpec(name, csv=csv, group_by=tuple(group_by), overrides=overrides, spacing=float(spacing),
                       margin_mm=float(margin), label_value=label_value, seed=seed)
    try:
        check_cohort(spec)
    except FairalError as err:
        raise _fail(where, str(err)) from None
    return spec


def _harm(where: str, table: dict) -> dict:
    """A simulated dataset's harm keys, checked: ``target_gap`` (a number) or ``target_gaps`` (a list: a ladder,
    expanded by :func:`expand_ladders`), the ``knob`` (:data:`fairal.grid.harm.KNOBS`), the ``ladder`` it joins and the
    ``calibration`` settings."""
    out: dict = {}
    if "target_gap" in table and "target_gaps" in table:
        raise _fail(where, "give target_gap (one dataset) or target_gaps (a ladder of datasets), not both")
    gaps = table.get("target_gaps", [table["target_gap"]] if "target_gap" in table else [])
    if "target_gaps" in table:
        _typed(where, "target_gaps", gaps, list, "a list of gaps")
        if not gaps:
            raise _fail(where, "target_gaps is empty")
    for g in gaps:
        if isinstance(g, bool) or not isinstance(g, int | float) or not (math.isfinite(g) and 0 < g < 1):
            raise _fail(where, f"a target gap is a Dice difference in (0, 1), got {g!r}")
    if len(set(gaps)) != len(gaps):
        raise _fail(where, "target_gaps names a gap twice")
    if gaps:
        out["target_gap"] = tuple(float(g) for g in gaps) if "target_gaps" in table else float(gaps[0])
    knob = _typed(where, "knob", table.get("knob", "bias_mean"), str, "a knob's name")
    if knob not in KNOBS:
        raise _fail(where, f"unknown knob {knob!r}; knobs: {', '.join(KNOBS)}")
    if "knob" in table and not gaps and "ladder" not in table:
        raise _fail(where, "knob is the setting a target_gap or a ladder turns: give target_gap(s) or ladder")
    out["knob"] = knob
    if "ladder" in table:
        out["ladder"] = _typed(where, "ladder", table["ladder"], str, "a name")
        _folder_name(where, "ladder", out["ladder"])
    cal = _typed(where, "calibration", table.get("calibration", {}), dict, "a table (levels, seeds, eval_per_group)")
    _unknown(f"{where}, calibration", cal, CALIBRATION_KEYS)
    _calibration_types(f"{where}, calibration", cal)
    if cal and not gaps and "ladder" not in table:
        raise _fail(where, "calibration settings need a target_gap(s) or a ladder to calibrate")
    out["calibration"] = dict(cal)
    if knob in table["simulate"] and gaps:
        raise _fail(where, f"simulate.{knob} is what target_gap sets: give one of them")
    return out


def _calibration_types(where: str, cal: dict) -> None:
    """A calibration table's values as written: ``levels`` a list of numbers, ``seeds`` and ``eval_per_group``
    whole numbers (never a string, a boolean or a fraction taken for one)."""
    levels = cal.get("levels", [0, 1])
    _typed(where, "levels", levels, list, "a list of knob values")
    if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in levels):
        raise _fail(where, f"levels must be finite numbers, got {levels!r}")
    for key, low in (("seeds", 1), ("eval_per_group", 2)):
        if key in cal and (_typed(where, key, cal[key], int, "a whole number") < low):
            raise _fail(where, f"{key} must be >= {low}, got {cal[key]!r}")


def _simulation(where: str, table, base: Path) -> dict:
    """A simulated dataset's ``fairal simulate`` options, checked now (built with the profile's sizes later); its
    files relative to the study file, as csv and folder are, and its template and label headers read."""
    sim = dict(_typed(where, "simulate", table, dict, "a table of fairal simulate options"))
    for key in PATHS:
        if isinstance(sim.get(key), str):
            path = base / sim[key]
            if not path.is_file():
                raise _fail(where, f"simulate.{key}: no such file {path}")
            if key in ("template", "label"):  # its header now; its data when the dataset is made
                try:
                    load_nifti(path, f"simulate.{key}", read=False)
                except FairalError as err:
                    raise _fail(where, str(err)) from None
            sim[key] = str(path.resolve())
    simulation_config(sim, where)
    return sim


def check_cohort(spec: DatasetSpec, cases=None) -> None:
    """A CSV cohort is a benchmark: every case labeled and of known group (the metrics need both). ``cases``: its
    cases as read (:func:`fairal.data.cohort.read_cases`), else the spec's (:meth:`DatasetSpec.cohort`)."""
    cases = spec.cohort() if cases is None else cases
    unlabeled = cases.loc[~cases["labeled"], "case_id"].tolist()
    if unlabeled:
        raise FairalError(f"{spec.csv}: a CSV dataset is a benchmark, every case needs a label; "
                          f"{len(unlabeled)} have none (first: {unlabeled[0]})")
    unknown = cases.loc[~cases["group_known"], "case_id"].tolist()
    if unknown:
        raise FairalError(f"{spec.csv}: {len(unknown)} cases have no group in "
                          f"{', '.join(spec.group_by)} (first: {unknown[0]}); the metrics need every case's group "
                          "(hide the pool's groups from the strategies with groups_known = false)")
    if "split" in cases.columns:  # the CSV's own split: every group measured on test cases, and acquirable
        splits = cases.assign(split=cohort_splits(cases, spec, 0))
        for split in (TEST, POOL):
            short = sorted(set(cases["group"]) - set(splits.loc[splits["split"] == split, "group"]))
            if short:
                raise FairalError(f"{spec.csv}: column 'split' gives group {short[0]} no "
                                  f"{split} case; each group needs at least one test and one pool case")
    else:
        sizes = cases["group"].value_counts()
        if (sizes < 2).any():
            raise FairalError(f"{spec.csv}: group {sizes.idxmin()} has "
                              f"{int(sizes.min())} case; each group needs at least two (a test and a pool case)")


def _inits(where: str, data: dict) -> tuple[str, ...]:
    """The study's initial sets, each a name of :func:`fairal.run.loop.heavy_group` that can name a folder, once."""
    inits = tuple(_typed(where, "inits", data.get("inits", ["balanced", "g1-heavy", "g2-heavy"]), list,
                         "a list of initial sets"))

    if not inits:
        raise _fail(where, "inits is empty: name at least one initial set (e.g. \"balanced\")")
    for init in inits:
        _typed(where, "each initial set", init, str, "a name")
    dup = sorted({i for i in inits if inits.count(i) > 1})
    if dup:
        raise _fail(where, f"the initial set {dup[0]!r} is named twice in inits")
    for init in inits:
        try:
            heavy_group(init)
        except FairalError as err:
            raise _fail(where, f"inits: {err}") from None
        if "/" in init:
            raise _fail(where, f"inits: {init!r} cannot name a folder of the records: an intersectional group "
                        "(its columns joined by '/') cannot be an initial set's heavy group")
        _folder_name(where, "initial set", init)
    return inits


def parse_study(data: dict, where: str, base: Path, text: str = "") -> Study:
    """A :class:`Study` from a parsed study file (``where`` names it in messages; ``base``: the folder that
    relative file names are read from)."""
    _unknown(where, data, TOP_KEYS)
    plugins = _plugin_specs(where, data.get("plugins", []), base)  # loaded once the rest is checked
    if "datasets" not in data or not isinstance(data["datasets"], dict) or not data["datasets"]:
        raise _fail(where, "the study names no dataset: add a [datasets.NAME] table")
    datasets = expand_ladders(where, tuple(_dataset(where, n, t, base) for n, t in data["datasets"].items()))
    for d in datasets:
        _folder_name(where, "dataset", d.name)
    arms = None
    if "strategies" in data:
        items = _typed(where, "strategies", data["strategies"], list, "a list of strategies")
        if not items:
            raise _fail(where, "strategies is empty")
        arms = tuple(_arm(where, s) for s in items)
        names = [a.name for a in arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _fail(where, f"two strategies are named {dup[0]!r}: give each a name of its own")
    profile = data.get("profile")
    if profile is not None and profile not in PROFILES:
        raise _fail(where, f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    seeds = data.get("seeds")
    if seeds is not None and (_typed(where, "seeds", seeds, int, "a whole number >= 1") < 1):
        raise _fail(where, f"seeds must be a whole number >= 1, got {seeds}")
    if seeds is not None:
        refuse_above(f"{where}: seeds", seeds, MAX_SEEDS, "MAX_SEEDS")
    inits = _inits(where, data)
    reference = _typed(where, "reference", data.get("reference", WLE), str, "a strategy name")
    if not plugins:  # no plugin can register a name: a mistyped strategy is said before the reference
        for arm in arms or ():
            _strategy(where, arm)
    if arms is not None and reference not in [a.name for a in arms]:
        raise _fail(where, f"the reference {reference!r} is not one of the study's strategies "
                    f"({', '.join(a.name for a in arms)})")
    name = _typed(where, "name", data.get("name", Path(where).stem), str, "a name")
    study = Study(name, where, text, datasets, profile=profile, seeds=seeds, arms=arms, inits=inits,
                  reference=reference, overrides=_settings(where, data.get("set", {})),
                  baselines=_typed(where, "baselines", data.get("baselines", False), bool, "true or false"),
                  description=_typed(where, "description", data.get("description", ""), str, "text"))
    return dataclasses.replace(study, plugins=_load_plugins(where, plugins, arms))  # every other key checked


def rung_name(name: str, gap: float) -> str:
    """The dataset of a ladder's rung: ``NAME-gap0.1``."""
    return f"{name}-gap{gap:g}"


def expand_ladders(where: str, datasets: tuple[DatasetSpec, ...]) -> tuple[DatasetSpec, ...]:
    """A dataset with ``target_gaps`` becomes one dataset per gap (:func:`rung_name`), each with subjects of its
    own (seed: stream ``ladder-rung`` of the dataset's seed and the gap); a dataset with a ``target_gap`` is the
    one rung of its ladder. Each rung's ladder is the dataset's name unless it names one."""
    out = []
    for d in datasets:
        if isinstance(d.target_gap, tuple):
            for gap in d.target_gap:
                seed = stream_seed(int(d.simulate.get("seed", 0)), "ladder-rung", f"{gap:g}")
                out.append(dataclasses.replace(d, name=rung_name(d.name, gap), target_gap=gap,
                                               simulate={**d.simulate, "seed": seed}, ladder=d.ladder or d.name))
        elif d.target_gap is not None:
            out.append(dataclasses.replace(d, ladder=d.ladder or d.name))
        else:
            out.append(d)
    names = [d.name for d in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(where, f"two datasets are named {dup[0]!r} (a ladder's rung is NAME-gapG)")
    for name in {d.ladder for d in out if d.ladder}:
        members = [d for d in out if d.ladder == name]
        if len({d.knob for d in members}) > 1:
            raise _fail(where, f"the datasets of ladder {name} turn different knobs: one knob a ladder")
        if len(members) == 1 and members[0].target_gap is None:  # a name joined by nothing: a misspelling?
            raise _fail(where, f"dataset {members[0].name} joins ladder {name!r}, which no other dataset of the "
                               "study is on and none names with target_gap(s): a ladder needs two rungs or a target")
        given = [d.calibration for d in members if d.calibration]
        if any(c != given[0] for c in given):
            raise _fail(where, f"the datasets of ladder {name} give different calibration settings: give them once")
    return tuple(dataclasses.replace(d, calibration=next((m.calibration for m in out if m.ladder == d.ladder
                                                         and m.calibration), {})) if d.ladder else d for d in out)


def _plugin_specs(where: str, items, base: Path) -> list[str]:
    """The study's plugins (``.py`` files relative to the study file, or module names), not loaded yet: a plugin
    is code, run only once the rest of the file is checked (:func:`_load_plugins`)."""
    items = [items] if isinstance(items, str) else items
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise _fail(where, f"plugins must be a list of .py files or module names, got {items!r}")
    return [str((base / p).resolve()) if p.endswith(".py") or "/" in p else p for p in items]


def _load_plugins(where: str, specs: list[str], arms: tuple[Arm, ...] | None) -> tuple[str, ...]:
    """Load the study's plugins, the last step of reading the file, then parse the arms' strategy names (a
    plugin may register them); the plugins' keys."""
    try:
        keys = tuple(load_all(specs))
    except FairalError as err:
        raise _fail(where, str(err)) from None
    for arm in arms or ():
        _strategy(where, arm)
    return keys


def study_identity(record: dict) -> dict:
    """What makes a results folder one study's: its name and its datasets' definitions (name, kind, simulate
    options, CSV, folder, groups, grid), from a ``study.json``'s ``study`` or :meth:`Study.as_dict`. Not its seeds,
    strategies or initial sets (the same study goes on with more or fewer) nor the datasets' settings (each run's
    records are checked against its own)."""
    import json

    datasets = {str(d.get("name")): {k: v for k, v in d.items() if k not in ("name", "overrides")}
                for d in record.get("datasets") or [] if isinstance(d, dict)}
    return json.loads(json.dumps({"name": record.get("name"), "datasets": datasets}, default=str))


def other_study(held: dict, study: Study) -> str:
    """How the study recorded in a results folder (``held``: its ``study.json``'s ``study``) differs from
    ``study`` by :func:`study_identity`, in words ("" where it is this study). A key only one of them records (a
    dataset key added to fairal since) does not count."""
    theirs, mine = study_identity(held), study_identity(study.as_dict())
    if theirs["name"] != mine["name"]:
        return f"its name is {theirs['name']!r}, not {mine['name']!r}"
    if set(theirs["datasets"]) != set(mine["datasets"]):
        return f"its datasets are {', '.join(theirs['datasets'])}, not {', '.join(mine['datasets'])}"
    for name, d in mine["datasets"].items():
        t = theirs["datasets"][name]
        diff = [k for k in d if k in t and d[k] != t[k]]
        if diff:
            return f"its dataset {name} has {diff[0]} = {t[diff[0]]!r}, not {d[diff[0]]!r}"
    return ""


def load_study(source: str | Path) -> Study:
    """A built-in study by name (:data:`BUILTIN`) or a study file (TOML), parsed and checked before any work."""
    if str(source) in BUILTIN:
        return BUILTIN[str(source)]()
    path = Path(source)
    if not path.is_file():
        raise FairalError(f"{path}: no such study file, and no built-in study of that name (built-in: "
                          f"{', '.join(BUILTIN)})")
    text = path.read_text(encoding="utf-8-sig", errors="replace")  # a byte-order mark is not TOML's
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise FairalError(f"{path}: not a valid TOML study file: {err}") from None
    except RecursionError:  # tomllib parses nested arrays recursively
        raise FairalError(f"{path}: not a valid study file: its lists or tables nest too deep to read") from None
    check_nesting(data, str(path))
    return parse_study(data, str(path), path.resolve().parent, text)


def check_settings(study: Study, base: Profile, cli: dict) -> None:
    """Every run's settings and strategy, built once before any work (a bad ``set`` or strategy fails here)."""
    arms = study.resolved_arms(base)
    if not arms:
        raise FairalError(f"{study.source}: no strategy to run (the list of strategies is empty)")
    for arm in arms:
        _ = arm.parsed
    try:  # the study's [set] on its own first, so that its error is not put down to a dataset
        base.with_overrides(study.overrides)
    except FairalError as err:
        raise FairalError(f"{study.source} ([set]): {err}") from None
    for layers in ({}, cli):  # first the file's own settings (a message naming the file), then the command line's
        for d in study.datasets:
            for arm in (None, *arms):
                try:
                    study.profile_for(base, d, arm, layers)
                except FairalError as err:
                    if layers is cli:
                        raise
                    where = f"dataset {d.name}" + (f", strategy {arm.name}" if arm else "")
                    raise FairalError(f"{study.source} ({where}): {err}") from None


def study_seeds(study: Study, profile: Profile, seeds: int | None) -> int:
    """The number of seeds: the command line's (``seeds``), else the study file's, else the profile's."""
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise FairalError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    if seeds is not None:
        refuse_above("--seeds", seeds, MAX_SEEDS, "MAX_SEEDS")
    return seeds if seeds is not None else study.seeds or profile.seeds


def seeds_warning(study: Study, profile: Profile, seeds: int, alpha: float = 0.05) -> str:
    """Why a study's seeds cannot give every verdict under docs/analysis-plan.md's rule ("" when they can), in
    the words of the study report (:func:`seed_rule`)."""
    k = primary_family(len(study.datasets), len(study.resolved_arms(profile)))
    if smallest_sign_flip_p(seeds) * k < alpha:
        return ""
    return seed_rule(seeds, k, alpha) + " (--seeds, or seeds in the study file)"


def cohort_splits(cases, spec: DatasetSpec, per_group: int) -> list[str]:
    """Each case's split: the CSV's ``split`` column (pool, test or eval) if it has one, else a seeded test split
    of ``per_group`` cases per group (at most half of a group; :func:`fairal.sampling.test_split`)."""
    if "split" in cases.columns:
        values = cases["split"].str.strip()
        bad = sorted(set(values) - set(SPLITS))
        if bad:
            raise FairalError(f"{spec.csv}: column 'split' must hold {', '.join(SPLITS)}, found {bad}")
        return values.tolist()
    ids: dict = {}
    for case, group in zip(cases["case_id"], cases["group"], strict=True):
        ids.setdefault(group, []).append(case)
    test = test_split(ids, per_group, spec.seed)
    return [TEST if c in test else POOL for c in cases["case_id"]]

"""The ``fairal`` command: one sub-command per pipeline stage."""

from __future__ import annotations

import errno
import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from fairal.errors import FairalError
from fairal.simulate.deformation import DEFAULT_GLOBAL_RMS_MM, DEFAULT_LOCAL_SD_MM

#: Click's names of the values of parameters that give no metavar of their own.
VALUE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def value_name(annotation) -> str:
    """Click's metavar of a parameter's type: ``INTEGER`` for ``int``, ``PATH`` for a ``Path`` (also inside
    ``list[...]``, ``X | None`` or ``Annotated[...]``), ``INTEGER INTEGER INTEGER`` for ``tuple[int, int, int]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return " ".join(value_name(a) for a in args)
    if args and origin is not typing.Literal:  # Annotated[X, ...], list[X], X | None
        return value_name(args[0])
    return VALUE_NAMES.get(annotation, "VALUE")


def usage_name(param) -> str:
    """An argument as click writes it in a usage line: ``DATA``, ``[DATA]`` if optional, ``FIELDS...``."""
    name = param.metavar or param.name.upper()
    name = name if param.required else f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")


class HelpCommand(TyperCommand):
    """A command whose ``--help`` names values as click does, never in Python: ``DATA`` for an argument (typer
    writes ``{data}``), ``INTEGER``, ``PATH``, ``TEXT`` for an option without a metavar of its own (typer writes
    ``<int>``, ``<list[str]>``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        hints = typing.get_type_hints(inspect.unwrap(self.callback), include_extras=True) if self.callback else {}
        for param in self.params:
            if param.metavar is None and param.name in hints and not getattr(param, "is_flag", False):
                argument = param.param_type_name == "argument"
                param.metavar = param.name.upper() if argument else value_name(hints[param.name])

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [usage_name(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx, formatter) -> None:
        params = self.get_params(ctx)
        arguments = [(usage_name(p).strip("[]"), "  ".join(filter(None, [p.help, "[required]" if p.required else ""])))
                     for p in params if p.param_type_name == "argument"]
        options = [r for p in params if p.param_type_name == "option" and (r := p.get_help_record(ctx))]
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


class FairalTyper(typer.Typer):
    """``typer.Typer`` whose commands are :class:`HelpCommand`."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", HelpCommand)
        return super().command(*args, **kwargs)


app = FairalTyper(
    help="Fairness-aware active learning for 3D brain MRI segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help is shown as written: the strategy grammar has brackets
)
# No markup anywhere: case ids, paths and messages are printed as they are (a case "sub[red]1" stays that), and no
# hard line breaks inside messages: scripts and tests read them.
console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
stdout = Console(soft_wrap=True, markup=False, highlight=False)


def _warn(text: str) -> None:
    """A warning on stderr, before the work it is about."""
    console.print(Text.assemble(("warning:", "bold yellow"), " ", text))


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fairal {version('fairal')}")
        raise typer.Exit()


#: What the operating system said, in words that name the cause (a read-only file system is not a permission).
OS_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted",
              errno.ENOENT: "no such file or directory (moved or deleted while fairal ran?)"}


def os_error_message(err: OSError) -> str:
    """An error of the file system in one line: the file, then the cause."""
    where = f"{err.filename} -> {err.filename2}" if err.filename2 else err.filename
    reason = OS_REASONS.get(err.errno, err.strerror or str(err))
    return f"{where}: {reason}" if where else reason


def _clear_errors(fn):
    """Turn FairalError (bad input) and errors of the file system (a full disk, a read-only folder, a file
    removed meanwhile) into one clear line and exit status 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FairalError, OSError) as err:
            text = os_error_message(err) if isinstance(err, OSError) else str(err)
            console.print(Text.assemble(("error:", "bold red"), " ", text))
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
@_clear_errors
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print fairal's version and exit.")] = False,
    plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", metavar="FILE|MODULE", help="A plugin to load first (repeatable): a .py file or a module that "
        "registers strategies, metrics or a network (docs/api.md); also $FAIRAL_PLUGINS and installed packages' "
        "'fairal.plugins' entry points. A grid's workers load them too.")] = None,
) -> None:
    """Fairness-aware active learning for 3D brain MRI segmentation."""
    from fairal import plugins
    from fairal.errors import plain_warnings

    plain_warnings()
    plugins.load_entry_points()
    plugins.load_all(plugins.from_environment() + list(plugin or []))


class SimulateCommand(HelpCommand):
    """``fairal simulate``, which also reads the older ``--shape X Y Z`` (three words) as ``--shape X,Y,Z``."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args[:-3]):
            if arg == "--shape" and all(a.isdigit() for a in args[i + 1:i + 4]):
                args[i + 1:i + 4] = [",".join(args[i + 1:i + 4])]
                break
        return super().parse_args(ctx, args)


@app.command(cls=SimulateCommand)
@_clear_errors
def simulate(
    out: Annotated[Path, typer.Argument(help="Output folder of the dataset (must not exist, or --overwrite).")],
    bias: Annotated[str | None, typer.Option(metavar="strong|weak|none", help="Group 1's bias preset: strong "
                                             "(c ~ N(4, 2), the default), weak (N(2, 2)) or none.")] = None,
    n_subjects: Annotated[int, typer.Option(help="Number of subjects, split into the groups by their shares "
                                            "(evenly into Group 1 and 2 by default).")] = 312,
    seed: Annotated[int, typer.Option(help="Seed of the subjects' draws. Datasets to be compared or pooled in one "
                                      "claim need different seeds (independent subjects).")] = 0,
    eval_per_group: Annotated[int, typer.Option(help="Evaluation subjects per group (split 'eval', beyond "
                                                "--n-subjects): never in the pool, the test split or a cohort; "
                                                "every round and baseline is also measured on them.")] = 0,
    test_per_group: Annotated[int, typer.Option(help="Test cases per group (the paper: 15).")] = 15,
    bias_mean: Annotated[float | None, typer.Option(help="Override the preset's mean of c (SD units).")] = None,
    bias_std: Annotated[float | None, typer.Option(help="Override the preset's SD of c.")] = None,
    shape: Annotated[str | None, typer.Option(metavar="X,Y,Z", help="Output grid size in voxels, e.g. 80,96,56 or "
                                              "80x96x56 (default 170,170,76).")] = None,
    structure: Annotated[str | None, typer.Option(metavar="NAME", help="The structure to segment and bias, by its "
                                                  "Harvard-Oxford name (default Left_Caudate).")] = None,
    contrast: Annotated[float | None, typer.Option(help="Group 1's contrast factor (SimBA's contrast change; "
                                                   "SimBA: 1.2). Group 2 keeps 1.0.")] = None,
    inu: Annotated[float | None, typer.Option(help="Group 1's intensity non-uniformity in % (BrainWeb: 20 = a "
                                              "field within 0.90-1.10, 40 = 0.80-1.20).")] = None,
    noise: Annotated[float | None, typer.Option(help="Group 1's Rician noise, SD in % of the white-matter "
                                                "intensity (BrainWeb: 3 typical).")] = None,
    inu_all: Annotated[float, typer.Option(help="Intensity non-uniformity in % of every group that sets none.")] = 0.0,
    noise_all: Annotated[float, typer.Option(help="Rician noise in % of white matter for every group that sets "
                                             "none (e.g. 3: realistic noise everywhere).")] = 0.0,
    group: Annotated[list[str] | None, typer.Option(metavar="SPEC", help="A group NAME[:key=value,...], repeatable, "
                                                    "replacing groups 1 and 2; keys bias, bias_mean, bias_std, "
                                                    "contrast, inu, noise, share; e.g. 1:bias=strong,share=3.")] = None,
    template: Annotated[Path | None, typer.Option(help="Template T1 image (NIfTI); default MNI152.")] = None,
    label: Annotated[Path | None, typer.Option(help="Label map or 4D probability atlas on the template.")] = None,
    label_value: Annotated[float | None, typer.Option(help="Label value (3D) or volume index (4D atlas).")] = None,
    global_model: Annotated[Path | None, typer.Option(help="Global deformation model (.npz).")] = None,
    local_model: Annotated[Path | None, typer.Option(help="Local (bias) deformation model (.npz).")] = None,
    global_sampling: Annotated[str, typer.Option(metavar="per-component|one-scalar", help="per-component (z_k ~ "
                                                 "N(0,1) each) or one-scalar (SimBA: one z for all).")
                               ] = "per-component",
    global_rms_mm: Annotated[float, typer.Option(help="RMS velocity of the default global model (mm); the default "
                                                 "is anchored in anatomy (fairal calibrate).")] = DEFAULT_GLOBAL_RMS_MM,
    local_sd_mm: Annotated[float, typer.Option(help="One SD of the default local PC1 at the boundary (mm); the "
                                               "default is anchored in anatomy (fairal calibrate).")]
    = DEFAULT_LOCAL_SD_MM,
    model_seed: Annotated[int, typer.Option(help="Seed of the default deformation models.")] = 0,
    jobs: Annotated[int, typer.Option(help="Worker processes (0 = one per core).")] = 0,
    preview: Annotated[bool, typer.Option(help="Write preview.png.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or summary.")] = False,
) -> None:
    """Generate a SimBA-style synthetic dataset: Group 1 with a local bias of the structure, Group 2 without (or
    the groups of --group), with acquisition differences by group if asked (docs/simulation.md)."""
    given = dict(locals())  # the options, by the names of the settings (before any other local name exists)
    from fairal.simulate.dataset import simulate_dataset
    from fairal.simulate.settings import build_config

    options = {k: v for k, v in given.items() if k not in ("out", "overwrite", "quiet") and v is not None}
    cfg = build_config(options)
    path = simulate_dataset(cfg, out, overwrite=overwrite, progress=not quiet)
    if not quiet:
        _print_dataset_summary(path, cfg)


def _print_dataset_summary(path: Path, cfg) -> None:
    """Structure volume and Dice to the template by group; says so when the groups are unequal."""
    import pandas as pd

    from fairal.simulate.dataset import group_summary

    manifest = pd.read_csv(path / "manifest.csv")
    what = f"groups {', '.join(str(g.name) for g in cfg.group)}" if cfg.group else f"{cfg.bias} bias"
    table = Table(title=f"{path} ({what})")
    for col in ("group", "n", "volume (mm3)", "Dice to template", "min Dice"):
        table.add_column(col, justify="right")

    def sd(value: float, digits: int) -> str:  # one subject has no SD
        return "n/a" if value != value else f"{value:.{digits}f}"

    for _, r in group_summary(manifest).iterrows():
        table.add_row(str(int(r["group"])), str(int(r["n"])),
                      f"{r['volume_mean_mm3']:.0f} ± {sd(r['volume_sd_mm3'], 0)}",
                      f"{r['dice_to_template_mean']:.3f} ± {sd(r['dice_to_template_sd'], 3)}",
                      f"{r['dice_to_template_min']:.3f}")
    stdout.print(table)
    counts = manifest.loc[manifest["split"] != "eval", "group"].value_counts().sort_index()
    if counts.nunique() > 1:
        sizes = ", ".join(f"Group {g}: {n}" for g, n in counts.items())
        why = "by the groups' shares" if cfg.group else f"{cfg.n_subjects} subjects do not split evenly"
        stdout.print(f"note: the groups are unequal ({sizes}; {why}, largest remainder first)")


@app.command("build-model")
@_clear_errors
def build_model_cmd(
    fields: Annotated[list[Path], typer.Argument(help="Vector fields (NIfTI, X x Y x Z x 3 in mm), one per subject.")],
    out: Annotated[Path, typer.Option(help="Output model file (.npz).")],
    kind: Annotated[str, typer.Option(metavar="velocity|displacement",
                                      help="velocity (integrated) or displacement (used as is).")] = "velocity",
    n_components: Annotated[int | None, typer.Option(help="Components to keep (default: 95% of variance).")] = None,
    lps: Annotated[bool, typer.Option(help="Vectors are in LPS (ITK/ANTs) components, not RAS.")] = False,
) -> None:
    """Build a PCA deformation model from a user's registration fields, as SimBA built its models."""
    from fairal.io import within
    from fairal.simulate.deformation import build_model

    model = build_model(list(fields), kind=kind, n_components=n_components, lps=lps)
    if out.suffix != ".npz":
        raise FairalError(f"--out must end in .npz, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = within(out.parent, f".{out.name}.partial.npz")
    model.save(tmp)
    tmp.replace(within(out.parent, out.name))
    sd = ", ".join(f"{v:.3g}" for v in model.eigenvalues[:5] ** 0.5)
    typer.echo(f"wrote {out}: {model.n_components} components on a {model.shape} grid (SD of the first: {sd} mm)")


@app.command()
@_clear_errors
def calibrate(
    cv: Annotated[float, typer.Option(help="Between-subject coefficient of variation of the structure's volume "
                                      "(default: healthy adult caudate, Raz et al. 2003).")] = 0.12,
    n_subjects: Annotated[int, typer.Option(help="Unbiased subjects drawn to calibrate the global model.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the subjects' draws (as in fairal simulate).")] = 0,
    template: Annotated[Path | None, typer.Option(help="Template T1 image (NIfTI); default MNI152.")] = None,
    label: Annotated[Path | None, typer.Option(help="Label map or 4D probability atlas on the template.")] = None,
    label_value: Annotated[float | None, typer.Option(help="Label value (3D) or volume index (4D atlas).")] = None,
    structure: Annotated[str | None, typer.Option(metavar="NAME", help="A structure of the default Harvard-Oxford "
                                                  "atlas by name (as in fairal simulate; default Left_Caudate). "
                                                  "Give its own --cv.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the numbers to this JSON file.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Anchor the default deformation models in anatomy: the global RMS velocity at which unbiased subjects'
    structure volume varies with CV --cv, and the local PC1 scale at which one SD shrinks it by one natural SD."""
    from fairal.io import check_output_file, within, write_json
    from fairal.simulate.calibrate import CAUDATE_VOLUME_CV
    from fairal.simulate.calibrate import calibrate as run_calibration

    if n_subjects < 2:
        raise FairalError(f"--n-subjects must be at least 2, got {n_subjects}")
    if out is not None:
        check_output_file(out, overwrite)
    cal = run_calibration(cv=cv, n_subjects=n_subjects, seed=seed, template=str(template) if template else None,
                          label=str(label) if label else None, label_value=label_value, structure=structure)
    v0 = cal.template_volume_mm3
    name = structure or ("the label" if label or label_value is not None else "Left_Caudate")
    stdout.print(f"template structure ({name}): {v0:.0f} mm3; one natural SD = {cv:g} x {v0:.0f} = "
                 f"{cv * v0:.0f} mm3")
    if structure is not None and structure.lower() != "left_caudate" and cv == CAUDATE_VOLUME_CV:
        stdout.print(f"note: --cv {cv:g} is the caudate's anchor (Raz et al. 2003); give {structure}'s own "
                     "normative CV")
    stdout.print(f"global model: RMS velocity {cal.global_rms_mm:.3f} mm (CV of {cal.n_subjects} unbiased subjects "
                 f"at that scale: {cal.group2_cv:.3f})")
    stdout.print(f"local model: one SD of PC1 = {cal.local_sd_mm:.3f} mm at the boundary")
    view = Table(title="structure volume against the local coefficient c (PC1 alone)")
    for col in ("c", "volume (mm3)", "change", "change in natural SDs"):
        view.add_column(col, justify="right")
    for c, v in cal.local_curve:
        view.add_row(f"{c:g}", f"{v:.0f}", f"{v / v0 - 1:+.1%}", f"{(v - v0) / (cv * v0):+.2f}")
    stdout.print(view)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(within(out.parent, out.name), cal.as_dict())


def _harm_inputs(sim: list[str] | None, levels: str | None, target_gap: list[float] | None) -> tuple[dict, tuple]:
    """calibrate-harm's recipe (``--sim`` values read as JSON where they are, else as text) and knob levels,
    checked with its targets before any work."""
    import json
    import math

    from fairal.config import parse_overrides

    recipe = {}
    for key, value in parse_overrides(sim, "--sim").items():
        try:
            recipe[key] = json.loads(value)
        except ValueError:
            recipe[key] = value
    try:
        values = tuple(float(v) for v in levels.split(",")) if levels is not None else ()
    except ValueError:  # "" too: an empty --levels is not the default ladder
        raise FairalError(f"--levels takes comma-separated numbers (knob values), got {levels!r}") from None
    for t in target_gap or ():
        if not (math.isfinite(t) and 0 < t < 1):
            raise FairalError(f"--target-gap is a Dice difference in (0, 1), got {t:g}")
    return recipe, values


@app.command("calibrate-harm")
@_clear_errors
def calibrate_harm(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder of the calibration (made and continued by "
                                        "fairal): its datasets, models, levels.csv, dice.csv, calibration.json.")],
    sim: Annotated[list[str] | None, typer.Option("--sim", metavar="KEY=VALUE", help="A fairal simulate option of "
                                                  "the recipe (repeatable), e.g. bias=strong, bias_std=2.")] = None,
    knob: Annotated[str, typer.Option(help="The setting turned: bias_mean, contrast, inu or noise (Group 1's).")]
    = "bias_mean",
    levels: Annotated[str | None, typer.Option(help="Comma-separated knob values (default: the knob's ladder).")]
    = None,
    target_gap: Annotated[list[float] | None, typer.Option("--target-gap", help="A gap to find the knob for "
                                                           "(repeatable).")] = None,
    seeds: Annotated[int, typer.Option(help="Training seeds of the Group 2-only model.")] = 3,
    eval_per_group: Annotated[int | None, typer.Option(help="Evaluation subjects per group (default: the "
                                                       "profile's, 150 at standard).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the calibration's own subjects (stream harm-subjects).")] = 0,
    profile: Annotated[str, typer.Option("--profile", "-p", metavar="NAME", help="Settings profile (its grid and "
                                         "training).")] = "standard",
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override one profile "
                                                   "setting (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Harm as a setting: the gap of a model trained on Group 2 alone (mean Dice of Group 2 - of Group 1 on
    held-out subjects) over a ladder of one knob of a simulation recipe, with CIs and each level's anatomy, and the
    knob for each --target-gap (interpolated, then measured again). A study asks for it with target_gap."""

    from fairal.config import get_profile, parse_overrides
    from fairal.grid.harm import HarmSettings, OutOfReach, measure
    from fairal.sampling import stream_seed

    recipe, values = _harm_inputs(sim, levels, target_gap)
    prof = get_profile(profile, parse_overrides(set_))
    per_group = prof.eval_per_group if eval_per_group is None else eval_per_group
    settings = HarmSettings(recipe, knob, values, seeds=seeds, eval_per_group=per_group,
                            subject_seed=stream_seed(seed, "harm-subjects", "calibrate-harm"))
    try:
        curve = measure(settings, prof, out, target_gap or (), progress=not quiet)
    except OutOfReach as err:
        _print_curve(err.curve, out, [])
        raise
    _print_curve(curve, out, [{"dataset": f"target {t['target_gap']:g}", "value": t["value"], **t["checked"]}
                              for t in curve.targets.values()])
    for t in curve.targets.values():
        c = t["checked"]
        stdout.print(f"target gap {t['target_gap']:g}: {knob} = {t['value']:g}, measured there {c['gap']:.4f} "
                     f"[{c['gap_ci_low']:.4f}, {c['gap_ci_high']:.4f}]")
        if not t.get("target_within_ci", True):
            _warn(f"target gap {t['target_gap']:g}: its CI measured again at {knob} = {t['value']:g} does not "
                  "hold the target (more seeds or levels near it narrow it)")


def _print_curve(curve, out: Path, marks: list[dict]) -> None:
    """A calibration's levels as a table on the console, and its figure (``OUT/calibration.png``)."""
    from fairal.report.dose import calibration_figure

    knob = curve.settings.knob
    view = Table(title=f"gap of a Group 2-only model against {knob} ({len(curve.levels)} levels, "
                       f"{curve.settings.seeds} seeds)")
    for col in (knob, "gap", "95% CI", "Dice G1", "Dice G2", "G1 volume (SDs)", "G1 volume", "smallest G1 label"):
        view.add_column(col, justify="right")
    for _, r in curve.levels.iterrows():
        view.add_row(f"{r['level']:g}", f"{r['gap']:.4f}", f"[{r['gap_ci_low']:.4f}, {r['gap_ci_high']:.4f}]",
                     f"{r['dice_g1']:.3f}", f"{r['dice_g2']:.3f}", f"{r['volume_change_sd']:+.2f}",
                     f"{r['volume_change_pct']:+.0f}%", f"{int(r['g1_min_voxels'])} vx" + ("" if r["usable"]
                                                                                          else " (vanished)"))
    Console(width=max(stdout.width, 120), markup=False, highlight=False).print(view)
    if (per_group := curve.settings.eval_per_group) < 30:
        _warn(f"{per_group} evaluation subject(s) per group: the gaps' CIs are wide, and the SDs of G1 volume are "
              "those of so few subjects (150, the standard profile's, measures both)")
    figure = calibration_figure(curve.levels, out / "calibration.png", knob, marks)
    stdout.print(f"calibration: {out / 'calibration.json'}; figure: {figure}")


ProfileOpt = Annotated[str, typer.Option("--profile", "-p", metavar="NAME",
                                         help="Settings profile: smoke, quick, standard, paper.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override one profile setting (repeatable).")
]


@app.command()
@_clear_errors
def baseline(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder (from fairal simulate).")],
    out: Annotated[Path, typer.Option(help="Output folder for the baseline records.")],
    profile: ProfileOpt = "standard",
    seed: Annotated[int, typer.Option(help="Seed of the cohorts' draw and of training.")] = 0,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars (the table is still printed).")] = False,
) -> None:
    """Table 1: train on the balanced, Group 1-only and Group 2-only cohorts; evaluate on the fixed test set."""
    from fairal.config import get_profile, parse_overrides
    from fairal.grid.baselines import run_baseline

    prof = get_profile(profile, parse_overrides(set_))
    table = run_baseline(data_dir, out, prof, seed=seed, progress=not quiet)
    rich_table = Table(title=f"baseline: {data_dir} (profile {prof.name}, seed {seed})")
    for col in table.columns:
        rich_table.add_column(col, justify="right")
    for _, r in table.iterrows():
        rich_table.add_row(r["cohort"], *["" if v is None or v != v else f"{v:.3f}" for v in r.iloc[1:]])
    stdout.print(rich_table)
    stdout.print(f"records in {out}/baseline_table.csv and baseline_cases.csv")


@app.command()
@_clear_errors
def run(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder (from fairal simulate).")],
    strategy: Annotated[str, typer.Option(metavar="NAME", help="random, entropy, localized-entropy, "
                                          "weighted-localized-entropy, or [SELECTION-][STEERING-]BASE[-tT] "
                                          "(SELECTION: stochastic-, power-; STEERING: weighted-, worst-group-, "
                                          "balanced-, group-drawn-; BASE: random, entropy, localized-entropy, bald, "
                                          "fair-influence, core-set, or a plugin's; `fairal strategies` lists them "
                                          "all; docs/own-data.md, section 7).")],
    init: Annotated[str, typer.Option(metavar="NAME", help="Initial labeled set: balanced, g1-heavy or g2-heavy "
                                      "(any gX-heavy).")],
    out: Annotated[Path, typer.Option(help="Run folder (records; resumed if it holds this run).")],
    seed: Annotated[int, typer.Option(help="Seed of the initial set, training and random draws.")] = 0,
    profile: ProfileOpt = "standard",
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """One active-learning run: train, evaluate, score the pool, acquire, until the final budget."""
    from fairal import plugins
    from fairal.config import get_profile, parse_overrides
    from fairal.run.loop import ActiveLearningRun, RunSpec

    prof = get_profile(profile, parse_overrides(set_))
    al = ActiveLearningRun(RunSpec(str(data_dir), strategy, init, seed, prof), out, extensions=plugins.record())
    if al.is_finished():
        stdout.print(f"{out} holds this run, finished: nothing to do")
        return
    sizes = al.sizes

    def report(rnd: int) -> None:
        if not quiet:
            last = al.table().iloc[-1]
            groups = [c[len("n_labeled_g"):] for c in last.index if c.startswith("n_labeled_g")]
            mix = " + ".join(f"{int(last[f'n_labeled_g{g}'])}" for g in groups)
            w = ", ".join(f"w_g{g} {last[f'w_g{g}']:.2f}" for g in groups)
            stdout.print(f"round {rnd:2d}/{len(sizes) - 1}: {int(last['n_labeled'])} labeled "
                         f"(groups {'/'.join(groups)}: {mix}), Dice {last['dice_all']:.3f}, "
                         f"Delta {last['delta']:.3f}, ESSP {last['essp']:.3f}, {w}")

    al.run(progress=False, on_round=report)
    stdout.print(f"records in {out}: rounds.csv, cases.csv, selections.csv")


StudyProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", metavar="NAME", help="Settings profile: "
                                                     "smoke, quick, standard, paper (default: the study file's, else "
                                                     "standard).")]
SeedsOpt = Annotated[int | None, typer.Option(help="Seeds per dataset, initial set and strategy (default: the "
                                             "study's, else the profile's).")]
JobsOpt = Annotated[int, typer.Option(help="Worker processes of the local executor (0 = one per core).")]
ExecutorOpt = Annotated[str, typer.Option(metavar="local|ray", help="Where the tasks run: local (a process pool) "
                                          "or ray (one Ray task per run, on a local Ray or a cluster).")]
AddressOpt = Annotated[str | None, typer.Option(help="Ray cluster to join: auto or ray://HOST:PORT (default: a "
                                                "local Ray).")]
CpusOpt = Annotated[int, typer.Option(help="CPUs (and torch threads) per Ray task.")]
GpusOpt = Annotated[float, typer.Option(help="GPUs per Ray task, fractional (e.g. 0.25).")]
StrategiesOpt = Annotated[str | None, typer.Option(help="Comma-separated strategies of the grid, or a study's "
                                                   "arms by name (default: the study's, else the profile's).")]
PackOpt = Annotated[str, typer.Option(metavar="auto|on|off", help="Train the runs of one dataset and seed in "
                                      "lockstep as one task: auto (when they train on a GPU), on or off.")]
PackSizeOpt = Annotated[int, typer.Option(help="At most this many runs per lockstep task (0: all of a dataset "
                                          "and seed).")]
QuietOpt = Annotated[bool, typer.Option(help="No progress output (the final table is still printed).")]


@app.command()
@_clear_errors
def study(
    source: Annotated[str, typer.Argument(metavar="STUDY", help="A study file (TOML; see docs/studies.md) or a "
                                          "built-in study: paper.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder: data/, baseline/, runs/, report/.")],
    profile: StudyProfileOpt = None, seeds: SeedsOpt = None, jobs: JobsOpt = 0, executor: ExecutorOpt = "local",
    address: AddressOpt = None, cpus_per_task: CpusOpt = 1, gpus_per_task: GpusOpt = 0.0,
    strategies: StrategiesOpt = None, pack: PackOpt = "auto", pack_size: PackSizeOpt = 0, set_: SetOpt = None,
    reuse: Annotated[Path | None, typer.Option(help="Another results folder: its finished runs of identical "
                                               "settings on the same data files are linked, not run again.")]
    = None,
    datasets: Annotated[str | None, typer.Option(help="Comma-separated datasets of the study whose runs to run now "
                                                 "(a ladder's rung is NAME-gapG; default: all). The records, "
                                                 "calibrations and report stay the whole study's.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a study: its datasets (simulated, or a lab's labeled cohort), initial sets, strategies and seeds, with
    the statistics and report; resumable. The command line overrides the file."""
    from fairal.grid.spec import load_study

    only = [v.strip() for v in datasets.split(",") if v.strip()] if datasets is not None else None
    if only is not None and not only:
        raise FairalError(f"--datasets names no dataset: {datasets!r}")
    _run_study(load_study(source), out, profile, seeds, jobs, executor, address, cpus_per_task, gpus_per_task,
               strategies, pack, pack_size, set_, quiet, reuse, only)


@app.command()
@_clear_errors
def reproduce(
    out: Annotated[Path, typer.Argument(help="Output folder: data/, baseline/, runs/, report/.")],
    profile: ProfileOpt = "quick", seeds: SeedsOpt = None, jobs: JobsOpt = 0, executor: ExecutorOpt = "local",
    address: AddressOpt = None, cpus_per_task: CpusOpt = 1, gpus_per_task: GpusOpt = 0.0,
    strategies: StrategiesOpt = None, pack: PackOpt = "auto", pack_size: PackSizeOpt = 0, set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The paper's whole experiment (the built-in study paper): both datasets, baselines, and the grid of AL
    runs, resumable."""
    from fairal.grid.spec import paper_study

    _run_study(paper_study(), out, profile, seeds, jobs, executor, address, cpus_per_task, gpus_per_task,
               strategies, pack, pack_size, set_, quiet)


def _run_study(the_study, out, profile, seeds, jobs, executor, address, cpus_per_task, gpus_per_task, strategies,
               pack, pack_size, set_, quiet, reuse=None, only=None) -> None:
    """The grid of a study, then its report and its final table on the console."""
    import dataclasses

    from fairal.config import get_profile, parse_overrides
    from fairal.grid.driver import run_study
    from fairal.grid.spec import Arm, check_settings, grid_key_refused, seeds_warning, study_seeds
    from fairal.records import PAPER_SOURCE

    cli = parse_overrides(set_)
    grid_key_refused(cli, "--set ")
    base = get_profile(profile or the_study.profile or "standard")
    if strategies is not None:  # the grid's strategies: the profile's list for the paper, the study's arms else
        names = tuple(v.strip() for v in strategies.split(",") if v.strip())
        if not names:
            raise FairalError(f"--strategies names no strategy: {strategies!r}")
        if twice := [n for n in dict.fromkeys(names) if names.count(n) > 1]:
            raise FairalError(f"--strategies names {twice[0]!r} twice")
        arms = {a.name: a for a in the_study.arms or ()}  # a study's arm by its name, with its own settings
        chosen = tuple(arms.get(n, Arm(n, n)) for n in names)
        for arm in chosen:  # refused before any work (a study's arm was parsed with its file)
            try:
                _ = arm.parsed
            except FairalError as err:
                raise FairalError(f"--strategies: {err}"
                                  + (f" (the study's arms: {', '.join(arms)})" if arms else "")) from None
        if the_study.arms is None:
            base = base.with_overrides({"strategies": ",".join(names)})
        else:
            the_study = dataclasses.replace(the_study, arms=chosen)
    check_settings(the_study, base, cli)  # a bad --set before any warning about the runs it would change
    warnings: list[str] = []  # printed once every check of the study and its folder has passed
    if the_study.source != PAPER_SOURCE:  # the paper's study has its own plan (docs/analysis-plan.md)
        names = [a.name for a in the_study.resolved_arms(base)]
        if names == [the_study.reference]:
            warnings.append(f"only the reference {the_study.reference!r} runs: the report has no paired comparisons")
        elif the_study.reference not in names:  # a file's typo is refused; a subset of arms runs, unpaired
            problem = (f"the reference {the_study.reference!r} is not among the strategies run "
                       f"({', '.join(names)})")
            if strategies is None:
                raise FairalError(f"{the_study.source}: {problem} at profile {base.name}")
            warnings.append(f"{problem}: the report has no paired comparisons")
        elif warning := seeds_warning(the_study, base, study_seeds(the_study, base, seeds)):
            warnings.append(warning)
    run_study(the_study, out, base, cli=cli, seeds=seeds, jobs=jobs, progress=not quiet, executor=executor,
              address=address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, pack=pack,
              pack_size=pack_size, reuse=reuse, only=only, checked=lambda: [_warn(w) for w in warnings])
    from fairal.report import build_report
    from fairal.report.tidy import load_results

    results = load_results(out)
    path = build_report(out, results=results)
    _print_final(results, base.with_overrides(cli) if cli else base)
    stdout.print(f"report: {path} (tables and figures beside it)")


def _print_final(results, prof) -> None:
    """The final budget's measures per dataset, initial set and strategy, each dataset on its primary split (the
    evaluation split where its runs have one, else the test split: the split of the report's first table), named
    in the column split; at a CPU test profile, a caveat."""
    import pandas as pd

    from fairal.metrics import METRICS
    from fairal.report.html import PIPELINE_CHECKS
    from fairal.report.tidy import primary_final_table

    final = primary_final_table(results)
    if final.empty:
        return
    view = Table(title=f"final budget ({int(final['n_labeled'].max())} labeled), profile {prof.name}, on each "
                       "dataset's primary split")
    measures = ["dice_all", *[m for m in METRICS if m in final.columns]]  # Dice and the metric table
    cut = "delta_reduction_vs_entropy" in final.columns and final["delta_reduction_vs_entropy"].notna().any()
    for col in ("dataset", "init", "strategy", "split", *measures, "g1_ratio", *(["Δ cut vs entropy"] if cut else [])):
        view.add_column(col, justify="right")
    for _, r in final.iterrows():
        ratio = f"{r['g1_ratio']:.2f}" if "g1_ratio" in r and pd.notna(r["g1_ratio"]) else ""
        extra = []
        if cut:  # a reduction: +43% = Δ 43% below entropy's
            value = r["delta_reduction_vs_entropy"]
            extra = [f"{value:+.0%}".replace("-0%", "0%").replace("+0%", "0%") if pd.notna(value) else "n/a"]
        view.add_row(str(r["dataset"]), str(r["init"]), str(r["strategy"]), str(r["split"]),
                     *[f"{r[m]:.3f}" if pd.notna(r[m]) else "" for m in measures], ratio, *extra)
    Console(width=max(stdout.width, 120), markup=False, highlight=False).print(view)
    stdout.print("split: eval = the evaluation split (never in the pool or the test split; the primary endpoint), "
                 "test = the test split (a dataset without an evaluation split); the report's first table is on "
                 "the same splits")
    if cut:
        stdout.print("Δ cut vs entropy: 1 - Δ / Δ(entropy) in the same scenario (+43% = Δ 43% below entropy's)")
    if prof.name in PIPELINE_CHECKS:
        stdout.print(f"profile {prof.name}: a pipeline check, not evidence (small data, short training, "
                     f"{results.rounds['seed'].nunique()} seed(s)); the evidence "
                     "is docs/REPRODUCTION.md")


def _print_query(table, strat, budget: int, group_dice: str) -> None:
    """The query's group weights, its unknown groups and the cases to annotate, as tables on the console."""
    info = table.attrs["query"]
    if strat.steered:
        dice = ", ".join(f"{g} {d:.3f}" for g, d in info["labeled_dice"].items())
        weights = ", ".join(f"{g} {w:.3f}" for g, w in info["weights"].items())
        stdout.print(f"group Dice ({group_dice}): {dice}; group weights: {weights}")
        for note in info["notes"]:
            stdout.print(note)
    unknown = info["unknown_groups"]
    if unknown["n_unlabeled_unknown"]:
        acc = (f", cross-validated accuracy {unknown['classifier_cv_accuracy']:.2f} against a majority rate of "
               f"{unknown['majority_rate']:.2f}" if unknown["method"] == "classifier" else "")
        stdout.print(f"{unknown['n_unlabeled_unknown']} unlabeled cases of unknown group: p(group) from the "
                     f"group {unknown['method']}{acc}")
    view = Table(title=f"annotate next ({strat.name}, {budget} of {len(table)} unlabeled cases)")
    statistic = strat.spec.statistic  # the column the strategy ranks by (none: random, or a pool-wide score)
    for col in ("rank", "case_id", "group", "score", statistic or ("pool" if strat.spec.pool else "draw"), "weight",
                "reason"):
        view.add_column(col, justify="left" if col in ("case_id", "group", "reason") else "right")
    for _, r in table.head(budget).iterrows():
        value = f"{r[statistic]:.4g}" if statistic else ""
        view.add_row(str(r["rank"]), str(r["case_id"]), str(r["group"]) or "?", f"{r['score']:.4g}",
                     value, f"{r['weight']:.3f}", str(r["reason"]))
    Console(width=max(stdout.width, 140), markup=False, highlight=False).print(view)


@app.command()
@_clear_errors
def query(
    data: Annotated[Path, typer.Argument(metavar="CSV", help="CSV of your cases: case_id, image, label (empty = "
                                         "unlabeled) and the --group-by columns.")],
    budget: Annotated[int, typer.Option(help="How many cases to annotate next.")],
    out: Annotated[Path, typer.Option(help="Output folder: query.csv, montage.png, model.pt, query.json.")],
    strategy: Annotated[str, typer.Option(metavar="NAME", help="Acquisition strategy, e.g. weighted-localized-entropy, "
                                          "weighted-bald, stochastic-weighted-localized-entropy.")]
    = "weighted-localized-entropy",
    group_by: Annotated[
        list[str] | None, typer.Option(metavar="COLUMN", help="Sensitive-attribute column (repeat for intersectional "
                                       "groups; none: one group, no weights to steer by).")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="A trained model (model.pt of an earlier query) instead of "
                                               "training on the labeled cases.")] = None,
    spacing: Annotated[float | None, typer.Option(help="Voxel size (mm) of the common grid; default 2.0.")] = None,
    group_dice: Annotated[str, typer.Option(metavar="labeled|cross-validated", help="Dice of the group weights: "
                                            "labeled (the model on its training cases, the paper) or cross-validated "
                                            "(5 folds over those; a case labeled after --model: the folds' mean).")]
    = "labeled",
    seed: Annotated[int, typer.Option(help="Seed of training and of every random draw.")] = 0,
    label_value: Annotated[float | None, typer.Option(help="The structure's value in multi-label maps (e.g. 11 "
                                                      "for FreeSurfer's left caudate); default: binary labels.")]
    = None,
    probabilities: Annotated[Path | None, typer.Option(metavar="DIR", help="Rank from your own model's saved "
                                                       "outputs, no training: the unlabeled cases' CASE.npz "
                                                       "(nnUNetv2_predict --save_probabilities) or CASE.nii.gz "
                                                       "probability maps (docs/nnunet.md).")] = None,
    segmentations: Annotated[list[Path] | None, typer.Option(metavar="DIR", help="With --probabilities: your "
                                                             "model's segmentations of the labeled cases (e.g. "
                                                             "nnU-Net's fold_K/validation/, out of fold; repeat), "
                                                             "for its Dice per group.")] = None,
    class_: Annotated[int | None, typer.Option("--class", metavar="N", help="With --probabilities: the structure's "
                                               "class in your model's outputs (class axis index, label value); "
                                               "default 1.")] = None,
    nnunet_plans: Annotated[Path | None, typer.Option(metavar="FILE", help="With --probabilities: the nnU-Net model's "
                                                      "plans.json (its image reader: the .npz axis order).")] = None,
    profile: ProfileOpt = "standard",
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder that fairal made.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or table (warnings are still printed).")] = False,
) -> None:
    """Rank the unlabeled cases of your own data for annotation, fairness-aware: the top --budget cases first."""
    from fairal.acquisition import parse_strategy
    from fairal.config import parse_overrides
    from fairal.owndata.query import query_profile, run_query

    prof = query_profile(profile, parse_overrides(set_))
    strat = parse_strategy(strategy)
    _refuse_spacing(spacing, model, probabilities)
    if probabilities is not None:
        table = _saved_query(data, budget, strat, out, prof, probabilities, segmentations or [], class_, nnunet_plans,
                             model, group_dice, group_by or [], seed, overwrite, quiet, label_value)
    else:
        _refuse_saved_options(segmentations, class_, nnunet_plans)
        table = run_query(data, budget, strat, out, prof, group_by=group_by or [], model_path=model, seed=seed,
                          spacing=2.0 if spacing is None else spacing, overwrite=overwrite, progress=not quiet,
                          group_dice=group_dice, label_value=label_value)
    if not quiet:
        _print_query(table, strat, budget, table.attrs["query"]["group_dice"])
    _query_done(out, table.attrs["query"]["warnings"])


def _query_done(out: Path, warnings: list[str]) -> None:
    """The warnings the ranking rests on (--quiet or not), then where everything went."""
    for warning in warnings:
        _warn(warning)
    stdout.print(f"ranked list in {out}/query.csv, pictures in {out}/montage.png; for the annotators: "
                 f"{out}/predictions/ (each scan's prediction on its own grid), open_in_slicer.py, open_in_itksnap.sh")


def _refuse_spacing(spacing, model, probabilities) -> None:
    """--spacing where no grid is made: refused, not ignored."""
    if spacing is not None and (model is not None or probabilities is not None):
        raise FairalError(f"--spacing and {'--model' if model is not None else '--probabilities'}: "
                          + ("the model keeps the grid it was trained on" if model is not None else
                             "the saved outputs are read on each scan's own voxels") + "; leave --spacing out")


def _refuse_saved_options(segmentations, class_, nnunet_plans) -> None:
    """The options of a ranking from saved outputs, given without --probabilities: refused, not ignored."""
    given = [name for name, value in (("--segmentations", segmentations), ("--class", class_),
                                      ("--nnunet-plans", nnunet_plans)) if value]
    if given or class_ == 0:
        raise FairalError(f"{', '.join(given or ['--class'])}: only with --probabilities (a ranking from your model's "
                          "saved outputs)")


def _saved_query(data, budget, strat, out, prof, probabilities, segmentations, class_, nnunet_plans, model,
                 group_dice, group_by, seed, overwrite, quiet, label_value):
    """``fairal query --probabilities``: the options of a trained network refused, then the ranking."""
    from fairal.owndata.saved import run_saved_query

    if model is not None:
        raise FairalError("--model and --probabilities: rank either with a fairal model or from your own model's "
                          "saved outputs, not both")
    if group_dice != "labeled":
        raise FairalError("--group-dice with --probabilities: the group Dice comes from the segmentations you give "
                          "(--segmentations; nnU-Net's fold_K/validation/ are out of fold already)")
    return run_saved_query(data, budget, strat, out, prof, probabilities, segmentations,
                           1 if class_ is None else class_, nnunet_plans, group_by=group_by, seed=seed,
                           overwrite=overwrite, progress=not quiet, label_value=label_value)


@app.command("monailabel-app")
@_clear_errors
def monailabel_app(
    out: Annotated[Path, typer.Argument(help="The app folder to write: main.py and fairal.json (and model/).")],
    strategy: Annotated[str, typer.Option(metavar="NAME", help="The app's own strategy (also listed: the paper's "
                                          "four; any other name of fairal's grammar is accepted on request).")]
    = "weighted-localized-entropy",
    group_by: Annotated[
        list[str] | None, typer.Option(metavar="COLUMN", help="Group column of groups.csv in the studies folder (or "
                                       "key of the images' info); repeat for intersectional groups.")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="The app's first model (model.pt of a fairal query); without "
                                               "it the first request trains one on the saved labels.")] = None,
    spacing: Annotated[float, typer.Option(help="Voxel size (mm) of the common grid, as in fairal query.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of training and of every random draw.")] = 0,
    label_value: Annotated[float | None, typer.Option(help="The structure's value in multi-label maps; default: "
                                                      "binary labels.")] = None,
    group_dice: Annotated[str, typer.Option(metavar="labeled|cross-validated|auto", help="Dice of the group "
                                            "weights, as in fairal query; auto: cross-validated once every group has "
                                            "3 labeled images, else labeled.")] = "auto",
    lease_minutes: Annotated[float, typer.Option(help="How long an image served by Next Sample is held for its "
                                                 "client (the next click gets the next image).")] = 30.0,
    profile: ProfileOpt = "standard",
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an app folder that fairal wrote.")] = False,
) -> None:
    """Write a MONAI Label app whose "Next Sample" is fairal's: start it with `monailabel start_server --app OUT
    --studies STUDIES --host 127.0.0.1` (docs/annotate.md)."""
    import importlib.util

    from fairal.config import parse_overrides
    from fairal.owndata.app import write_app

    overrides = parse_overrides(set_)
    write_app(out, strategy, group_by or [], profile, overrides, seed=seed, spacing=spacing, label_value=label_value,
              model=model, overwrite=overwrite, group_dice=group_dice, lease_minutes=lease_minutes)
    stdout.print(f"MONAI Label app in {out}: monailabel start_server --app {out} --studies STUDIES --host 127.0.0.1")
    console.print("note: --host 127.0.0.1 serves this machine only; whoever reaches the port can upload: serve a lab "
                  "behind an authenticating proxy (docs/annotate.md, Running it for a lab)")
    if importlib.util.find_spec("monailabel") is None:
        console.print("note: MONAI Label is not installed here; see docs/annotate.md (make monailabel)")


@app.command()
@_clear_errors
def report(
    results: Annotated[Path, typer.Argument(help="Results folder of fairal reproduce or fairal study, or one run's "
                                            "folder; complete or partial.")],
    out: Annotated[Path | None, typer.Option(help="Report folder (default: RESULTS/report).")] = None,
) -> None:
    """The paper's Table 1, Figures 1-4 and six figures beyond them, from the runs in RESULTS: CSV/Markdown
    tables, PNG/SVG figures and
    one self-contained report.html."""
    from fairal.report import build_report
    from fairal.report.tidy import load_results

    loaded = load_results(results)
    for run, why in loaded.skipped.items():
        _warn(f"left out {run}: {why}")
    path = build_report(results, out, loaded)
    from fairal.records import PAPER_SOURCE
    from fairal.report.study import missing_runs, study_info, withheld_note

    info = study_info(results)  # a study's report withholds its comparisons (the paper's has its own plan)
    if info is not None and info.get("study", {}).get("source") != PAPER_SOURCE \
            and (note := withheld_note(missing_runs(loaded, info), info)):
        _warn(note)
    stdout.print(f"report: {path}")


@app.command()
@_clear_errors
def strategies() -> None:
    """The base scores and metrics fairal knows here (with the plugins loaded, e.g. fairal --plugin FILE
    strategies), where each comes from, and how strategy names are made of them."""
    from fairal import acquisition, metrics, plugins

    view = Table(title="base scores: a strategy is [SELECTION-][STEERING-]BASE[-tT]")
    for col in ("base", "ranks by", "MC dropout", "from"):
        view.add_column(col)
    for name, base in acquisition.BASES.items():
        stat = acquisition.STATISTICS.get(base.statistic) if base.statistic else base.pool  # a pool-wide score
        view.add_row(name, stat.label if stat else "a seeded uniform draw", "yes" if base.needs_dropout else "",
                     plugins.source(stat.compute if stat else None, name in acquisition.BUILT_IN_BASES))
    stdout.print(view)
    stdout.print("STEERING: weighted- (times the group weight of Eq. 2), worst-group- (the group of the largest weight "
                 "first), balanced- (groups interleaved, the largest weight first), group-drawn- (each slot's group "
                 "drawn with probability w_g); -tT: the weights' softmax temperature T (weighted-, group-drawn-); "
                 "SELECTION: stochastic- (the best of random candidate batches), power- (drawn with probability ∝ "
                 "score^(1/T), T the setting power_temperature). The paper's four: "
                 + ", ".join(acquisition.PAPER_STRATEGIES))
    view = Table(title="metrics: columns of rounds.csv and the baselines' table (eval_ on the evaluation split)")
    for col in ("metric", "label", "better", "from"):
        view.add_column(col)
    view.add_row(metrics.DICE.name, metrics.DICE.label, "higher", "built in")
    for name, m in metrics.METRICS.items():
        view.add_row(name, m.label, "higher" if m.higher_is_better else "lower",
                     plugins.source(m.compute, name in metrics.BUILT_IN_METRICS))
    stdout.print(view)


export_app = FairalTyper(help="A fairal dataset in the layout of another tool.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(export_app, name="export")


@export_app.command("nnunet")
@_clear_errors
def export_nnunet_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Dataset folder (from fairal simulate).")],
    out: Annotated[Path, typer.Argument(help="nnU-Net's raw folder (nnUNet_raw): DatasetNNN_NAME is made in it.")],
    dataset_id: Annotated[int, typer.Option(help="nnU-Net dataset id, 1-999.")],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: from the folder's name).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export.")] = False,
) -> None:
    """Export a dataset to nnU-Net v2's raw format (imagesTr, labelsTr, imagesTs, dataset.json, groups.csv)."""
    from fairal.data.export import export_nnunet

    target = export_nnunet(data_dir, out, dataset_id, name=name, overwrite=overwrite)
    stdout.print(f"nnU-Net dataset in {target}; then: nnUNetv2_plan_and_preprocess -d {dataset_id} "
                 "--verify_dataset_integrity")


def main() -> None:
    app(prog_name="fairal")


if __name__ == "__main__":
    sys.exit(main())

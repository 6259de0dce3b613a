"""Reading a results folder (what ``fairal reproduce`` writes) into tidy tables, and the summary statistics of
the report: final-budget table, Delta reduction against entropy, area under the ESSP curve, seed bands."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fairal.config import ALL_STRATEGIES
from fairal.errors import FairalError
from fairal.limits import MAX_RECORD_BYTES, check_nesting, refuse_above
from fairal.metrics import DELTA, DICE, METRICS, PRIMARY
from fairal.records import (
    CASE_COLUMNS,
    CASE_KEYS,
    ENTROPY,
    EVAL,
    EVAL_PREFIX,
    G1_RATIO,
    INITS,
    MEASURED_SPLITS,
    PAPER_STRATEGIES,
    ROUND_CASE_KEYS,
    ROUND_NEEDS,
    RUN_KEYS,
    SCENARIO,
    TEST,
    auc_column,
    bounds,
    evaluated,
    has_evaluation,
    is_measure,
)
from fairal.stats import mean_ci

#: Strategy order: the paper's four as in its figures, then the ones beyond it.
STRATEGY_ORDER = list(ALL_STRATEGIES)
INIT_ORDER = list(INITS)
DATASET_ORDER = ["strong", "weak"]
#: Columns of the records read as the text written: groups "007" and "7" stay two.
TEXT_COLUMNS = {"case_id": str, "group": str}


@dataclass
class Results:
    rounds: pd.DataFrame  # one row per (dataset, init, strategy, seed, round)
    baselines: pd.DataFrame  # one row per (dataset, cohort)
    finished: set[tuple[str, str, str, int]]
    expected: list[tuple[str, str, str, int]]
    settings: dict = field(default_factory=dict)
    previews: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # run folder -> why its records were not used
    # per-case Dice of each run's final round on the test split and, with one, the evaluation split
    # (RUN_KEYS, round, case_id, group, split, dice)
    cases: pd.DataFrame | None = None
    # what the records say about how they were made: setting -> {value as written: number of runs} (recorded())
    recorded: dict[str, dict[str, int]] = field(default_factory=dict)
    round_cases: pd.DataFrame | None = None  # per-case test Dice of every round (RUN_KEYS, round, case_id, group, dice)
    baseline_cases: pd.DataFrame | None = None  # per-case Dice of the baselines (dataset, seed, cohort, ..., split)

    @property
    def missing(self) -> list[tuple[str, str, str, int]]:
        return [k for k in self.expected if k not in self.finished]


def ordered(values, preferred) -> list:
    """``values`` in the order of ``preferred``, then the others sorted."""
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def check_record_file(path: Path) -> None:
    """A record the report reads: a regular file of at most :data:`~fairal.limits.MAX_RECORD_BYTES` (a planted
    device, pipe or huge file is refused before a byte is read)."""
    if not path.is_file():
        raise FairalError(f"{path} is not a regular file")
    refuse_above(str(path), path.stat().st_size, MAX_RECORD_BYTES, "MAX_RECORD_BYTES", "is", " bytes")


def read_json_record(path: Path) -> dict:
    """A JSON record (``config.json``, ``state.json``, ``study.json``, ``settings.json``): a JSON object within
    fairal's limits of size and nesting, else a FairalError naming the file."""
    check_record_file(path)
    try:
        value = json.loads(path.read_text())
    except RecursionError:
        raise FairalError(f"{path} is not a readable JSON record: it nests lists or objects too deep") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise FairalError(f"{path} is not a readable JSON record: {err}") from None
    if not isinstance(value, dict):
        raise FairalError(f"{path} is not a readable JSON record: it holds a JSON {type(value).__name__}, not an "
                          "object")
    check_nesting(value, str(path))
    return value




def load_results(folder: str | Path) -> Results:
    """All runs under ``folder/runs/DATASET/INIT/STRATEGY/seed-N``, the baselines under ``folder/baseline/``.

    The expected grid is every dataset x init x strategy x seed seen anywhere (the paper's four strategies and
    three initial sets at least), so a grid still running shows which runs are missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FairalError(f"results folder not found: {folder}")
    if (folder / "rounds.csv").is_file() and not (folder / "state.json").is_file():
        return load_tidy(folder)
    runs = _read_runs(_run_folders(folder))
    baselines, base_cases = _read_baselines(folder)
    if runs.rounds.empty and baselines.empty:
        skipped = runs.skipped
        why = f"; unreadable: {'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:3])}" if skipped else ""
        raise FairalError(f"{folder} holds no run (runs/*/*/*/seed-*/rounds.csv) and no baseline{why}")
    rounds = runs.rounds
    datasets = ordered(set(rounds["dataset"]) | set(baselines.get("dataset", [])), DATASET_ORDER)
    inits = ordered(set(rounds["init"]) | set(INIT_ORDER), INIT_ORDER)
    strategies = ordered(set(rounds["strategy"]) | set(PAPER_STRATEGIES), STRATEGY_ORDER)
    seeds = sorted(set(rounds["seed"])) or [0]
    expected = [(d, i, s, n) for d in datasets for i in inits for s in strategies for n in seeds]
    previews = {d: folder / "data" / d / "preview.png" for d in datasets
                if (folder / "data" / d / "preview.png").is_file()}
    return Results(rounds, baselines, runs.finished, expected, runs.settings, previews, runs.skipped, runs.cases,
                   runs.recorded, runs.round_cases, base_cases)


def _run_folders(folder: Path) -> list[tuple[Path, tuple[str, str, str, int]]]:
    """The run folders of a results folder with their keys (dataset, init, strategy, seed); a single run's folder
    (``fairal run --out X``) is its own, keyed by its config.json."""
    if (folder / "state.json").is_file():
        config = folder / "config.json"
        if not config.exists():
            raise FairalError(f"{folder} holds a run without a config.json")
        s = read_json_record(config).get("settings")
        try:
            key = (Path(s["data_dir"]).name, str(s["init"]), str(s["strategy"]), int(s["seed"]))
        except (TypeError, ValueError, KeyError) as err:
            raise FairalError(f"{config} does not name the run's dataset, initial set, strategy and seed "
                              f"(settings.data_dir, init, strategy, seed): {type(err).__name__} {err}") from None
        return [(folder, key)]
    runs = []
    for rounds_csv in sorted(folder.glob("runs/*/*/*/seed-*/rounds.csv")):
        dataset, init, strategy, seed_dir = rounds_csv.parts[-5:-1]
        try:
            runs.append((rounds_csv.parent, (dataset, init, strategy, int(seed_dir.split("-", 1)[1]))))
        except ValueError:
            continue
    return runs


@dataclass
class _Runs:
    """What :func:`_read_runs` gathers from the run folders (the run part of :class:`Results`)."""

    rounds: pd.DataFrame
    finished: set[tuple[str, str, str, int]]
    settings: dict
    skipped: dict[str, str]
    cases: pd.DataFrame | None
    recorded: dict[str, dict[str, int]]
    round_cases: pd.DataFrame | None


def _read_runs(runs: list[tuple[Path, tuple[str, str, str, int]]]) -> _Runs:
    """Every run's rounds; the final-round cases (test and evaluation split) and every round's test cases of the
    finished ones; the first run's settings and every run's recorded settings (:func:`tally`); the folders whose
    records cannot be used."""
    frames, case_frames, round_frames, finished, settings, skipped, configs = [], [], [], set(), {}, {}, []
    read = {}  # run -> (key, rounds, finished, config, (final cases, every round's test cases) or None)
    for run, key in runs:
        try:
            df, done = read_run(run)
            config = read_json_record(run / "config.json") if (run / "config.json").exists() else None
            cases = _run_cases(run, key, df["round"].max()) if done and (run / "cases.csv").exists() else None
        except (FairalError, ValueError) as err:
            skipped[str(run)] = str(err)
            continue
        read[run] = (key, df, done, config, cases)
    for run, odd in _other_cases({run: (r[0][0], r[4][0]) for run, r in read.items() if r[4] is not None}).items():
        skipped[str(run)] = _other_cases_note(str(run / "cases.csv"), *odd)
        del read[run]
    for key, df, done, config, cases in read.values():
        if df.empty:
            continue
        frames.append(df.assign(**dict(zip(RUN_KEYS, key, strict=True)))[[*RUN_KEYS, *df.columns]])
        if done:
            finished.add(key)
            if cases is not None:
                case_frames.append(cases[0])
                round_frames.append(cases[1])
        if config is not None:
            configs.append(config)
            settings = settings or _settings_of(config)
    rounds = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*RUN_KEYS, *ROUND_NEEDS[:2]])
    cases = pd.concat(case_frames, ignore_index=True) if case_frames else None
    return _Runs(rounds, finished, settings, skipped, cases, tally([(recorded(c), 1) for c in configs]),
                 pd.concat(round_frames, ignore_index=True) if round_frames else None)


def _settings_of(config: dict) -> dict:
    """A run's settings as its ``config.json`` records them ({} when they are not a table)."""
    settings = config.get("settings")
    if not isinstance(settings, dict):
        return {}
    return settings if isinstance(settings.get("profile", {}), dict) else {**settings, "profile": {}}


def _other_cases(final: dict) -> dict:
    """The runs measured on other cases than most runs of their dataset (the metrics compare runs case by case):
    ``final`` maps a run to its dataset and its final-round cases (``split``, ``case_id``); returns each odd run's
    dataset, its dataset's number of runs and a case that it holds or lacks (``"holds X (test)"``)."""
    sets = {run: (dataset, frozenset(zip(c["split"], c["case_id"], strict=True)))
            for run, (dataset, c) in final.items()}
    odd = {}
    for dataset in {d for d, _ in sets.values()}:
        of_dataset = [cases for d, cases in sets.values() if d == dataset]
        usual = max(set(of_dataset), key=lambda cases: (of_dataset.count(cases), sorted(cases)))
        for run, (d, cases) in sets.items():
            if d == dataset and cases != usual:
                extra, absent = sorted(cases - usual), sorted(usual - cases)
                example = f"holds {extra[0][1]} ({extra[0][0]})" if extra else f"lacks {absent[0][1]} ({absent[0][0]})"
                odd[run] = (dataset, len(of_dataset), example)
    return odd


def _other_cases_note(what: str, dataset: str, runs: int, example: str) -> str:
    return (f"{what} measures other cases than the other {runs - 1} run(s) of dataset {dataset} (it {example}): "
            "records of another dataset, or edited")


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def recorded(config: dict) -> dict[str, str]:
    """How a run's records say it was made (a run's ``config.json``, or the ``settings.json`` of tidy records), as
    text: each profile setting (``profile.KEY``), the device, bf16 and the library versions and, where written, the
    commit, where it ran, the plugins and registered names it could use (``extensions``) and the analysis plan (its
    path, commit and git blob hash)."""
    profile = _settings_of(config).get("profile")
    out = {f"profile.{k}": _as_text(v) for k, v in (profile if isinstance(profile, dict) else {}).items()}
    if isinstance(config.get("versions"), dict):
        out["versions"] = ", ".join(f"{k} {v}" for k, v in config["versions"].items())
    for key in ("device", "bf16", "commit", "where"):
        if config.get(key) is not None:
            out[key] = _as_text(config[key])
    extended = config.get("extensions")
    if isinstance(extended, dict):  # the plugins and registered names of a run that used them
        parts = [f"plugins {', '.join(extended['plugins'])}"] if extended.get("plugins") else []
        parts += [f"{kind} {', '.join(extended[kind])}" for kind in ("bases", "statistics", "metrics", "networks")
                  if extended.get(kind)]
        out["extensions"] = "; ".join(parts)
    plan = config.get("analysis_plan")
    if isinstance(plan, dict):
        out["analysis plan"] = (f"{plan.get('path')} at commit {plan.get('commit')}, git blob (hash of the file) "
                                f"{plan.get('blob')}")
    return out


def tally(records: list[tuple[dict[str, str], int]]) -> dict[str, dict[str, int]]:
    """Per setting, each value found and how many runs hold it (``records``: a run's :func:`recorded` settings and
    the number of runs it stands for); a setting some runs lack is counted as ``(not recorded)`` for them."""
    total = sum(n for _, n in records)
    out: dict[str, dict[str, int]] = {}
    for about, n in records:
        for key, value in about.items():
            out.setdefault(key, {}).setdefault(value, 0)
            out[key][value] += n
    for values in out.values():
        if sum(values.values()) < total:
            values["(not recorded)"] = total - sum(values.values())
    return out


def _run_cases(run: Path, key: tuple[str, str, str, int], last_round: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A finished run's ``cases.csv``: the final round on the measured splits (:data:`CASE_KEYS`), and every round's
    test cases (``RUN_KEYS, round, case_id, group, dice``)."""
    c = _read_table(run / "cases.csv", CASE_COLUMNS, TEXT_COLUMNS)
    if c[["case_id", "split"]].isna().any().any():
        raise FairalError(f"{run / 'cases.csv'} has rows without a case id or a split")
    last = c[(c["round"] == last_round) & c["split"].isin(MEASURED_SPLITS)]
    test = c[c["split"] == TEST]
    if test.groupby("round")["case_id"].agg(frozenset).nunique() > 1:
        raise FairalError(f"{run / 'cases.csv'}: its rounds were measured on different test cases (edited?)")
    keys = dict(zip(RUN_KEYS, key, strict=True))
    return last.assign(**keys)[CASE_KEYS], test.assign(**keys)[ROUND_CASE_KEYS]


def _read_baselines(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The baselines' tables under ``folder/baseline/DATASET/`` (one row per cohort, with its dataset) and their
    per-case Dice (seed 0)."""
    base_frames = []
    for table in sorted(folder.glob("baseline/*/baseline_table.csv")):
        check_record_file(table)
        df = pd.read_csv(table)
        df.insert(0, "dataset", table.parent.name)
        base_frames.append(df)
    baselines = pd.concat(base_frames, ignore_index=True) if base_frames else pd.DataFrame()
    base_cases = []
    for table in sorted(folder.glob("baseline/*/baseline_cases.csv")):
        check_record_file(table)
        bc = pd.read_csv(table, dtype=TEXT_COLUMNS)
        base_cases.append(bc.assign(dataset=table.parent.name, seed=0))
    return baselines, pd.concat(base_cases, ignore_index=True) if base_cases else None


def split_cases(cases: pd.DataFrame | None, split: str = TEST) -> pd.DataFrame | None:
    """The rows of one split of a per-case table (tidy tables written before the evaluation split have no
    ``split`` column: all their rows are test cases)."""
    if cases is None:
        return None
    if "split" not in cases.columns:
        return cases if split == TEST else cases.iloc[0:0]
    return cases[cases["split"] == split]


def _measured_on_eval(table: pd.DataFrame | None) -> pd.DataFrame:
    """``table`` with each ``eval_*`` column in place of the test split's measure of its name; the test split's
    measures without an evaluation counterpart dropped (never mixed in); empty without evaluation numbers."""
    if table is None or table.empty:
        return pd.DataFrame()
    if not has_evaluation(table):
        return pd.DataFrame()
    evals = [c for c in table.columns if c.startswith(EVAL_PREFIX)]
    measures = [c for c in table.columns if is_measure(c)]
    return table.drop(columns=measures).rename(columns={c: c[len(EVAL_PREFIX):] for c in evals})


def on_evaluation_split(results: Results) -> Results | None:
    """The records as the evaluation split measures them (``eval_essp`` read as ``essp``, ...), for the report's
    tables and figures of the primary endpoint (docs/analysis-plan.md); None when no run has an evaluation split
    (records made before it, a lab's own data). Per-case tables are left out: their split is said per row."""
    rounds = _measured_on_eval(results.rounds)
    if rounds.empty:
        return None
    return replace(results, rounds=rounds, baselines=_measured_on_eval(results.baselines), cases=None,
                   round_cases=None, baseline_cases=None)


def read_run(run: Path) -> tuple[pd.DataFrame, bool]:
    """A run folder's ``rounds.csv``, checked against its ``state.json``: readable, complete lines (a file cut off
    mid-line is refused, never half-read), numeric finite values, and exactly the rounds the state says are
    complete. Returns the table and whether the run is finished."""
    path = run / "rounds.csv"
    check_record_file(path)
    text = path.read_text()
    if not text.strip():
        raise FairalError(f"{path} is empty")
    if not text.endswith("\n"):
        raise FairalError(f"{path} ends mid-line (cut off while written?)")
    df = _read_table(path, list(ROUND_NEEDS))
    values = df[list(ROUND_NEEDS)].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        raise FairalError(f"{path} holds values that are not finite numbers")
    state_file = run / "state.json"
    state = read_json_record(state_file) if state_file.exists() else {}
    if "completed_round" in state and (isinstance(state["completed_round"], bool)
                                       or not isinstance(state["completed_round"], int)):
        raise FairalError(f"{state_file}: completed_round must be a whole number, got {state['completed_round']!r}")
    if "completed_round" in state and list(df["round"]) != list(range(int(state["completed_round"]) + 1)):
        raise FairalError(f"{path} holds rounds {list(df['round'])[:5]}... but {state_file} says rounds 0 to "
                          f"{state['completed_round']} are complete")
    return df, bool(state.get("finished"))


def _read_table(path: Path, needs: list[str], dtype=None) -> pd.DataFrame:
    check_record_file(path)
    try:
        table = pd.read_csv(path, dtype=dtype)
    except Exception as err:
        raise FairalError(f"{path} is not a readable CSV file: {err}") from err
    missing = [c for c in needs if c not in table.columns]
    if missing:
        raise FairalError(f"{path} lacks the column(s) {', '.join(missing)}")
    return table


def load_tidy(folder: str | Path) -> Results:
    """Tidy records (what docs/results/ holds): ``rounds.csv`` with ``dataset, init, strategy, seed`` and the rounds
    of finished runs only, optionally ``baselines.csv`` (``dataset, seed, cohort, ...``), ``cases.csv`` (or
    ``cases.csv.gz``) and ``settings.json``."""
    folder = Path(folder)
    rounds = _read_table(folder / "rounds.csv", [*RUN_KEYS, *ROUND_NEEDS])
    rounds["seed"] = rounds["seed"].astype(int)
    baselines = (_read_table(folder / "baselines.csv", ["dataset", "cohort", *ROUND_NEEDS[2:]])
                 if (folder / "baselines.csv").is_file() else pd.DataFrame())
    keys = sorted(set(rounds[RUN_KEYS].itertuples(index=False, name=None)))
    case_file = next((folder / n for n in ("cases.csv.gz", "cases.csv") if (folder / n).is_file()), None)
    cases = (_read_table(case_file, [c for c in CASE_KEYS if c not in ("round", "split")], TEXT_COLUMNS)
             if case_file is not None else None)
    if cases is not None:
        _refuse_other_cases(case_file, cases)
    settings, about = {}, {}
    if (folder / "settings.json").exists():
        info = read_json_record(folder / "settings.json")
        settings = _settings_of({"settings": info.get("run_settings")})
        profile = settings.get("profile") if isinstance(settings.get("profile"), dict) else {}
        settings = {**settings, "profile": {**profile, "name": info.get("profile", "unknown")},
                    "device": info.get("device"), "commit": info.get("commit"),
                    "analysis_plan": info.get("analysis_plan"), "planned_seeds": info.get("planned_seeds")}
        about = tally([(recorded({**info, "settings": settings}), len(keys))])  # one file for every run
    round_cases = (_read_table(folder / "test_cases.csv.gz", ROUND_CASE_KEYS, TEXT_COLUMNS)
                   if (folder / "test_cases.csv.gz").exists() else None)
    base_cases = (_read_table(folder / "baseline_cases.csv", ["case_id", "group", "dice"], TEXT_COLUMNS)
                  if (folder / "baseline_cases.csv").exists() else None)
    return Results(rounds, baselines, set(keys), keys, settings, {}, {}, cases, about, round_cases, base_cases)


def _refuse_other_cases(file: Path, cases: pd.DataFrame) -> None:
    """Tidy per-case records whose runs of one dataset were measured on different cases are refused, naming the
    file and the first such run."""
    final = cases if "round" not in cases.columns else cases[
        cases["round"] == cases.groupby(RUN_KEYS)["round"].transform("max")]
    final = final if "split" in final.columns else final.assign(split=TEST)
    odd = _other_cases({key: (key[0], c) for key, c in final.groupby(RUN_KEYS, sort=False)})
    if odd:
        key, (dataset, runs, example) = next(iter(odd.items()))
        raise FairalError(_other_cases_note(f"{file}: run {'/'.join(map(str, key))}", dataset, runs, example))


def area_under_curve(n_labeled: np.ndarray, values: np.ndarray) -> float:
    """Trapezoidal area under a metric's curve over the labeled-set sizes, divided by the size range: the
    curve's mean level over the budget (in the metric's units), comparable across schedules."""
    x = np.asarray(n_labeled, dtype=float)
    y = np.asarray(values, dtype=float)
    if x.size < 2:
        return float(y[0]) if y.size else float("nan")
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def finished_rounds(results: Results) -> pd.DataFrame:
    """The rounds of the finished runs."""
    r = results.rounds
    return r[[tuple(k) in results.finished for k in r[RUN_KEYS].itertuples(index=False, name=None)]]


def final_table(results: Results) -> pd.DataFrame:
    """Per dataset, initial set and strategy, over finished runs (mean over seeds): Dice (all, per group),
    Delta, ESSP at the final budget, the Delta reduction against ``entropy`` (1 - Delta / Delta_entropy),
    the area under the ESSP curve and the final Group 1 ratio."""
    r = results.rounds
    if r.empty:
        return pd.DataFrame()
    keys, auc = RUN_KEYS, auc_column(PRIMARY)
    done = finished_rounds(results)
    if done.empty:
        return pd.DataFrame()
    last = done.sort_values("round").groupby(keys).tail(1)
    area = done.groupby(keys).apply(lambda g: area_under_curve(g["n_labeled"], g[PRIMARY]), include_groups=False)
    last = last.set_index(keys).assign(**{auc: area}).reset_index()
    groups = [c for c in r.columns if is_measure(c) and c != DICE.name and c not in METRICS]
    ratio = [G1_RATIO] if G1_RATIO in r.columns else []
    cols = ["n_labeled", DICE.name, *groups, *[m for m in METRICS if m in r.columns], auc, *ratio]
    table = last.groupby(keys[:3])[cols].mean().reset_index()
    table["n_labeled"] = table["n_labeled"].round().astype(int)
    table.insert(3, "n_seeds", last.groupby(keys[:3]).size().to_numpy())
    ent = table[table["strategy"] == ENTROPY].set_index(SCENARIO)[DELTA.name]
    ref = np.array([ent.get((d, i), np.nan) for d, i in zip(table["dataset"], table["init"], strict=True)])
    with np.errstate(divide="ignore", invalid="ignore"):
        table["delta_reduction_vs_entropy"] = 1 - table[DELTA.name].to_numpy() / ref
    rank = {s: i for i, s in enumerate(ordered(set(table["strategy"]), STRATEGY_ORDER))}
    table["_d"] = table["dataset"].map({d: i for i, d in enumerate(ordered(set(table["dataset"]), DATASET_ORDER))})
    table["_i"] = table["init"].map({d: i for i, d in enumerate(ordered(set(table["init"]), INIT_ORDER))})
    table["_s"] = table["strategy"].map(rank)
    return table.sort_values(["_d", "_i", "_s"]).drop(columns=["_d", "_i", "_s"]).reset_index(drop=True)


def dataset_splits(results: Results) -> dict[str, str]:
    """Each dataset's primary split, in the report's order: ``eval`` where its runs were measured on an
    evaluation split (docs/analysis-plan.md's primary endpoint), else ``test`` (a lab's cohort has none)."""
    r = results.rounds
    if r.empty:
        return {}
    measured = evaluated(r)
    return {d: EVAL if measured[r["dataset"] == d].any() else TEST
            for d in ordered(set(r["dataset"]), DATASET_ORDER)}


def of_datasets(results: Results, datasets) -> Results:
    """``results`` cut to the runs, baselines and cases of ``datasets``."""
    keep = set(datasets)

    def cut(table: pd.DataFrame | None) -> pd.DataFrame | None:
        if table is None or table.empty or "dataset" not in table.columns:
            return table
        return table[table["dataset"].isin(keep)]

    return replace(results, rounds=cut(results.rounds), baselines=cut(results.baselines), cases=cut(results.cases),
                   round_cases=cut(results.round_cases), baseline_cases=cut(results.baseline_cases),
                   finished={k for k in results.finished if k[0] in keep},
                   expected=[k for k in results.expected if k[0] in keep])


def on_split(results: Results, split: str) -> Results:
    """The records as ``split`` measures them (``eval``: :func:`on_evaluation_split`)."""
    return (on_evaluation_split(results) or results) if split == EVAL else results


def primary_final_table(results: Results) -> pd.DataFrame:
    """:func:`final_table` with each dataset on its primary split (:func:`dataset_splits`), named in the column
    ``split`` after ``dataset``: the table the end of ``fairal study`` prints, on the split of the report's first."""
    tables = []
    for d, split in dataset_splits(results).items():
        t = final_table(on_split(of_datasets(results, [d]), split))
        if not t.empty:
            t.insert(1, "split", split)
            tables.append(t)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def seed_band(values: np.ndarray, bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of the mean across seeds (:func:`fairal.stats.mean_ci`), clipped to the
    measure's ``bounds``; one seed has no interval (NaN bounds: no band is drawn)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    e = mean_ci(v, bounds=bounds)
    return e.mean, e.ci_low, e.ci_high


def curves(results: Results, metric: str) -> pd.DataFrame:
    """Mean and 95% band across seeds of ``metric`` per dataset, init, strategy and labeled-set size, kept inside
    the measure's range (:func:`fairal.records.bounds`)."""
    rows = []
    for key, g in results.rounds.groupby(["dataset", "init", "strategy", "n_labeled"]):
        mean, lo, hi = seed_band(g[metric].to_numpy(), bounds(metric))
        rows.append((*key, mean, lo, hi, len(g)))
    return pd.DataFrame(rows, columns=["dataset", "init", "strategy", "n_labeled", "mean", "lo", "hi", "n_seeds"])


# --- tidy records: what docs/results/ holds ------------------------------------------------------------------


def tidy_records(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The finished runs under ``folder/runs/`` as two tidy tables: every round of every run (``rounds.csv``'s
    columns after ``dataset, init, strategy, seed``) and the per-case Dice of each run's final round on the test and
    the evaluation split (``dataset, init, strategy, seed, round, case_id, group, split, dice``). Unfinished or
    unreadable runs are left out."""
    try:
        results = load_results(folder)
    except FairalError:
        return pd.DataFrame(columns=RUN_KEYS), pd.DataFrame(columns=CASE_KEYS)
    r = results.rounds
    done = r[[tuple(k) in results.finished for k in r[RUN_KEYS].itertuples(index=False, name=None)]]
    cases = results.cases if results.cases is not None else pd.DataFrame(columns=CASE_KEYS)
    return done.reset_index(drop=True), cases


RUN_RECORDS = ("rounds.csv", "cases.csv", "selections.csv")


def compare_runs(a: str | Path, b: str | Path) -> pd.DataFrame:
    """How far the records of two run folders are apart: per record file, whether the rows and their words agree
    (``same_rows``: the same rounds, cases, groups, splits and selections) and the largest absolute difference of
    any number in it (``max_abs_diff``; NaN where both are NaN counts as equal). For checking that two ways of
    running (per run and in lockstep, one device and another) give the same records within float tolerance."""
    rows = []
    for name in RUN_RECORDS:
        x, y = pd.read_csv(Path(a) / name), pd.read_csv(Path(b) / name)
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            rows.append({"file": name, "same_rows": False, "max_abs_diff": float("inf")})
            continue
        words = [c for c in x.columns if x[c].dtype.kind not in "if"]
        numbers = [c for c in x.columns if c not in words]
        diff = np.abs(x[numbers].to_numpy(float) - y[numbers].to_numpy(float))
        both_nan = np.isnan(x[numbers].to_numpy(float)) & np.isnan(y[numbers].to_numpy(float))
        diff = np.where(both_nan, 0.0, diff)
        worst = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
        rows.append({"file": name, "same_rows": bool(x[words].equals(y[words])), "max_abs_diff": worst})
    return pd.DataFrame(rows, columns=["file", "same_rows", "max_abs_diff"])

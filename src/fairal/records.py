"""The records' schema: what fairal writes and reads back, named once.

Writers (the run, the baselines, the grid, the simulator) and readers (the report, the scripts) take the names
of files, columns, keys and values from here. The columns made of measures are derived from the metric table
(:data:`fairal.metrics.METRICS`) and a dataset's groups, so that a metric added there is a column of every record
and table below; the columns made of the strategy table's statistics take their names as an argument (the strategy
table is a floor up, :mod:`fairal.acquisition`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import pandas as pd

from fairal.errors import FairalError
from fairal.metrics import (
    DELTA,
    DICE,
    ESSP,
    METRICS,
    PRIMARY,
    UNBOUNDED,
    UNIT,
    Metric,
    fairness_summary,
    group_dice,
    group_metric,
)

#: ``study.json``'s source of the built-in study ``paper`` (a study file's is its path).
PAPER_SOURCE = "built-in study 'paper'"

#: A simulated dataset's manifest columns of its scanner effects, each with its neutral value: a column is written
#: only where a group's value differs from it.
ACQUISITION_COLUMNS = {"contrast": 1.0, "inu": 0.0, "noise": 0.0}

# --- vocabulary ---------------------------------------------------------------------------------------------------

#: A dataset's splits (a manifest's column ``split``): the fixed test cases, the pool the runs acquire from, and
#: the evaluation split (docs/analysis-plan.md's primary endpoint; a lab's cohort has none).
TEST, POOL, EVAL = "test", "pool", "eval"
SPLITS = (TEST, POOL, EVAL)
#: The splits a model is measured on (``cases.csv`` also holds the ``labeled`` cases a round trained on), and the
#: order of the analysis plan's tables (the primary endpoint's split first).
MEASURED_SPLITS = (TEST, EVAL)
ANALYSED_SPLITS = (EVAL, TEST)
LABELED = "labeled"
#: The prefix of a measure on the evaluation split in rounds.csv and the baselines' table (``eval_essp``).
EVAL_PREFIX = "eval_"

#: The paper's four strategies, in its figures' order.
RANDOM, ENTROPY, LE, WLE = "random", "entropy", "localized-entropy", "weighted-localized-entropy"
PAPER_STRATEGIES = (RANDOM, ENTROPY, LE, WLE)
#: Initial labeled sets: ``balanced`` splits evenly over the groups (the paper: 5 + 5); ``gX-heavy`` gives group X
#: 80% and splits the rest evenly over the others (the paper: 8 + 2 and 2 + 8).
BALANCED = "balanced"
INITS = (BALANCED, "g1-heavy", "g2-heavy")

#: The keys that name a run in the tidy tables, and the scenario (a run's keys but the strategy and the seed).
RUN_KEYS = ["dataset", "init", "strategy", "seed"]
SCENARIO = ["dataset", "init"]

# --- a run's records ----------------------------------------------------------------------------------------------

#: ``cases.csv``: every round's Dice of each labeled, test (and, in the final round, evaluation) case.
CASE_COLUMNS = ["round", "case_id", "group", "split", "dice"]
#: ``rounds.csv``'s columns of a run whose strategies see no pool group (``groups_known`` false, a weighted
#: strategy): how p(g|x) was obtained (classifier or frequencies), the classifier's cross-validated accuracy on the
#: labeled cases, and the accuracy of its most probable group on the candidates (against their true groups).
HIDDEN_GROUP_COLUMNS = ["group_model", "group_cv_accuracy", "pool_group_accuracy"]
#: What a run's rounds.csv must hold to be used.
ROUND_NEEDS = ("round", "n_labeled", DICE.name, *METRICS)
#: The Group 1 share of the labeled set (a column where the dataset has a group 1).
G1_RATIO = "g1_ratio"


def selection_columns(statistics: Sequence[str]) -> list[str]:
    """Columns of ``selections.csv``: round, case_id, group, one per statistic of the strategy table
    (``statistics``: :data:`fairal.acquisition.STATISTICS`' names, entropy, localized_entropy, bald, fair_influence,
    and a plugin's own), weight, score, selected."""
    return ["round", "case_id", "group", *statistics, "weight", "score", "selected"]


def fairness_columns(groups: Sequence[Hashable], prefix: str = "") -> list[str]:
    """The keys of :func:`fairal.metrics.fairness_summary` for ``groups``, in record order, with ``prefix``: for
    groups 1 and 2 ``dice_all, dice_g1, dice_g2, delta, essp`` (and any metric added to the table); with
    :data:`EVAL_PREFIX` ``eval_dice_all, ..., eval_essp``."""
    return [prefix + DICE.name, *[prefix + group_dice(g) for g in groups], *[prefix + m for m in METRICS]]


def labeled_count(group: Hashable) -> str:
    """``rounds.csv``'s number of labeled cases of a group (``n_labeled_g1``)."""
    return f"n_labeled_g{group}"


def weight_column(group: Hashable) -> str:
    """``rounds.csv``'s weight of a group in Eq. 2 (``w_g1``)."""
    return f"w_g{group}"


def round_columns(groups: list) -> list[str]:
    """Columns of ``rounds.csv`` for a dataset's groups; for the paper's groups 1 and 2: round, n_labeled,
    n_labeled_g1, n_labeled_g2, g1_ratio, dice_all, dice_g1, dice_g2, delta, essp, w_g1, w_g2 (on the test split),
    then the same measures on the evaluation split: eval_dice_all, eval_dice_g1, eval_dice_g2, eval_delta,
    eval_essp (empty when the dataset has no evaluation split, or the round was not evaluated on it)."""
    ratio = [G1_RATIO] if 1 in groups else []
    return (["round", "n_labeled", *map(labeled_count, groups), *ratio, *fairness_columns(groups),
             *map(weight_column, groups), *fairness_columns(groups, EVAL_PREFIX)])


def prefixed_summary(dice_values, groups, all_groups: Sequence[Hashable], prefix: str) -> dict[str, float]:
    """:func:`fairal.metrics.fairness_summary` with ``prefix`` on every key, and an empty value (NaN) for every key
    of ``all_groups`` when there is no case (a dataset without that split)."""
    if len(dice_values) == 0:
        return dict.fromkeys(fairness_columns(all_groups, prefix), float("nan"))
    return {prefix + k: v for k, v in fairness_summary(dice_values, groups).items()}


# --- the baselines' records ---------------------------------------------------------------------------------------

#: ``baseline_cases.csv``: each cohort's model's Dice of every test and evaluation case.
BASELINE_CASE_COLUMNS = ["cohort", "case_id", "group", "dice", "split"]
#: The paper's Table 1 prints ESSP before Δ.
TABLE1_METRICS = (ESSP.name, DELTA.name)


def baseline_columns(groups: list) -> list[str]:
    """``baseline_table.csv``'s columns; for the paper's groups: cohort, dice_g1, dice_g2, dice_all, essp, delta
    (on the test split; the order of the paper's Table 1, then the metrics added to the table), then
    eval_dice_all, eval_dice_g1, eval_dice_g2, eval_delta, eval_essp (on the evaluation split; empty without
    one)."""
    table1 = [m for m in TABLE1_METRICS if m in METRICS]
    return ["cohort", *map(group_dice, groups), DICE.name, *table1, *[m for m in METRICS if m not in table1],
            *fairness_columns(groups, EVAL_PREFIX)]


# --- the report's tidy tables -------------------------------------------------------------------------------------

#: The tidy per-case table of each run's final round (test and evaluation split), and of every round's test cases.
CASE_KEYS = [*RUN_KEYS, "round", "case_id", "group", "split", "dice"]
ROUND_CASE_KEYS = [*RUN_KEYS, "round", "case_id", "group", "dice"]
#: A run's summary measures beyond the metric table: the Group 1 share of its acquisitions, Table 1's gap (Dice of
#: Group 2 - Dice of Group 1).
G1_ACQUIRED_SHARE, DICE_GAP = "g1_acquired_share", "dice_gap"


def split_column(measure: str, split: str) -> str:
    """The column of ``measure`` on ``split`` (``essp`` on the evaluation split: ``eval_essp``)."""
    return EVAL_PREFIX + measure if split == EVAL else measure


def evaluated(table: pd.DataFrame) -> pd.Series:
    """Which rows of a record table (rounds.csv, the baselines' table, tidy records) were measured on an
    evaluation split."""
    column = split_column(PRIMARY, EVAL)
    if table is None or column not in table.columns:
        return pd.Series(False, index=None if table is None else table.index, dtype=bool)
    return table[column].notna()


def has_evaluation(table: pd.DataFrame | None) -> bool:
    """Whether a record table holds measures on an evaluation split (records made before it, a lab's own data and
    rounds not evaluated on it have none)."""
    return table is not None and bool(evaluated(table).any())


def is_measure(column: str) -> bool:
    """Whether a column (without the evaluation prefix) is a measure: the Dice of all cases, a group's, or a metric
    of the table."""
    return column == DICE.name or group_metric(column) is not None or column in METRICS


def auc_column(measure: str) -> str:
    """The column of a measure's area under the curve over the budget (``essp_auc``; Dice's: ``dice_auc``)."""
    return "dice_auc" if measure == DICE.name else f"{measure}_auc"


def measure_name(column: str) -> str:
    """The measure of a column: without the evaluation prefix, and an area under the curve's measure."""
    name = column[len(EVAL_PREFIX):] if column.startswith(EVAL_PREFIX) else column
    if name == auc_column(DICE.name):
        return DICE.name
    return name[:-len("_auc")] if name.endswith("_auc") else name


def measure(column: str) -> Metric:
    """The entry of a column name: ``dice_all``, ``dice_g<g>`` (a group's Dice) or a metric of the table (with or
    without the ``eval_`` prefix; an area under the curve, ``essp_auc``, has its metric's entry)."""
    name = measure_name(column)
    if name == DICE.name:
        return DICE
    entry = group_metric(name) or METRICS.get(name)
    if entry is None:
        raise FairalError(f"unknown metric {name!r}; metrics: {DICE.name}, {group_dice('<g>')}, {', '.join(METRICS)}")
    return entry


#: The ranges of the records' columns that are not measures of the table: the Group 1 share of the labeled set
#: (``g1_ratio``) and of a run's acquisitions, a group's weight in Eq. 2 (``w_g<g>``: a softmax), Table 1's Dice
#: gap and the Δ reduction against entropy (``1 - Δ / Δ_entropy``, Δ >= 0).
BOUNDED_RECORDS = {G1_RATIO: UNIT, G1_ACQUIRED_SHARE: UNIT, weight_column(""): UNIT, DICE_GAP: (-1.0, 1.0),
                   "delta_reduction_vs_entropy": (-math.inf, 1.0)}
#: The equivalence margins of docs/analysis-plan.md of the columns that are not measures of the table.
RECORD_MARGINS = {G1_ACQUIRED_SHARE: 0.05, DICE_GAP: 0.01}


def bounds(column: str) -> tuple[float, float]:
    """The range of a record column's values: a metric's (with or without the ``eval_`` prefix; an ``_auc``, the
    curve's mean level, has its metric's), a Dice's [0, 1], a share's or weight's of :data:`BOUNDED_RECORDS`;
    unbounded for any other column."""
    name = measure_name(column)
    if name in BOUNDED_RECORDS:
        return BOUNDED_RECORDS[name]
    if name.startswith(weight_column("")):
        return BOUNDED_RECORDS[weight_column("")]
    try:
        return measure(name).bounds
    except FairalError:
        return UNBOUNDED


def equivalence_margin(column: str) -> float | None:
    """The equivalence margin of docs/analysis-plan.md of a record column: its metric's (an ``_auc`` has its
    metric's), or one of :data:`RECORD_MARGINS`; None (no equivalence test) for a group's Dice and any other
    column."""
    name = measure_name(column)
    if name in RECORD_MARGINS:
        return RECORD_MARGINS[name]
    if name == DICE.name or name in METRICS:
        return measure(name).margin
    return None


# --- the study report's tables ------------------------------------------------------------------------------------


def study_measures() -> dict[str, str]:
    """The study report's measures, with their words: the primary endpoint (final ESSP), the table's other metrics
    (final Δ, ...), the final Dice and the primary endpoint's area under the curve (ESSP AUC)."""
    finals = [PRIMARY, *[m for m in METRICS if m != PRIMARY], DICE.name]
    return {**{m: f"final {measure(m).label}" for m in finals}, auc_column(PRIMARY): f"{measure(PRIMARY).label} AUC"}


#: ``study_summary.csv``'s columns before the measures (then ``MEASURE, MEASURE_ci, MEASURE_ci_low,
#: MEASURE_ci_high`` for each of :func:`study_measures` and the Group 1 share of the acquisitions).
SUMMARY_KEYS = ["dataset", "split", "init", "strategy", "n_seeds"]


def interval_columns(measure_name: str) -> list[str]:
    """A measure's columns in ``study_summary.csv``: its mean, its interval as text and as numbers."""
    return [measure_name, f"{measure_name}_ci", f"{measure_name}_ci_low", f"{measure_name}_ci_high"]


#: ``study_paired.csv``'s columns.
PAIRED_COLUMNS = ["id", "dataset", "split", "init", "family", "statistic", "metric", "value", "ci_low", "ci_high",
                  "p_value", "p_holm", "margin", "p_tost", "p_tost_holm", "within_margin", "n", "verdict"]

#: A finished AL run's example segmentations, for the report's figure of them (the report never predicts): written
#: by :func:`fairal.run.examples.write_examples` at the final round. A compressed NumPy archive with one entry per
#: group (the group's median test case by Dice): ``case_id``, ``group`` (text), ``dice``, ``slice`` (the axial slice
#: with the most structure), and that slice's ``image`` (float16), ``truth`` and ``prediction`` (uint8, the final
#: model's probability > 0.5).
EXAMPLES_FILE = "examples.npz"

"""Segmentation quality and group fairness measures of the paper (section 4.2).

* Dice similarity coefficient of binary masks ``A`` (prediction) and ``B`` (ground truth):
  ``DSC = 2 |A ∩ B| / (|A| + |B|)``, with ``DSC = 1`` when both masks are empty and ``0`` when exactly one is.
* ``Delta = sum_g |DSC_overall - DSC_g|`` (Eq. 3): spread of the per-group mean Dice around the overall one.
* ``ESSP = DSC_overall / (1 + Delta)`` (Eq. 4): the equity-scaled segmentation performance.

``DSC_overall`` is the mean Dice over ALL cases, not the mean of the group means; the two differ when the
groups have different sizes, and the paper uses the former.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fairal.errors import FairalError

__all__ = ["dice", "dice_from_proba", "group_means", "delta", "essp", "fairness_summary", "fairness_columns",
           "EVAL_PREFIX", "METRICS", "Metric", "register_metric", "metric", "bounds", "BOUNDED_RECORDS"]

#: The prefix of the measures on a dataset's evaluation split (``eval_dice_all``, ``eval_essp``, ...).
EVAL_PREFIX = "eval_"


def _as_mask(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a bool array, refusing anything that is not bool or exactly {0, 1}."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise FairalError(f"{name} must be a bool or {{0, 1}} numeric mask, got dtype {arr.dtype}")
    mask = arr != 0
    # Any value other than 0 and 1 (including NaN, for which `!= 0` is True) means a non-binary input,
    # typically a probability map passed where a mask was expected: say so instead of thresholding silently.
    if arr.size and not np.all(arr[mask] == 1):
        bad = arr[mask & (arr != 1)].flat[0]
        raise FairalError(
            f"{name} must be binary (bool or values in {{0, 1}}), found the value {bad!r}; "
            "use dice_from_proba for probability maps"
        )
    return mask


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Binary Dice ``2 |A ∩ B| / (|A| + |B|)`` of a predicted mask ``A`` and a ground-truth mask ``B``.

    Both masks empty gives 1.0 (a correct "nothing there"); exactly one empty gives 0.0.

    Raises:
        FairalError: if the shapes differ or either input is not bool / {0, 1}.
    """
    p_arr, t_arr = np.asarray(pred), np.asarray(target)
    if p_arr.shape != t_arr.shape:
        raise FairalError(
            f"dice needs masks of the same shape, got pred {p_arr.shape} and target {t_arr.shape}"
        )
    p = _as_mask(p_arr, "pred")
    t = _as_mask(t_arr, "target")
    size_p = int(np.count_nonzero(p))
    size_t = int(np.count_nonzero(t))
    if size_p + size_t == 0:
        return 1.0
    inter = int(np.count_nonzero(p & t))
    return 2.0 * inter / (size_p + size_t)


def dice_from_proba(proba: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of the mask ``proba >= threshold`` against ``target`` (see :func:`dice`).

    ``>=`` matches MONAI's ``AsDiscrete(threshold=...)``.
    """
    prob = np.asarray(proba)
    if not np.issubdtype(prob.dtype, np.floating) and not np.issubdtype(prob.dtype, np.integer):
        raise FairalError(f"proba must be a numeric array, got dtype {prob.dtype}")
    if not math.isfinite(threshold):
        raise FairalError(f"threshold must be a finite number, got {threshold!r}")
    if np.isnan(prob).any():
        raise FairalError("proba contains NaN values; the model output is not usable")
    return dice(prob >= threshold, target)


def _group_key(g: Hashable) -> Hashable:
    # numpy scalars (np.int64(1), np.str_("a")) become plain Python values, so dict keys and the
    # dice_g<name> labels read the same whatever container the groups came in.
    return g.item() if isinstance(g, np.generic) else g


def group_means(values: Sequence[float] | np.ndarray, groups: Sequence[Hashable] | np.ndarray) -> dict:
    """Mean of ``values`` within each group: ``{g: mean(values[groups == g])}``.

    Keys are in sorted order when the group labels can be sorted, otherwise in order of first appearance.

    Raises:
        FairalError: if the lengths differ, there are no values, or a value is not finite.
    """
    vals = np.asarray(values, dtype=float).reshape(-1)
    grp = [_group_key(g) for g in (groups.tolist() if isinstance(groups, np.ndarray) else list(groups))]
    if len(grp) != vals.size:
        raise FairalError(
            f"values and groups must have the same length, got {vals.size} values and {len(grp)} groups"
        )
    if vals.size == 0:
        raise FairalError("group_means needs at least one value, got none")
    if not np.all(np.isfinite(vals)):
        raise FairalError("values must all be finite numbers, got NaN or infinity")
    order = list(dict.fromkeys(grp))
    try:
        order = sorted(order)
    except TypeError:
        pass  # mixed label types (e.g. 1 and "a"): keep first-appearance order
    sums: dict = dict.fromkeys(order, 0.0)
    counts: dict = dict.fromkeys(order, 0)
    for v, g in zip(vals.tolist(), grp, strict=True):
        sums[g] += v
        counts[g] += 1
    return {g: sums[g] / counts[g] for g in order}


def delta(overall: float, per_group: Mapping[Hashable, float]) -> float:
    """Eq. 3: ``Delta = sum_g |DSC_overall - DSC_g|``, summed over every group ``g`` in ``per_group``."""
    if not isinstance(per_group, Mapping) or len(per_group) == 0:
        raise FairalError(f"delta needs a mapping of at least one group mean, got {per_group!r}")
    values = [_number(overall, "overall"), *(_number(v, f"the mean of group {g}") for g, v in per_group.items())]
    if not all(math.isfinite(v) for v in values):
        raise FairalError(
            f"delta needs finite Dice values, got overall={overall!r}, per_group={dict(per_group)!r}"
        )
    return float(sum(abs(float(overall) - float(v)) for v in per_group.values()))


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FairalError(f"{name} must be a number, got {value!r}") from None


def essp(overall: float, delta: float) -> float:
    """Eq. 4: equity-scaled segmentation performance ``ESSP = DSC_overall / (1 + Delta)``."""
    overall, delta = _number(overall, "overall"), _number(delta, "delta")
    if not (math.isfinite(overall) and math.isfinite(delta)):
        raise FairalError(f"essp needs finite numbers, got overall={overall!r}, delta={delta!r}")
    if delta < 0:
        raise FairalError(f"delta is a sum of absolute differences and cannot be negative, got {delta!r}")
    return float(overall) / (1.0 + float(delta))


#: No bound on either side.
UNBOUNDED = (-math.inf, math.inf)
#: Dice, ESSP, shares and weights.
UNIT = (0.0, 1.0)


@dataclass(frozen=True)
class Metric:
    """A fairness measure of a set of cases from their Dice: its name (its column in ``rounds.csv``, the baselines'
    table and the report), its words, whether higher is better, how it is computed from the overall Dice and
    the per-group mean Dice, and the range its values can take (intervals of a mean are kept inside it)."""

    name: str
    label: str
    higher_is_better: bool
    compute: Callable[[float, Mapping[Hashable, float]], float]
    bounds: tuple[float, float] = UNBOUNDED


#: The metric table, in record order after ``dice_all`` and the ``dice_g<g>``: adding a metric is one entry (or
#: :func:`register_metric`); the round and baseline columns, the report's tables and the CLI read it.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("delta", "Δ", False, lambda overall, per_group: delta(overall, per_group), (0.0, math.inf)),
    Metric("essp", "ESSP", True, lambda overall, per_group: essp(overall, delta(overall, per_group)), UNIT),
)}
#: The metrics built into fairal (the rest were registered: :mod:`fairal.plugins` sends those to a grid's workers).
BUILT_IN_METRICS = frozenset(METRICS)
#: The measures every summary has before the metric table's: the overall Dice (and one Dice per group).
DICE = Metric("dice_all", "Dice", True, lambda overall, per_group: overall, UNIT)
#: The ranges of the records' columns that are not measures of the table: the Group 1 share of the labeled set
#: (``g1_ratio``) and of a run's acquisitions, a group's weight in Eq. 2 (``w_g<g>``: a softmax), Table 1's Dice
#: gap and the Δ reduction against entropy (``1 - Δ / Δ_entropy``, Δ >= 0).
BOUNDED_RECORDS = {"g1_ratio": UNIT, "g1_acquired_share": UNIT, "w_g": UNIT, "dice_gap": (-1.0, 1.0),
                   "delta_reduction_vs_entropy": (-math.inf, 1.0)}


def register_metric(metric: Metric) -> Metric:
    """Add a metric to the table: every round and baseline then records it (on the test split and, prefixed
    ``eval_``, on the evaluation split) and the report's tables show it."""
    if metric.name in METRICS or metric.name == DICE.name or metric.name.startswith("dice_g") or \
            not metric.name.isidentifier():
        raise FairalError(f"metric {metric.name!r} exists already or is not a column name")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    METRICS.pop(name)


def metric(name: str) -> Metric:
    """The entry of a column name: ``dice_all``, ``dice_g<g>`` (a group's Dice) or a metric of the table (with or
    without the ``eval_`` prefix)."""
    name = name[len(EVAL_PREFIX):] if name.startswith(EVAL_PREFIX) else name
    if name == DICE.name or name.startswith("dice_g"):
        return DICE if name == DICE.name else Metric(name, f"Dice G{name[len('dice_g'):]}", True, DICE.compute,
                                                     UNIT)
    if name not in METRICS:
        raise FairalError(f"unknown metric {name!r}; metrics: dice_all, dice_g<g>, {', '.join(METRICS)}")
    return METRICS[name]


def bounds(column: str) -> tuple[float, float]:
    """The range of a record column's values: a metric's (with or without the ``eval_`` prefix; an ``_auc``, the
    curve's mean level, has its metric's), a Dice's [0, 1], a share's or weight's of :data:`BOUNDED_RECORDS`;
    unbounded for any other column."""
    name = column[len(EVAL_PREFIX):] if column.startswith(EVAL_PREFIX) else column
    name = {"dice_auc": "dice_all"}.get(name, name[:-len("_auc")] if name.endswith("_auc") else name)
    if name in BOUNDED_RECORDS:
        return BOUNDED_RECORDS[name]
    if name.startswith("w_g"):
        return BOUNDED_RECORDS["w_g"]
    try:
        return metric(name).bounds
    except FairalError:
        return UNBOUNDED


def fairness_summary(
    dice_values: Sequence[float] | np.ndarray, groups: Sequence[Hashable] | np.ndarray
) -> dict[str, float]:
    """Overall and per-group Dice with the paper's fairness measures (and any other of the metric table).

    Returns ``{"dice_all": DSC_overall, "dice_g<g>": DSC_g for each group g, "delta": Delta, "essp": ESSP}``
    where ``DSC_overall`` is the mean Dice over all cases (NOT the mean of the group means),
    ``DSC_g`` the mean over the cases of group ``g``, ``Delta = sum_g |DSC_overall - DSC_g|`` and
    ``ESSP = DSC_overall / (1 + Delta)``. Groups 1 and 2 give the keys ``dice_g1`` and ``dice_g2``.
    """
    per_group = group_means(dice_values, groups)
    overall = float(np.mean(np.asarray(dice_values, dtype=float)))
    summary: dict[str, float] = {"dice_all": overall}
    for g, value in per_group.items():
        key = f"dice_g{g}"
        if key in summary:
            raise FairalError(
                f"group labels collide once written as text: two groups both give the key {key!r}"
            )
        summary[key] = value
    for name, m in METRICS.items():
        summary[name] = float(m.compute(overall, per_group))
    return summary


def fairness_columns(groups: Sequence[Hashable], prefix: str = "") -> list[str]:
    """The keys of :func:`fairness_summary` for ``groups``, in record order, with ``prefix``: for groups 1 and 2
    ``dice_all, dice_g1, dice_g2, delta, essp`` (and any metric added to the table); with ``EVAL_PREFIX``
    ``eval_dice_all, ..., eval_essp``."""
    return [f"{prefix}dice_all", *[f"{prefix}dice_g{g}" for g in groups], *[prefix + m for m in METRICS]]


def prefixed_summary(dice_values, groups, all_groups: Sequence[Hashable], prefix: str) -> dict[str, float]:
    """:func:`fairness_summary` with ``prefix`` on every key, and an empty value (NaN) for every key of
    ``all_groups`` when there is no case (a dataset without that split)."""
    if len(dice_values) == 0:
        return dict.fromkeys(fairness_columns(all_groups, prefix), float("nan"))
    return {prefix + k: v for k, v in fairness_summary(dice_values, groups).items()}

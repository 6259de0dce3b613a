"""Segmentation quality and group fairness measures of the paper (section 4.2).

* Dice similarity coefficient of binary masks ``A`` (prediction) and ``B`` (ground truth):
  ``DSC = 2 |A ∩ B| / (|A| + |B|)``, with ``DSC = 1`` when both masks are empty and ``0`` when exactly one is.
* ``Delta = sum_g |DSC_overall - DSC_g|`` (Eq. 3): spread of the per-group mean Dice around the overall one.
* ``ESSP = DSC_overall / (1 + Delta)`` (Eq. 4): the equity-scaled segmentation performance.

``DSC_overall`` is the mean Dice over ALL cases, not the mean of the group means; the two differ when the
groups have different sizes, and the paper uses the former.

Each measure is one entry of the metric table (:data:`METRICS`: its words, direction, range, equivalence margin and
one implementation that works on a batch of group means); the records' columns made of them are named in
:mod:`fairal.records`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fairal.errors import FairalError

__all__ = ["dice", "dice_from_proba", "group_means", "delta", "essp", "group_delta", "equity_scaled",
           "fairness_summary", "table_measures", "METRICS", "DICE", "PRIMARY", "Metric", "register_metric",
           "unregister_metric", "group_dice", "group_metric", "DELTA", "ESSP"]


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
    """Eq. 3: ``Delta = sum_g |DSC_overall - DSC_g|``, summed over every group ``g`` in ``per_group``
    (:func:`group_delta` of one set of cases, its inputs checked)."""
    if not isinstance(per_group, Mapping) or len(per_group) == 0:
        raise FairalError(f"delta needs a mapping of at least one group mean, got {per_group!r}")
    values = [_number(overall, "overall"), *(_number(v, f"the mean of group {g}") for g, v in per_group.items())]
    if not all(math.isfinite(v) for v in values):
        raise FairalError(
            f"delta needs finite Dice values, got overall={overall!r}, per_group={dict(per_group)!r}"
        )
    return float(group_delta(np.float64(values[0]), np.array(values[1:])))


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FairalError(f"{name} must be a number, got {value!r}") from None


def essp(overall: float, delta: float) -> float:
    """Eq. 4: equity-scaled segmentation performance ``ESSP = DSC_overall / (1 + Delta)`` (:func:`equity_scaled`,
    its inputs checked)."""
    overall, delta = _number(overall, "overall"), _number(delta, "delta")
    if not (math.isfinite(overall) and math.isfinite(delta)):
        raise FairalError(f"essp needs finite numbers, got overall={overall!r}, delta={delta!r}")
    if delta < 0:
        raise FairalError(f"delta is a sum of absolute differences and cannot be negative, got {delta!r}")
    return float(equity_scaled(overall, delta))


# --- the formulas, on a batch: ``overall`` of shape (...,), ``means`` (the group means) of shape (..., groups) ------


def group_delta(overall: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Eq. 3 on a batch: ``sum_g |overall - means[..., g]|``, the groups added one after the other in the order of
    the last axis (the order of the scalar sum: the same floats for one set of cases)."""
    total = np.zeros(np.shape(overall))
    for g in range(np.shape(means)[-1]):
        total = total + np.abs(overall - means[..., g])
    return total


def equity_scaled(overall, delta):
    """Eq. 4's ``overall / (1 + delta)``, of numbers or arrays."""
    return overall / (1.0 + delta)


#: No bound on either side.
UNBOUNDED = (-math.inf, math.inf)
#: Dice, ESSP, shares and weights.
UNIT = (0.0, 1.0)


@dataclass(frozen=True)
class Metric:
    """A measure of a set of cases from their Dice: its name (its column in ``rounds.csv``, the baselines' table
    and the report), its words, whether higher is better, how it is computed, the range its values can take
    (intervals of a mean are kept inside it) and the equivalence margin of docs/analysis-plan.md (None: no
    equivalence test).

    ``compute(overall, means)`` works on a batch: ``overall`` (the mean Dice of all cases) of shape ``(...,)`` and
    ``means`` (each group's mean Dice, groups on the last axis) of shape ``(..., groups)``, and returns an array of
    shape ``(...,)``: one set of cases (a round's test cases), or many at once (the plan's bootstrap resamples)."""

    name: str
    label: str
    higher_is_better: bool
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray]
    bounds: tuple[float, float] = UNBOUNDED
    margin: float | None = None

    @property
    def direction(self) -> str:
        """``higher`` or ``lower`` (is better)."""
        return "higher" if self.higher_is_better else "lower"

    @property
    def sign(self) -> float:
        """The factor that makes a difference of this measure positive where the first is better."""
        return 1.0 if self.higher_is_better else -1.0


#: The metric table, in record order after ``dice_all`` and the ``dice_g<g>``: adding a metric is one entry (or
#: :func:`register_metric`); the round and baseline columns, the report's tables, the plan's statistics and the
#: CLI read it.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("delta", "Δ", False, group_delta, (0.0, math.inf), 0.005),
    Metric("essp", "ESSP", True, lambda overall, means: equity_scaled(overall, group_delta(overall, means)), UNIT,
           0.005),
)}
#: The paper's measures (Eq. 3 and 4), for the code that names them (its claims, Table 1).
DELTA, ESSP = METRICS["delta"], METRICS["essp"]
#: The metrics built into fairal (the rest were registered: :mod:`fairal.plugins` sends those to a grid's workers).
BUILT_IN_METRICS = frozenset(METRICS)
#: The measure every summary has before the metric table's: the overall Dice (and one Dice per group,
#: :func:`group_dice`).
DICE = Metric("dice_all", "Dice", True, lambda overall, means: overall, UNIT, 0.01)
#: The primary endpoint of docs/analysis-plan.md: the study report pairs strategies on it per scenario.
PRIMARY = ESSP.name


def group_dice(group: Hashable) -> str:
    """The name of a group's mean Dice: ``dice_g<group>`` (``dice_g1``)."""
    return f"dice_g{group}"


def group_metric(name: str) -> Metric | None:
    """The entry of a group's Dice (``dice_g<g>``), None for another name."""
    prefix = group_dice("")
    if not name.startswith(prefix):
        return None
    return Metric(name, f"Dice G{name[len(prefix):]}", True, DICE.compute, UNIT)


def register_metric(metric: Metric) -> Metric:
    """Add a metric to the table: every round and baseline then records it (on the test split and, prefixed
    ``eval_``, on the evaluation split), the report's tables show it and the plan's statistics resample it."""
    if metric.name in METRICS or metric.name == DICE.name or group_metric(metric.name) or \
            not metric.name.isidentifier():
        raise FairalError(f"metric {metric.name!r} exists already or is not a column name")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    METRICS.pop(name)


def table_measures(overall: np.ndarray, means: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of the table on a batch (:class:`Metric`'s ``compute``), in table order."""
    return {name: m.compute(overall, means) for name, m in METRICS.items()}


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
    summary: dict[str, float] = {DICE.name: overall}
    for g, value in per_group.items():
        key = group_dice(g)
        if key in summary:
            raise FairalError(
                f"group labels collide once written as text: two groups both give the key {key!r}"
            )
        summary[key] = value
    measured = table_measures(np.float64(overall), np.array(list(per_group.values()), dtype=float))
    summary.update({name: float(value) for name, value in measured.items()})
    return summary

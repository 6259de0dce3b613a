"""Statistics over seeds: means with confidence intervals, paired comparisons, and the verdict rule.

The unit of replication is the seed (docs/statistics.md says why): a mean across seeds gets a Student-t interval,
a comparison of two strategies is a set of paired differences (same dataset, initial set and seed) with a t
interval and an exact sign-flip permutation test, a ratio of means gets a paired bootstrap interval.

>>> round(mean_ci([0.90, 0.92, 0.94]).mean, 4)
0.92
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from fairal.errors import FairalError

ALPHA = 0.05
#: Exact sign-flip tests enumerate all 2^n patterns up to this n; beyond, a seeded Monte Carlo sample.
EXACT_MAX_N = 16
MONTE_CARLO_PATTERNS = 100_000


@dataclass(frozen=True)
class Estimate:
    """A mean (or another statistic) with its 95% confidence interval, the p-value of its test, and n."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float = float("nan")


def _values(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise FairalError("a statistic needs at least one value")
    if not np.all(np.isfinite(v)):
        raise FairalError("statistics need finite values (a run with NaN?)")
    return v


def mean_ci(values: Sequence[float], level: float = 0.95,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """Mean and Student-t confidence interval ``mean ± t(1 - (1 - level) / 2, n - 1) · s / √n`` (``s``: sample SD),
    clipped to ``bounds``, the range the measure can take (:func:`fairal.records.bounds`: a share's mean is never
    above 1, a Δ's never below 0). One value has no interval: its bounds are NaN."""
    v = _values(values)
    m = float(v.mean())
    if v.size == 1:
        return Estimate(m, math.nan, math.nan, 1)
    half = float(sps.t.ppf(1 - (1 - level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    low, high = bounds
    return Estimate(m, max(m - half, low), min(m + half, high), int(v.size))


def sign_flip_test(differences: Sequence[float], seed: int = 0) -> float:
    """Two-sided sign-flip permutation test of ``mean(d) = 0`` for paired differences ``d``.

    Under the null each ``d_i`` is as likely ``+d_i`` as ``-d_i``; ``p`` is the share of the ``2^n`` sign patterns
    (all of them for ``n <= 16``, else 100,000 seeded random ones plus the observed one) whose mean is at least as
    far from 0 as the observed mean. All-zero differences give ``p = 1``.
    """
    d = _values(differences)
    observed = abs(d.mean())
    if observed == 0.0:
        return 1.0
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        means = np.abs(signs @ d) / d.size
        return float(np.mean(means >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(MONTE_CARLO_PATTERNS, d.size))
    hits = int(np.sum(np.abs(signs @ d) / d.size >= observed - tol))
    return (hits + 1) / (MONTE_CARLO_PATTERNS + 1)


def smallest_sign_flip_p(n: int) -> float:
    """The smallest p :func:`sign_flip_test` can give with ``n`` paired differences: ``2 / 2^n`` (the observed
    signs and their mirror are always as extreme) when exact, ``1 / (patterns + 1)`` when Monte Carlo."""
    if n < 1:
        return 1.0
    return 2.0 / 2 ** n if n <= EXACT_MAX_N else 1.0 / (MONTE_CARLO_PATTERNS + 1)


#: Fewer units (seeds) than this get no verdict at all, not even ``equivalent``: one run is an anecdote, two give no
#: usable interval (docs/analysis-plan.md; :func:`fairal.stats.seed_rule` says it with the Holm floor below).
MIN_SEEDS_FOR_A_VERDICT = 3


def seeds_for_a_verdict(comparisons: int, alpha: float = 0.05) -> int | None:
    """The fewest units (seeds) with which one of ``comparisons`` tests under Holm's correction can reach
    ``p < alpha``: Holm's first step multiplies the smallest p by the family's size. None where no number can
    (a family so large that even the Monte Carlo test's floor, reached from ``EXACT_MAX_N + 1`` on, is too big)."""
    for n in range(1, EXACT_MAX_N + 2):
        if smallest_sign_flip_p(n) * max(comparisons, 1) < alpha:
            return n
    return None


def paired(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """The mean of ``a - b`` over pairs, its t interval and its sign-flip p-value."""
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise FairalError(f"paired values of different lengths: {x.size} and {y.size}")
    d = x - y
    e = mean_ci(d)
    return Estimate(e.mean, e.ci_low, e.ci_high, e.n, sign_flip_test(d))


def one_sample(values: Sequence[float], reference: float) -> Estimate:
    """The mean of ``values - reference``, its t interval and its sign-flip p-value."""
    v = _values(values)
    return paired(v, np.full_like(v, reference))


def reduction(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0) -> Estimate:
    """``1 - mean(a) / mean(b)`` over pairs (e.g. the Δ reduction of a strategy ``a`` against entropy ``b``), with a
    paired percentile-bootstrap 95% interval (resampling pairs) and the sign-flip p-value of ``b - a``."""
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise FairalError(f"paired values of different lengths: {x.size} and {y.size}")
    if y.mean() <= 0:
        raise FairalError("a reduction needs a positive reference mean")
    value = 1.0 - x.mean() / y.mean()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    ref = y[idx].mean(axis=1)
    boot = 1.0 - x[idx].mean(axis=1) / np.where(ref > 0, ref, np.nan)
    boot = boot[np.isfinite(boot)]
    lo, hi = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))) if boot.size else (value, value)
    return Estimate(float(value), lo, hi, int(x.size), sign_flip_test(y - x))


def direction_verdict(e: Estimate, alpha: float = ALPHA) -> str:
    """Rule 1 of docs/statistics.md for a claim "the difference is > 0": confirmed when the CI lies above 0 and
    ``p < alpha``, refuted when it lies below 0 and ``p < alpha``, inconclusive otherwise."""
    significant = e.p_value < alpha
    if significant and e.ci_low > 0:
        return "confirmed"
    if significant and e.ci_high < 0:
        return "refuted"
    return "inconclusive"


def all_scenarios_verdict(pooled: Estimate, scenarios: Sequence[Estimate], alpha: float = ALPHA) -> str:
    """Rule 2: the pooled verdict, except that any scenario whose CI lies entirely below 0 refutes the claim."""
    if any(s.ci_high < 0 for s in scenarios):
        return "refuted"
    return direction_verdict(pooled, alpha)


def conjunction_verdict(verdicts: Sequence[str]) -> str:
    """Rule 3: confirmed if every part is, refuted if any part is, else inconclusive."""
    if not verdicts:
        raise FairalError("a conjunction needs at least one part")
    if any(v == "refuted" for v in verdicts):
        return "refuted"
    return "confirmed" if all(v == "confirmed" for v in verdicts) else "inconclusive"


def magnitude_verdict(e: Estimate, claimed: float, alpha: float = ALPHA, max_width: float = 0.5) -> str:
    """Rule 4 for "a reduction of ``claimed``", in the order of docs/statistics.md: a refuted direction (rule 1 on
    the reduction) or a CI that excludes ``claimed`` refutes; an undecided direction or a CI wider than
    ``max_width`` is inconclusive; else confirmed."""
    direction = direction_verdict(e, alpha)
    if direction == "refuted" or not (e.ci_low <= claimed <= e.ci_high):
        return "refuted"
    if direction == "inconclusive" or e.ci_high - e.ci_low > max_width:
        return "inconclusive"
    return "confirmed"


# --- the v2 rule (docs/analysis-plan.md) ---------------------------------------------------------------------


def tost(values: Sequence[float], margin: float) -> float:
    """Two one-sided t tests of equivalence: H0 ``mean <= -margin`` or ``mean >= +margin`` against
    ``-margin < mean < +margin``. Returns the larger one-sided p (equivalence at level a when it is < a, i.e.
    when the ``1 - 2a`` t interval lies inside the margins). No spread: 0 inside the margins, else 1; one value
    tests nothing: NaN."""
    v = _values(values)
    if not (math.isfinite(margin) and margin > 0):
        raise FairalError(f"an equivalence margin must be a finite number > 0, got {margin!r}")
    if v.size == 1:
        return math.nan
    m = float(v.mean())
    sd = float(v.std(ddof=1))
    if sd == 0.0:
        return 0.0 if abs(m) < margin else 1.0
    se = sd / math.sqrt(v.size)
    p_low = float(sps.t.sf((m + margin) / se, v.size - 1))  # H0: mean <= -margin
    p_high = float(sps.t.cdf((m - margin) / se, v.size - 1))  # H0: mean >= +margin
    return max(p_low, p_high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given: sorted ascending,
    ``p_(i) * (m - i + 1)`` made monotone by a running maximum, capped at 1. NaNs stay NaN and do not count."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, p[i] * (m - rank)))
        out[i] = running
    return out.tolist()


def verdict(e: Estimate, p_adjusted: float, p_tost_adjusted: float, margin: float | None,
            alpha: float = ALPHA) -> tuple[str, bool]:
    """Rules 1-4 of docs/analysis-plan.md for a claim "the difference is > 0": ``confirmed`` (CI above 0 and the
    adjusted sign-flip p < alpha), ``refuted`` (CI below 0, adjusted p < alpha), else ``equivalent`` (adjusted
    TOST p < alpha), else ``inconclusive``; and ``within_margin``: the CI excludes 0 and lies inside the margins."""
    significant = p_adjusted < alpha
    within = margin is not None and (e.ci_low > 0 or e.ci_high < 0) and -margin < e.ci_low and e.ci_high < margin
    if significant and e.ci_low > 0:
        return "confirmed", within
    if significant and e.ci_high < 0:
        return "refuted", within
    if margin is not None and p_tost_adjusted < alpha:
        return "equivalent", within
    return "inconclusive", within


def magnitude_verdict_v2(e: Estimate, claimed: float, p_adjusted: float, alpha: float = ALPHA,
                         max_width: float = 0.5) -> str:
    """Rule 7 of docs/analysis-plan.md (the revised rule 4) for "a reduction of ``claimed``": a refuted direction
    refutes; an undecided direction or a CI wider than ``max_width`` is inconclusive, before the CI is asked
    whether it contains ``claimed``; then confirmed if it does, refuted if it does not."""
    direction = direction_verdict(Estimate(e.mean, e.ci_low, e.ci_high, e.n, p_adjusted), alpha)
    if direction == "refuted":
        return "refuted"
    if direction == "inconclusive" or e.ci_high - e.ci_low > max_width:
        return "inconclusive"
    return "confirmed" if e.ci_low <= claimed <= e.ci_high else "refuted"


def conjunction_verdict_v2(verdicts: Sequence[str]) -> str:
    """Rule 6: refuted if any part is; confirmed if every part is; equivalent if every part is confirmed or
    equivalent (some tie); else inconclusive."""
    if not verdicts:
        raise FairalError("a conjunction needs at least one part")
    if any(v == "refuted" for v in verdicts):
        return "refuted"
    if all(v == "confirmed" for v in verdicts):
        return "confirmed"
    if all(v in ("confirmed", "equivalent") for v in verdicts):
        return "equivalent"
    return "inconclusive"


def percentile_ci(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` (NaNs dropped)."""
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(x, tail)), float(np.percentile(x, 100 - tail))


def stratified_counts(groups: Sequence, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of cases within their groups, as counts: an ``(n_boot, n_cases)`` array whose row b says how
    often each case is drawn in replicate b (each group keeps its size: a group of n cases gets n draws)."""
    g = np.asarray(list(groups), dtype=object)
    counts = np.zeros((n_boot, g.size))
    for label in dict.fromkeys(g.tolist()):
        idx = np.flatnonzero(g == label)
        draws = rng.integers(0, idx.size, size=(n_boot, idx.size))
        for col in range(idx.size):  # a column of counts per case of the group
            counts[:, idx[col]] = (draws == col).sum(axis=1)
    return counts


def primary_family(n_datasets: int, n_arms: int) -> int:
    """The size of a study report's primary family (Holm: per dataset, the reference against each other arm)."""
    return max(n_datasets, 1) * max(n_arms - 1, 1)


def seed_rule(seeds: int, comparisons: int, alpha: float = 0.05) -> str:
    """The one rule of how many seeds a verdict needs, for the start-up warning and the study report alike: what
    ``seeds`` seeds can give over the ``comparisons`` of the primary family (the exact sign-flip test's smallest
    two-sided p, times the family's size after Holm), then :func:`seeds_needed`."""
    floor = smallest_sign_flip_p(seeds)
    exact = f" (2/2^{seeds})" if floor > 1e-5 else ""
    p = (f"the exact sign-flip test's smallest two-sided p is {floor:.3g}{exact}, {min(floor * comparisons, 1.0):.3g} "
         f"after Holm over the {comparisons} comparison(s) of the primary family")
    if seeds < MIN_SEEDS_FOR_A_VERDICT:
        said = f"{seeds} seed(s) give no verdict, the comparisons are descriptive ({p})."
    elif floor * comparisons >= alpha:
        said = (f"{seeds} seed(s) cannot give a verdict of superiority: {p}, not below {alpha:g}; only equivalence "
                "can be found, whatever the runs show.")
    else:
        said = f"With {seeds} seeds {p}, below {alpha:g}: a comparison can be confirmed or refuted."
    return f"{said} {seeds_needed(seeds_for_a_verdict(comparisons, alpha))}"


def seeds_needed(n: int | None) -> str:
    """What :func:`fairal.stats.seeds_for_a_verdict` found (``n``), with the minimum of any verdict, in words."""
    least = MIN_SEEDS_FOR_A_VERDICT
    if n is None:
        return (f"A verdict needs at least {least} seeds (equivalent); no number of seeds can confirm or refute a "
                "comparison of a family this large (fewer datasets or arms).")
    return f"A verdict needs at least {least} seeds (equivalent), confirmed or refuted at least {max(n, least)}."

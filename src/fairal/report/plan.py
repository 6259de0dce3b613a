"""The claims under the pre-registered plan (docs/analysis-plan.md): the seed as the unit, superiority and TOST
equivalence tests with Holm's correction per family, the two-level bootstrap (seeds, then evaluation cases within
group), the variance decomposition, and the verdicts on the evaluation split (primary) and the test split.

The measures are recomputed from the per-case Dice wherever the evaluation cases are resampled: a run's Dice per
group, Δ (Eq. 3) and ESSP (Eq. 4), and their area under the curve over the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairal.errors import FairalError
from fairal.metrics import DELTA, DICE, ESSP, METRICS, PRIMARY, table_measures
from fairal.records import (
    ANALYSED_SPLITS,
    DICE_GAP,
    ENTROPY,
    EVAL,
    EVAL_PREFIX,
    G1_ACQUIRED_SHARE,
    LE,
    RANDOM,
    RUN_KEYS,
    TEST,
    WLE,
    auc_column,
    equivalence_margin,
    group_dice,
    has_evaluation,
    is_measure,
    measure,
    measure_name,
    study_measures,
)
from fairal.report.claims import CLAIM_COLUMNS, PAPER_REDUCTION, run_summary
from fairal.report.tidy import split_cases
from fairal.stats import (
    MIN_SEEDS_FOR_A_VERDICT,
    Estimate,
    conjunction_verdict_v2,
    holm,
    magnitude_verdict_v2,
    mean_ci,
    percentile_ci,
    sign_flip_test,
    stratified_counts,
    tost,
    verdict,
)

N_BOOT = 4000
N_BOOT_REDUCTION = 10_000
PLAN_COLUMNS = [*CLAIM_COLUMNS, "split", "family", "p_holm", "margin", "p_tost", "p_tost_holm", "within_margin",
                "re_value", "re_ci_low", "re_ci_high", "re_p_value"]


def case_metric(column: str) -> bool:
    """Whether a run measure changes when the cases are resampled: the Dice, a metric of the table, the area under
    either's curve and Table 1's gap (the Group 1 share does not depend on the cases)."""
    base = measure_name(column)
    return column == DICE_GAP or base == DICE.name or base in METRICS


# --- per-case Dice -> run measures, for the observed cases and for resampled ones -----------------------------


@dataclass
class CaseMatrix:
    """One dataset's per-case Dice: ``rows`` (a table of row keys, e.g. a run and round) x cases."""

    rows: pd.DataFrame
    dice: np.ndarray
    groups: np.ndarray

    @classmethod
    def from_long(cls, long: pd.DataFrame, keys: list[str]) -> CaseMatrix:
        wide = long.pivot_table(index=keys, columns="case_id", values="dice", aggfunc="first")
        groups = long.drop_duplicates("case_id").set_index("case_id")["group"].reindex(wide.columns).to_numpy()
        if wide.isna().to_numpy().any():  # the readers refuse such records first, naming the file
            row, case = np.argwhere(wide.isna().to_numpy())[0]
            run = wide.index[row]
            run = " / ".join(map(str, run)) if isinstance(run, tuple) else str(run)
            raise FairalError(f"runs of dataset {long['dataset'].iloc[0]} were measured on different cases: {run} "
                              f"lacks case {wide.columns[case]}")
        return cls(wide.index.to_frame(index=False), wide.to_numpy(float), groups)

    def measures(self, counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Dice of all cases and every metric of the table (:func:`fairal.metrics.table_measures`, on the batch of
        all rows and replicates at once) per row, for the observed cases (``counts`` None: shape (rows,)) or for
        each replicate's case counts ``(n_boot, n_cases)`` (shape (rows, n_boot))."""
        c = np.ones((1, self.dice.shape[1])) if counts is None else counts
        total = self.dice @ c.T / c.sum(axis=1)
        means = np.stack([self._mean(self.groups == g, c) for g in dict.fromkeys(self.groups.tolist())], axis=-1)
        out = {DICE.name: total, **table_measures(total, means)}
        text = np.array([str(g) for g in self.groups])
        if {"1", "2"} <= set(text.tolist()):  # Table 1's gap: Dice of Group 2 - Dice of Group 1
            out[DICE_GAP] = self._mean(text == "2", c) - self._mean(text == "1", c)
        return {k: v[:, 0] for k, v in out.items()} if counts is None else out

    def _mean(self, cases: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The mean Dice of the ``cases`` (a mask) of each row under each replicate's counts: (rows, n_boot)."""
        return self.dice[:, cases] @ counts[:, cases].T / counts[:, cases].sum(axis=1)


def _auc_weights(n_labeled: np.ndarray) -> np.ndarray:
    """Trapezoid weights of :func:`fairal.report.tidy.area_under_curve` for sorted labeled-set sizes."""
    x = np.asarray(n_labeled, dtype=float)
    if x.size < 2:
        return np.ones(x.size)
    w = np.zeros(x.size)
    w[:-1] += np.diff(x) / 2
    w[1:] += np.diff(x) / 2
    return w / (x[-1] - x[0])


@dataclass
class Measure:
    """The run measures of one split: observed (``runs``, one row per run) and, when per-case Dice are there,
    resampled: ``resampled(counts_by_dataset)`` gives each case metric as (runs, n_boot) in ``runs``' order."""

    runs: pd.DataFrame
    keys: list[str]
    final: dict[str, CaseMatrix] = field(default_factory=dict)  # dataset -> final-round per-case Dice
    rounds: dict[str, CaseMatrix] = field(default_factory=dict)  # dataset -> every round's per-case Dice
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # dataset -> the groups of its cases

    def resamplable(self, metric: str) -> bool:
        if not case_metric(metric):
            return False
        source = self.rounds if metric.endswith("_auc") else self.final
        return bool(source) and set(source) >= set(self.runs["dataset"])

    def resampled(self, metric: str, counts: dict[str, np.ndarray]) -> np.ndarray:
        """``metric`` of every run (rows of ``runs``) under each replicate's case counts: (runs, n_boot)."""
        n_boot = next(iter(counts.values())).shape[0]
        out = np.full((len(self.runs), n_boot), np.nan)
        for dataset, rows in self.runs.groupby("dataset").groups.items():
            pos = self.runs.index.get_indexer(rows)
            keyed = [tuple(k) for k in self.runs.loc[rows, self.keys].itertuples(index=False, name=None)]
            source = self.rounds if metric.endswith("_auc") else self.final
            m = source[dataset]
            base = metric if metric == DICE_GAP else measure_name(metric)
            values = m.measures(counts[dataset])[base]  # (rows of m, n_boot)
            if metric.endswith("_auc"):
                out[pos] = self._auc_matrix(m, keyed) @ values
            else:
                at = {tuple(k): i for i, k in enumerate(m.rows[self.keys].itertuples(index=False, name=None))}
                out[pos] = values[[at[k] for k in keyed]]
        return out

    def _auc_matrix(self, m: CaseMatrix, keyed: list[tuple]) -> np.ndarray:
        """Weights turning every round's measure into each run's area under the curve: (runs, rows of m)."""
        w = np.zeros((len(keyed), len(m.rows)))
        frame = m.rows.assign(_i=np.arange(len(m.rows)))
        by_run = {tuple(k): g.sort_values("n_labeled") for k, g in frame.groupby(self.keys)}
        for r, key in enumerate(keyed):
            g = by_run[key]
            w[r, g["_i"].to_numpy()] = _auc_weights(g["n_labeled"].to_numpy())
        return w

    def draw_counts(self, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {d: stratified_counts(g, n_boot, rng) for d, g in sorted(self.groups.items())}


def _case_table(cases: pd.DataFrame | None, keys: list[str], extra: list[str] | None = None) -> dict[str, CaseMatrix]:
    if cases is None or cases.empty:
        return {}
    return {d: CaseMatrix.from_long(g, [*keys, *(extra or [])]) for d, g in cases.groupby("dataset")}


def al_measure(rounds: pd.DataFrame, cases: pd.DataFrame | None, round_cases: pd.DataFrame | None,
               split: str) -> Measure:
    """The AL runs' measures on ``split``: the final round's and the AUCs from ``rounds`` (the ``eval_`` columns
    for the evaluation split), with the per-case Dice for resampling."""
    if split == EVAL:
        cols = {c: c[len(EVAL_PREFIX):] for c in rounds.columns if c.startswith(EVAL_PREFIX)}
        test_cols = [c for c in rounds.columns if is_measure(c)]
        r = rounds.drop(columns=test_cols).rename(columns=cols).dropna(subset=[PRIMARY])
    else:
        r = rounds
    runs = run_summary(r)
    # The Group 1 share is a property of the acquisitions, the same on both splits: from all rounds.
    share = run_summary(rounds).set_index(RUN_KEYS).get(G1_ACQUIRED_SHARE)
    if share is not None:
        runs = runs.drop(columns=G1_ACQUIRED_SHARE, errors="ignore").join(share, on=RUN_KEYS)
    final = split_cases(cases, split)
    final = final[final["round"] == final.groupby(RUN_KEYS)["round"].transform("max")] if final is not None else None
    m = Measure(runs.reset_index(drop=True), RUN_KEYS, _case_table(final, RUN_KEYS))
    if split == TEST and round_cases is not None and not round_cases.empty:
        sizes = rounds[[*RUN_KEYS, "round", "n_labeled"]]
        m.rounds = _case_table(round_cases.merge(sizes, on=[*RUN_KEYS, "round"]), RUN_KEYS, ["n_labeled"])
    if final is not None and not final.empty:
        m.groups = {d: mat.groups for d, mat in m.final.items()}
    return m


def baseline_measure(baselines: pd.DataFrame, baseline_cases: pd.DataFrame | None, split: str) -> Measure:
    """Table 1's cohorts (one row per dataset, seed and cohort) on ``split``, with the per-case Dice."""
    keys = ["dataset", "seed", "cohort"]
    b = baselines.copy()
    if split == EVAL:
        b = b[[*keys, *[c for c in b.columns if c.startswith(EVAL_PREFIX)]]].rename(
            columns=lambda c: c[len(EVAL_PREFIX):] if c.startswith(EVAL_PREFIX) else c).dropna(subset=[PRIMARY])
    if {group_dice(1), group_dice(2)} <= set(b.columns):
        b[DICE_GAP] = b[group_dice(2)] - b[group_dice(1)]
    cases = split_cases(baseline_cases, split)
    m = Measure(b.reset_index(drop=True), keys, _case_table(cases, keys))
    m.groups = {d: mat.groups for d, mat in m.final.items()}
    return m



def paired_statistic(metric: str, a: str, b: str) -> str:
    """The words of a paired difference of one of :func:`fairal.records.study_measures` between strategies ``a``
    and ``b``: ``a - b``, flipped where lower is better (the metric table's are fairness measures: lower is
    fairer)."""
    words = study_measures()[metric]
    if not measure(metric).higher_is_better:
        return f"{words}: {b} - {a} (positive: {a} fairer)"
    return f"{words}: {a} - {b}"


# --- comparisons with the seed as the unit -------------------------------------------------------------------


@dataclass
class Pairs:
    """Matched runs ``a`` and ``b`` (positions in a :class:`Measure`'s ``runs``), with each pair's seed and
    scenario (the pairing keys other than the seed)."""

    ia: np.ndarray
    ib: np.ndarray | None
    seed: np.ndarray
    scenario: list[tuple]
    sign: float = 1.0
    reference: float | None = None  # ``b`` is this constant (a one-sample comparison)


def match(measure: Measure, a: dict, b: dict | float, on: list[str], sign: float = 1.0,
          where: dict | None = None) -> Pairs:
    """The runs whose columns equal ``a`` (and ``where``) paired with those equal to ``b`` on the keys ``on``; a
    number ``b`` compares each ``a`` run with that constant."""
    runs = measure.runs.assign(_pos=np.arange(len(measure.runs)))
    for k, v in (where or {}).items():
        runs = runs[runs[k] == v]

    def pick(sel: dict) -> pd.DataFrame:
        mask = np.ones(len(runs), bool)
        for k, v in sel.items():
            mask &= (runs[k] == v).to_numpy()
        return runs[mask][[*on, "_pos"]]

    rest = [c for c in on if c != "seed"]
    if not isinstance(b, dict):
        m = pick(a).sort_values(on)
        return Pairs(m["_pos"].to_numpy(), None, m["seed"].to_numpy(),
                     list(m[rest].itertuples(index=False, name=None)), sign, float(b))
    m = pick(a).merge(pick(b), on=on, suffixes=("_a", "_b")).sort_values(on)
    return Pairs(m["_pos_a"].to_numpy(), m["_pos_b"].to_numpy(), m["seed"].to_numpy(),
                 list(m[rest].itertuples(index=False, name=None)), sign)


def unit_values(pairs: Pairs, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed means of pair differences ``d`` ((pairs,) or (pairs, n_boot)): the unit values, and the seeds."""
    seeds, at = np.unique(pairs.seed, return_inverse=True)
    d2 = d.reshape(len(pairs.seed), -1)
    sums = np.zeros((seeds.size, d2.shape[1]))
    np.add.at(sums, at, d2)
    out = sums / np.bincount(at, minlength=seeds.size)[:, None]
    return (out[:, 0] if d.ndim == 1 else out), seeds


def scenario_values(pairs: Pairs, d: np.ndarray) -> dict[tuple, np.ndarray]:
    """The pair differences of each scenario."""
    out: dict[tuple, list] = {}
    for sc, v in zip(pairs.scenario, d, strict=True):
        out.setdefault(sc, []).append(v)
    return {k: np.asarray(v) for k, v in out.items()}


@dataclass
class Part:
    """One hypothesis of a family, and what its verdict needs."""

    id: str
    claim: str
    statistic: str
    metric: str
    pairs: Pairs
    family: str
    kind: str = "direction"  # direction, magnitude
    claimed: float | None = None  # a magnitude's x
    scenario_check: bool = False  # rule 5
    estimate: Estimate | None = None
    test: str = ""
    p_tost: dict = field(default_factory=dict)  # margin factor -> TOST p
    random_effect: Estimate | None = None
    against: bool = False  # some scenario's own CI lies below 0
    units: np.ndarray | None = None
    case_var: float = float("nan")
    two_level: tuple[float, float] = (float("nan"), float("nan"))


class Analysis:
    """The statistics of one split: observed unit values, and one shared draw of resampled cases and of resampled
    seeds (every statistic of a replicate uses the same cases and seeds: comparisons stay paired, and a statistic
    that two tables print, such as P1 and C1a, has one interval in both)."""

    def __init__(self, measure: Measure, split: str, seed: int = 0) -> None:
        self.measure, self.split = measure, split
        self.rng = np.random.default_rng(seed)
        self.counts = measure.draw_counts(N_BOOT, self.rng) if measure.groups else {}
        self._cache: dict[str, np.ndarray] = {}
        self._seed_draws: dict[tuple[int, int], np.ndarray] = {}

    def seed_draw(self, n_boot: int, n: int) -> np.ndarray:
        """The units (seeds, by index) each of ``n_boot`` replicates draws from ``n``: drawn once per split."""
        if (n_boot, n) not in self._seed_draws:
            self._seed_draws[(n_boot, n)] = self.rng.integers(0, n, size=(n_boot, n))
        return self._seed_draws[(n_boot, n)]

    def observed(self, metric: str) -> np.ndarray:
        return self.measure.runs[metric].to_numpy(float)

    def resampled(self, metric: str) -> np.ndarray | None:
        if not self.counts or not self.measure.resamplable(metric):
            return None
        if metric not in self._cache:
            self._cache[metric] = self.measure.resampled(metric, self.counts)
        return self._cache[metric]

    def differences(self, part: Part, resampled: bool = False) -> np.ndarray | None:
        m = self.resampled(part.metric) if resampled else self.observed(part.metric)
        if m is None:
            return None
        pairs = part.pairs
        other = pairs.reference if pairs.ib is None else m[pairs.ib]
        return pairs.sign * (m[pairs.ia] - other)

    def run(self, part: Part, two_level_ci: bool) -> Part:
        if part.kind == "magnitude":
            return self._reduction(part, two_level_ci)
        d = self.differences(part)
        units, _ = unit_values(part.pairs, d)
        e = mean_ci(units)
        exact = units.size <= 16
        part.test = ("sign-flip permutation over seeds (" + ("exact" if exact else "Monte Carlo, 100,000 patterns")
                     + ", two-sided); 95% t CI")
        part.units = units
        dr = self.differences(part, resampled=True)
        if dr is not None:
            um, _ = unit_values(part.pairs, dr)
            part.case_var = float(um.mean(axis=0).var(ddof=1))
            pick = self.seed_draw(N_BOOT, um.shape[0])
            part.two_level = percentile_ci(um[pick, np.arange(N_BOOT)[:, None]].mean(axis=1))
        if two_level_ci and dr is not None:
            e = Estimate(e.mean, *part.two_level, e.n)
            part.test = part.test.replace("95% t CI", f"two-level bootstrap CI (seeds, then cases within group; "
                                          f"{N_BOOT:,} replicates)")
        part.estimate = Estimate(e.mean, e.ci_low, e.ci_high, e.n, sign_flip_test(units))
        margin = equivalence_margin(part.metric)
        part.p_tost = {f: tost(units, margin * f) for f in (0.5, 1.0, 2.0)} if margin else {}
        per = scenario_values(part.pairs, d)
        if len(per) > 1:
            means = np.array([v.mean() for v in per.values()])
            re = mean_ci(means)
            part.random_effect = Estimate(re.mean, re.ci_low, re.ci_high, re.n, sign_flip_test(means))
        part.against = any(mean_ci(v).ci_high < 0 for v in per.values() if v.size > 1)
        return part

    def _reduction(self, part: Part, two_level_ci: bool) -> Part:
        """Rule 7's statistic ``1 - mean Δ(a) / mean Δ(b)`` over the pairs (``pairs.sign`` = -1: the direction is
        ``Δ(b) - Δ(a)``); CI resampling seeds (each with its pairs), and cases too on the test split."""
        delta = self.observed(DELTA.name)
        a, b = delta[part.pairs.ia], delta[part.pairs.ib]
        units, _ = unit_values(part.pairs, b - a)
        part.units = units
        seeds, at = np.unique(part.pairs.seed, return_inverse=True)
        dr = self.resampled(DELTA.name) if two_level_ci else None
        n_boot = N_BOOT if dr is not None else N_BOOT_REDUCTION
        pick = self.seed_draw(n_boot, seeds.size)
        w = np.stack([np.bincount(row, minlength=seeds.size) for row in pick])[:, at]  # (n_boot, pairs)
        if dr is not None:
            boot = 1 - (w * dr[part.pairs.ia].T).sum(1) / (w * dr[part.pairs.ib].T).sum(1)
            ci = f"two-level bootstrap CI (seeds, then cases within group; {n_boot:,} replicates)"
        else:
            boot = 1 - (w @ a) / (w @ b)
            ci = f"bootstrap CI over seeds ({n_boot:,} replicates)"
        lo, hi = percentile_ci(boot)
        part.estimate = Estimate(float(1 - a.mean() / b.mean()), lo, hi, int(units.size), sign_flip_test(units))
        part.test = f"sign-flip over seeds of Δ(entropy) - Δ(WLE); {ci}"
        return part


# --- the claims of docs/analysis-plan.md ---------------------------------------------------------------------

AL_ON = ["dataset", "init", "seed"]
T1_ON = ["dataset", "seed"]
OTHERS = (RANDOM, LE, ENTROPY)


def primary_parts(m: Measure, metric: str = PRIMARY) -> list[Part]:
    """Family P: final ESSP, WLE - each other strategy, pooled; and its per-scenario rows (family P-scenario).
    With another ``metric`` (Δ, Dice): the same comparisons for the variance decomposition only (family D)."""
    parts = []
    label = f"final {measure(metric).label}"
    prefix, fam, sign = ("P", "P", 1.0) if metric == PRIMARY else (f"D-{metric}-", "D", 1.0)
    for k, other in enumerate(OTHERS, start=1):
        pairs = match(m, {"strategy": WLE}, {"strategy": other}, AL_ON, sign=sign)
        parts.append(Part(f"{prefix}{k}", f"WLE has a better {label} than {other} (pooled over the six scenarios)",
                          f"{label}: WLE - {other}", metric, pairs, fam))
        for dataset, init in sorted(set(pairs.scenario)):
            one = match(m, {"strategy": WLE}, {"strategy": other}, AL_ON, sign=sign,
                        where={"dataset": dataset, "init": init})
            parts.append(Part(f"{prefix}{k}-{dataset}-{init}", f"WLE has a better {label} than {other} ({dataset}, "
                              f"{init})", f"{label}: WLE - {other}", metric, one,
                              "P-scenario" if fam == "P" else "D"))
    return parts


def al_parts(m: Measure) -> list[Part]:
    """Family AL: the parts of C1-C10."""
    parts: list[Part] = []
    for cid, metric, label in (("C1", ESSP.name, "final ESSP"), ("C2", auc_column(ESSP.name), "ESSP AUC")):
        for k, other in zip("abc", OTHERS, strict=True):
            parts.append(Part(f"{cid}{k}", f"WLE has a better {label} than {other} in all scenarios (pooled over "
                              "the six; no scenario significantly against)", f"{label}: WLE - {other}", metric,
                              match(m, {"strategy": WLE}, {"strategy": other}, AL_ON), "AL", scenario_check=True))
    for k, (a, b) in zip("abc", ((WLE, LE), (LE, RANDOM), (RANDOM, ENTROPY)), strict=True):
        parts.append(Part(f"C3{k}", f"final ESSP: {a} > {b}", f"final ESSP: {a} - {b}", ESSP.name,
                          match(m, {"strategy": a}, {"strategy": b}, AL_ON), "AL"))
    for cid, dataset in (("C4", "strong"), ("C5", "weak")):
        x = PAPER_REDUCTION[dataset]
        parts.append(Part(cid, f"WLE reduces Δ by {x:.0%} against entropy ({dataset} bias, final budget)",
                          f"1 - mean Δ(WLE) / mean Δ(entropy), {dataset}", DELTA.name,
                          match(m, {"strategy": WLE}, {"strategy": ENTROPY}, AL_ON, where={"dataset": dataset}),
                          "AL", kind="magnitude", claimed=x))
    if G1_ACQUIRED_SHARE in m.runs.columns:
        for cid, strategy, text, sign in (("C6", WLE, "WLE favours Group 1 (acquired cases)", 1.0),
                                          ("C7", ENTROPY, "entropy adds more Group 2 than Group 1", -1.0),
                                          ("C8", LE, "localized entropy also tends to select Group 1", 1.0)):
            stat = "Group 1 share of acquisitions - 0.5" if sign > 0 else "0.5 - Group 1 share of acquisitions"
            pairs = match(m, {"strategy": strategy}, 0.5, AL_ON, sign=sign)
            parts.append(Part(cid, text, f"{stat} ({strategy})", G1_ACQUIRED_SHARE, pairs, "AL"))
    parts.append(Part("C9", "localized entropy also reduces Δ against entropy (final budget)",
                      "final Δ: entropy - localized entropy", DELTA.name,
                      match(m, {"strategy": ENTROPY}, {"strategy": LE}, AL_ON), "AL"))
    for k, other in zip("abc", (WLE, LE, ENTROPY), strict=True):
        parts.append(Part(f"C10{k}", f"random has a better Dice (AUC) than {other}", f"Dice AUC: random - {other}",
                          auc_column(DICE.name), match(m, {"strategy": RANDOM}, {"strategy": other}, AL_ON), "AL"))
    return parts


def table1_parts(m: Measure) -> list[Part]:
    """Family T1: C11-C14 from the baselines' training seeds."""
    parts: list[Part] = []
    if m.runs.empty:
        return parts
    for cid, other, text in (("C11", "all", "the Group 1-only cohort has a better ESSP than the balanced one"),
                             ("C12", "g2", "the Group 1-only cohort has a better ESSP than the Group 2-only one")):
        parts.append(Part(cid, f"Table 1: {text} (per seed the mean over the datasets; no dataset significantly "
                          "against)", f"ESSP: g1 - {other} cohort", ESSP.name,
                          match(m, {"cohort": "g1"}, {"cohort": other}, T1_ON), "T1", scenario_check=True))
    if DICE_GAP in m.runs.columns:
        parts.append(Part("C13", "Table 1: trained on Group 2 only, Group 1 is segmented worse than Group 2 (no "
                          "dataset significantly against)", "Dice G2 - Dice G1 of the Group 2-only cohort",
                          DICE_GAP, match(m, {"cohort": "g2"}, 0.0, T1_ON), "T1",
                          scenario_check=True))
        if {"strong", "weak"} <= set(m.runs["dataset"]):
            parts.append(Part("C14", "Table 1: that gap is larger with the strong bias than with the weak one",
                              "gap(strong) - gap(weak), paired by seed index", DICE_GAP,
                              match(m, {"dataset": "strong", "cohort": "g2"}, {"dataset": "weak", "cohort": "g2"},
                                    ["seed"]), "T1"))
    return parts


#: Fewer seeds than this: no verdict (one run is an anecdote, two give no usable interval); the one rule of
#: :mod:`fairal.stats`, which the start-up warning and the study report also say (:func:`fairal.stats.seed_rule`).
MIN_SEEDS_FOR_CLAIMS = MIN_SEEDS_FOR_A_VERDICT


def verdict_rows(parts: list[Part], factor: float = 1.0) -> list[dict]:
    """Rows of ``claims.csv`` for analysed parts (one family's Holm applied within it). A part of fewer than
    :data:`MIN_SEEDS_FOR_CLAIMS` units gets no verdict (empty): its row is descriptive."""
    rows = []
    by_family: dict[str, list[Part]] = {}
    for p in parts:
        by_family.setdefault(p.family, []).append(p)
    for fam, members in by_family.items():
        p_holm = holm([p.estimate.p_value for p in members])
        p_tost_holm = holm([p.p_tost.get(factor, np.nan) for p in members])
        for p, ph, pt in zip(members, p_holm, p_tost_holm, strict=True):
            margin = equivalence_margin(p.metric) if p.kind == "direction" else None
            margin = margin * factor if margin else None
            e = p.estimate
            if p.kind == "magnitude":
                v, within = magnitude_verdict_v2(e, p.claimed, ph), False
            else:
                v, within = verdict(e, ph, pt if margin else np.nan, margin)
                if p.scenario_check and p.against:
                    v = "refuted"
            if e.n < MIN_SEEDS_FOR_CLAIMS:
                v, within = "", False
            re = p.random_effect
            rows.append({"id": p.id, "claim": p.claim, "statistic": p.statistic, "value": e.mean,
                         "ci_low": e.ci_low, "ci_high": e.ci_high, "test": p.test, "p_value": e.p_value, "n": e.n,
                         "verdict": v, "family": fam, "p_holm": ph, "margin": margin,
                         "p_tost": p.p_tost.get(factor, np.nan), "p_tost_holm": pt, "within_margin": within,
                         "re_value": re.mean if re else np.nan, "re_ci_low": re.ci_low if re else np.nan,
                         "re_ci_high": re.ci_high if re else np.nan, "re_p_value": re.p_value if re else np.nan})
    return rows


CONJUNCTIONS = {"C1": ("WLE has the best final ESSP in all scenarios (pooled over the six; no scenario "
                       "significantly against)", "final ESSP: WLE - each other strategy", ("C1a", "C1b", "C1c")),
                "C2": ("WLE has the best ESSP over the whole budget (ESSP AUC) in all scenarios (pooled over the "
                       "six; no scenario significantly against)",
                       "ESSP AUC: WLE - each other strategy", ("C2a", "C2b", "C2c")),
                "C3": ("ESSP order WLE > LE > random >> entropy (final budget)", "final ESSP links",
                       ("C3a", "C3b", "C3c")),
                "C10": ("random is the most accurate strategy (Dice over the budget)",
                        "Dice AUC: random - each other strategy", ("C10a", "C10b", "C10c"))}


def _with_conjunctions(rows: list[dict]) -> list[dict]:
    by_id = {r["id"]: r for r in rows}
    out = []
    for r in rows:
        for cid, (text, stat, members) in CONJUNCTIONS.items():
            if r["id"] == members[0] and all(m in by_id for m in members):
                parts = [by_id[m] for m in members]
                weakest = max(parts, key=lambda p: (p["p_holm"], -p["value"]))
                v = conjunction_verdict_v2([p["verdict"] for p in parts])
                ties = [p["id"] for p in parts if p["verdict"] == "equivalent"]
                claim = text + (f" (ties within the margin: {', '.join(ties)})" if v == "equivalent" else "")
                out.append({**weakest, "id": cid, "claim": claim, "statistic": f"{stat}; weakest part: "
                            f"{weakest['statistic']}", "verdict": v,
                            "within_margin": any(p["within_margin"] for p in parts)})
        out.append(r)
    return out


@dataclass
class PlanTables:
    claims: pd.DataFrame
    sensitivity: pd.DataFrame
    primary: pd.DataFrame
    decomposition: pd.DataFrame


def _decomposition(parts: list[Part], split: str) -> list[dict]:
    rows = []
    for p in parts:
        if p.metric not in (DICE.name, *METRICS) or p.kind != "direction" or p.units is None:
            continue
        seed_var = float(p.units.var(ddof=1) / p.units.size) if p.units.size > 1 else np.nan
        total = p.case_var + seed_var
        rows.append({"split": split, "id": p.id, "statistic": p.statistic, "n_seeds": int(p.units.size),
                     "seed_var": seed_var, "case_var": p.case_var,
                     "case_share": p.case_var / total if np.isfinite(total) and total > 0 else np.nan,
                     "seed_sd": float(p.units.std(ddof=1)) if p.units.size > 1 else np.nan,
                     "case_se": float(np.sqrt(p.case_var)) if np.isfinite(p.case_var) else np.nan})
    return rows


def plan_tables(rounds: pd.DataFrame, cases: pd.DataFrame | None, round_cases: pd.DataFrame | None,
                baselines: pd.DataFrame, baseline_cases: pd.DataFrame | None) -> PlanTables:
    """Every table of docs/analysis-plan.md §6 from tidy records (the paper's four strategies)."""
    rows, sens, primary, decomp = [], [], [], []
    rounds = rounds[rounds["strategy"].isin([WLE, *OTHERS])]
    for split in ANALYSED_SPLITS:
        if split == EVAL and not has_evaluation(rounds):
            continue
        m = al_measure(rounds, cases, round_cases, split)
        a = Analysis(m, split, seed=0)
        parts = [a.run(p, two_level_ci=split == TEST) for p in primary_parts(m) + al_parts(m)]
        if (baselines is not None and not baselines.empty and "seed" in baselines.columns
                and (split == TEST or has_evaluation(baselines))):
            bm = baseline_measure(baselines, baseline_cases, split)
            if not bm.runs.empty:
                ba = Analysis(bm, split, seed=1)
                parts += [ba.run(p, two_level_ci=split == TEST) for p in table1_parts(bm)]
        described = [x for x in (*METRICS, DICE.name) if x != PRIMARY]  # family D: each other measure
        decomp += _decomposition(parts + [a.run(p, two_level_ci=False) for x in described
                                          for p in primary_parts(m, x)], split)
        for factor in (0.5, 1.0, 2.0):
            got = _with_conjunctions(verdict_rows(parts, factor))
            for r in got:
                r["split"] = split
            if factor == 1.0:
                rows += [r for r in got if r["family"] not in ("P-scenario",)]
                by_id = {p.id: p for p in parts}  # verdict_rows orders by family: match each row by its id
                primary += [{**r, "two_level_ci_low": by_id[r["id"]].two_level[0],
                             "two_level_ci_high": by_id[r["id"]].two_level[1]}
                            for r in got if r["family"] in ("P", "P-scenario")]
            sens += [{"split": split, "id": r["id"], "margin_factor": factor, "margin": r["margin"],
                      "verdict": r["verdict"], "within_margin": r["within_margin"]}
                     for r in got if r["family"] != "P-scenario"]
    claims = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    claims["n"] = claims["n"].astype("Int64")
    return PlanTables(claims, pd.DataFrame(sens), pd.DataFrame(primary), pd.DataFrame(decomp))


def plan_markdown(table: pd.DataFrame) -> str:
    """``claims.md`` under the plan: the primary endpoint first, then the claims, per split."""
    lines = ["# The paper's claims against these records (docs/analysis-plan.md)", "",
             "Verdicts under the pre-registered plan: the seed is the unit (a pooled comparison averages each seed's "
             "paired differences over the scenarios); confirmed / refuted need the 95% CI on one side of 0 and a "
             "Holm-adjusted sign-flip p < 0.05; equivalent: Holm-adjusted TOST p < 0.05 within the margin; "
             "'within margin': a real difference smaller than the margin. Split `eval`: the evaluation split "
             "(primary); `test`: the paper's 15 + 15 test cases, CIs from the two-level bootstrap.", ""]
    for split in ANALYSED_SPLITS:
        sub = table[table["split"] == split]
        if sub.empty:
            continue
        lines += [f"## Split `{split}`", "", "| id | claim | statistic | value | 95% CI | p (Holm) | TOST p (Holm) | "
                  "n | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sub.itertuples(index=False):
            v = f"{r.verdict} (within margin)" if r.within_margin and r.verdict in ("confirmed", "refuted") \
                else r.verdict
            tost_p = "—" if pd.isna(r.p_tost_holm) else f"{r.p_tost_holm:.3g}"
            lines.append(f"| {r.id} | {r.claim} | {r.statistic} | {r.value:+.4f} | [{r.ci_low:+.4f}, "
                         f"{r.ci_high:+.4f}] | {r.p_value:.3g} ({r.p_holm:.3g}) | {tost_p} | {r.n} | **{v}** |")
        lines.append("")
    return "\n".join(lines)

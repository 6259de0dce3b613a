"""The paper's claims against our seeds: per-run summaries, mean ± CI tables, paired comparisons and the verdicts of
``claims.csv`` under the rule of docs/statistics.md (fixed before the numbers were computed)."""

from __future__ import annotations

import pandas as pd

from fairal.metrics import DELTA, DICE, ESSP, METRICS, PRIMARY
from fairal.records import (
    ENTROPY,
    G1_ACQUIRED_SHARE,
    LE,
    RANDOM,
    RUN_KEYS,
    SCENARIO,
    TABLE1_METRICS,
    WLE,
    auc_column,
    bounds,
    is_measure,
    labeled_count,
)
from fairal.report.tidy import Results, area_under_curve
from fairal.stats import (
    Estimate,
    all_scenarios_verdict,
    conjunction_verdict,
    direction_verdict,
    magnitude_verdict,
    mean_ci,
    one_sample,
    paired,
    reduction,
)

CLAIM_COLUMNS = ["id", "claim", "statistic", "value", "ci_low", "ci_high", "test", "p_value", "n", "verdict"]
SIGN_FLIP = "paired sign-flip permutation (two-sided); t CI"
#: What rule 2 of docs/statistics.md tests of a claim "in all scenarios": the pooled pairs, and no scenario against
#: it (not a win in each scenario on its own).
POOLED = "pooled over the scenarios, no scenario's own 95% CI against it"
POOLED_DATASETS = "(pooled over the datasets, no dataset's own 95% CI against it)"
RULE_2 = ("A claim the paper makes \"in all scenarios\" is tested on the pairs pooled over the scenarios, with no "
          "scenario's own 95% CI against it (rule 2): a confirmation says that, not that the strategy is ahead in "
          "each scenario on its own.")
#: The paper's Delta reductions of WLE against entropy at the final budget.
PAPER_REDUCTION = {"strong": 0.75, "weak": 0.86}


def run_summary(rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the final round's Dice, Delta, ESSP (and per-group Dice), the ESSP and Dice AUC over the
    budget, and the Group 1 share of the acquired cases."""
    rows = []
    for key, g in rounds.groupby(RUN_KEYS, sort=True):
        g = g.sort_values("n_labeled")
        first, last = g.iloc[0], g.iloc[-1]
        row = dict(zip(RUN_KEYS, key, strict=True))
        row.update({c: last[c] for c in g.columns if is_measure(c) or c == "n_labeled"})
        for m in (ESSP.name, DICE.name):
            row[auc_column(m)] = area_under_curve(g["n_labeled"].to_numpy(), g[m].to_numpy())
        acquired, g1 = last["n_labeled"] - first["n_labeled"], labeled_count(1)
        if g1 in g.columns and acquired > 0:
            row[G1_ACQUIRED_SHARE] = (last[g1] - first[g1]) / acquired
        rows.append(row)
    return pd.DataFrame(rows)


def _est_row(e: Estimate) -> dict:
    return {"value": e.mean, "ci_low": e.ci_low, "ci_high": e.ci_high, "p_value": e.p_value, "n": e.n}


def summary_table(runs: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """Mean and 95% t interval across seeds per scenario and strategy, kept inside each measure's range
    (:func:`fairal.records.bounds`; default measures: Dice, every metric of the table, the ESSP AUC and the Group 1
    share of the acquisitions)."""
    metrics = metrics or (DICE.name, *METRICS, auc_column(PRIMARY), G1_ACQUIRED_SHARE)
    rows = []
    for key, g in runs.groupby(["dataset", "init", "strategy"], sort=False):
        row = {"dataset": key[0], "init": key[1], "strategy": key[2], "n_seeds": len(g)}
        for m in metrics:
            if m in g.columns and g[m].notna().all():
                e = mean_ci(g[m].to_numpy(), bounds=bounds(m))
                row.update({m: e.mean, f"{m}_ci_low": e.ci_low, f"{m}_ci_high": e.ci_high})
        rows.append(row)
    return pd.DataFrame(rows)


def _pairs(runs: pd.DataFrame, a: str, b: str, metric: str) -> pd.DataFrame:
    """Runs of strategies a and b matched on dataset, initial set and seed: columns ``a``, ``b`` of ``metric``."""
    x = runs[runs["strategy"] == a].set_index(["dataset", "init", "seed"])[metric].rename("a")
    y = runs[runs["strategy"] == b].set_index(["dataset", "init", "seed"])[metric].rename("b")
    return pd.concat([x, y], axis=1, join="inner").reset_index()


def paired_table(runs: pd.DataFrame, reference: str = WLE, metrics=None) -> pd.DataFrame:
    """``reference`` minus every other strategy, per scenario and pooled over all scenarios: mean paired difference,
    t interval, sign-flip p-value, n (default metrics: ESSP, ESSP AUC, Δ, Dice, then the table's others)."""
    metrics = metrics or (ESSP.name, auc_column(ESSP.name), DELTA.name, DICE.name,
                          *[m for m in METRICS if m not in (ESSP.name, DELTA.name)])
    rows = []
    others = [s for s in runs["strategy"].unique() if s != reference]
    for metric in metrics:
        for other in others:
            p = _pairs(runs, reference, other, metric)
            if p.empty:
                continue
            groups = [(("all", "all"), p)] + list(p.groupby(SCENARIO, sort=False))
            for (dataset, init), g in groups:
                e = paired(g["a"].to_numpy(), g["b"].to_numpy())
                rows.append({"metric": metric, "comparison": f"{reference} - {other}", "dataset": dataset,
                             "init": init, "mean_difference": e.mean, "ci_low": e.ci_low, "ci_high": e.ci_high,
                             "p_value": e.p_value, "n": e.n})
    return pd.DataFrame(rows)


def _claim(cid, text, statistic, e: Estimate, test, verdict) -> dict:
    return {"id": cid, "claim": text, "statistic": statistic, **_est_row(e), "test": test, "verdict": verdict}


def _all_scenarios(runs, a, b, metric, lower_is_better=False, scenario_cols=SCENARIO):
    p = _pairs(runs, a, b, metric)
    if p.empty:
        return None, []
    sign = -1.0 if lower_is_better else 1.0
    pooled = paired(sign * p["a"].to_numpy(), sign * p["b"].to_numpy())
    per = [paired(sign * g["a"].to_numpy(), sign * g["b"].to_numpy()) for _, g in p.groupby(scenario_cols)]
    return pooled, per


def _conjunction(cid, text, statistic, parts: list[dict]) -> dict:
    verdict = conjunction_verdict([p["verdict"] for p in parts])
    weakest = max(parts, key=lambda p: (p["p_value"], -p["value"]))
    return {**{k: weakest[k] for k in CLAIM_COLUMNS if k not in ("id", "claim", "statistic", "verdict")},
            "id": cid, "claim": text, "statistic": f"{statistic}; weakest part: {weakest['statistic']}",
            "verdict": verdict}


def al_claims(runs: pd.DataFrame) -> list[dict]:
    """Claims C1-C10 of docs/statistics.md from the per-run summaries of the paper's four strategies."""
    out: list[dict] = []
    have = set(runs["strategy"])
    if not {WLE, LE, RANDOM, ENTROPY} <= have:
        return out
    for cid, metric, label in (("C1", "essp", "final ESSP"), ("C2", "essp_auc", "ESSP AUC")):
        parts = []
        for k, other in zip("abc", (RANDOM, LE, ENTROPY), strict=True):
            pooled, per = _all_scenarios(runs, WLE, other, metric)
            parts.append(_claim(f"{cid}{k}", f"WLE has a better {label} than {other} {POOLED}",
                                f"{label}: WLE - {other}", pooled, SIGN_FLIP + " + per-scenario CIs",
                                all_scenarios_verdict(pooled, per)))
        text = ("WLE has the best final ESSP" if cid == "C1" else "WLE has the best ESSP over the whole budget "
                "(ESSP AUC)") + f" (the paper: in all scenarios); tested: better than each other strategy {POOLED}"
        out.append(_conjunction(cid, text, f"{label}: WLE - each other strategy", parts))
        out += parts
    links = []
    for k, (a, b) in zip("abc", ((WLE, LE), (LE, RANDOM), (RANDOM, ENTROPY)), strict=True):
        p = _pairs(runs, a, b, "essp")
        e = paired(p["a"].to_numpy(), p["b"].to_numpy())
        links.append(_claim(f"C3{k}", f"final ESSP: {a} > {b}", f"final ESSP: {a} - {b}", e, SIGN_FLIP,
                            direction_verdict(e)))
    out.append(_conjunction("C3", "ESSP order WLE > LE > random >> entropy (final budget)", "final ESSP links",
                            links))
    out += links
    for cid, dataset in (("C4", "strong"), ("C5", "weak")):
        p = _pairs(runs[runs["dataset"] == dataset], WLE, ENTROPY, "delta")
        if p.empty:
            continue
        x = PAPER_REDUCTION[dataset]
        e = reduction(p["a"].to_numpy(), p["b"].to_numpy())
        out.append(_claim(cid, f"WLE reduces Δ by {x:.0%} against entropy ({dataset} bias, final budget)",
                          f"1 - mean Δ(WLE) / mean Δ(entropy), {dataset}", e,
                          "sign-flip on Δ(entropy) - Δ(WLE); paired bootstrap CI", magnitude_verdict(e, x)))
    if "g1_acquired_share" in runs.columns:
        for cid, strategy, text, sign in (("C6", WLE, "WLE favours Group 1 (acquired cases)", 1),
                                          ("C7", ENTROPY, "entropy adds more Group 2 than Group 1", -1),
                                          ("C8", LE, "localized entropy also tends to select Group 1", 1)):
            share = runs.loc[runs["strategy"] == strategy, "g1_acquired_share"].to_numpy()
            e = one_sample(sign * share, sign * 0.5)
            stat = ("Group 1 share of acquisitions - 0.5" if sign > 0 else "0.5 - Group 1 share of acquisitions")
            out.append(_claim(cid, text, f"{stat} ({strategy})", e, "sign-flip permutation (two-sided); t CI",
                              direction_verdict(e)))
    p = _pairs(runs, ENTROPY, LE, "delta")
    e = paired(p["a"].to_numpy(), p["b"].to_numpy())
    out.append(_claim("C9", "localized entropy also reduces Δ against entropy (final budget)",
                      "final Δ: entropy - localized entropy", e, SIGN_FLIP, direction_verdict(e)))
    parts = []
    for k, other in zip("abc", (WLE, LE, ENTROPY), strict=True):
        p = _pairs(runs, RANDOM, other, "dice_auc")
        e = paired(p["a"].to_numpy(), p["b"].to_numpy())
        parts.append(_claim(f"C10{k}", f"random has a better Dice (AUC) than {other}",
                            f"Dice AUC: random - {other}", e, SIGN_FLIP, direction_verdict(e)))
    out.append(_conjunction("C10", "random is the most accurate strategy (Dice over the budget)",
                            "Dice AUC: random - each other strategy", parts))
    out += parts
    return out


def baseline_claims(baselines: pd.DataFrame) -> list[dict]:
    """Claims C11-C14 from Table 1 baselines with several training seeds (``dataset, seed, cohort, ...``)."""
    out: list[dict] = []
    if baselines.empty or "seed" not in baselines.columns:
        return out
    wide = baselines.pivot_table(index=["dataset", "seed"], columns="cohort",
                                 values=["essp", "dice_g1", "dice_g2"]).reset_index()
    for cid, other, text in (("C11", "all", "the Group 1-only cohort has a better ESSP than the balanced one"),
                             ("C12", "g2", "the Group 1-only cohort has a better ESSP than the Group 2-only one")):
        if ("essp", "g1") not in wide.columns or ("essp", other) not in wide.columns:
            continue
        a, b = wide[("essp", "g1")].to_numpy(), wide[("essp", other)].to_numpy()
        pooled = paired(a, b)
        per = [paired(a[wide["dataset"] == d], b[wide["dataset"] == d]) for d in wide["dataset"].unique()]
        out.append(_claim(cid, f"Table 1: {text} {POOLED_DATASETS}", f"ESSP: g1 - {other} cohort", pooled,
                          SIGN_FLIP + " + per-dataset CIs", all_scenarios_verdict(pooled, per)))
    if ("dice_g1", "g2") in wide.columns:
        gap = wide[("dice_g2", "g2")].to_numpy() - wide[("dice_g1", "g2")].to_numpy()
        pooled = one_sample(gap, 0.0)
        per = [one_sample(gap[wide["dataset"] == d], 0.0) for d in wide["dataset"].unique()]
        out.append(_claim("C13", "Table 1: trained on Group 2 only, Group 1 is segmented worse than Group 2 "
                          + POOLED_DATASETS,
                          "Dice G2 - Dice G1 of the Group 2-only cohort", pooled,
                          "sign-flip permutation (two-sided); t CI + per-dataset CIs",
                          all_scenarios_verdict(pooled, per)))
        by = pd.Series(gap, index=pd.MultiIndex.from_frame(wide[["dataset", "seed"]].droplevel(1, axis=1)))
        if {"strong", "weak"} <= set(wide["dataset"]):
            s, w = by.xs("strong"), by.xs("weak")
            common = s.index.intersection(w.index)
            e = paired(s[common].to_numpy(), w[common].to_numpy())
            out.append(_claim("C14", "Table 1: that gap is larger with the strong bias than with the weak one",
                              "gap(strong) - gap(weak), paired by seed", e, SIGN_FLIP, direction_verdict(e)))
    return out


def claims_table(rounds: pd.DataFrame, baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim of docs/statistics.md that the records can decide."""
    runs = run_summary(rounds) if not rounds.empty else pd.DataFrame(columns=RUN_KEYS)
    rows = (al_claims(runs) if not runs.empty else []) + baseline_claims(
        baselines if baselines is not None else pd.DataFrame())
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    table["n"] = table["n"].astype("Int64")
    return table


def claims_markdown(table: pd.DataFrame) -> str:
    """``claims.md``: the table with the verdicts, top-level claims first."""
    lines = ["# The paper's claims against these records", "",
             "Verdicts under the rule of docs/statistics.md (fixed before the numbers). `value`: the statistic's "
             "mean (a difference, a share above 0.5, or a reduction); CI: 95%; n: pairs or runs. " + RULE_2, "",
             "| id | claim | statistic | value | 95% CI | test | p | n | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.id} | {r.claim} | {r.statistic} | {r.value:+.4f} | [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | "
                     f"{r.test} | {r.p_value:.3g} | {r.n} | **{r.verdict}** |")
    return "\n".join(lines) + "\n"


PAPER_TABLE1 = pd.DataFrame(
    [("strong", "all", 0.88, 0.93, 0.91, 0.91, 0.04), ("strong", "g1", 0.89, 0.88, 0.89, 0.89, 0.01),
     ("strong", "g2", 0.75, 0.93, 0.84, 0.71, 0.18), ("weak", "all", 0.90, 0.91, 0.90, 0.89, 0.01),
     ("weak", "g1", 0.90, 0.90, 0.90, 0.90, 0.002), ("weak", "g2", 0.86, 0.91, 0.88, 0.84, 0.04)],
    columns=["dataset", "cohort", "dice_g1", "dice_g2", DICE.name, *TABLE1_METRICS],
)


def table1(results: Results) -> pd.DataFrame:
    """Our baselines next to the paper's Table 1; with several training seeds, their mean, the 95% t interval of
    the ESSP and Δ, and the number of seeds."""
    if results.baselines.empty:
        return pd.DataFrame()

    b = results.baselines
    groups = [c for c in b.columns if is_measure(c) and c != DICE.name and c not in METRICS]
    measures = [*TABLE1_METRICS, *[m for m in METRICS if m not in TABLE1_METRICS and m in b.columns]]
    cols = [*groups, DICE.name, *measures]
    rows = []
    for (dataset, cohort), g in b.groupby(["dataset", "cohort"], sort=False):
        row = {"dataset": dataset, "cohort": cohort, **g[cols].mean().to_dict()}
        if "seed" in b.columns and len(g) > 1:
            for m in measures:
                e = mean_ci(g[m].to_numpy(), bounds=bounds(m))
                row.update({f"{m}_ci_low": e.ci_low, f"{m}_ci_high": e.ci_high})
        row["n_seeds"] = len(g)
        rows.append(row)
    ours = pd.DataFrame(rows)
    return ours.merge(PAPER_TABLE1, on=["dataset", "cohort"], how="left", suffixes=("", "_paper"))

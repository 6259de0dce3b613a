"""Markdown tables of docs/REPRODUCTION.md from the reports of the v2 and v1 records.

    fairal report docs/results/v2 --out v2-report
    fairal report docs/results/standard --out v1-report
    python scripts/reproduction_tables.py v2-report v1-report > tables.md

Every number of REPRODUCTION.md's v2 sections is printed here from the report's ``claims.csv``, ``primary.csv``,
``claims_sensitivity.csv`` and ``variance_decomposition.csv`` (docs/analysis-plan.md §6), so none is copied by hand.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

COMPARISONS = {"P1": "WLE − random", "P2": "WLE − localized entropy", "P3": "WLE − entropy"}
SCENARIOS = [(d, i) for d in ("strong", "weak") for i in ("balanced", "g1-heavy", "g2-heavy")]
#: The end of a per-scenario comparison's id (``P1-strong-g1-heavy``, ``D-delta-1-weak-balanced``).
SCENARIO_SUFFIX = r"-(?:strong|weak)-(?:balanced|g1-heavy|g2-heavy)$"
SHARE_IDS = {"C4", "C5", "C6", "C7", "C8"}  # reductions and acquisition shares: two decimals


def num(v: float, cid: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    digits = 2 if cid.split("-")[0].rstrip("abc") in SHARE_IDS else 4
    return f"{v:+.{digits}f}" if cid.split("-")[0].rstrip("abc") not in {"C4", "C5"} else f"{v:.{digits}f}"


def interval(row: pd.Series, low: str = "ci_low", high: str = "ci_high", value: str = "value") -> str:
    cid = str(row["id"])
    return f"{num(row[value], cid)} [{num(row[low], cid)}, {num(row[high], cid)}]"


def pval(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def verdict(row: pd.Series) -> str:
    v = str(row["verdict"])
    return f"**{v}** (within margin)" if str(row.get("within_margin")).lower() == "true" else f"**{v}**"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def row_of(frame: pd.DataFrame, cid: str) -> pd.Series:
    """The row of ``cid`` of a table indexed by id, with its id as a field."""
    row = frame.loc[cid].copy()
    row["id"] = cid
    return row


def primary(v2: Path) -> str:
    p = pd.read_csv(v2 / "primary.csv")
    out = []
    for split, name in (("eval", "evaluation split (150 + 150 per dataset; primary)"),
                        ("test", "the paper's test split (15 + 15; secondary, two-level bootstrap CIs)")):
        s = p[p["split"] == split].set_index("id")
        rows = []
        for d, i in SCENARIOS:
            rows.append([d, i] + [interval(row_of(s, f"{k}-{d}-{i}")) for k in COMPARISONS])
        rows.append(["**pooled**", "six scenarios"] + [interval(row_of(s, k)) for k in COMPARISONS])
        out.append(f"Final ESSP, {name}: mean paired difference [95% CI] over 10 seeds\n\n"
                   + table(["dataset", "initial set"] + list(COMPARISONS.values()), rows))
        pooled = []
        for k, label in COMPARISONS.items():
            r = row_of(s, k)
            cis = [interval(r)] + ([interval(r, "two_level_ci_low", "two_level_ci_high")] if split == "eval" else [])
            pooled.append([k, label, *cis, pval(r["p_value"]), pval(r["p_holm"]), pval(r["p_tost_holm"]),
                           verdict(r), f"{num(r['re_value'], k)} [{num(r['re_ci_low'], k)}, "
                                       f"{num(r['re_ci_high'], k)}], p {pval(r['re_p_value'])}"])
        cis = ["value [t CI]", "two-level bootstrap CI"] if split == "eval" else ["value [two-level CI]"]
        out.append(table(["id", "comparison", *cis, "p", "p Holm", "p TOST Holm", "verdict",
                          "scenarios as random: value [CI], p"], pooled))
    return "\n\n".join(out)


def claims(v2: Path, v1: Path | None) -> str:
    c = pd.read_csv(v2 / "claims.csv")
    old = pd.read_csv(v1 / "claims.csv").set_index("id")["verdict"] if v1 else pd.Series(dtype=str)
    ev, te = (c[c["split"] == s].set_index("id") for s in ("eval", "test"))
    rows = []
    for cid in ev.index:
        if cid.startswith("P") or cid[-1] in "abc":
            continue
        e, t = row_of(ev, cid), row_of(te, cid) if cid in te.index else None
        cells = [cid, str(e["claim"]), str(e["statistic"]), interval(e), pval(e["p_holm"]), verdict(e)]
        if t is not None:
            cells += [interval(t), verdict(t)]
        else:
            cells += ["—", "—"]
        cells.append(str(old.get(cid, "—")))
        rows.append(cells)
    top = table(["id", "claim", "statistic", "eval: value [95% CI]", "p Holm", "eval verdict",
                 "test: value [two-level CI]", "test verdict", "v1 verdict"], rows)
    parts = []
    for cid in ev.index:
        if cid[-1] in "abc" and not cid.startswith("P"):
            e, t = row_of(ev, cid), row_of(te, cid)
            parts.append([cid, str(e["statistic"]), interval(e), pval(e["p_holm"]), pval(e["p_tost_holm"]),
                          verdict(e), interval(t), verdict(t), str(old.get(cid, "—"))])
    return top + "\n\nThe parts of the conjunctions:\n\n" + table(
        ["id", "statistic", "eval: value [95% CI]", "p Holm", "p TOST Holm", "eval verdict",
         "test: value [two-level CI]", "test verdict", "v1 verdict"], parts)


def sensitivity(v2: Path) -> str:
    s = pd.read_csv(v2 / "claims_sensitivity.csv")
    s["shown"] = s["verdict"] + s["within_margin"].map(lambda w: " (within margin)" if str(w).lower() == "true"
                                                      else "")
    wide = s.pivot_table(index=["split", "id"], columns="margin_factor", values="shown", aggfunc="first")
    moved = wide[(wide[0.5] != wide[1.0]) | (wide[2.0] != wide[1.0])]
    if moved.empty:
        return "No verdict changes at half or at twice the margins."
    rows = [[split, cid, wide.loc[(split, cid), 0.5], wide.loc[(split, cid), 1.0], wide.loc[(split, cid), 2.0]]
            for split, cid in moved.index]
    return (f"{len(moved)} of {len(wide)} verdicts (both splits) change with the margin:\n\n"
            + table(["split", "id", "margin × 0.5", "margin × 1 (the result)", "margin × 2"], rows))


def decomposition(v2: Path) -> str:
    d = pd.read_csv(v2 / "variance_decomposition.csv")
    per_scenario = d["id"].str.contains(SCENARIO_SUFFIX)
    pooled = d[~per_scenario & ~d["id"].str.match(r"C1[abc]$")]  # C1a-c are P1-P3
    rows = []
    for _, r in pooled.iterrows():
        rows.append([r["split"], r["id"], str(r["statistic"]), f"{r['seed_sd']:.4f}", f"{r['case_se']:.4f}",
                     "—" if pd.isna(r["case_share"]) else f"{r['case_share']:.0%}"])
    scen = d[per_scenario].groupby("split")["case_share"].median()
    return (table(["split", "id", "statistic", "seed SD of the unit values", "SE from the cases (drawn within group)",
                   "case share of the variance"], rows)
            + "\n\nMedian case share over the per-scenario comparisons: "
            + ", ".join(f"{k} split {v:.0%}" for k, v in scen.items()) + ".")


def ci3(row: pd.Series, m: str, digits: int = 3) -> str:
    """``mean [low, high]`` of a measure of the report's tables, or the mean alone without an interval."""
    if m not in row or pd.isna(row[m]):
        return "—"
    if f"{m}_ci_low" not in row or pd.isna(row[f"{m}_ci_low"]):
        return f"{row[m]:.{digits}f}"
    return f"{row[m]:.{digits}f} [{row[f'{m}_ci_low']:.{digits}f}, {row[f'{m}_ci_high']:.{digits}f}]"


def final_budget(v2: Path) -> str:
    """Per scenario and strategy at the final budget on the evaluation split (``final_stats_eval.csv``)."""
    path = v2 / "final_stats_eval.csv"
    if not path.is_file():
        return "No evaluation split in these records."
    f = pd.read_csv(path)
    short = {"weighted-localized-entropy": "**WLE**", "localized-entropy": "localized entropy"}
    rows = [[r["dataset"], r["init"], short.get(r["strategy"], r["strategy"]), ci3(r, "dice_all"), ci3(r, "delta"),
             ci3(r, "essp"), ci3(r, "essp_auc"), ci3(r, "g1_acquired_share", 2)] for _, r in f.iterrows()]
    n = ", ".join(str(v) for v in sorted(set(f["n_seeds"])))
    return (f"Mean [95% t interval] over {n} seeds, evaluation split:\n\n"
            + table(["dataset", "initial set", "strategy", "Dice", "Δ", "ESSP", "ESSP AUC",
                     "Group 1 share of acquisitions"], rows))


def table1(v2: Path) -> str:
    """Table 1 on each split (``table1_baselines_eval.csv``, ``table1_baselines.csv``), the paper's beside."""
    out = []
    for name, split in (("table1_baselines_eval.csv", "evaluation split"),
                        ("table1_baselines.csv", "the paper's test split")):
        if not (v2 / name).is_file():
            continue
        t = pd.read_csv(v2 / name)
        rows = [[r["dataset"], r["cohort"], f"{r['dice_g1']:.3f} / {r['dice_g1_paper']:.2f}",
                 f"{r['dice_g2']:.3f} / {r['dice_g2_paper']:.2f}", f"{r['dice_all']:.3f} / {r['dice_all_paper']:.2f}",
                 f"{ci3(r, 'essp')} ({r['essp_paper']:.2f})", f"{ci3(r, 'delta')} ({r['delta_paper']:g})",
                 str(int(r["n_seeds"]))] for _, r in t.iterrows()]
        out.append(f"Table 1 on {split} (ours / paper; mean [95% t interval] over the training seeds):\n\n"
                   + table(["dataset", "cohort", "Dice G1", "Dice G2", "Dice all", "ESSP (paper)", "Δ (paper)",
                            "seeds"], rows))
    return "\n\n".join(out) or "No baselines in these records."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("v2_report", type=Path, help="the report folder of docs/results/v2")
    ap.add_argument("v1_report", type=Path, nargs="?", help="the report folder of docs/results/standard")
    args = ap.parse_args(argv)
    needed = [args.v2_report / name for name in ("claims.csv", "primary.csv", "claims_sensitivity.csv",
                                                 "variance_decomposition.csv")]
    needed += [args.v1_report / "claims.csv"] if args.v1_report else []
    for path in needed:
        if not path.is_file():
            print(f"error: {path} is missing: run `fairal report` on the records first (the v2 records need all "
                  f"the plan's seeds)", file=sys.stderr)
            return 2
    sections = [("Primary endpoint", primary(args.v2_report)), ("Claims", claims(args.v2_report, args.v1_report)),
                ("Margin sensitivity", sensitivity(args.v2_report)),
                ("Variance decomposition", decomposition(args.v2_report)),
                ("Final budget per scenario", final_budget(args.v2_report)), ("Table 1", table1(args.v2_report))]
    print("\n\n".join(f"## {title}\n\n{body}" for title, body in sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())

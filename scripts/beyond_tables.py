"""Markdown tables of docs/beyond.md from a study's report and tidy records.

    fairal report docs/results/beyond/groups-unknown --out gu-report
    python scripts/beyond_tables.py gu-report --records docs/results/beyond/groups-unknown > tables.md

Every number of a study's results section is printed here from the report's ``study_paired.csv``,
``study_summary.csv`` and ``study_baselines.csv`` and, with ``--records``, the records' ``rounds.csv`` (the group
classifier's accuracy on the pool where the pool's groups were hidden; Eq. 2's weight of Group 1 and each run's
share of Group 1 among its acquired cases), so none is copied by hand.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from fairal.records import G1_ACQUIRED_SHARE, study_measures

FAMILIES = {"pooled": "Primary: final ESSP on the evaluation split, pooled over the initial sets",
            "secondary": "Secondary: final Δ, Dice and ESSP AUC, pooled over the initial sets",
            "scenario": "Per initial set: final ESSP"}


def num(v, digits: int = 4, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def pval(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def verdict(row: pd.Series) -> str:
    v = row.get("verdict")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    within = str(row.get("within_margin")).lower() == "true" and v in ("confirmed", "refuted")  # rule 4
    return f"**{v}** (within margin)" if within else f"**{v}**"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def paired(report: Path) -> str:
    p = pd.read_csv(report / "study_paired.csv")
    out = []
    for family, title in FAMILIES.items():
        f = p[p["family"] == family]
        if f.empty:
            continue
        rows = [[r["dataset"], r["init"], str(r["statistic"]),
                 f"{num(r['value'], signed=True)} [{num(r['ci_low'], signed=True)}, {num(r['ci_high'], signed=True)}]",
                 pval(r["p_holm"]), pval(r["p_tost_holm"]), verdict(r), str(int(r["n"]))] for _, r in f.iterrows()]
        out.append(f"{title} (the seed is the unit; Holm within the family)\n\n" + table(
            ["dataset", "initial set", "comparison", "mean difference [95% CI]", "p (Holm)", "TOST p (Holm)",
             "verdict", "seeds"], rows))
    return "\n\n".join(out)


def summary(report: Path) -> str:
    s = pd.read_csv(report / "study_summary.csv")

    def cell(r, m):
        if m not in r or pd.isna(r[m]):
            return "—"
        ci = r.get(f"{m}_ci")
        return f"{num(r[m], 3 if m == G1_ACQUIRED_SHARE else 4)} {ci if isinstance(ci, str) else ''}".strip()

    names = {**study_measures(), G1_ACQUIRED_SHARE: "Group 1 share of acquired"}
    measures = [m for m in names if m in s.columns]
    rows = [[r["dataset"], r["init"], r["strategy"], *[cell(r, m) for m in measures], str(int(r["n_seeds"]))]
            for _, r in s.iterrows()]
    return ("Each arm: mean over seeds [95% t CI], evaluation split\n\n"
            + table(["dataset", "initial set", "arm", *[names[m] for m in measures], "seeds"], rows))


def baselines(report: Path) -> str:
    path = report / "study_baselines.csv"
    if not path.is_file():
        return ""
    b = pd.read_csv(path)
    cols = [c for c in ("dice_g1", "dice_g2", "gap_g1_g2", "dice_all", "essp", "delta") if c in b.columns]
    rows = [[r["dataset"], r["cohort"], *[num(r[c], signed=c == "gap_g1_g2") for c in cols], str(int(r["n_seeds"]))]
            for _, r in b.iterrows()]
    return ("Baselines (one model per training cohort), evaluation split\n\n"
            + table(["dataset", "trained on", *cols, "training seeds"], rows))


def group_classifier(records: Path) -> str:
    """Where the pool's groups were hidden: the group classifier's accuracy on the pool (its true groups) at the
    first, middle and last round, mean and range over the runs."""
    r = pd.read_csv(records / "rounds.csv")
    if "pool_group_accuracy" not in r.columns or r["pool_group_accuracy"].isna().all():
        return ""
    r = r[r["pool_group_accuracy"].notna()]
    rounds = sorted(r["round"].unique())
    picks = sorted({rounds[0], rounds[len(rounds) // 2], rounds[-1]})
    rows = []
    for (d, s), g in r.groupby(["dataset", "strategy"], sort=True):
        cells = []
        for k in picks:
            a = g.loc[g["round"] == k, "pool_group_accuracy"]
            cells.append(f"{a.mean():.3f} ({a.min():.3f}–{a.max():.3f})" if len(a) else "—")
        rows.append([d, s, *cells, str(g.groupby(["init", "seed"]).ngroups)])
    labels = [f"round {k} ({int(r.loc[r['round'] == k, 'n_labeled'].iloc[0])} labeled)" for k in picks]
    return ("The group classifier's accuracy on the pool (true groups), mean (min–max) over runs\n\n"
            + table(["dataset", "arm", *labels, "runs"], rows))


def weights(records: Path, strategy: str | None = None) -> str:
    """Per dataset, initial set and arm (only ``strategy`` where given): Eq. 2's weight of Group 1 (``w_g1``) over
    all rounds of all runs, mean (min–max), and the share of Group 1 among each run's acquired cases, mean
    (min–max over runs): how far single runs swing, which the mean and its interval do not show."""
    from fairal.report.claims import run_summary  # each run's Group 1 share of its acquired cases

    r = pd.read_csv(records / "rounds.csv")
    if not {"w_g1", "n_labeled_g1"} <= set(r.columns) or r["w_g1"].isna().all():
        return ""
    if strategy is not None:
        r = r[r["strategy"] == strategy]
    runs = run_summary(r)
    rows = []
    for (d, i, s), g in r.groupby(["dataset", "init", "strategy"], sort=True):
        mine = runs[(runs["dataset"] == d) & (runs["init"] == i) & (runs["strategy"] == s)]
        share = mine["g1_acquired_share"].dropna() if "g1_acquired_share" in mine else pd.Series(dtype=float)
        w = g["w_g1"].dropna()
        rows.append([d, i, s, f"{w.mean():.3f} ({w.min():.3f}–{w.max():.3f})" if len(w) else "—",
                     f"{share.mean():.3f} ({share.min():.2f}–{share.max():.2f})" if len(share) else "—",
                     str(len(mine))])
    return ("Eq. 2's weight of Group 1 (all rounds) and Group 1's share of the acquired cases (per run), mean "
            "(min–max)\n\n" + table(["dataset", "initial set", "arm", "w_g1", "Group 1 share of acquired", "runs"],
                                      rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="the study's report folder (fairal report RECORDS --out REPORT)")
    ap.add_argument("--records", type=Path, help="the study's tidy records (for the group classifier's accuracy)")
    args = ap.parse_args(argv)
    if not (args.report / "study_paired.csv").is_file():
        print(f"{args.report}: no study_paired.csv (not a study's report?)", file=sys.stderr)
        return 2
    try:
        parts = [paired(args.report), summary(args.report), baselines(args.report)]
        if args.records is not None:
            parts += [group_classifier(args.records), weights(args.records)]
    except pd.errors.EmptyDataError:  # a report drawn before any round of the study had finished
        print(f"{args.report}: the study's tables are empty (no finished round yet?)", file=sys.stderr)
        return 2
    page = args.report / "report.html"
    if not parts[0] and page.is_file() and "Withheld:" in page.read_text():
        print(f"{args.report}: no paired comparison: withheld, runs of the study's plan are missing (report.html "
              "says which)", file=sys.stderr)
    print("\n\n".join(p for p in parts if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())

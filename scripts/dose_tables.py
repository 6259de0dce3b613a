"""Markdown tables of docs/REPRODUCTION.md's dose-response section ("When does it pay off?") from a study's report.

    fairal report docs/results/v3 --out v3-report
    python scripts/dose_tables.py v3-report > tables.md

Every number is printed from the report's ``dose_response.csv``, ``dose_trend.csv`` and ``dose_onset.csv``
(docs/analysis-plan-v3.md §2-§4), so none is copied by hand: per rung the primary comparison with its verdict and
random's Δ penalty, the trend over the rungs' gaps, the secondary comparisons, Δ and Dice described, the
exploratory arms, and one sentence per judged comparison on the gap from which it is confirmed.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from reproduction_tables import pval, table  # noqa: E402

FILES = ("dose_response.csv", "dose_trend.csv", "dose_onset.csv")
DESCRIBED = "Final Δ and Dice on the evaluation split, a − b of each comparison (Δ: negative, a fairer; no verdict)"


def ci(row: pd.Series, value: str = "value", low: str = "ci_low", high: str = "ci_high", digits: int = 4,
       sign: str = "+") -> str:
    """``+0.0012 [-0.0010, +0.0034]`` (``sign=""``: ``0.031 [0.026, 0.036]``), or — where the value is missing."""
    v = row[value]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    f = f"{sign}.{digits}f"
    return f"{v:{f}} [{row[low]:{f}}, {row[high]:{f}}]"


def verdict(row: pd.Series) -> str:
    v = row.get("verdict")
    if not isinstance(v, str) or not v:
        return "—"
    return f"**{v}** (within margin)" if str(row.get("within_margin")).lower() == "true" else f"**{v}**"


def rung(row: pd.Series) -> list[str]:
    """A rung's cells: its name, calibrated gap [CI] and Group 1's volume change in Group 2 SDs."""
    sd = row["volume_change_sd"]
    return [f"`{row['dataset']}`", ci(row, "gap", "gap_ci_low", "gap_ci_high", 3, sign=""),
            "—" if pd.isna(sd) else f"{sd:+.2f}"]


def primary(dose: pd.DataFrame) -> str:
    rows = [rung(r) + [ci(r), pval(r["p_value"]), pval(r["p_holm"]), pval(r["p_tost_holm"]),
                       "—" if pd.isna(r["random_penalty"]) else f"{r['random_penalty']:.4f}",
                       "—" if pd.isna(r["margin_share_of_penalty"]) else f"{r['margin_share_of_penalty']:.0%}",
                       verdict(r)]
            for _, r in dose[dose["family"] == "dose-primary"].sort_values(["ladder", "gap"]).iterrows()]
    comparison = ", ".join(sorted(set(dose.loc[dose["family"] == "dose-primary", "comparison"])))
    return (f"{comparison}, final ESSP on the evaluation split: mean paired difference [95% CI] over the seeds\n\n"
            + table(["rung", "gap [95% CI]", "Group 1 volume (SD)", "difference [95% CI]", "p", "p Holm",
                     "p TOST Holm", "random's Δ penalty", "margin / penalty", "verdict"], rows))


def trend(trends: pd.DataFrame) -> str:
    rows = [[f"`{r['ladder']}`", str(r["comparison"]), str(r["role"]), ci(r, "slope_per_0.1_gap"),
             pval(r["p_value"]), str(int(r["n"])), str(int(r["rungs"]))]
            for _, r in trends.sort_values(["ladder", "role", "comparison"], ascending=[True, False, True]).iterrows()]
    return ("Trend: each seed's least-squares slope of the final-ESSP difference over the rungs' gaps, per 0.1 of "
            "gap, mean [95% CI] over the seeds\n\n"
            + table(["ladder", "comparison", "role", "slope per 0.1 gap [95% CI]", "p", "seeds", "rungs"], rows))


def secondary(dose: pd.DataFrame) -> str:
    judged = dose[dose["family"] == "dose-secondary"].sort_values(["ladder", "comparison", "gap"])
    rows = [[f"`{r['dataset']}`", str(r["comparison"]), ci(r), pval(r["p_holm"]), pval(r["p_tost_holm"]),
             verdict(r)] for _, r in judged.iterrows()]
    return ("Secondary comparisons, final ESSP on the evaluation split (Holm within the family)\n\n"
            + table(["rung", "comparison", "difference [95% CI]", "p Holm", "p TOST Holm", "verdict"], rows))


def described(dose: pd.DataFrame, family: str, title: str) -> str:
    """Per rung and comparison, every metric's difference with its CI (no verdict)."""
    part = dose[dose["family"] == family]
    if part.empty:
        return f"{title}: none"
    metrics = list(dict.fromkeys(part["metric"]))
    rows = []
    for (dataset, comparison), g in part.groupby(["dataset", "comparison"], sort=False):
        by = g.set_index("metric")
        rows.append([f"`{dataset}`", str(comparison), str(int(g["n"].max()))]
                    + [ci(by.loc[m]) if m in by.index else "—" for m in metrics])
    return f"{title}\n\n" + table(["rung", "comparison", "seeds"] + [f"{m} [95% CI]" for m in metrics], rows)


def onset(onsets: pd.DataFrame) -> str:
    from fairal.report.dose import onset_sentence

    return "\n".join(f"- {onset_sentence(r)}" for _, r in onsets.iterrows())  # no onset: NaN, said as none


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path, help="the report folder of a ladder study's records (fairal report)")
    args = ap.parse_args(argv)
    for name in FILES:
        if not (args.report / name).is_file():
            print(f"error: {args.report / name} is missing: run `fairal report` on a ladder study's records first "
                  "(its comparisons need all the plan's seeds)", file=sys.stderr)
            return 2
    dose, trends, onsets = (pd.read_csv(args.report / name) for name in FILES)
    sections = [("Primary endpoint per rung", primary(dose)), ("Trend over the rungs", trend(trends)),
                ("Secondary", secondary(dose)),
                ("Δ and Dice, described", described(dose, "dose-described", DESCRIBED)),
                ("Exploratory", described(dose, "exploratory", "Arms not at every rung: described, no verdict")),
                ("From which gap", onset(onsets))]
    print("\n\n".join(f"### {title}\n\n{body}" for title, body in sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())

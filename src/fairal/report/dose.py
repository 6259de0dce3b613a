"""The dose-response view of a study's ladders (:mod:`fairal.grid.ladder`): per rung, the calibrated gap of a Group
2-only model and the paired differences between the strategies; a figure with the gap on x and the difference on
y; and the trend of each difference over the gap, the seed as the unit.

Comparisons, each dataset measured on its primary split (as the study report): the reference against each other
arm, and each arm against ``random`` where the study has it. Families (Holm within each, separately for the
superiority and the TOST p-values, docs/analysis-plan-v3.md): ``dose-primary``, the reference − random at every
rung (the reference against each arm where there is no random); ``dose-secondary``, the other final-ESSP
comparisons; ``dose-described``, final Δ and Dice (described, never a verdict of the plan). An arm that has not
run at every rung of a ladder is ``exploratory``: in a family of its own. Every value is the comparison's
a − b as its name says, Δ too (negative: a fairer).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fairal.io import within, write_csv  # noqa: E402
from fairal.metrics import DICE, PRIMARY  # noqa: E402
from fairal.records import (  # noqa: E402
    RANDOM,
    RUN_KEYS,
    WLE,
    auc_column,
    equivalence_margin,
    split_column,
    study_measures,
)
from fairal.report.figures import colours_for  # noqa: E402
from fairal.report.plan import (  # noqa: E402
    AL_ON,
    Analysis,
    Part,
    al_measure,
    match,
    verdict_rows,
)
from fairal.report.tidy import Results, finished_rounds, of_datasets  # noqa: E402
from fairal.stats import mean_ci, sign_flip_test  # noqa: E402

#: Families whose rows are described, not judged.
UNJUDGED = ("dose-described", "exploratory")
DOSE_COLUMNS = ["ladder", "dataset", "split", "gap", "gap_ci_low", "gap_ci_high", "volume_change_sd", "family",
                "comparison", "metric", "value", "ci_low", "ci_high", "p_value", "p_holm", "margin", "p_tost",
                "p_tost_holm", "within_margin", "n", "verdict", "random_penalty", "margin_share_of_penalty"]
TREND_COLUMNS = ["ladder", "comparison", "role", "metric", "slope_per_0.1_gap", "ci_low", "ci_high", "p_value", "n",
                 "rungs"]


def view() -> list[str]:
    """Measures of the view: the study's final measures, final ESSP (the verdicts), final Δ and Dice (described)."""
    return [m for m in study_measures() if m != auc_column(PRIMARY)]


def rungs(info: dict) -> dict[str, list[dict]]:
    """Each ladder's datasets with their ``harm`` (study.json), by ascending calibrated gap."""
    out: dict[str, list[dict]] = {}
    for d in info.get("study", {}).get("datasets", []):
        harm = d.get("harm") if isinstance(d, dict) else None
        if isinstance(harm, dict) and harm.get("ladder") and isinstance(harm.get("gap"), int | float):
            out.setdefault(str(harm["ladder"]), []).append({"dataset": str(d["name"]), **harm})
    return {k: sorted(v, key=lambda r: r["gap"]) for k, v in out.items()}


def comparisons(arms: list[str], reference: str) -> list[tuple[str, str]]:
    """(a, b) pairs, a − b: the reference against each other arm, then each other arm against random."""
    pairs = [(reference, a) for a in arms if a != reference]
    if RANDOM in arms:
        pairs += [(a, RANDOM) for a in arms if a not in (reference, RANDOM)]
    return pairs


def _family(a: str, b: str, reference: str, arms: list[str], complete: set[str], metric: str) -> str:
    if not {a, b} <= complete:
        return "exploratory"
    if metric != PRIMARY:
        return "dose-described"
    primary = (reference, RANDOM) if RANDOM in arms else None
    return "dose-primary" if primary is None and a == reference or (a, b) == primary else "dose-secondary"


def dose_parts(results: Results, info: dict, splits: dict[str, str]) -> tuple[list[Part], dict]:
    """The parts of every ladder, run (estimate, CI, p-values), and their (ladder, dataset) by part id."""
    reference = info.get("study", {}).get("reference", WLE)
    runs = finished_rounds(results)
    parts, where = [], {}
    for ladder, members in rungs(info).items():
        names = [m["dataset"] for m in members if m["dataset"] in splits]
        arms_at = {d: set(runs.loc[runs["dataset"] == d, "strategy"]) for d in names}
        arms = sorted(set().union(*arms_at.values())) if arms_at else []
        complete = set.intersection(*arms_at.values()) if arms_at else set()
        for d in names:
            sub = of_datasets(results, [d])
            m = al_measure(finished_rounds(sub), sub.cases, sub.round_cases, splits[d])
            analysis = Analysis(m, splits[d], seed=0)
            for a, b in comparisons(arms, reference):
                for metric in view():
                    # a − b as the comparison's name says, for Δ too (negative: a fairer); Δ is described only
                    pairs = match(m, {"strategy": a}, {"strategy": b}, AL_ON, where={"dataset": d})
                    if not len(pairs.ia):
                        continue
                    family = _family(a, b, reference, arms, complete, metric)
                    pid = f"{ladder}:{d}:{a}:{b}:{metric}"
                    parts.append(analysis.run(Part(pid, f"{a} vs {b}", f"{study_measures()[metric]}: {a} - {b}",
                                                   metric, pairs, family),
                                              two_level_ci=False))
                    where[pid] = (ladder, d)
    return parts, where


def dose_table(results: Results, info: dict, splits: dict[str, str]) -> pd.DataFrame:
    """``dose_response.csv``: per ladder, rung and comparison, the estimate, CI, tests and verdict, the rung's
    calibrated gap, and random's Δ penalty there (``mean(Dice - ESSP)`` of its final rounds: all a fairness
    strategy could win over random in ESSP) with the ESSP margin as a share of it."""
    parts, where = dose_parts(results, info, splits)
    if not parts:
        return pd.DataFrame(columns=DOSE_COLUMNS)
    harm = {(lad, r["dataset"]): r for lad, members in rungs(info).items() for r in members}
    final = _final(results)  # once, not per row
    rows = []
    for r in verdict_rows(parts):
        if r["family"] in UNJUDGED:  # described: an estimate and its CI, never a verdict of the plan
            r.update(verdict="", within_margin=None, p_holm=float("nan"), p_tost_holm=float("nan"))
        ladder, d = where[r["id"]]
        _, _, a, b, metric = r["id"].split(":")
        h = harm[(ladder, d)]
        penalty = random_penalty(final, d, splits[d])
        rows.append({**r, "ladder": ladder, "dataset": d, "split": splits[d], "gap": h["gap"],
                     "gap_ci_low": h.get("gap_ci_low"), "gap_ci_high": h.get("gap_ci_high"),
                     "volume_change_sd": h.get("volume_change_sd"), "comparison": f"{a} - {b}", "metric": metric,
                     "random_penalty": penalty,
                     "margin_share_of_penalty": equivalence_margin(PRIMARY) / penalty if penalty and penalty > 0
                     else None})
    return pd.DataFrame(rows)[DOSE_COLUMNS]


ONSET_COLUMNS = ["ladder", "comparison", "family", "onset_dataset", "onset_gap", "confirmed_from", "rungs",
                 "dice_difference", "dice_ci_low", "dice_ci_high"]


def onset_table(table: pd.DataFrame) -> pd.DataFrame:
    """``dose_onset.csv``: per ladder and judged comparison (final ESSP, dose-primary and dose-secondary), the lowest
    rung from which the comparison is ``confirmed`` at every higher rung too (docs/analysis-plan-v3.md §4: "at which
    gap WLE starts to beat random"), with the final Dice difference there (mean, 95% CI: what it costs or gains);
    ``onset_dataset`` empty and ``confirmed_from`` 0 where the highest rung is not confirmed."""
    rows = []
    judged = table[(table["metric"] == PRIMARY) & table["family"].isin(["dose-primary", "dose-secondary"])]
    for (ladder, comparison), g in judged.groupby(["ladder", "comparison"], sort=False):
        g = g.sort_values("gap")
        confirmed = (g["verdict"] == "confirmed").to_numpy()
        first = len(confirmed)
        while first > 0 and confirmed[first - 1]:
            first -= 1
        row = {"ladder": ladder, "comparison": comparison, "family": g["family"].iloc[0], "onset_dataset": "",
               "onset_gap": float("nan"), "confirmed_from": len(confirmed) - first, "rungs": len(confirmed),
               "dice_difference": float("nan"), "dice_ci_low": float("nan"), "dice_ci_high": float("nan")}
        if first < len(confirmed):
            at = g.iloc[first]
            dice = table[(table["ladder"] == ladder) & (table["comparison"] == comparison)
                         & (table["metric"] == DICE.name) & (table["dataset"] == at["dataset"])]
            row.update(onset_dataset=at["dataset"], onset_gap=float(at["gap"]))
            if len(dice):
                row.update(dice_difference=float(dice["value"].iloc[0]), dice_ci_low=float(dice["ci_low"].iloc[0]),
                           dice_ci_high=float(dice["ci_high"].iloc[0]))
        rows.append(row)
    return pd.DataFrame(rows, columns=ONSET_COLUMNS)


def onset_sentence(row: pd.Series) -> str:
    """One sentence of a row of :func:`onset_table`."""
    if not isinstance(row["onset_dataset"], str) or not row["onset_dataset"]:  # "" (or NaN, read from CSV)
        return (f"{row['comparison']} ({row['ladder']}): not confirmed at the highest of its {row['rungs']} rungs, so "
                "at no gap of this ladder from which every higher rung is confirmed.")
    dice = (f"; final Dice difference there {row['dice_difference']:+.4f} [{row['dice_ci_low']:+.4f}, "
            f"{row['dice_ci_high']:+.4f}]" if np.isfinite(row["dice_difference"]) else "")
    return (f"{row['comparison']} ({row['ladder']}): confirmed from rung {row['onset_dataset']} (gap "
            f"{row['onset_gap']:.3f}) upward, {row['confirmed_from']} of {row['rungs']} rungs{dice}.")


def random_penalty(final: pd.DataFrame, dataset: str, split: str) -> float | None:
    """``mean(dice_all - essp)`` of random's final rounds (``final``: the last round of each finished run) of
    ``dataset`` on ``split`` (None without random)."""
    rows = final[(final["dataset"] == dataset) & (final["strategy"] == RANDOM)]
    if rows.empty:
        return None
    return float((rows[split_column(DICE.name, split)] - rows[split_column(PRIMARY, split)]).mean())


def _final(results: Results) -> pd.DataFrame:
    rounds = finished_rounds(results)
    return rounds.loc[rounds.groupby(RUN_KEYS)["round"].idxmax()] if not rounds.empty else rounds


def trend_table(results: Results, info: dict, splits: dict[str, str]) -> pd.DataFrame:
    """``dose_trend.csv``: per ladder and comparison of the families (final ESSP), the trend of the difference
    over the calibrated gap: per seed, the OLS slope of its rung differences (each the mean over the initial sets)
    on the rungs' gaps; the seeds' slopes as units (mean, 95% t CI, exact sign-flip p), per 0.1 of gap. Only
    seeds with a pair of every initial set at every rung count. ``role``: ``test`` for the plan's one trend test
    (the reference − random), ``described`` for the others."""
    reference = info.get("study", {}).get("reference", WLE)
    inits = info.get("study", {}).get("inits")
    final = _final(results)
    rows = []
    for ladder, members in rungs(info).items():
        names = [m["dataset"] for m in members if m["dataset"] in splits]
        if len(names) < 2:
            continue
        gaps = {m["dataset"]: m["gap"] for m in members}
        arms = sorted(set(final.loc[final["dataset"].isin(names), "strategy"]))
        for a, b in comparisons(arms, reference):
            diffs = [_seed_differences(final, d, a, b, splits[d], inits) for d in names]
            seeds = sorted(set.intersection(*(set(x.index) for x in diffs)))
            if len(seeds) < 2:
                continue
            x = np.array([gaps[d] for d in names])
            y = np.array([[float(dd[s]) for dd in diffs] for s in seeds])  # seeds x rungs
            slopes = 0.1 * ((y - y.mean(1, keepdims=True)) @ (x - x.mean())) / ((x - x.mean()) ** 2).sum()
            est = mean_ci(slopes)
            primary = (a, b) == ((reference, RANDOM) if RANDOM in arms else (reference, b))
            rows.append({"ladder": ladder, "comparison": f"{a} - {b}", "metric": PRIMARY,
                         "role": "test" if primary else "described",
                         "slope_per_0.1_gap": est.mean, "ci_low": est.ci_low, "ci_high": est.ci_high,
                         "p_value": sign_flip_test(slopes), "n": len(seeds), "rungs": len(names)})
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


def _seed_differences(final: pd.DataFrame, dataset: str, a: str, b: str, split: str,
                      inits: list | None = None) -> pd.Series:
    """Per seed, the mean over the initial sets of the paired final ESSP differences a − b; a seed that lacks a pair
    of one of ``inits`` (the study's) is left out."""
    col = split_column(PRIMARY, split)
    sub = final[final["dataset"] == dataset]
    wide = sub.pivot_table(index=["init", "seed"], columns="strategy", values=col)
    if a not in wide or b not in wide:
        return pd.Series(dtype=float)
    d = (wide[a] - wide[b]).dropna()
    counts = d.groupby(level="seed").size()
    whole = counts[counts >= len(inits)].index if inits else counts.index
    return d.groupby(level="seed").mean().loc[list(whole)]


def dose_figure(table: pd.DataFrame, out, ladder: str):
    """One figure of a ladder: x = the rung's calibrated gap (its CI as a horizontal bar), y = the final-ESSP
    difference of each comparison against random (or against the reference without random) with its CI; the
    ESSP margin as a band around 0."""
    rows = table[(table["ladder"] == ladder) & (table["metric"] == PRIMARY)]
    against = rows[rows["comparison"].str.endswith(f" - {RANDOM}")]
    rows = against if not against.empty else rows
    if rows.empty:
        return None
    names = list(dict.fromkeys(c.split(" - ")[0] if not against.empty else c.split(" - ")[1]
                               for c in rows["comparison"]))
    colours = colours_for(names)
    fig, ax = plt.subplots(figsize=(7.2, 4.2 + 0.22 * len(names)))
    margin = equivalence_margin(PRIMARY)
    ax.axhspan(-margin, margin, color="0.9", label=f"±{margin:g} margin")
    ax.axhline(0, color="0.5", lw=0.8)
    # arms at one rung sit side by side (a dodge of 1% of the gaps' span each), so that their CIs do not overlap
    dodge = 0.01 * max(rows["gap_ci_high"].max() - rows["gap_ci_low"].min(), 1e-9)
    for i, name in enumerate(names):
        r = rows[rows["comparison"].str.startswith(f"{name} - ")] if not against.empty else \
            rows[rows["comparison"].str.endswith(f" - {name}")]
        r = r.sort_values("gap")
        x = r["gap"] + (i - (len(names) - 1) / 2) * dodge
        described = r["family"].iloc[0] == "exploratory"  # not at every rung: no verdict, drawn hollow
        label = r["comparison"].iloc[0] + (f" (exploratory, {int(r['n'].max())} seeds)" if described else "")
        ax.errorbar(x, r["value"], yerr=[r["value"] - r["ci_low"], r["ci_high"] - r["value"]],
                    xerr=[r["gap"] - r["gap_ci_low"], r["gap_ci_high"] - r["gap"]], marker="o", capsize=3,
                    color=colours[name], mfc="white" if described else colours[name],
                    lw=2.2 if r["family"].iloc[0] == "dose-primary" else 1.2, label=label)
    split = ", ".join({"eval": "evaluation", "test": "test"}.get(x, x) for x in sorted(set(rows["split"])))
    ax.set_xlabel("gap of a Group 2-only model (calibrated: Dice G2 − G1)")
    ax.set_ylabel(f"final ESSP difference ({split} split)")
    ax.set_title(f"ladder {ladder}: paired difference against the gap (mean, 95% CI)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.tight_layout()
    path = within(out, f"dose_{ladder}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def calibration_figure(levels: pd.DataFrame, path, knob: str = "bias_mean", marks: list[dict] = (),
                       title: str = "") -> Path:
    """A harm calibration (``levels.csv``) as a figure: left, the gap of the Group 2-only model against the knob
    (mean, 95% CI; a level whose Group 1 structure vanished drawn hollow); right, Group 1's structure change in
    Group 2's SDs (its % of volume on the points). ``marks``: the rungs (``dataset``, ``value``, ``gap`` and its
    CI, ``volume_change_sd``), drawn as stars on both panels with their names."""
    lv = levels.sort_values("level")
    usable = lv["usable"].astype(bool) if "usable" in lv else pd.Series(True, index=lv.index)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    left.plot(lv["level"], lv["gap"], color="0.6", lw=1, zorder=1)
    for ok, face in ((True, "C0"), (False, "white")):
        part = lv[usable == ok]
        if part.empty:
            continue
        left.errorbar(part["level"], part["gap"], yerr=[part["gap"] - part["gap_ci_low"],
                                                        part["gap_ci_high"] - part["gap"]],
                      fmt="o", color="C0", mfc=face, capsize=3, zorder=2,
                      label="calibration level" if ok else "structure vanished")
    right.plot(lv["level"], lv["volume_change_sd"], "o-", color="C2")
    for _, r in lv.iterrows():
        right.annotate(f"{r['volume_change_pct']:+.0f}%", (r["level"], r["volume_change_sd"]), fontsize=7,
                       xytext=(4, 4), textcoords="offset points")
    for m in marks:
        left.errorbar([m["value"]], [m["gap"]], yerr=[[m["gap"] - m["gap_ci_low"]], [m["gap_ci_high"] - m["gap"]]],
                      fmt="*", ms=11, color="C3", capsize=3, zorder=3)
        left.annotate(str(m["dataset"]), (m["value"], m["gap"]), fontsize=8, xytext=(6, -10),
                      textcoords="offset points", color="C3")
        right.plot([m["value"]], [m["volume_change_sd"]], "*", ms=11, color="C3")
    if marks:
        left.plot([], [], "*", ms=11, color="C3", label="rung (measured again at its knob)")
    left.set_xlabel(knob)
    left.set_ylabel("gap: Dice G2 − Dice G1 (Group 2-only model)")
    left.legend(fontsize=8)
    right.axhline(0, color="0.5", lw=0.8)
    right.set_xlabel(knob)
    right.set_ylabel("Group 1 volume change (Group 2 SDs)")
    fig.suptitle(title or f"harm calibration: the gap against {knob}, and what it does to the anatomy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def calibration_figures(folder, ladders: dict[str, list[dict]], out) -> list[Path]:
    """``calibration_LADDER.png`` of each ladder whose calibration records (``folder/calibration/LADDER/levels.csv``,
    as ``fairal study`` and ``scripts/study_records.py`` keep them) are there, its rungs marked."""
    figs = []
    for ladder, members in ladders.items():
        levels = Path(folder) / "calibration" / ladder / "levels.csv" if folder is not None else None
        if levels is None or not levels.is_file():
            continue
        knob = str(members[0].get("knob", "bias_mean")) if members else "bias_mean"
        figs.append(calibration_figure(pd.read_csv(levels), within(out, f"calibration_{ladder}.png"), knob, members,
                                       f"ladder {ladder}: the gap of a Group 2-only model, and the anatomy"))
    return figs


def dose_tables(results: Results, info: dict, splits: dict[str, str], out, withheld: bool, folder=None):
    """What the report shows of the study's ladders: the rungs' calibration (a table, and its figure where the
    results ``folder`` holds the calibration's records), ``dose_response.csv``, ``dose_trend.csv`` and
    ``dose_onset.csv`` (written; their columns only while runs of the plan are missing) and the figures; None when
    the study has no ladder."""
    ladders = rungs(info)
    if not ladders:
        return None
    table = dose_table(results, info, splits) if not withheld else pd.DataFrame(columns=DOSE_COLUMNS)
    trend = trend_table(results, info, splits) if not withheld else pd.DataFrame(columns=TREND_COLUMNS)
    onset = onset_table(table)
    write_csv(within(out, "dose_response.csv"), table)
    write_csv(within(out, "dose_trend.csv"), trend)
    write_csv(within(out, "dose_onset.csv"), onset)
    calib = pd.DataFrame([{"ladder": lad, **{k: r.get(k) for k in ("dataset", "knob", "value", "target_gap", "gap",
                                                                   "gap_ci_low", "gap_ci_high", "volume_change_sd",
                                                                   "volume_change_pct", "g1_min_voxels")}}
                          for lad, members in ladders.items() for r in members])
    figs = [*calibration_figures(folder, ladders, out),
            *(p for lad in ladders for p in [dose_figure(table, out, lad)] if p is not None)]
    return calib, table, trend, onset, figs

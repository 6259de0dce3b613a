"""The report of any study (``fairal study``): per dataset and initial set, each strategy's final and
whole-budget measures with their CIs over seeds; the study's reference strategy paired against each other one
under the rule of docs/analysis-plan.md (the seed as the unit, sign-flip superiority and TOST equivalence,
Holm within each family); figures per dataset; the study file echoed.

Measured on the evaluation split when the datasets have one (the primary endpoint of the plan), else on the test
split. Families: ``pooled`` (per dataset, the reference against each strategy, each seed's mean over the initial
sets) and ``scenario`` (per dataset and initial set), for final ESSP; ``secondary`` for final Δ and Dice and the
ESSP AUC (per dataset, pooled).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fairal.errors import FairalError  # noqa: E402
from fairal.io import within, write_csv, write_text  # noqa: E402
from fairal.limits import MAX_RUNS, MAX_SEEDS, refuse_above  # noqa: E402
from fairal.metrics import bounds  # noqa: E402
from fairal.report.build import HEAD, html_table, settings_section, table1  # noqa: E402
from fairal.report.figures import colours_for, label, literal  # noqa: E402
from fairal.report.plan import (  # noqa: E402
    AL_ON,
    MARGINS,
    MIN_SEEDS_FOR_CLAIMS,
    Analysis,
    Part,
    al_measure,
    match,
    verdict_rows,
)
from fairal.report.records import (  # noqa: E402
    Results,
    curves,
    finished_rounds,
    on_evaluation_split,
    ordered,
    read_json_record,
)
from fairal.stats import mean_ci  # noqa: E402

MEASURES = {"essp": "final ESSP", "delta": "final Δ", "dice_all": "final Dice", "essp_auc": "ESSP AUC"}
PAIRED_COLUMNS = ["id", "dataset", "init", "family", "statistic", "metric", "value", "ci_low", "ci_high", "p_value",
                  "p_holm", "margin", "p_tost", "p_tost_holm", "within_margin", "n", "verdict"]


def study_info(folder: Path) -> dict | None:
    """``study.json`` of a study's results folder (None for another folder), read within fairal's limits: a JSON
    object whose plan (:func:`missing_runs`) is not larger than :data:`~fairal.limits.MAX_RUNS` runs of at most
    :data:`~fairal.limits.MAX_SEEDS` seeds, else a FairalError naming the file."""
    path = Path(folder) / "study.json"
    if not path.exists():
        return None
    info = read_json_record(path)
    study, seeds, profile = info.get("study", {}), info.get("seeds"), info.get("profile", {})
    for key, value in (("study", study), ("profile", profile)):
        if not isinstance(value, dict):
            raise FairalError(f"{path}: '{key}' must be a JSON object, got {type(value).__name__}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise FairalError(f"{path}: 'seeds' must be a whole number >= 1, got {seeds!r}")
    refuse_above(f"{path}: seeds", seeds or 0, MAX_SEEDS, "MAX_SEEDS")
    sizes = [study.get("datasets") or [], study.get("inits") or [], study.get("arms") or profile.get("strategies")
             or []]
    if not all(isinstance(v, list | str) for v in sizes):
        raise FairalError(f"{path}: the study's datasets, inits and strategies must be lists")
    refuse_above(f"{path}: the study's plan (runs)", math.prod(map(len, sizes)) * (seeds or 0), MAX_RUNS, "MAX_RUNS")
    return info


def split_of(results: Results) -> str:
    r = results.rounds
    return "eval" if "eval_essp" in r.columns and r["eval_essp"].notna().any() else "test"


def summary_table(results: Results, split: str) -> pd.DataFrame:
    """Per dataset, initial set and strategy: mean and 95% t CI over seeds of each measure (finished runs), and of
    Group 1's share of the acquired cases (with a group 1); the intervals clipped to each measure's range, as text
    (``MEASURE_ci``, 3 decimals) and as numbers (``MEASURE_ci_low``, ``MEASURE_ci_high``)."""
    m = al_measure(finished_rounds(results), results.cases, results.round_cases, split).runs
    rows = []
    for (d, i, s), g in m.groupby(["dataset", "init", "strategy"], sort=False):
        row = {"dataset": d, "init": i, "strategy": s, "n_seeds": len(g)}
        for metric in (*MEASURES, "g1_acquired_share"):  # and Group 1's share of the acquired cases
            values = g[metric].dropna().to_numpy(float) if metric in g.columns else []
            if len(values):  # (a dataset without a group 1 has no Group 1 share)
                e = mean_ci(values, bounds=bounds(metric))
                several = e.n > 1
                row.update({metric: e.mean, f"{metric}_ci": f"[{e.ci_low:.3f}, {e.ci_high:.3f}]" if several else "",
                            f"{metric}_ci_low": e.ci_low if several else float("nan"),
                            f"{metric}_ci_high": e.ci_high if several else float("nan")})
        rows.append(row)
    return pd.DataFrame(rows)


def baseline_table(results: Results, split: str) -> pd.DataFrame:
    """``study_baselines.csv``: Table 1 on the study's datasets (a study with ``baselines = true``): per dataset
    and training cohort, each group's Dice, Dice, ESSP and Δ on the split the study measures (the mean over
    training seeds, with the interval of ESSP and Δ from several), and ``gap_g1_g2`` = Group 1's Dice − Group 2's
    (negative: Group 1 segmented worse; the Group 2-only model's gap is a bias's manipulation check). The paper's
    own Table 1 is not beside it: a study's datasets are not the paper's."""
    source = on_evaluation_split(results) if split == "eval" else results
    if source is None or source.baselines is None or source.baselines.empty:
        return pd.DataFrame()
    t = table1(source)
    t = t[[c for c in t.columns if not c.endswith("_paper")]].copy()
    if {"dice_g1", "dice_g2"} <= set(t.columns):
        t.insert(t.columns.get_loc("dice_g2") + 1, "gap_g1_g2", t["dice_g1"] - t["dice_g2"])
    return t.reset_index(drop=True)


def paired_parts(m, reference: str, others: list[str]) -> list[Part]:
    """The reference against each other strategy: final ESSP pooled per dataset and per scenario, and the
    secondary measures pooled per dataset."""
    parts = []
    for d in ordered(set(m.runs["dataset"]), []):
        inits = ordered(set(m.runs.loc[m.runs["dataset"] == d, "init"]), [])
        for other in others:
            for metric, family in (("essp", "pooled"), ("delta", "secondary"), ("dice_all", "secondary"),
                                   ("essp_auc", "secondary")):
                sign = -1.0 if metric == "delta" else 1.0  # a smaller Δ is better: the difference is flipped
                pairs = match(m, {"strategy": reference}, {"strategy": other}, AL_ON, sign=sign,
                              where={"dataset": d})
                if len(pairs.ia):
                    parts.append(Part(f"{d}:{metric}:{other}", f"{reference} vs {other}", _statistic(
                        metric, reference, other), metric, pairs, family))
            for init in inits:
                pairs = match(m, {"strategy": reference}, {"strategy": other}, AL_ON,
                              where={"dataset": d, "init": init})
                if len(pairs.ia):
                    parts.append(Part(f"{d}:{init}:{other}", f"{reference} vs {other}",
                                      _statistic("essp", reference, other), "essp", pairs, "scenario"))
    return parts


def _statistic(metric: str, a: str, b: str) -> str:
    if metric == "delta":
        return f"{MEASURES[metric]}: {b} - {a} (positive: {a} fairer)"
    return f"{MEASURES[metric]}: {a} - {b}"


def paired_table(results: Results, reference: str, split: str) -> pd.DataFrame:
    """``study_paired.csv``: every comparison of :func:`paired_parts` with its verdict."""
    rounds = finished_rounds(results)
    if rounds.empty or reference not in set(rounds["strategy"]):
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    m = al_measure(rounds, results.cases, results.round_cases, split)
    others = [s for s in ordered(set(m.runs["strategy"]), []) if s != reference]
    a = Analysis(m, split, seed=0)
    parts = [a.run(p, two_level_ci=split == "test") for p in paired_parts(m, reference, others)]
    rows = verdict_rows(parts)  # grouped by family: matched to their parts by id
    by_id = {p.id: p for p in parts}
    for r in rows:
        p = by_id[r["id"]]
        dataset, scope, _ = p.id.split(":")
        r.update({"dataset": dataset, "init": "pooled" if p.family != "scenario" else scope, "metric": p.metric})
    return pd.DataFrame(rows)[PAIRED_COLUMNS] if rows else pd.DataFrame(columns=PAIRED_COLUMNS)


def study_figures(results: Results, out: Path, split: str = "test") -> list[Path]:
    """One figure per dataset: rows = initial sets, columns = ESSP, Δ, Dice and the labeled set's group shares,
    per round, mean over seeds with the band of :func:`fairal.report.records.curves`; the measures on ``split``
    (``"eval"``: the evaluation split, as the study's tables; said in the figure's title)."""
    if split == "eval":
        results = on_evaluation_split(results) or results
    r = results.rounds
    paths = []
    metrics = [m for m in ("essp", "delta", "dice_all") if m in r.columns]
    share_cols = [c for c in r.columns if c.startswith("n_labeled_g")]
    tables = {m: curves(results, m) for m in metrics}
    datasets = ordered(set(r["dataset"]), [])
    names = _file_names(datasets)
    for d in datasets:
        inits = ordered(set(r.loc[r["dataset"] == d, "init"]), [])
        strategies = ordered(set(r.loc[r["dataset"] == d, "strategy"]), [])
        colours = colours_for(strategies)
        ncol = len(metrics) + (1 if share_cols else 0)
        fig, axes = plt.subplots(len(inits), ncol, figsize=(3.6 * ncol, 2.9 * len(inits)), squeeze=False)
        for row, init in enumerate(inits):
            for col, metric in enumerate(metrics):
                ax = axes[row, col]
                t = tables[metric]
                for s in strategies:
                    c = t[(t["dataset"] == d) & (t["init"] == init) & (t["strategy"] == s)].sort_values("n_labeled")
                    ax.plot(c["n_labeled"], c["mean"], color=colours[s], label=label(s), lw=1.6)
                    ax.fill_between(c["n_labeled"], c["lo"], c["hi"], color=colours[s], alpha=0.15, lw=0)
                ax.set_title(literal(f"{d}, {init}: {MEASURES.get(metric, metric).replace('final ', '')}"),
                             fontsize=10)
            if share_cols:
                _share_panel(axes[row, -1], r[(r["dataset"] == d) & (r["init"] == init)], colours, share_cols)
        for ax in axes[-1]:
            ax.set_xlabel("labeled images")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
        fig.suptitle(literal(f"{d}: measured on the {'evaluation' if split == 'eval' else 'test'} split; mean "
                             "over seeds, band = 95% CI of the mean"), fontsize=11)
        fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 4), 1, 1))
        path = within(out, f"study_{names[d]}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _share_panel(ax, rounds: pd.DataFrame, colours: dict[str, str], share_cols: list[str]) -> None:
    """Group 1's share of the labeled set (the first group's with other names), mean over seeds; ``colours``:
    each strategy's, in the figure's order."""
    col = "n_labeled_g1" if "n_labeled_g1" in share_cols else share_cols[0]
    for s, colour in colours.items():
        g = rounds[rounds["strategy"] == s]
        share = (g[col] / g["n_labeled"]).groupby(g["n_labeled"]).mean()
        ax.plot(share.index, share.to_numpy(), color=colour, lw=1.6)
    ax.set_ylim(0, 1)
    ax.set_title(literal(f"share of group {col[len('n_labeled_g'):]} in the labeled set"), fontsize=10)


def _file_names(datasets: list[str]) -> dict[str, str]:
    """Each dataset's name in a file name: its letters, digits, - and _ (others become _), and a number after it
    where two datasets would share one (``a.b`` and ``a_b``: ``a_b``, ``a_b-2``)."""
    names: dict[str, str] = {}
    for d in datasets:
        safe = base = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in d)
        k = 1
        while safe in names.values():
            k += 1
            safe = f"{base}-{k}"
        names[d] = safe
    return names


def missing_runs(results: Results, info: dict) -> list[tuple[str, str, str, int]]:
    """The runs of the study's plan (its ``study.json``: datasets x initial sets x strategies x seeds) that have
    not finished; runs of other strategies that the records hold besides do not count."""
    study, seeds = info.get("study", {}), info.get("seeds")
    if not seeds:
        return []
    arms = study.get("arms")
    names = [a["name"] for a in arms] if arms else info.get("profile", {}).get("strategies", [])
    names = names.split(",") if isinstance(names, str) else list(names)
    planned = [(d["name"], i, s, n) for d in study.get("datasets", []) for i in study.get("inits", [])
               for s in names for n in range(int(seeds))]
    return [k for k in planned if k not in results.finished]


def withheld_note(missing: list, info: dict) -> str:
    """Why the paired comparisons are not computed ("" when they are): runs of the plan not finished."""
    if not missing:
        return ""
    d, i, s, n = missing[0]
    return (f"withheld: {len(missing)} run(s) of the plan ({info.get('seeds')} seeds) are not finished (first: "
            f"{d}/{i}/{s}/seed-{n}); no paired comparison or verdict is computed before all are "
            "(docs/analysis-plan.md)")


def build_study_report(folder: Path, out: Path, results: Results, info: dict) -> Path:
    """``report.html`` of a study, with ``study_summary.csv``, ``study_paired.csv`` and a figure per dataset.
    While runs of the study's plan are missing, ``study_paired.csv`` has its columns only and the report says
    why (:func:`withheld_note`)."""
    study = info.get("study", {})
    reference = study.get("reference", "weighted-localized-entropy")
    split = split_of(results)
    summary = summary_table(results, split) if not results.rounds.empty else pd.DataFrame()
    withheld = withheld_note(missing_runs(results, info), info)
    paired = (paired_table(results, reference, split) if not results.rounds.empty and not withheld
              else pd.DataFrame(columns=PAIRED_COLUMNS))
    write_csv(within(out, "study_summary.csv"), summary)
    write_csv(within(out, "study_paired.csv"), paired)
    baselines = baseline_table(results, split)
    if not baselines.empty:
        write_csv(within(out, "study_baselines.csv"), baselines)
    figs = study_figures(results, out, split) if not results.rounds.empty else []
    parts = [*HEAD, f"<h2>Study {html.escape(str(study.get('name', '')))}</h2>",
             f"<p>{html.escape(str(study.get('description', '')))}</p>",
             _counts(results, split), "<h2>Each strategy</h2>",
             "<p>Mean over seeds and 95% t interval of the mean, clipped to the measure's range (Dice, ESSP and "
             "shares in [0, 1], Δ &ge; 0); final = at the final budget.</p>",
             html_table(summary[[c for c in summary.columns if not c.endswith(("_ci_low", "_ci_high"))]],
                        best={"essp": "max", "delta": "min", "dice_all": "max", "essp_auc": "max"},
                        within=["dataset", "init"]),
             *_baseline_section(baselines, split),
             f"<h2>{html.escape(reference)} against each strategy</h2>",
             f"<p><b>{html.escape(withheld[:1].upper() + withheld[1:])}.</b></p>" if withheld else "",
             _rule(int(results.rounds["seed"].nunique()) if not results.rounds.empty else 0,
                   int((paired["family"] == "pooled").sum()) if not paired.empty else 0),
             html_table(paired, digits=4)]
    for p in figs:
        parts.append(f"<h3>{html.escape(p.stem)}</h3>" + _figure(p))
    parts += ["<h2>The study file</h2>", "<pre>" + html.escape(study.get("text") or json.dumps(study, indent=1))
              + "</pre>", *settings_section(results), "</body></html>"]
    target = within(out, "report.html")
    write_text(target, "\n".join(parts))
    return target


def _baseline_section(baselines: pd.DataFrame, split: str) -> list[str]:
    if baselines.empty:
        return []
    where = "the evaluation split" if split == "eval" else "the test split"
    return ["<h2>Baselines: one model per training cohort</h2>",
            f"<p>Trained on all of the pool, Group 1 only or Group 2 only, measured on {where}; gap_g1_g2 = Group 1's "
            "Dice − Group 2's (negative: Group 1 segmented worse). With one training seed a row is one model: an "
            "anecdote, not an estimate.</p>", html_table(baselines, digits=4)]


def _counts(results: Results, split: str) -> str:
    seeds = int(results.rounds["seed"].nunique()) if not results.rounds.empty else 0
    where = "the evaluation split" if split == "eval" else "the test split"
    return (f"<p>{len(results.finished)} finished runs of {len(results.expected)} expected, {seeds} seed(s); "
            f"measured on {where}.</p>")


def _rule(seeds: int, primary: int = 0) -> str:
    """The rule of the paired table; with ``primary`` comparisons in the primary family, the smallest p the
    seeds allow and, where it cannot reach 0.05 after Holm, that no superiority verdict is possible."""
    from fairal.stats import seeds_for_a_verdict, smallest_sign_flip_p
    from fairal.study import seeds_needed

    margins = ", ".join(f"{k} ±{v:g}" for k, v in MARGINS.items() if k in MEASURES)
    few = (f"<p><b>{seeds} seed(s): no verdict.</b> A verdict needs at least {MIN_SEEDS_FOR_CLAIMS} seeds (one run "
           "is an anecdote); the table is descriptive.</p>" if seeds < MIN_SEEDS_FOR_CLAIMS else "")
    if seeds >= MIN_SEEDS_FOR_CLAIMS and primary:
        floor = smallest_sign_flip_p(seeds)
        few += (f"<p>With {seeds} seeds the exact sign-flip test's smallest two-sided p is {floor:.3g}; after Holm "
                f"over the {primary} comparisons of the primary family (pooled final ESSP) at best "
                f"{min(floor * primary, 1.0):.3g}.")
        if floor * primary >= 0.05:
            few += (f" <b>No comparison of that family can be confirmed or refuted with {seeds} seeds, whatever the "
                    f"runs show; only equivalence can be found.</b> {seeds_needed(seeds_for_a_verdict(primary))}")
        few += "</p>"
    return few + ("<p>The seed is the unit (a pooled comparison: each seed's mean difference over the initial sets); "
            "confirmed / refuted: the 95% CI on one side of 0 and a Holm-adjusted sign-flip p &lt; 0.05 within "
            "the family; equivalent: Holm-adjusted TOST p &lt; 0.05 within the margin (" + html.escape(margins)
            + "); 'within margin': a real difference smaller than the margin (docs/analysis-plan.md).</p>")


def _figure(path: Path) -> str:
    import base64

    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"/></figure>'

"""``fairal report``: tables (CSV, Markdown), figures (PNG, SVG) and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from fairal.io import check_output_folder, check_own_folder, make_own_folder, within, write_csv, write_text
from fairal.metrics import METRICS
from fairal.records import PAPER_SOURCE, has_evaluation
from fairal.report.claims import (
    PAPER_TABLE1,
    RULE_2,
    claims_markdown,
    claims_table,
    paired_table,
    run_summary,
    summary_table,
    table1,
)
from fairal.report.examples import write_examples
from fairal.report.figures import write_eval_figures, write_figures
from fairal.report.html import HEAD, banner, html_table, plural, settings_section
from fairal.report.plan import MIN_SEEDS_FOR_CLAIMS, plan_markdown, plan_tables
from fairal.report.study import build_study_report, study_info
from fairal.report.tidy import Results, final_table, finished_rounds, load_results, on_evaluation_split


def how_to_read(profile: dict, evaluated: bool = False) -> str:
    """The reading guide, with the numbers of the runs' own profile (not the paper's); ``evaluated``: the runs
    were also measured on an evaluation split."""
    init, acquire, final = profile.get("init_size", 10), profile.get("acquire", 4), profile.get("final_size", 86)
    test = profile.get("test_per_group", 15)
    heavy = round(0.8 * init)
    return (f"<p><b>How to read this.</b> Each active-learning run starts from {init} labeled volumes (balanced "
            f"{init // 2} + {init - init // 2}, or {heavy} + {init - heavy} / {init - heavy} + {heavy} Group 1 + "
            f"Group 2) and acquires {acquire} per round up to {final}. After each round the model is evaluated on "
            f"the fixed test set ({test} + {test} cases). <i>Dice</i> is the mean over all test cases; <i>&Delta;</i>"
            " is the sum over groups of |Dice<sub>all</sub> &minus; Dice<sub>g</sub>| (lower is fairer); <i>ESSP</i> "
            "= Dice / (1 + &Delta;) (higher is better: accuracy with a penalty for unfairness). The <i>Group 1 "
            "share</i> is the share of Group 1 (biased anatomy) in the labeled set. <i>&Delta; vs entropy</i> is 1 "
            "&minus; &Delta; / &Delta;<sub>entropy</sub> in the same scenario (the paper reports 75% for the strong "
            "and 86% for the weak bias); <i>ESSP AUC</i> is the area under the ESSP curve divided by the range of "
            "labeled-set sizes: the curve's mean level over the whole budget."
            + (f" Every round is also measured on an <i>evaluation split</i> of "
               f"{profile.get('eval_per_group', '')} + {profile.get('eval_per_group', '')} subjects per dataset, never "
               "in the pool, the test set or a baseline cohort: the primary endpoint of docs/analysis-plan.md. "
               "Tables and figures say which split they measure on."
               if evaluated else "") + "</p>")


#: What every figure shows and what it is measured on (``{test}``: the test split's name on the page). A figure's
#: number on the page is its file's (``figN_...``): the evaluation split's Figures 1 and 2 (files ``..._eval``)
#: share their numbers with the test split's.
CAPTIONS = {
    "fig1_essp_eval": "ESSP per round on the evaluation split (the primary endpoint's curves).",
    "fig1_essp": "ESSP per round on the {test} (the paper's Figure 1).",
    "fig2_delta_eval": "Δ per round on the evaluation split.",
    "fig2_delta_dice_strong": "Δ and Dice per round on the {test}, strong bias (the paper's Figure 2).",
    "fig3_group1_ratio": "Group 1 share of the labeled set per round (the paper's Figure 3): counted in the labeled "
                         "set, on no split.",
    "fig4_delta_dice_weak": "Δ and Dice per round on the {test}, weak bias (the paper's Figure 4).",
    "fig5_beyond_essp": "ESSP on the {test} of the strategies beyond the paper (dashed) against entropy and WLE.",
    "fig6_beyond_delta": "Δ on the {test} of the strategies beyond the paper (dashed) against entropy and WLE.",
    "fig7_dice_per_group": "Dice of each group per round on the {test}.",
    "fig8_group_weights": "the weight of Group 1 in Eq. 2 per round (two groups: Group 2's is 1 minus it): from the "
                          "groups' Dice on the labeled set, on no split.",
    "fig9_case_dice": "Dice of every case of the {test} by group at the final budget (all seeds and initial sets).",
    "fig10_examples": "example segmentations of the final models: cases of the {test}.",
}
#: Why a figure of :data:`CAPTIONS` can be missing from a page (its number is then skipped).
ABSENT = {"fig2_delta_dice_strong": "no dataset named strong", "fig3_group1_ratio": "no Group 1 share recorded",
          "fig4_delta_dice_weak": "no dataset named weak", "fig5_beyond_essp": "no strategy beyond the paper's",
          "fig6_beyond_delta": "no strategy beyond the paper's", "fig7_dice_per_group": "no Dice per group recorded",
          "fig8_group_weights": "no group weights recorded", "fig9_case_dice": "no per-case Dice recorded",
          "fig10_examples": "no finished weighted-localized-entropy run with its example slices (examples.npz; "
                            "runs finished before fairal wrote that file have none)"}
#: How the intervals of a mean keep to what a measure can take (fairal.records.bounds).
BOUNDED = ("clipped to the measure's range where the t interval passes it: Dice, ESSP, shares and weights in "
           "[0, 1], Δ at least 0")


#: Where the paper's own numbers or text do not add up (docs/REPRODUCTION.md lists them with the numbers).
PAPER_INCONSISTENCIES = [
    "Table 1, strong bias, cohort all: ESSP is printed 0.91 for Dice 0.91 and Δ 0.04; Eq. 4 gives 0.91 / 1.04 = "
    "0.875 (cohort g1: 0.89 / 1.01 = 0.881, printed 0.89).",
    "Section 4.1: \"five complete AL cycles (from 10 to 86 labeled images)\" with 4 acquisitions per cycle: 10 to 86 "
    "takes 19 acquisitions; fairal reads five as the number of repetitions (seeds) of the 10 to 86 schedule.",
    "Section 4.4 says WLE \"outperforms all methods in terms of ESSP in all scenarios\", the same paragraph that it "
    "achieves \"the top ESSP scores across most experiments\".",
    "Section 4.3 says the baselines \"use all the training data available\"; the cohorts hold 126 of the 282 "
    "training cases.",
]


def paper_essp_check(t1: pd.DataFrame) -> pd.DataFrame:
    """The paper's ESSP recomputed from its own Dice and Δ by Eq. 4, beside the printed value."""
    if t1.empty or "essp_paper" not in t1.columns:
        return t1
    return t1.assign(essp_paper_by_eq4=t1["dice_all_paper"] / (1 + t1["delta_paper"]))


def as_printed(v) -> str:
    """A value of the paper's Table 1 with the decimals the paper prints it with: two (0.88), or three (0.002)."""
    if pd.isna(v):
        return ""
    return f"{v:.2f}" if abs(round(v, 2) - v) < 1e-9 else f"{v:.3f}"


#: The columns of the paper's own numbers in Table 1 (printed as the paper prints them).
PAPER_COLUMNS = [f"{c}_paper" for c in PAPER_TABLE1.columns if c not in ("dataset", "cohort")]


def markdown_table(df: pd.DataFrame, digits: int = 3, formats: dict | None = None) -> str:
    """A GitHub-flavoured Markdown table (numbers rounded to ``digits``; ``formats``: a column's own formatter; every
    header and cell as text: :func:`markdown_text`)."""
    formats = formats or {}

    def cell(col, v):
        if col in formats:
            return formats[col](v)
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(markdown_text, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(markdown_text(cell(c, v)) for c, v in zip(df.columns, row, strict=True)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def markdown_text(value) -> str:
    """A header or cell of a Markdown table as text: ``<``, ``>`` and ``&`` escaped (a group or strategy named
    ``<script>`` is shown, never run, where Markdown passes HTML through), ``|`` escaped and line breaks joined
    (neither can break the table)."""
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def uses_plan(results: Results) -> bool:
    """Records judged under docs/analysis-plan.md: those with an evaluation split or a recorded analysis plan.
    Records made before the evaluation split (docs/results/standard) keep the rule they were judged by
    (docs/statistics.md), so their numbers recompute."""
    has_eval = has_evaluation(results.rounds)
    return bool(has_eval or (results.settings or {}).get("analysis_plan"))


def withheld(results: Results, seeds: int) -> str:
    """Why the claims are not computed yet ("" when they are): the plan's seeds are not all in."""
    planned = (results.settings or {}).get("planned_seeds")
    if planned and seeds < int(planned):
        return (f"withheld: {seeds} of the {planned} pre-registered seeds are in; docs/analysis-plan.md computes no "
                "claim statistic before all of them are")
    return ""


def statistics(results: Results, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``claims.csv``/``claims.md``, ``final_stats.csv`` and ``paired.csv`` from the finished runs (and the
    baselines' training seeds); under the analysis plan also ``claims_sensitivity.csv``, ``primary.csv`` and
    ``variance_decomposition.csv``. Returns the claims and the per-scenario statistics."""
    if results.rounds.empty:
        return pd.DataFrame(), pd.DataFrame()
    done = finished_rounds(results)
    if done.empty:
        return pd.DataFrame(), pd.DataFrame()
    runs = run_summary(done)
    stats = summary_table(runs)
    write_csv(within(out, "final_stats.csv"), stats)
    if done["seed"].nunique() < MIN_SEEDS_FOR_CLAIMS or withheld(results, done["seed"].nunique()):
        return pd.DataFrame(), stats
    write_csv(within(out, "paired.csv"), paired_table(runs))
    if uses_plan(results):
        tables = plan_tables(done, results.cases, results.round_cases, results.baselines, results.baseline_cases)
        claims = tables.claims
        write_csv(within(out, "claims_sensitivity.csv"), tables.sensitivity)
        write_csv(within(out, "primary.csv"), tables.primary)
        write_csv(within(out, "variance_decomposition.csv"), tables.decomposition)
        markdown = plan_markdown(claims)
    else:
        claims = claims_table(done, results.baselines)
        markdown = claims_markdown(claims)
    if not claims.empty:
        write_csv(within(out, "claims.csv"), claims)
        write_text(within(out, "claims.md"), markdown)
    return claims, stats


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/></figure>'


#: The marker's kind of a report folder.
REPORT = "report"


def build_report(folder: str | Path, out: str | Path | None = None, results: Results | None = None) -> Path:
    """Write the report of the results in ``folder`` into ``out`` (default ``folder/report``); returns the
    path of ``report.html``."""
    folder = Path(folder)
    results = results if results is not None else load_results(folder)
    info = study_info(folder)  # a tampered study.json is refused before the report's folder is made
    if out is None:  # RESULTS/report: the results' own report folder
        out = check_output_folder(folder / "report", "the report folder")
    else:  # a folder of the user's choosing: new, empty, or a report fairal wrote before
        out = check_own_folder(out, REPORT, "--out")
    make_own_folder(out, REPORT)
    if info is not None and info.get("study", {}).get("source") != PAPER_SOURCE:  # the paper's: the paper's report
        return build_study_report(folder, out, results, info)
    figs = write_figures(results, out)
    examples = write_examples(folder, results, out) if not results.rounds.empty else None
    if examples:
        figs["fig10_examples"] = examples
    t1 = paper_essp_check(table1(results))
    final = final_table(results)
    if not t1.empty:
        write_csv(within(out, "table1_baselines.csv"), t1)
        write_text(within(out, "table1_baselines.md"),
                   markdown_table(t1, formats=dict.fromkeys(PAPER_COLUMNS, as_printed)))
    if not final.empty:
        write_csv(within(out, "final_budget.csv"), final)
        write_text(within(out, "final_budget.md"), markdown_table(final))
    claims, stats = statistics(results, out)
    profile = results.settings.get("profile", {}) if results.settings else {}
    n_seeds = int(results.rounds["seed"].nunique()) if not results.rounds.empty else 0
    evaluation = _evaluation_sections(results, out, profile, n_seeds, figs)
    parts = [*HEAD, *_overview(folder, results, profile, n_seeds), how_to_read(profile, bool(evaluation)),
             *_previews(results),
             *_claims_section(results, claims, n_seeds), *evaluation,
             *_table1_section(t1, profile, heading="paper's test split" if evaluation else "",
                              inconsistencies=not any("does not add up" in part for part in evaluation)),
             *_final_section(final, stats, n_seeds, heading="paper's test split" if evaluation else ""),
             *_figures_section(figs, n_seeds, "paper's test split" if evaluation else "test split"),
             *settings_section(results), "</body></html>"]
    target = within(out, "report.html")
    write_text(target, "\n".join(parts))
    return target


def _evaluation_sections(results: Results, out: Path, profile: dict, n_seeds: int,
                         figs: dict[str, list[Path]]) -> list[str]:
    """With an evaluation split (docs/analysis-plan.md's primary endpoint): the final-budget table and Table 1 as
    it measures them (``final_budget_eval.*``, ``final_stats_eval.csv``, ``table1_baselines_eval.*``) and its ESSP
    and Δ curves (added to ``figs``); nothing for records without one."""
    ev = on_evaluation_split(results)
    if ev is None:
        return []
    figs.update(write_eval_figures(ev, out))
    final, t1 = final_table(ev), paper_essp_check(table1(ev))
    stats = pd.DataFrame()
    if not final.empty:
        write_csv(within(out, "final_budget_eval.csv"), final)
        write_text(within(out, "final_budget_eval.md"), markdown_table(final))
        stats = summary_table(run_summary(finished_rounds(ev)))
        write_csv(within(out, "final_stats_eval.csv"), stats)
    if not t1.empty:
        write_csv(within(out, "table1_baselines_eval.csv"), t1)
        write_text(within(out, "table1_baselines_eval.md"),
                   markdown_table(t1, formats=dict.fromkeys(PAPER_COLUMNS, as_printed)))
    per_group = profile.get("eval_per_group")
    name = f"evaluation split, {per_group} + {per_group} subjects" if per_group else "evaluation split"
    return [*_final_section(final, stats, n_seeds, heading=name, stem="final_budget_eval"),
            *_table1_section(t1, profile, heading=name, stem="table1_baselines_eval")]


def _overview(folder: Path, results: Results, profile: dict, n_seeds: int) -> list[str]:
    """The banner of a pipeline-check profile, what the folder holds, and which runs are missing or left out."""
    name = str(profile.get("name", "unknown"))
    parts = banner(name)
    parts.append(f"<p>Results: <code>{html.escape(str(folder.resolve()))}</code>. {len(results.finished)} finished "
                 f"active-learning run{plural(len(results.finished))} of {len(results.expected)} "
                 f"expected, {n_seeds} seed{plural(n_seeds)} per run. Profile "
                 f"<b>{html.escape(name)}</b> (settings at the end of this page).</p>")
    missing = results.missing
    if missing:
        listed = "".join(f"<li>{html.escape(' / '.join(map(str, m)))}</li>" for m in missing[:50])
        more = f"<li>... and {len(missing) - 50} more</li>" if len(missing) > 50 else ""
        parts.append(f"<div class='warn'><b>Partial results:</b> {len(missing)} runs are missing or unfinished "
                     f"(dataset / initial set / strategy / seed):<ul>{listed}{more}</ul></div>")
    if results.skipped:
        listed = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>"
                         for k, v in list(results.skipped.items())[:50])
        parts.append(f"<div class='warn'><b>Runs left out:</b> {len(results.skipped)} run folders hold records that "
                     f"cannot be used:<ul>{listed}</ul></div>")
    return parts


def _previews(results: Results) -> list[str]:
    """The synthetic data: each dataset's preview picture."""
    if not results.previews:
        return []
    parts = ["<h2>The synthetic data</h2><p>Group 1 (local caudate deformation) against Group 2, per "
             "dataset. Top row: an axial slice through the left caudate of the template and of example "
             "subjects, each subject's label outlined in yellow and the template's in dashed cyan; bottom row: the "
             "label frequency per group on that slice, their difference, and the caudate volume by group.</p>"]
    for d, path in results.previews.items():  # the page's width, as every figure (its text drawn large for that)
        parts.append(f"<h3>{html.escape(d)} bias</h3>" + _img(path, f"preview of the {d} dataset"))
    return parts


def _claims_section(results: Results, claims: pd.DataFrame, n_seeds: int) -> list[str]:
    """The paper's claims with their verdicts, or why they are not computed or not tested."""
    if not claims.empty:
        view = claims.assign(ci=[f"[{a:+.4f},\u00a0{b:+.4f}]" for a, b in zip(claims["ci_low"],  # kept on one line
                                                                              claims["ci_high"], strict=True)])
        return [_plan_claims(results, view, n_seeds) if uses_plan(results) else _rule_claims(view, n_seeds)]
    if n_seeds and withheld(results, n_seeds):
        return [f"<h2>The paper's claims</h2><p>Not computed: {html.escape(withheld(results, n_seeds))}.</p>"]
    if n_seeds and not results.rounds.empty:
        return [f"<h2>The paper's claims</h2><p>Not tested: {n_seeds} seed{plural(n_seeds)} per "
                f"run; the claims need at least {MIN_SEEDS_FOR_CLAIMS} (one run is an anecdote). "
                "<code>fairal reproduce OUT --seeds 5</code>.</p>"]
    return []


def _plan_claims(results: Results, view: pd.DataFrame, n_seeds: int) -> str:
    """The claims judged under the pre-registered analysis plan."""
    view["verdict"] = [f"{v} (within margin)" if w is True and v in ("confirmed", "refuted") else v
                       for v, w in zip(view["verdict"], view["within_margin"], strict=True)]
    view = view[["split", "id", "claim", "statistic", "value", "ci", "p_value", "p_holm", "p_tost_holm", "n",
                 "verdict"]].rename(columns={"ci": "95% CI", "p_holm": "p (Holm)", "p_tost_holm": "TOST p (Holm)"})
    plan = (results.settings or {}).get("analysis_plan") or {}
    fixed = (f" (<code>{html.escape(str(plan.get('path')))}</code> at commit "
             f"<code>{html.escape(str(plan.get('commit', ''))[:10])}</code>, blob "
             f"<code>{html.escape(str(plan.get('blob', ''))[:10])}</code>)") if plan else ""
    return (f"<h2>The paper's claims</h2><p>{n_seeds} seeds per run. Verdicts under the pre-registered "
            f"plan docs/analysis-plan.md{fixed}: the seed is the unit; superiority by sign-flip tests "
            "and equivalence by TOST (margins ±0.005 ESSP and Δ, ±0.01 Dice), Holm-adjusted within each "
            "family; split <code>eval</code> is the evaluation split (primary), <code>test</code> the "
            "paper's 15 + 15 test cases with two-level bootstrap CIs. Files: <code>claims.csv</code>, "
            "<code>claims.md</code>, <code>claims_sensitivity.csv</code>, <code>primary.csv</code>, "
            "<code>variance_decomposition.csv</code>.</p>" + html_table(view, digits=4))


def _rule_claims(view: pd.DataFrame, n_seeds: int) -> str:
    """The claims judged under the rule of docs/statistics.md (records made before the analysis plan)."""
    view = view[["id", "claim", "statistic", "value", "ci", "p_value", "n", "verdict"]].rename(
        columns={"ci": "95% CI"})
    return (f"<h2>The paper's claims</h2><p>{n_seeds} seeds per run. Verdicts under the rule of "
            "docs/statistics.md (fixed before the numbers): paired differences (same dataset, initial "
            "set and seed) with 95% t intervals and sign-flip permutation tests. " + html.escape(RULE_2)
            + " Files: "
            "<code>claims.csv</code>, <code>claims.md</code>, <code>final_stats.csv</code> (mean and CI "
            "per scenario and strategy), <code>paired.csv</code> (WLE against each strategy).</p>"
            + html_table(view, digits=4))


def _table1_section(t1: pd.DataFrame, profile: dict, heading: str = "", stem: str = "table1_baselines",
                   inconsistencies: bool = True) -> list[str]:
    """Table 1: our baselines beside the paper's, and (``inconsistencies``: once on a page) where the paper does not
    add up; ``heading`` names the split the table measures on where there are two (files ``stem``.csv and .md)."""
    if t1.empty:
        return []
    title = "Table 1: baselines by training cohort" + (f" ({heading})" if heading else "")
    cohorts = profile.get("cohort_size", 126)
    ci = {m: (f"{m}_ci_low", f"{m}_ci_high") for m in ("essp", "delta") if f"{m}_ci_low" in t1.columns}
    return [f"<h2>{html.escape(title)}</h2><p>Files: <code>{stem}.csv</code>, <code>{stem}.md</code>. "
            f"Cohorts: <code>all</code> "
            f"{cohorts // 2} + {cohorts - cohorts // 2}, <code>g1</code> / <code>g2</code> {cohorts} of one "
            "group; mean over the training seeds (with several, the 95% t interval of the mean beside it, "
            f"{BOUNDED}); the paper's numbers as it prints them beside ours, and its ESSP recomputed by its own "
            "Eq. 4. Bold: the best of a dataset.</p>"
            + html_table(t1, best={"essp": "max", "delta": "min"}, within=["dataset"], ci=ci,
                         formats=dict.fromkeys(PAPER_COLUMNS, as_printed))
            + ("<div class='warn'><b>Where the paper does not add up:</b><ul>"
               + "".join(f"<li>{html.escape(x)}</li>" for x in PAPER_INCONSISTENCIES) + "</ul></div>"
               if inconsistencies else "")]


def _final_section(final: pd.DataFrame, stats: pd.DataFrame, n_seeds: int, heading: str = "",
                   stem: str = "final_budget") -> list[str]:
    """The final-budget table, with the intervals across seeds of Δ, ESSP and the Group 1 share of the
    acquisitions beside their values when there are several seeds; ``heading`` names the split the table measures
    on where there are two (the files are ``stem``.csv and .md)."""
    if final.empty:
        return []
    view, ci = final.copy(), {}
    if not stats.empty and "essp_ci_low" in stats.columns and n_seeds > 1:
        measures = [m for m in ("delta", "essp", "g1_acquired_share") if f"{m}_ci_low" in stats.columns]
        ci = {m: (f"{m}_ci_low", f"{m}_ci_high") for m in measures}
        cols = [c for m in measures for c in ci[m]] + (["g1_acquired_share"] if "g1_acquired_share" in ci else [])
        view = view.merge(stats[["dataset", "init", "strategy", *cols]], on=["dataset", "init", "strategy"],
                          how="left")
        if "g1_acquired_share" in ci and "g1_ratio" in view.columns:  # the two Group 1 shares side by side
            order = [c for c in view.columns if c != "g1_acquired_share"]
            order.insert(order.index("g1_ratio") + 1, "g1_acquired_share")
            view = view[order]
    # the best of a scenario by each measure's direction in the metric table
    best = {"dice_all": "max", "essp_auc": "max",
            **{m.name: "max" if m.higher_is_better else "min" for m in METRICS.values() if m.name in view.columns}}
    words = "; ".join(f"{'highest' if d == 'max' else 'lowest'} {', '.join(k for k, v in best.items() if v == d)}"
                      for d in ("max", "min") if d in best.values())
    band = f" Beside a value: the 95% t interval of the mean across seeds ({BOUNDED})." if ci else ""
    title = f"Final budget ({heading})" if heading else "Final budget"
    return [f"<h2>{html.escape(title)}</h2><p>Files: <code>{stem}.csv</code>, <code>{stem}.md</code>. "
            f"Mean over {n_seeds} seed{plural(n_seeds)} at the last "
            f"round of finished runs. Bold: the best of a scenario ({html.escape(words)}; values that read the "
            f"same are bold alike).{band}{_shares_note(view)}</p>"
            + html_table(view, best=best, within=["dataset", "init"], ci=ci)]


def _shares_note(view: pd.DataFrame) -> str:
    """What each Group 1 share column of the final-budget table means, for the columns it has (the share of the
    acquisitions comes with the statistics across seeds: a one-seed table has none)."""
    notes = {"g1_ratio": "<i>G1 share of labeled set</i>: Group 1's share of the final labeled set (initial set "
                         "included)",
             "g1_acquired_share": "<i>G1 share of acquisitions</i>: of the cases the strategy acquired"}
    present = [text for col, text in notes.items() if col in view.columns]
    return " " + "; ".join(present) + "." if present else ""


def figure_number(key: str) -> int:
    """The number of a figure's file (``fig7_dice_per_group``: 7), which is its number on the page."""
    return int(key[3:].split("_")[0])


def figure_order(figs: dict[str, list[Path]]) -> list[str]:
    """The figures' keys in the order of their file numbers, a number's evaluation-split curves (the primary
    endpoint) before the test split's."""
    return sorted(figs, key=lambda k: (figure_number(k), not k.endswith("_eval")))  # evaluation first


def _figures_section(figs: dict[str, list[Path]], n_seeds: int, test: str = "test split") -> list[str]:
    """Every figure under its file's number, with its caption (naming the split it is measured on, ``test`` for
    the test split) and its files; the numbers these records cannot draw are said with the reason."""
    if not figs:
        return []
    band = (f"Lines: mean of {n_seeds} seeds; bands: 95% t interval of the mean across seeds, {BOUNDED}."
            if n_seeds > 1 else "One seed per run: no band.")
    numbers = {figure_number(k) for k in figs}
    absent = "; ".join(f"{figure_number(k)}: {why}" for k, why in ABSENT.items() if figure_number(k) not in numbers)
    rule = " A figure's number is its file's (<code>figN_…</code>)" + (
        "; Figures 1 and 2 on the evaluation split (files <code>…_eval</code>) come before the test split's"
        if any(k.endswith("_eval") for k in figs) else "") + "." + (
        f" Not drawn from these records: {html.escape(absent)}." if absent else "")
    parts = [f"<h2>Figures</h2><p>{band} x axis: labeled images.{rule}</p>"]
    for key in figure_order(figs):
        caption = f"Figure {figure_number(key)}: {CAPTIONS.get(key, key).format(test=test)}"
        files = " / ".join(p.name for p in figs[key])
        parts.append(f"<h3>{html.escape(caption)} <span class='file'>{html.escape(files)}</span></h3>"
                     + _img(figs[key][0], caption))
    return parts



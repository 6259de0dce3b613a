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
from fairal.metrics import PRIMARY  # noqa: E402
from fairal.records import (  # noqa: E402
    EVAL,
    G1_ACQUIRED_SHARE,
    PAIRED_COLUMNS,
    TEST,
    WLE,
    bounds,
    equivalence_margin,
    measure,
    study_measures,
)
from fairal.report.claims import table1  # noqa: E402
from fairal.report.dose import dose_tables, onset_sentence  # noqa: E402
from fairal.report.figures import colours_for, label, literal  # noqa: E402
from fairal.report.html import HEAD, banner, html_table, settings_section  # noqa: E402
from fairal.report.plan import (  # noqa: E402
    AL_ON,
    Analysis,
    Part,
    al_measure,
    match,
    paired_statistic,
    verdict_rows,
)
from fairal.report.tidy import (  # noqa: E402
    Results,
    curves,
    dataset_splits,
    finished_rounds,
    of_datasets,
    on_evaluation_split,
    on_split,
    ordered,
    read_json_record,
)
from fairal.stats import (
    mean_ci,  # noqa: E402
    primary_family,  # noqa: E402
    seed_rule,
)

SPLIT_NAMES = {EVAL: "evaluation split", TEST: "test split"}


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


def per_split(results: Results, splits: dict[str, str], table) -> pd.DataFrame:
    """``table(records, split)`` of each dataset on its own split (``splits``: :func:`dataset_splits`), the split
    named in the column ``split`` after ``dataset``, the datasets in ``splits``' order."""
    parts = []
    for d, split in splits.items():
        t = table(of_datasets(results, [d]), split)
        if not t.empty:
            parts.append(t.assign(split=split))
    if not parts:
        return pd.DataFrame()
    t = pd.concat(parts, ignore_index=True)
    return t[["dataset", "split", *[c for c in t.columns if c not in ("dataset", "split")]]]


def summary_table(results: Results, split: str) -> pd.DataFrame:
    """Per dataset, initial set and strategy: mean and 95% t CI over seeds of each measure (finished runs), and of
    Group 1's share of the acquired cases (with a group 1); the intervals clipped to each measure's range, as text
    (``MEASURE_ci``, 3 decimals) and as numbers (``MEASURE_ci_low``, ``MEASURE_ci_high``)."""
    m = al_measure(finished_rounds(results), results.cases, results.round_cases, split).runs
    rows = []
    for (d, i, s), g in m.groupby(["dataset", "init", "strategy"], sort=False):
        row = {"dataset": d, "init": i, "strategy": s, "n_seeds": len(g)}
        for metric in (*study_measures(), G1_ACQUIRED_SHARE):  # and Group 1's share of the acquired cases
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
    source = on_evaluation_split(results) if split == EVAL else results
    if source is None or source.baselines is None or source.baselines.empty:
        return pd.DataFrame()
    t = table1(source)
    t = t[[c for c in t.columns if not c.endswith("_paper")]].copy()
    if {"dice_g1", "dice_g2"} <= set(t.columns):
        t.insert(t.columns.get_loc("dice_g2") + 1, "gap_g1_g2", t["dice_g1"] - t["dice_g2"])
    return t.reset_index(drop=True)


def paired_parts(m, reference: str, others: list[str]) -> list[Part]:
    """The reference against each other strategy: the primary endpoint (final ESSP) pooled per dataset and per
    scenario, and the secondary measures (the other measures of :func:`fairal.records.study_measures`) pooled per
    dataset; a measure where lower is better (Δ) has its difference flipped."""
    parts = []
    for d in ordered(set(m.runs["dataset"]), []):
        inits = ordered(set(m.runs.loc[m.runs["dataset"] == d, "init"]), [])
        for other in others:
            for metric in study_measures():
                family = "pooled" if metric == PRIMARY else "secondary"
                pairs = match(m, {"strategy": reference}, {"strategy": other}, AL_ON, sign=measure(metric).sign,
                              where={"dataset": d})
                if len(pairs.ia):
                    parts.append(Part(f"{d}:{metric}:{other}", f"{reference} vs {other}", paired_statistic(
                        metric, reference, other), metric, pairs, family))
            for init in inits:
                pairs = match(m, {"strategy": reference}, {"strategy": other}, AL_ON,
                              where={"dataset": d, "init": init})
                if len(pairs.ia):
                    parts.append(Part(f"{d}:{init}:{other}", f"{reference} vs {other}",
                                      paired_statistic(PRIMARY, reference, other), PRIMARY, pairs, "scenario"))
    return parts


def paired_table(results: Results, reference: str, split: str | dict[str, str]) -> pd.DataFrame:
    """``study_paired.csv``: every comparison of :func:`paired_parts` with its verdict, each dataset measured on
    its split (``split``: one for all, or each dataset's, :func:`fairal.report.tidy.dataset_splits`); Holm's
    correction within each family over all the datasets."""
    rounds = finished_rounds(results)
    if rounds.empty or reference not in set(rounds["strategy"]):
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    splits = split if isinstance(split, dict) else dict.fromkeys(ordered(set(rounds["dataset"]), []), split)
    parts = []
    for s in dict.fromkeys(splits.values()):  # one analysis per split, over its datasets
        sub = of_datasets(results, [d for d, x in splits.items() if x == s])
        m = al_measure(finished_rounds(sub), sub.cases, sub.round_cases, s)
        others = [x for x in ordered(set(m.runs["strategy"]), []) if x != reference]
        a = Analysis(m, s, seed=0)
        parts += [a.run(p, two_level_ci=s == TEST) for p in paired_parts(m, reference, others)]
    rows = verdict_rows(parts)  # grouped by family: matched to their parts by id
    by_id = {p.id: p for p in parts}
    for r in rows:
        p = by_id[r["id"]]
        dataset, scope, _ = p.id.split(":")
        r.update({"dataset": dataset, "split": splits[dataset], "metric": p.metric,
                  "init": "pooled" if p.family != "scenario" else scope})
    return pd.DataFrame(rows)[PAIRED_COLUMNS] if rows else pd.DataFrame(columns=PAIRED_COLUMNS)


def study_figures(results: Results, out: Path, split: str | dict[str, str] = TEST) -> list[Path]:
    """One figure per dataset: rows = initial sets, columns = ESSP, Δ, Dice and the labeled set's group shares,
    per round, mean over seeds with the band of :func:`fairal.report.tidy.curves`; the measures on ``split``
    (``"eval"``: the evaluation split, as the study's tables; or each dataset's, a dict; said in the title)."""
    datasets = ordered(set(results.rounds["dataset"]), [])
    splits = split if isinstance(split, dict) else dict.fromkeys(datasets, split)
    names = _file_names(datasets)
    return [_dataset_figure(on_split(of_datasets(results, [d]), splits.get(d, TEST)), d, splits.get(d, TEST),
                            within(out, f"study_{names[d]}.png")) for d in datasets]


def _dataset_figure(results: Results, d: str, split: str, path: Path) -> Path:
    """:func:`study_figures`' figure of the dataset ``d`` (``results``: its records on ``split``) into ``path``."""
    r = results.rounds
    words = study_measures()
    metrics = [m for m in words if m in r.columns]  # the final measures (an AUC is no column of the rounds)
    share_cols = [c for c in r.columns if c.startswith("n_labeled_g")]
    tables = {m: curves(results, m) for m in metrics}
    inits, strategies = ordered(set(r["init"]), []), ordered(set(r["strategy"]), [])
    colours = colours_for(strategies)
    ncol = len(metrics) + (1 if share_cols else 0)
    fig, axes = plt.subplots(len(inits), ncol, figsize=(3.6 * ncol, 2.9 * len(inits)), squeeze=False)
    for row, init in enumerate(inits):
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            t = tables[metric]
            for s in strategies:
                c = t[(t["init"] == init) & (t["strategy"] == s)].sort_values("n_labeled")
                ax.plot(c["n_labeled"], c["mean"], color=colours[s], label=label(s), lw=1.6)
                ax.fill_between(c["n_labeled"], c["lo"], c["hi"], color=colours[s], alpha=0.15, lw=0)
            ax.set_title(literal(f"{d}, {init}: {words[metric].replace('final ', '')}"), fontsize=10)
        if share_cols:
            _share_panel(axes[row, -1], r[r["init"] == init], colours, share_cols)
    for ax in axes[-1]:
        ax.set_xlabel("labeled images")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.suptitle(literal(f"{d}: measured on the {SPLIT_NAMES[split]}; mean over seeds, band = 95% CI of the mean"),
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def planned_runs(info: dict) -> list[tuple[str, str, str, int]]:
    """The runs of the study's plan (its ``study.json``: datasets x initial sets x strategies x seeds)."""
    study, seeds = info.get("study", {}), info.get("seeds")
    if not seeds:
        return []
    return [(d["name"], i, s, n) for d in study.get("datasets", []) for i in study.get("inits", [])
            for s in planned_arms(info) for n in range(int(seeds))]


def planned_arms(info: dict) -> list[str]:
    """The strategies (arm names) of the study's plan: its arms, else its profile's strategies."""
    arms = info.get("study", {}).get("arms")
    names = [a["name"] for a in arms] if arms else info.get("profile", {}).get("strategies", [])
    return names.split(",") if isinstance(names, str) else list(names)


def missing_runs(results: Results, info: dict) -> list[tuple[str, str, str, int]]:
    """The runs of the study's plan that have not finished; runs of other strategies that the records hold
    besides do not count."""
    return [k for k in planned_runs(info) if k not in results.finished]


def withheld_note(missing: list, info: dict) -> str:
    """Why the paired comparisons are not computed ("" when they are): runs of the plan not finished."""
    if not missing:
        return ""
    d, i, s, n = missing[0]
    return (f"withheld: {len(missing)} run(s) of the plan ({info.get('seeds')} seeds) are not finished (first: "
            f"{d}/{i}/{s}/seed-{n}); no paired comparison or verdict is computed before all are "
            "(docs/analysis-plan.md)")


def build_study_report(folder: Path, out: Path, results: Results, info: dict) -> Path:
    """``report.html`` of a study, with ``study_summary.csv``, ``study_paired.csv`` and a figure per dataset, each
    dataset measured on its primary split (the evaluation split where it has one, else the test split: a lab's
    cohort), named in the tables' column ``split``. While runs of the study's plan are missing,
    ``study_paired.csv`` has its columns only and the report says why (:func:`withheld_note`)."""
    study = info.get("study", {})
    reference = study.get("reference", WLE)
    found = dataset_splits(results)
    splits = {d: found[d] for d in ordered(set(found), [d["name"] for d in study.get("datasets", [])])}
    summary = per_split(results, splits, summary_table)
    withheld = withheld_note(missing_runs(results, info), info)
    paired = (paired_table(results, reference, splits) if not results.rounds.empty and not withheld
              else pd.DataFrame(columns=PAIRED_COLUMNS))
    write_csv(within(out, "study_summary.csv"), summary)
    write_csv(within(out, "study_paired.csv"), paired)
    baselines = per_split(results, splits, baseline_table)
    if not baselines.empty:
        write_csv(within(out, "study_baselines.csv"), baselines)
    figs = study_figures(results, out, splits) if not results.rounds.empty else []
    seeds = int(results.rounds["seed"].nunique()) if not results.rounds.empty else 0
    primary = int((paired["family"] == "pooled").sum()) if not paired.empty else 0
    parts = [*HEAD, *banner(str(info.get("profile", {}).get("name", ""))),
             f"<h2>Study {html.escape(str(study.get('name', '')))}</h2>",
             f"<p>{html.escape(str(study.get('description', '')))}</p>",
             _counts(results, info, splits), "<h2>Each strategy</h2>",
             "<p>Mean over seeds and 95% t interval of the mean, clipped to the measure's range (Dice, ESSP and "
             "shares in [0, 1], Δ &ge; 0); final = at the final budget; split: where each dataset is measured.</p>",
             html_table(summary[[c for c in summary.columns if not c.endswith(("_ci_low", "_ci_high"))]],
                        best={m: "max" if measure(m).higher_is_better else "min" for m in study_measures()},
                        within=["dataset", "init"]),
             *_baseline_section(baselines),
             f"<h2>{html.escape(reference)} against each strategy</h2>",
             f"<p><b>{html.escape(withheld[:1].upper() + withheld[1:])}.</b></p>" if withheld else "",
             _rule(seeds, primary or primary_family(len(study.get("datasets", [])), len(planned_arms(info)))),
             html_table(paired, digits=4)]
    for p in figs:
        parts.append(f"<h3>{html.escape(p.stem)}</h3>" + _figure(p))
    parts += _dose_section(dose_tables(results, info, splits, out, withheld=bool(withheld) or results.rounds.empty,
                                       folder=folder),
                           bool(withheld) or results.rounds.empty)
    parts += ["<h2>The study file</h2>", "<pre>" + html.escape(study.get("text") or json.dumps(study, indent=1))
              + "</pre>", *settings_section(results), "</body></html>"]
    target = within(out, "report.html")
    write_text(target, "\n".join(parts))
    return target


def _dose_section(dose, withheld: bool) -> list[str]:
    """The dose-response view of :func:`fairal.report.dose.dose_tables` (nothing without a ladder)."""
    if dose is None:
        return []
    calib, table, trend, onset, figs = dose
    parts = ["<h2>Dose-response: the strategies against the harm</h2>",
             "<p>Each rung of a ladder is one dataset of one recipe; its gap is the calibration's (a model trained "
             "on Group 2 alone: mean Dice of Group 2 − of Group 1 on held-out subjects, 95% CI), with Group 1's "
             "structure change in Group 2's SDs. Families: dose-primary and dose-secondary (final ESSP, Holm "
             "within each), dose-described (final Δ and Dice), exploratory (an arm not run at every rung): the last "
             "two without a verdict. The trend: per seed, the slope of the rung differences over the gap, per 0.1 "
             "of gap.</p>", html_table(calib, digits=4)]
    if not withheld:
        parts += [html_table(table.drop(columns=["gap_ci_low", "gap_ci_high"]), digits=4),
                  "<h3>Trend over the gap</h3>",
                  html_table(trend, digits=4) if not trend.empty else
                  "<p>No trend: a slope needs two rungs and at least 2 seeds with a pair of every initial set at "
                  "every rung (the seeds' slopes are its units).</p>",
                  "<h3>From which gap on</h3><ul>"
                  + "".join(f"<li>{html.escape(onset_sentence(r))}</li>" for _, r in onset.iterrows()) + "</ul>"]
    return parts + [f"<h3>{html.escape(p.stem)}</h3>" + _figure(p) for p in figs]


def _baseline_section(baselines: pd.DataFrame) -> list[str]:
    if baselines.empty:
        return []
    return ["<h2>Baselines: one model per training cohort</h2>",
            "<p>Trained on all of the pool, Group 1 only or Group 2 only, measured on the split of the column "
            "split; gap_g1_g2 = Group 1's Dice − Group 2's (negative: Group 1 segmented worse). With one training "
            "seed a row is one model: an anecdote, not an estimate.</p>", html_table(baselines, digits=4)]


def _counts(results: Results, info: dict, splits: dict[str, str]) -> str:
    """How many runs of the study's own plan have finished, its seeds, and the split each dataset is measured
    on."""
    planned = planned_runs(info)
    done = [k for k in planned if k in results.finished] if planned else list(results.finished)
    expected = len(planned) if planned else len(results.expected)
    extra = len(results.finished) - len(done)
    seeds = int(results.rounds["seed"].nunique()) if not results.rounds.empty else 0
    where = "; ".join(f"{html.escape(d)}: the {SPLIT_NAMES[s]}" + (" (it has no evaluation split)" if s == TEST
                                                                    else "") for d, s in splits.items())
    return (f"<p>{len(done)} finished runs of {expected} expected (the study's plan), {seeds} seed(s)"
            + (f"; {extra} finished run(s) beyond the plan are in the records (not counted)" if extra > 0 else "")
            + (f". Measured per dataset on {where}.</p>" if where else ".</p>"))


def _rule(seeds: int, comparisons: int) -> str:
    """The rule of the paired table, with what ``seeds`` seeds can give over the ``comparisons`` of the primary
    family (pooled final ESSP) in the words of the start-up warning (:func:`fairal.stats.seed_rule`)."""
    margins = ", ".join(f"{k} ±{equivalence_margin(k):g}" for k in study_measures() if equivalence_margin(k))
    return (f"<p><b>{html.escape(seed_rule(seeds, comparisons))}</b></p>" if seeds else "") + (
        "<p>The seed is the unit (a pooled comparison: each seed's mean difference over the initial sets); "
        "confirmed / refuted: the 95% CI on one side of 0 and a Holm-adjusted sign-flip p &lt; 0.05 within "
        "the family; equivalent: Holm-adjusted TOST p &lt; 0.05 within the margin (" + html.escape(margins)
        + "); 'within margin': a real difference smaller than the margin (docs/analysis-plan.md).</p>")


def _figure(path: Path) -> str:
    import base64

    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"/></figure>'

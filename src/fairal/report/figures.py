"""The paper's Figures 1-4 redrawn from our runs, and the figures beyond them (matplotlib, PNG and SVG).

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies) and every strategy
also has its own marker and line style, so curves that coincide stay apart. The figure's title is the report's
(HTML) heading; each panel names its dataset and initial set, each y-axis its metric and the split it is measured
on.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fairal.acquisition import parse_strategy  # noqa: E402
from fairal.errors import FairalError  # noqa: E402
from fairal.io import within  # noqa: E402
from fairal.records import ENTROPY, PAPER_STRATEGIES, WLE  # noqa: E402
from fairal.report.tidy import (  # noqa: E402
    DATASET_ORDER,
    INIT_ORDER,
    STRATEGY_ORDER,
    Results,
    curves,
    ordered,
    split_cases,
)

#: Okabe-Ito: black, orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple.
OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]
COLOURS = {"random": "#7F7F7F", "entropy": "#0072B2", "localized-entropy": "#E69F00",
           "weighted-localized-entropy": "#D55E00", "bald": "#56B4E9", "weighted-bald": "#CC79A7",
           "stochastic-weighted-localized-entropy": "#009E73", "weighted-localized-entropy-t0.5": "#000000"}
MARKERS = {"random": "o", "entropy": "s", "localized-entropy": "^", "weighted-localized-entropy": "D",
           "bald": "v", "weighted-bald": "P", "stochastic-weighted-localized-entropy": "X",
           "weighted-localized-entropy-t0.5": "*"}
METRIC_LABEL = {"essp": "ESSP", "delta": "Δ (sum of group gaps)", "dice_all": "Dice, all cases",
                "g1_ratio": "Group 1 share of labeled set", "w_g1": "weight of Group 1 (Eq. 2)"}
SHORT = {"random": "random", "entropy": "entropy", "localized-entropy": "LE", "weighted-localized-entropy": "WLE"}
FONT = {"panel": 11, "axis": 10, "tick": 9, "legend": 10}
#: The split a figure's y-axis names; the measures of the labeled set itself name none.
TEST, LABELED_SET = "test split", ("g1_ratio", "w_g1")


def literal(text) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` escaped, so that a case id, group or folder name such as
    ``$\\nope$`` is never parsed as mathtext (which draws something else, or fails)."""
    return str(text).replace("$", r"\$")


def label(strategy: str) -> str:
    try:
        return parse_strategy(strategy).label
    except FairalError:
        return literal(strategy)


def colours_for(strategies) -> dict[str, str]:
    """One colour per strategy of a figure: the paper report's fixed colour where the strategy has one
    (:data:`COLOURS`: the same strategy looks the same in every figure and report), else the first Okabe-Ito colour
    no other strategy of the figure has, then matplotlib's tab10 brown, olive and cyan (cycling only past those)."""
    strategies = list(strategies)
    taken = {COLOURS[s] for s in strategies if s in COLOURS}
    spare = [c for c in (*OKABE_ITO, "#8C564B", "#BCBD22", "#17BECF") if c not in taken]
    out, k = {}, 0
    for s in strategies:
        if s in COLOURS:
            out[s] = COLOURS[s]
        else:
            out[s], k = spare[k % len(spare)], k + 1
    return out


def _style(strategy: str, colour: str) -> dict:
    return {"color": colour, "marker": MARKERS.get(strategy, "o"),
            "linestyle": "-" if strategy in PAPER_STRATEGIES else "--"}


def _panel(ax, table: pd.DataFrame, dataset: str, init: str, n_seeds: int, strategies, column: str = "mean"
           ) -> None:
    drawn = ordered(set(table["strategy"]) & set(strategies), STRATEGY_ORDER)
    colours = colours_for(drawn)
    for strategy in drawn:
        c = table[(table["dataset"] == dataset) & (table["init"] == init) & (table["strategy"] == strategy)]
        if c.empty:
            continue
        c = c.sort_values("n_labeled")
        st = _style(strategy, colours[strategy])
        ax.plot(c["n_labeled"], c[column], markersize=4, linewidth=1.4, markevery=2, label=label(strategy),
                **st)
        if n_seeds > 1 and "lo" in c:
            ax.fill_between(c["n_labeled"], c["lo"], c["hi"], color=st["color"], alpha=0.13, linewidth=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=FONT["tick"])


def _save(fig, path: Path, handles, labels) -> list[Path]:
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=FONT["legend"],
                   frameon=False)
    rows = (len(labels) + 3) // 4 if labels else 0
    fig.tight_layout(rect=(0, 0.035 * rows + 0.01, 1, 1))
    written = []
    for suffix in (".png", ".svg"):
        target = within(path.parent, path.with_suffix(suffix).name)
        fig.savefig(target, dpi=100, metadata={"Software": None} if suffix == ".png" else {"Date": None})
        written.append(target)
    plt.close(fig)
    return written


def _figure(results: Results, panels: list[list[dict]], path: Path, strategies=PAPER_STRATEGIES,
            measured_on: str = TEST) -> list[Path]:
    """A grid of panels, each ``{"dataset", "init", "metric"}``; one line per strategy of ``strategies`` that has
    runs; every panel titled with its dataset and initial set, every y-axis with its metric and the split it is
    measured on (``measured_on``; none for what the labeled set gives: shares, weights)."""
    n_seeds = int(results.rounds["seed"].nunique())
    n_rows, n_cols = len(panels), len(panels[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.0 * n_cols, 3.0 * n_rows + 0.8), squeeze=False, sharex=True)
    tables = {m: curves(results, m) for m in {p["metric"] for row in panels for p in row}}
    for i, row in enumerate(panels):
        for j, p in enumerate(row):
            ax = axes[i, j]
            _panel(ax, tables[p["metric"]], p["dataset"], p["init"], n_seeds, strategies)
            if p["metric"] == "g1_ratio":
                ax.axhline(0.5, color="k", linewidth=0.6, linestyle=":")
            ax.set_title(literal(f"{p['dataset']} bias, {p['init']} start"), fontsize=FONT["panel"])
            label = METRIC_LABEL.get(p["metric"], p["metric"])
            on_split = measured_on and p["metric"] not in LABELED_SET
            ax.set_ylabel(f"{label}, {measured_on}" if on_split else label, fontsize=FONT["axis"])
            if i == n_rows - 1:
                ax.set_xlabel("labeled images", fontsize=FONT["axis"])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    return _save(fig, path, handles, labels)


def write_eval_figures(results: Results, out: Path) -> dict[str, list[Path]]:
    """The primary endpoint's curves: ESSP and Δ per round on the evaluation split (``results`` as
    :func:`fairal.report.tidy.on_evaluation_split` gives them), datasets as columns, initial sets as rows."""
    out.mkdir(parents=True, exist_ok=True)
    datasets = ordered(set(results.rounds["dataset"]), DATASET_ORDER)
    inits = ordered(set(results.rounds["init"]), INIT_ORDER)
    return {f"fig{n}_{metric}_eval": _figure(results, [[{"dataset": d, "init": i, "metric": metric} for d in datasets]
                                                         for i in inits], out / f"fig{n}_{metric}_eval",
                                              measured_on="eval split")
            for n, metric in ((1, "essp"), (2, "delta"))}


def _group_dice_figure(results: Results, path: Path, datasets, inits) -> list[Path]:
    """Dice of each group over the rounds: columns = dataset, rows = initial set x group (two columns at most, so
    that the figure stays legible on a narrow screen)."""
    groups = sorted(c[len("dice_g"):] for c in results.rounds.columns if c.startswith("dice_g"))
    rows = [(i, g) for i in inits for g in groups]
    n_seeds = int(results.rounds["seed"].nunique())
    fig, axes = plt.subplots(len(rows), len(datasets), figsize=(5.0 * len(datasets), 2.6 * len(rows) + 0.8),
                             squeeze=False, sharex=True, sharey="row")
    tables = {g: curves(results, f"dice_g{g}") for g in groups}
    for i, (init, g) in enumerate(rows):
        for j, d in enumerate(datasets):
            ax = axes[i, j]
            _panel(ax, tables[g], d, init, n_seeds, PAPER_STRATEGIES)
            ax.set_title(literal(f"{d} bias, {init} start: Group {g}"), fontsize=FONT["panel"])
            if j == 0:
                ax.set_ylabel(literal(f"Dice of Group {g}, {TEST}"), fontsize=FONT["axis"])
            if i == len(rows) - 1:
                ax.set_xlabel("labeled images", fontsize=FONT["axis"])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    return _save(fig, path, handles, labels)


def _case_dice_figure(cases: pd.DataFrame, path: Path, datasets) -> list[Path]:
    """Per-case test Dice by group at the final budget (all seeds and initial sets): one box per strategy and
    group, the cases as dots."""
    strategies = ordered(set(cases["strategy"]) & set(PAPER_STRATEGIES), STRATEGY_ORDER)
    groups = sorted(set(cases["group"]), key=str)
    fig, axes = plt.subplots(len(datasets), 1, figsize=(8.0, 4.0 * len(datasets)), squeeze=False, sharey=True)
    for j, d in enumerate(datasets):  # one dataset per row: legible on a narrow screen
        ax = axes[j, 0]
        positions, data, colours = [], [], []
        for si, s in enumerate(strategies):
            for gi, g in enumerate(groups):
                v = cases[(cases["dataset"] == d) & (cases["strategy"] == s) & (cases["group"] == g)]["dice"]
                if v.empty:
                    continue
                x = si * (len(groups) + 1) + gi
                positions.append(x)
                data.append(v.to_numpy())
                colours.append(COLOURS.get(s, "#000000"))
                jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(v))
                ax.scatter(x + jitter, v, s=4, color=COLOURS.get(s, "#000000"), alpha=0.35, linewidths=0)
        if data:
            box = ax.boxplot(data, positions=positions, widths=0.7, showfliers=False, patch_artist=True)
            for patch, c in zip(box["boxes"], colours, strict=True):
                patch.set_facecolor("none")
                patch.set_edgecolor(c)
        ticks = [si * (len(groups) + 1) + gi for si in range(len(strategies)) for gi in range(len(groups))]
        ax.set_xticks(ticks, [literal(f"G{g}") for _ in strategies for g in groups], fontsize=FONT["tick"])
        for si, s in enumerate(strategies):
            ax.text(si * (len(groups) + 1) + (len(groups) - 1) / 2, 1.0, SHORT.get(s, s), ha="center", va="bottom",
                    fontsize=FONT["tick"], transform=ax.get_xaxis_transform())
        ax.set_title(literal(f"{d} bias"), fontsize=FONT["panel"], pad=18)
        ax.set_ylabel(f"Dice of a case, {TEST}", fontsize=FONT["axis"])
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path, [], [])


def write_figures(results: Results, out: Path) -> dict[str, list[Path]]:
    """Fig. 1: ESSP; Fig. 2 / 4: Δ and Dice (strong / weak); Fig. 3: Group 1 share of the labeled set; with
    strategies beyond the paper, Fig. 5 / 6: their ESSP / Δ; then Fig. 7: Dice of each group over the rounds,
    Fig. 8: Group 1's weight over the rounds, Fig. 9: per-case Dice by group at the final budget."""
    out.mkdir(parents=True, exist_ok=True)
    if results.rounds.empty:
        return {}
    datasets = ordered(set(results.rounds["dataset"]), DATASET_ORDER)
    inits = ordered(set(results.rounds["init"]), INIT_ORDER)
    figs = {}

    def grid_of(metric):
        return [[{"dataset": d, "init": i, "metric": metric} for d in datasets] for i in inits]

    figs["fig1_essp"] = _figure(results, grid_of("essp"), out / "fig1_essp")
    for name, dataset in (("fig2_delta_dice_strong", "strong"), ("fig4_delta_dice_weak", "weak")):
        if dataset in datasets:
            panels = [[{"dataset": dataset, "init": i, "metric": m} for m in ("delta", "dice_all")] for i in inits]
            figs[name] = _figure(results, panels, out / name)
    if "g1_ratio" in results.rounds.columns:
        figs["fig3_group1_ratio"] = _figure(results, grid_of("g1_ratio"), out / "fig3_group1_ratio")
    extra = set(results.rounds["strategy"]) - set(PAPER_STRATEGIES)
    if extra:
        shown = [ENTROPY, WLE, *ordered(extra, STRATEGY_ORDER)]
        figs["fig5_beyond_essp"] = _figure(results, grid_of("essp"), out / "fig5_beyond_essp", strategies=shown)
        figs["fig6_beyond_delta"] = _figure(results, grid_of("delta"), out / "fig6_beyond_delta", strategies=shown)
    if any(c.startswith("dice_g") for c in results.rounds.columns):
        figs["fig7_dice_per_group"] = _group_dice_figure(results, out / "fig7_dice_per_group", datasets, inits)
    if "w_g1" in results.rounds.columns:
        figs["fig8_group_weights"] = _figure(results, grid_of("w_g1"), out / "fig8_group_weights")
    test_cases = split_cases(results.cases, "test")
    if test_cases is not None and not test_cases.empty:
        figs["fig9_case_dice"] = _case_dice_figure(test_cases, out / "fig9_case_dice", datasets)
    return figs

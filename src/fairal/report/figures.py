"""The paper's Figures 1-4 redrawn from our runs (matplotlib, PNG and SVG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fairal.config import PAPER_STRATEGIES  # noqa: E402
from fairal.report.records import DATASET_ORDER, INIT_ORDER, STRATEGY_ORDER, Results, _order, curves  # noqa: E402

COLOURS = {"random": "tab:gray", "entropy": "tab:blue", "localized-entropy": "tab:orange",
           "weighted-localized-entropy": "tab:red", "bald": "tab:cyan", "weighted-bald": "tab:purple",
           "stochastic-weighted-localized-entropy": "tab:green", "weighted-localized-entropy-t0.5": "tab:brown"}
LABELS = {"random": "random", "entropy": "entropy", "localized-entropy": "localized entropy",
          "weighted-localized-entropy": "weighted localized entropy", "bald": "BALD (MC dropout)",
          "weighted-bald": "weighted BALD", "stochastic-weighted-localized-entropy": "stochastic batches of WLE",
          "weighted-localized-entropy-t0.5": "WLE, temperature 0.5"}
METRIC_LABEL = {"essp": "ESSP", "delta": "Δ (sum of group gaps)", "dice_all": "Dice (all test cases)",
                "g1_ratio": "Group 1 ratio of the labeled set"}


def _panel(ax, table: pd.DataFrame, dataset: str, init: str, metric: str, n_seeds: int, strategies) -> None:
    for strategy in _order(set(table["strategy"]) & set(strategies), STRATEGY_ORDER):
        c = table[(table["dataset"] == dataset) & (table["init"] == init) & (table["strategy"] == strategy)]
        if c.empty:
            continue
        c = c.sort_values("n_labeled")
        colour = COLOURS.get(strategy)
        style = "-" if strategy in PAPER_STRATEGIES else "--"
        ax.plot(c["n_labeled"], c["mean"], marker="o", markersize=2.5, linewidth=1.4, color=colour, linestyle=style,
                label=LABELS.get(strategy, strategy))
        if n_seeds > 1:
            ax.fill_between(c["n_labeled"], c["lo"], c["hi"], color=colour, alpha=0.15, linewidth=0)
    if metric == "g1_ratio":
        ax.axhline(0.5, color="k", linewidth=0.6, linestyle=":")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _figure(results: Results, panels: list[list[dict]], col_titles: list[str], row_titles: list[str], title: str,
            path: Path, strategies=PAPER_STRATEGIES) -> list[Path]:
    """A grid of panels, each ``{"dataset", "init", "metric"}``, one line per strategy of ``strategies`` that has
    runs; written as PNG and SVG."""
    n_seeds = int(results.rounds["seed"].nunique())
    n_rows, n_cols = len(panels), len(panels[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 2.5 * n_rows + 0.6), squeeze=False,
                             sharex=True)
    tables = {m: curves(results, m) for m in {p["metric"] for row in panels for p in row}}
    for i, row in enumerate(panels):
        for j, p in enumerate(row):
            _panel(axes[i, j], tables[p["metric"]], p["dataset"], p["init"], p["metric"], n_seeds, strategies)
            if i == 0:
                axes[i, j].set_title(col_titles[j], fontsize=9)
            if j == 0:
                axes[i, j].set_ylabel(row_titles[i], fontsize=8)
            if i == n_rows - 1:
                axes[i, j].set_xlabel("labeled images", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    band = f"mean of {n_seeds} seeds; band: 95% t interval across seeds" if n_seeds > 1 else "one seed"
    fig.suptitle(f"{title} ({band})", fontsize=10)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.025 * ((len(labels) + 3) // 4), 1, 0.95))
    written = []
    for suffix in (".png", ".svg"):
        target = path.with_suffix(suffix)
        fig.savefig(target, dpi=110, metadata={"Software": None} if suffix == ".png" else {"Date": None})
        written.append(target)
    plt.close(fig)
    return written


def write_figures(results: Results, out: Path) -> dict[str, list[Path]]:
    """Fig. 1: ESSP and Fig. 3: Group 1 ratio (rows: initial set, columns: dataset); Fig. 2 / Fig. 4: Delta and
    Dice (rows: initial set, columns: metric) for the strong / weak dataset; all with the paper's four strategies.
    Fig. 5 / Fig. 6: ESSP / Delta of the strategies beyond the paper against entropy and weighted localized
    entropy, when the results have any."""
    out.mkdir(parents=True, exist_ok=True)
    if results.rounds.empty:
        return {}
    datasets = _order(set(results.rounds["dataset"]), DATASET_ORDER)
    inits = _order(set(results.rounds["init"]), INIT_ORDER)
    rows = [f"{i} start" for i in inits]
    figs = {}
    for name, metric, title in (("fig1_essp", "essp", "Figure 1: ESSP"),
                                ("fig3_group1_ratio", "g1_ratio", "Figure 3: Group 1 ratio of the labeled set")):
        if metric not in results.rounds.columns:
            continue
        panels = [[{"dataset": d, "init": i, "metric": metric} for d in datasets] for i in inits]
        figs[name] = _figure(results, panels, [f"{d} bias" for d in datasets], rows, title, out / name)
    for name, dataset, number in (("fig2_delta_dice_strong", "strong", 2), ("fig4_delta_dice_weak", "weak", 4)):
        if dataset in datasets:
            panels = [[{"dataset": dataset, "init": i, "metric": m} for m in ("delta", "dice_all")] for i in inits]
            figs[name] = _figure(results, panels, [METRIC_LABEL["delta"], METRIC_LABEL["dice_all"]], rows,
                                 f"Figure {number}: Δ and Dice, {dataset} bias", out / name)
    extra = set(results.rounds["strategy"]) - set(PAPER_STRATEGIES)
    if extra:
        shown = ["entropy", "weighted-localized-entropy", *_order(extra, STRATEGY_ORDER)]
        for name, metric, label in (("fig5_beyond_essp", "essp", "ESSP"), ("fig6_beyond_delta", "delta", "Δ")):
            panels = [[{"dataset": d, "init": i, "metric": metric} for d in datasets] for i in inits]
            figs[name] = _figure(results, panels, [f"{d} bias" for d in datasets], rows,
                                 f"Figure {name[3]}: {label}, strategies beyond the paper (dashed)", out / name,
                                 strategies=shown)
    return figs

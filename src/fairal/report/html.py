"""The HTML of the reports: the page's head, the pipeline-check banner, tables with readable headers and the
best values in bold, and the settings the records were made with."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from fairal import versions
from fairal.report.tidy import Results

#: Readable column headers of the report's tables.
HEADERS = {"dataset": "dataset", "init": "initial set", "strategy": "strategy", "cohort": "training cohort",
           "n_seeds": "seeds", "n_labeled": "labeled", "dice_all": "Dice", "dice_g1": "Dice G1", "dice_g2": "Dice G2",
           "delta": "Δ", "essp": "ESSP", "essp_auc": "ESSP AUC", "g1_ratio": "G1 share of labeled set",
           "g1_acquired_share": "G1 share of acquisitions",
           "delta_reduction_vs_entropy": "Δ vs entropy", "dice_g1_paper": "paper Dice G1",
           "dice_g2_paper": "paper Dice G2", "dice_all_paper": "paper Dice", "essp_paper": "paper ESSP",
           "delta_paper": "paper Δ", "essp_paper_by_eq4": "paper ESSP by Eq. 4", "p_value": "p", "ci_low": "CI low",
           "ci_high": "CI high"}


BANNER = ("<div class='banner'><b>{profile} profile: a pipeline check, not evidence.</b> Tiny data and short "
          "training; the numbers below show that everything runs, nothing about the strategies. The "
          "<code>standard</code> profile with several seeds (docs/REPRODUCTION.md) is the evidence.</div>")


def _printed(v: float, digits: int) -> float:
    """``v`` as the table prints it (so that values that read the same compare equal)."""
    return float(f"{v:.{digits}f}")


def _bold(df: pd.DataFrame, best: dict[str, str], within: list[str] | None, digits: int) -> pd.DataFrame:
    """Where the best value of each column of ``best`` is, per group of rows ``within``: every value that reads the
    same as the best at the printed digits (ties are bold alike)."""
    bold = pd.DataFrame(False, index=df.index, columns=df.columns)
    for col, how in best.items():
        if col not in df.columns:
            continue
        shown = df[col].map(lambda v: _printed(v, digits) if pd.notna(v) else np.nan)
        groups = shown.groupby([df[c] for c in within], sort=False) if within else [(None, shown)]
        for _, g in groups:
            if g.notna().any():
                bold.loc[g.index[g == (g.max() if how == "max" else g.min())], col] = True
    return bold


def _cell_text(v, col: str, digits: int, formats: dict) -> str:
    if col in formats:
        return formats[col](v)
    if isinstance(v, float):
        if pd.isna(v):
            return ""
        if col == "delta_reduction_vs_entropy":
            return f"{v:+.0%}"
        if col == "p_value":
            return "<0.001" if v < 0.001 else f"{v:.3f}"
        return f"{v:.{digits}f}"
    return str(v)


def html_table(df: pd.DataFrame, best: dict[str, str] | None = None, within: list[str] | None = None,
               digits: int = 3, ci: dict[str, tuple[str, str]] | None = None, formats: dict | None = None) -> str:
    """A table with readable headers, constant seed and size columns dropped, and the best value of each column in
    ``best`` (``"max"``/``"min"``) set in bold per group of rows ``within`` (e.g. per scenario; ties alike). A
    column of ``ci`` (``{column: (low column, high column)}``) shows its interval in the value's cell; ``formats``
    gives a column its own formatter (e.g. the paper's values as printed)."""
    if df.empty:
        return ""
    ci, formats = ci or {}, formats or {}
    bounds_cols = [c for pair in ci.values() for c in pair]
    df = df.drop(columns=[c for c in df.columns if c in ("n_seeds", "n_labeled") and len(df) > 1
                          and df[c].nunique(dropna=False) <= 1])
    bold = _bold(df, best or {}, within, digits)
    shown = [c for c in df.columns if c not in bounds_cols]
    head = "".join(f"<th>{html.escape(HEADERS.get(c, c.replace('_', ' ')))}</th>" for c in shown)
    rows = []
    for i, r in df.iterrows():
        cells = []
        for c in shown:
            text = html.escape(_cell_text(r[c], c, digits, formats))
            text = f"<b>{text}</b>" if bold.loc[i, c] else text
            if c in ci and pd.notna(r[ci[c][0]]):
                text += f" <span class='ci'>[{r[ci[c][0]]:.{digits}f}, {r[ci[c][1]]:.{digits}f}]</span>"
            numeric = isinstance(r[c], int | float | np.integer | np.floating)
            cells.append(f"<td{'' if numeric else ' class=text'}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


#: The page's head: its title and style sheet.
HEAD = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
    "<title>fairal report</title>",
    "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
    "line-height:1.45}table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;"
    "padding:3px 7px;text-align:right;white-space:nowrap}th{background:#f3f3f3;position:sticky;top:0}"
    "td.text{text-align:left;white-space:normal;min-width:3em}"
    ".scroll{overflow-x:auto;max-width:100%}img{max-width:100%;height:auto}figure{margin:1em 0}"
    ".warn{background:#fff4e0;border-left:4px solid #e69500;padding:.5em 1em}"
    ".banner{background:#fde8e8;border-left:6px solid #c0392b;padding:.7em 1em;font-size:1.05em}"
    ".ci{color:#555;font-size:11px;display:block}th{white-space:normal;vertical-align:bottom}.file{font-weight:normal;font-size:.75em;color:#666}"
    ".mixed{background:#fff4e0}.small{font-size:.85em;color:#555}"
    "table.settings th{text-align:left;vertical-align:top;position:static}"
    "table.settings td.text{white-space:normal}</style>"
    "</head><body>",
    "<h1>fairal: fairness-aware active learning, results</h1>",
)


def plural(n: int) -> str:
    return "s" if n != 1 else ""


#: Profiles whose records are a pipeline check, not evidence: every report says so in its banner.
PIPELINE_CHECKS = ("smoke", "quick")


def banner(profile: str) -> list[str]:
    """The banner of a report on records of a pipeline-check profile (:data:`PIPELINE_CHECKS`), the one rule of the
    paper's report and a study's; nothing for another profile."""
    return [BANNER.format(profile=html.escape(profile))] if profile in PIPELINE_CHECKS else []


def _several(values: dict[str, int]) -> str:
    """One recorded value as it is; several each with their number of runs (never one picked)."""
    if len(values) == 1:
        return html.escape(next(iter(values)))
    return "<span class='mixed'>" + "; ".join(f"{html.escape(v)} ({n} run{plural(n)})" for v, n in
                                               values.items()) + "</span>"


def _seeds_row(results: Results) -> str:
    """The seeds the records hold (beside the profile's default, when that differs)."""
    seeds = sorted(int(x) for x in set(results.rounds["seed"])) if not results.rounds.empty else []
    planned = (results.settings or {}).get("planned_seeds")
    text = f"{len(seeds)} per run ({', '.join(map(str, seeds))})" if seeds else "none"
    text += f" of the {int(planned)} planned" if planned else ""
    default = results.recorded.get("profile.seeds", {})
    if default and set(default) != {str(len(seeds))}:
        text += f"; the profile's default (its <code>seeds</code> setting) is {_several(default)}"
    return text


def _profile_items(results: Results) -> str:
    """The profile's settings as ``key = value``; the requested device said to be the request."""
    items = []
    for key, values in results.recorded.items():
        name = key[len("profile."):]
        if not key.startswith("profile.") or name in ("name", "description"):
            continue
        item = f"<code>{html.escape(name)}</code>&nbsp;=&nbsp;{_several(values)}"
        if name == "seeds":
            item += " (default; the seeds of these records: above)"
        elif name == "device" and "device" in results.recorded:
            item += " (asked for; where the runs ran: above)"
        items.append(item)
    return " &middot; ".join(items)


def settings_section(results: Results) -> list[str]:
    """What the records say about how they were made: their seeds, device, library versions, commit, where they
    ran and the analysis plan, then the profile and its settings (a value that differs across the runs shows each
    value with its number of runs); the software that drew this page apart, at the end."""
    about = results.recorded
    rows = [("seeds", _seeds_row(results))] + [(k, _several(v)) for k, v in about.items() if "." not in k]
    if "profile.name" in about:
        described = about.get("profile.description")
        rows.append(("profile", f"<b>{_several(about['profile.name'])}</b>" + (
            f"; the profile's description of its defaults: &ldquo;{_several(described)}&rdquo;" if described else "")))
    mixed = [k[len("profile."):] for k, v in about.items() if k.startswith("profile.") and len(v) > 1]
    lines = ["<h2>Settings</h2><p>As the records hold them (not the software that drew this page: last line).</p>",
             "<table class='settings'>" + "".join(f"<tr><th>{html.escape(k)}</th><td class=text>{v}</td></tr>"
                                                  for k, v in rows) + "</table>"]
    if mixed:
        lines.append(f"<div class='warn'>Runs of different settings are mixed here: {html.escape(', '.join(mixed))}"
                     ".</div>")
    if _profile_items(results):
        lines.append(f"<p class='items'>Profile settings: {_profile_items(results)}.</p>")
    drawn = ", ".join(f"{k} {v}" for k, v in versions().items())
    lines.append(f"<p class='small'>This page was drawn by {html.escape(drawn)}.</p>")
    return lines

"""The report: the paper's Table 1 and Figures 1-4, and the figures beyond them, from any set of runs, as files and one
HTML page."""

from fairal.report.build import build_report

__all__ = ["build_report"]

"""The records' schema: what fairal writes and reads back, named once.

Writers (the run, the baselines, the grid, the simulator) and readers (the report, the scripts) take the names
of files, columns, keys and values from here."""

from __future__ import annotations

#: ``study.json``'s source of the built-in study ``paper`` (a study file's is its path).
PAPER_SOURCE = "built-in study 'paper'"

#: A simulated dataset's manifest columns of its scanner effects, each with its neutral value: a column is written
#: only where a group's value differs from it.
ACQUISITION_COLUMNS = {"contrast": 1.0, "inu": 0.0, "noise": 0.0}

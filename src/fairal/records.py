"""The records' schema: what fairal writes and reads back, named once.

Writers (the run, the baselines, the grid, the simulator) and readers (the report, the scripts) take the names
of files, columns, keys and values from here."""

from __future__ import annotations

#: ``study.json``'s source of the built-in study ``paper`` (a study file's is its path).
PAPER_SOURCE = "built-in study 'paper'"

#: A simulated dataset's manifest columns of its scanner effects, each with its neutral value: a column is written
#: only where a group's value differs from it.
ACQUISITION_COLUMNS = {"contrast": 1.0, "inu": 0.0, "noise": 0.0}

#: A finished AL run's example segmentations, for the report's figure of them (the report never predicts): written
#: by :func:`fairal.run.examples.write_examples` at the final round. A compressed NumPy archive with one entry per
#: group (the group's median test case by Dice): ``case_id``, ``group`` (text), ``dice``, ``slice`` (the axial slice
#: with the most structure), and that slice's ``image`` (float16), ``truth`` and ``prediction`` (uint8, the final
#: model's probability > 0.5).
EXAMPLES_FILE = "examples.npz"

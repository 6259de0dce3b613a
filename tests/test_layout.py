"""The layout: a folder per stage, imports flowing one way (the README's code map).

Each module of ``src/fairal`` belongs to one stage; a stage may import only the stages below it
(:data:`MAY_IMPORT`), no module imports itself round a circle, and an import of fairal inside a function is only
where it defers a dependency (:data:`DEFERRED`): a new one fails here, naming it."""

from __future__ import annotations

from .conftest import load_script

layout = load_script("layout")  # the measures: scripts/layout.py
imports, cycle = layout.imports, layout.cycle

#: module (or package) -> its stage; the longest match wins.
STAGES = {
    "fairal": "ground", "fairal.errors": "ground", "fairal.limits": "ground", "fairal.io": "ground",
    "fairal.nifti": "ground", "fairal.sampling": "ground", "fairal.progress": "ground", "fairal.stats": "ground",
    "fairal.records": "ground", "fairal.metrics": "ground",
    "fairal.acquisition": "settings", "fairal.influence": "settings", "fairal.config": "settings",
    "fairal.data": "data", "fairal.simulate": "simulate", "fairal.run": "run", "fairal.plugins": "plugins",
    "fairal.report": "report", "fairal.grid": "grid", "fairal.owndata": "owndata", "fairal.cli": "cli",
}
_BELOW_RUN = {"ground", "settings", "data"}
#: What each stage may import (besides itself): the floors below it. The report reads records: it never trains
#: or predicts, so it imports no run, grid or own-data module.
MAY_IMPORT = {
    "ground": set(),
    "settings": {"ground"},
    "data": {"ground", "settings"},
    "simulate": {"ground", "settings", "data"},
    "run": _BELOW_RUN,
    "plugins": {*_BELOW_RUN, "run"},
    "report": {"ground", "settings"},
    "grid": {*_BELOW_RUN, "simulate", "run", "plugins"},
    "owndata": {*_BELOW_RUN, "run", "plugins", "report"},  # a query's montage is drawn as the report's figures
    "cli": {*_BELOW_RUN, "simulate", "run", "plugins", "report", "grid", "owndata"},
}
#: The imports of fairal inside a function, each with why it is deferred: the command line loads a command's stage
#: when the command runs (``fairal --help`` and a refused option answer in a fraction of the time that importing
#: every stage, with torch, matplotlib and MONAI Label, takes).
DEFERRED = {"fairal.cli": "each command loads its own stage"}


def stage(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in STAGES:
            return STAGES[".".join(parts[:n])]
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES")


def test_every_module_belongs_to_a_stage_and_imports_only_the_stages_below():
    for module in layout.modules():
        stage(module)
    wrong = [f"{a}:{line} ({stage(a)}) imports {b} ({stage(b)})" for a, b, line, _ in imports()
             if stage(a) != stage(b) and stage(b) not in MAY_IMPORT[stage(a)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_between_modules():
    edges: dict = {}
    for a, b, _, _ in imports():
        edges.setdefault(a, set()).add(b)
    assert cycle(edges) == [], " -> ".join(cycle(edges))
    stages: dict = {}
    for a, b, _, _ in imports():
        if stage(a) != stage(b):
            stages.setdefault(stage(a), set()).add(stage(b))
    assert cycle(stages) == [], " -> ".join(cycle(stages))


def test_an_import_of_fairal_inside_a_function_only_where_it_defers_a_dependency():
    inside = [f"{a}:{line} imports {b} inside a function" for a, b, line, deferred in imports()
              if deferred and a not in DEFERRED]
    assert not inside, "\n".join(inside)


def test_the_checks_find_what_they_look_for():
    """The checks see a circle, an upward import and an import inside a function where there is one."""
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}}) == []
    assert layout.circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert layout.floors({"a": {"b"}, "b": {"c"}}) == 3  # a -> b -> c
    assert layout.floors({"a": {"b"}, "b": {"a", "c"}}) == 2  # the circle a <-> b is one floor above c
    assert "report" not in MAY_IMPORT["run"] and "run" not in MAY_IMPORT["report"]
    found = {(a, b, deferred) for a, b, _, deferred in imports()}
    assert ("fairal.cli", "fairal.grid.driver", True) in found  # cli defers its commands' stages
    assert ("fairal.run.loop", "fairal.run.rounds", False) in found

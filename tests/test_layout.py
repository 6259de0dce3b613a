"""The layout: a folder per stage, imports flowing one way (docs/api.md, "The code").

Each module of ``src/fairal`` belongs to one stage; a stage may import only the stages below it
(:data:`MAY_IMPORT`), no module imports itself round a circle, and an import of fairal inside a function is only
where it defers a dependency (:data:`DEFERRED`): a new one fails here, naming it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "fairal"

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


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def stage(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in STAGES:
            return STAGES[".".join(parts[:n])]
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES")


def _resolve(name: str, known: dict) -> str:
    """The module an imported name is: ``fairal.run`` + ``loop`` is the module ``fairal.run.loop``."""
    return name if name in known else name.rsplit(".", 1)[0]


def imports() -> list[tuple[str, str, int, bool]]:
    """Every import of fairal: (importing module, imported module, line, inside a function)."""
    known = modules()
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fairal"):
                targets = [_resolve(f"{node.module}.{a.name}", known) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("fairal")]
            found += [(name, t, node.lineno, id(node) in inside) for t in dict.fromkeys(targets) if t != name]
    return found


def cycle(edges: dict[str, set]) -> list[str]:
    """One circle of the graph ``edges`` ([] when it has none)."""
    state: dict = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node, [node])):
            return found
    return []


def test_every_module_belongs_to_a_stage_and_imports_only_the_stages_below():
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
    assert "report" not in MAY_IMPORT["run"] and "run" not in MAY_IMPORT["report"]
    found = {(a, b, deferred) for a, b, _, deferred in imports()}
    assert ("fairal.cli", "fairal.grid.driver", True) in found  # cli defers its commands' stages
    assert ("fairal.run.loop", "fairal.run.rounds", False) in found

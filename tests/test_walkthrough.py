"""docs/own-data.md's walkthrough: its commands, parsed from the page, run at the ``smoke`` profile on a tiny
template, and what the page shows has the form of what they print (scripts/own_data_walkthrough.py writes the
numbers themselves, from a run at the page's own profiles)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import LABEL_VALUE, OUT_SHAPE, make_template

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("own_data_walkthrough", ROOT / "scripts" / "own_data_walkthrough.py")
walk = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = walk  # its dataclasses look their module up
spec.loader.exec_module(walk)


def form(text: str) -> list[str]:
    """What a block shows, without its numbers: digits as ``#``, blanks and rules of tables collapsed, a table's
    rows as one ``│ rows`` (which cases rank first depends on the data), no warnings of small groups (which groups are
    small depends on the cases the first round labeled)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("│"):  # the rows, however many lines their cells wrap to
            if not lines or lines[-1] != "│ rows":
                lines.append("│ rows")
            continue
        if line.startswith("warning: group "):
            continue
        line = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", line)
        lines.append(re.sub(r"([━─ ])\1+", r"\1", line).strip())
    return lines


def test_the_page_parses_and_its_commands_are_valid():
    steps = walk.parse(walk.DOC.read_text())
    kinds = [s.what.split()[0] for s in steps]
    assert kinds.count("run") == 6 and kinds.count("output") == 5 and kinds.count("figure") == 1
    for step in steps:
        if step.what.startswith("run") and step.lang == "bash":
            subprocess.run(["bash", "-n", "-c", step.body], check=True)
        elif step.what.startswith("run"):
            compile(step.body, "own-data.md", "exec")
    figure = next(s for s in steps if s.what.startswith("figure"))
    assert (walk.DOC.parent / figure.body).is_file()


def test_the_cleaned_output_drops_progress_bars_and_the_folder(tmp_path):
    text = (f"training (seed 7) ━━━━━━━━ 30/30 loss 0.0440 0:00:00\nerror: {tmp_path}/a.csv: gone   \n"
            "ranked list\n")
    assert walk.clean(text, tmp_path) == "error: /path/to/a.csv: gone\nranked list\n"
    assert walk.duration(104.4) == "1 min 44 s" and walk.duration(7) == "7 s"


@pytest.mark.parametrize("doc", ["no block after\n<!-- walkthrough: run -->\ntext\n",
                                 "<!-- walkthrough: time -->1 min and no end\n"])
def test_a_marker_without_its_span_is_refused(doc):
    with pytest.raises(ValueError, match="walkthrough|no code block|no <!-- /walkthrough -->"):
        walk.parse(doc)


def test_the_walkthrough_runs_at_the_smoke_profile(tmp_path):
    tpl, lab = make_template(tmp_path)
    tiny = f" --shape {' '.join(map(str, OUT_SHAPE))} --template {tpl} --label {lab} --label-value {LABEL_VALUE}"

    def smoke(command: str) -> str:
        command = re.sub(r"(fairal simulate [^\n]*)", lambda m: m[1] + tiny + " --jobs 1 --no-preview", command)
        return command.replace("--profile quick", "--profile smoke")

    doc = walk.DOC.read_text()
    folder = tmp_path / "study"
    folder.mkdir()
    new, figures = walk.walkthrough(doc, folder, smoke)
    old_steps, new_steps = walk.parse(doc), walk.parse(new)
    assert [s.what for s in old_steps] == [s.what for s in new_steps]
    for old, fresh in zip(old_steps, new_steps, strict=True):
        if old.what.startswith("output"):
            assert form(old.body) == form(fresh.body), (old.what, old.body, fresh.body)
    assert (folder / "round-2" / "query.csv").is_file() and not (folder / "x").exists()
    assert list(figures) == ["own-data-montage.png"] and figures["own-data-montage.png"].is_file()
    assert "error: case sub-0003: image file not found" in new and "(did you mean" in new

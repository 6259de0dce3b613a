"""Re-run the walkthrough of docs/own-data.md and write what it shows back into the page.

The page's own commands are parsed from it and run in order in an empty temporary folder (with this Python's
``fairal`` and ``python`` first on the PATH); their outputs, the montage and the timings then replace what the page
shows, so the page cannot drift from the software::

    python scripts/own_data_walkthrough.py            # rewrite docs/own-data.md and docs/own-data-montage.png
    python scripts/own_data_walkthrough.py --check    # exit 1, with a diff, if a fresh run differs from the page

HTML comments in the page (invisible when it is rendered) say what is run and what is written:

    <!-- walkthrough: run -->              the next code block (bash or python) is run
    <!-- walkthrough: run each, fails -->  each line of the next bash block is run alone and must fail (exit 2)
    <!-- walkthrough: output -->           the next code block is what the last run printed
    <!-- walkthrough: output of CMD -->    the next code block is what CMD prints (run there, not shown)
    <!-- walkthrough: figure FILE -->      the next image is FILE of the folder, copied beside the page
    <!-- walkthrough: time -->...<!-- /walkthrough -->             wall and CPU time of the last run, and the machine
    <!-- walkthrough: value FOLDER KEY FORMAT -->...<!-- /walkthrough -->  a number of FOLDER/query.json

Outputs are shown without the trainings' progress bars, with the temporary folder written ``/path/to``. ``--check``
ignores the timings (they differ from run to run); the rest is bit-identical on the same machine and thread count.
The tests run the same commands at the ``smoke`` profile (tests/test_walkthrough.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "own-data.md"
MARKER = re.compile(r"<!-- walkthrough: (?P<what>.*?) -->")
BLOCK = re.compile(r"\n```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<target>[^)]+)\)")
SPAN_END = "<!-- /walkthrough -->"
#: A line of a training's progress bar (its time column differs from run to run).
PROGRESS = re.compile(r"━+.* \d+/\d+ loss ")
INLINE = ("time", "value")


@dataclass
class Step:
    """One marker of the page: what it says, and the span of the page it rules (a code block's body, an image's
    target or an inline value)."""

    what: str
    start: int
    end: int
    body: str = ""
    lang: str = ""


@dataclass
class Run:
    """The walkthrough's state: its folder, how each command is rewritten, the last run's output and cost."""

    folder: Path
    rewrite: Callable[[str], str] = lambda command: command
    output: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    load: float = 0.0
    figures: dict = field(default_factory=dict)  # target beside the page -> file of the folder


def parse(doc: str) -> list[Step]:
    """Every marker of ``doc`` with the span it rules, in order; a marker with nothing to rule is an error."""
    steps = []
    for m in MARKER.finditer(doc):
        what = m["what"].strip()
        if what.split()[0] in INLINE:
            end = doc.find(SPAN_END, m.end())
            if end < 0:
                raise ValueError(f"{what!r} at character {m.start()}: no {SPAN_END} after it")
            steps.append(Step(what, m.end(), end))
        elif what.startswith("figure"):
            img = IMAGE.search(doc, m.end())
            steps.append(Step(what, img.start("target"), img.end("target"), img["target"]))
        else:
            block = BLOCK.match(doc, m.end())
            if block is None:
                raise ValueError(f"{what!r} at character {m.start()}: no code block right after it")
            steps.append(Step(what, block.start("body"), block.end("body"), block["body"], block["lang"]))
    return steps


def environment(folder: Path) -> dict:
    """This Python's scripts first on the PATH, plain output of a fixed width."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": "120",
            "NO_COLOR": "1", "TERM": "dumb", "PWD": str(folder)}


def shell(run: Run, script: str, lang: str = "bash") -> tuple[int, str]:
    """Run ``script`` (bash, or python on its stdin) in the folder: its exit status and what it printed."""
    command = [sys.executable, "-"] if lang == "python" else ["bash", "-e", "-c", script]
    res = subprocess.run(command, cwd=run.folder, env=environment(run.folder), input=script if lang == "python"
                         else None, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return res.returncode, clean(res.stdout, run.folder)


def clean(text: str, folder: Path) -> str:
    """The output as the page shows it: no progress bars, no trailing blanks, the folder as ``/path/to``."""
    lines = [line.rstrip() for line in text.replace(str(folder), "/path/to").splitlines()]
    return "".join(line + "\n" for line in lines if line and not PROGRESS.search(line))


def execute(run: Run, step: Step) -> None:
    """A ``run`` marker: the block as one script, or with ``each`` every line alone (each must fail, exit 2)."""
    before, run.load = os.times(), os.getloadavg()[0]
    start = time.perf_counter()
    if "each" in step.what:
        outputs = []
        for line in filter(None, (line.strip() for line in step.body.splitlines())):
            rc, out = shell(run, run.rewrite(line))
            if rc != 2:
                raise RuntimeError(f"{line!r} should fail with exit status 2, got {rc}:\n{out}")
            outputs.append(out)
        run.output = "".join(outputs)
    else:
        rc, run.output = shell(run, run.rewrite(step.body), step.lang)
        if rc != 0:
            raise RuntimeError(f"the walkthrough's block failed (exit status {rc}):\n{step.body}\n{run.output}")
    after = os.times()
    run.seconds = time.perf_counter() - start
    run.cpu_seconds = (after.children_user - before.children_user) + (after.children_system - before.children_system)


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def machine() -> str:
    """The CPU, its cores and what else ran: what a timing depends on."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        name = found[1].strip() if found else name
    return f"{name}, {os.cpu_count()} cores"


def value(run: Run, spec: str) -> str:
    """``FOLDER KEY.KEY FORMAT``: the number at that key of FOLDER/query.json, formatted."""
    folder, keys, fmt = spec.split()
    item = json.loads((run.folder / folder / "query.json").read_text())
    for key in keys.split("."):
        item = item[key]
    return format(item, fmt)


def replacement(run: Run, step: Step) -> str | None:
    """What the page shows in ``step``'s span after the run (None: leave it as it is)."""
    kind = step.what.split()[0]
    if kind == "run":
        execute(run, step)
        return None
    if kind == "output":
        command = step.what[len("output of"):].strip() if step.what.startswith("output of") else None
        return shell(run, command)[1] if command else run.output
    if kind == "figure":
        run.figures[step.body] = run.folder / step.what.split(maxsplit=1)[1]
        return None
    if kind == "time":
        return (f"{duration(run.seconds)} ({duration(run.cpu_seconds)} of CPU time; {machine()}, at a load "
                f"average of {run.load:.1f} when it started)")
    if kind == "value":
        return value(run, step.what[len("value"):])
    raise ValueError(f"unknown walkthrough marker {step.what!r}")


def walkthrough(doc: str, folder: Path, rewrite: Callable[[str], str] = lambda c: c) -> tuple[str, dict]:
    """Run the page ``doc`` in ``folder``: the page rewritten with what the run showed, and its figures (target
    beside the page -> file in ``folder``)."""
    run = Run(Path(folder).resolve(), rewrite)
    edits = [(step, replacement(run, step)) for step in parse(doc)]
    for step, new in reversed(edits):
        if new is not None:
            doc = doc[:step.start] + new + doc[step.end:]
    return doc, run.figures


def without_timings(doc: str) -> str:
    return re.sub(r"(<!-- walkthrough: time -->).*?(" + re.escape(SPAN_END) + ")", r"\1\2", doc, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the page instead of writing it")
    ap.add_argument("--doc", type=Path, default=DOC, help="the page (default: docs/own-data.md)")
    ap.add_argument("--keep", type=Path, help="run in this new folder and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    old = args.doc.read_text()
    if args.keep:
        args.keep.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="fairal-walkthrough-") as tmp:
        new, figures = walkthrough(old, args.keep or Path(tmp))
        if args.check:
            diff = list(difflib.unified_diff(without_timings(old).splitlines(), without_timings(new).splitlines(),
                                             str(args.doc), "a fresh run", lineterm=""))
            print("\n".join(diff) if diff else f"{args.doc}: as a fresh run shows it")
            return 1 if diff else 0
        args.doc.write_text(new)
        for target, source in figures.items():
            shutil.copyfile(source, args.doc.parent / target)
    print(f"wrote {args.doc} and {', '.join(figures) or 'no figure'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

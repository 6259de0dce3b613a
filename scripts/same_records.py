"""Whether a change of fairal's code leaves its records as they were: make the records of a smoke reproduction and of
a smoke study with a simulated and a CSV dataset, then compare two such folders.

    python scripts/same_records.py make OUT [JOBS]  # OUT/reproduce (fairal reproduce --profile smoke), OUT/study
    python scripts/same_records.py compare A B   # every CSV and JSON of A against B's; exit 1 on a difference

Run ``make`` once with the code before the change (e.g. ``PYTHONPATH=/path/to/old/checkout/src``) and once after;
the fairal that runs is the one Python imports. ``compare`` reads every CSV and JSON file of both folders (the
report's too) and sets aside only what differs from one run to the next by nature: durations and timestamps (a
column or key named like ``seconds``, ``time``, ``elapsed``, ``date``), the files' modification times in
``data.json``, the library versions, the machine's description and the folders' own paths. Torch's reductions depend
on the number of threads: compare folders made with the same JOBS on the same machine."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Keys and columns that differ between two runs of the same code: durations, timestamps, versions.
VOLATILE = re.compile(r"seconds|time|elapsed|date|versions|^created$|^started$")
TINY = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2", "crop_margin": "4",
        "downsample": "1", "test_per_group": "6", "eval_per_group": "3", "n_subjects": "24"}


def fairal(*args: str) -> None:
    """The ``fairal`` command of this Python, with this environment (its PYTHONPATH picks the code)."""
    command = [sys.executable, "-c", "from fairal.cli import main; main()", *args]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def make(out: Path, jobs: str = "1") -> None:
    """The records of ``fairal reproduce --profile smoke`` and of :func:`make_study`'s study."""
    out.mkdir(parents=True, exist_ok=True)  # a reproduction there is resumed: its finished runs are kept
    fairal("reproduce", str(out / "reproduce"), "--profile", "smoke", "--jobs", jobs, "--quiet")
    make_study(out, jobs)


def make_study(out: Path, jobs: str = "1") -> None:
    """The records of docs/studies.md's study (a simulated and a CSV dataset, one with the pool's groups hidden) on
    the tests' tiny template at the smoke profile, in ``out/study``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import LABEL_VALUE, OUT_SHAPE, make_template  # the tests' tiny template

    from fairal.simulate.dataset import SimulationConfig, simulate_dataset

    folder = out / "study"
    folder.mkdir(parents=True)  # a new one: the study's records are made here
    tpl, lab = make_template(folder)
    data = simulate_dataset(SimulationConfig(n_subjects=24, shape=OUT_SHAPE, template=str(tpl), label=str(lab),
                                             label_value=LABEL_VALUE, jobs=1, preview=False), folder / "data",
                            progress=False)
    manifest = list(csv.DictReader((data / "manifest.csv").open()))
    with (folder / "cohort.csv").open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["case_id", "image", "label", "site"])
        rows.writerows([m["case_id"], f"data/{m['image']}", f"data/{m['label']}", m["group"]] for m in manifest)
    example = re.search(r"```toml\n(.*?)```", (ROOT / "docs" / "studies.md").read_text(), re.S).group(1)
    tiny = (f'n_subjects = 24, template = "{tpl}", label = "{lab}", label_value = {LABEL_VALUE}, '
            f"shape = {list(OUT_SHAPE)}")
    study = example.replace("n_subjects = 312", tiny)
    (folder / "study.toml").write_text(study.replace("groups_known = false ", "margin_mm = 3\ngroups_known = false "))
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    fairal("study", str(folder / "study.toml"), str(folder / "out"), "--profile", "smoke", "--seeds", "1", "--jobs",
           jobs, "--quiet", *sets)


#: A file's modification time in nanoseconds (data.json's fingerprint of each case's files): a time, not a result.
MTIME_NS = 10**17


def _clean(value, roots: list[str]):
    if isinstance(value, int) and not isinstance(value, bool) and value > MTIME_NS:
        return "<mtime>"
    if isinstance(value, dict):
        return {k: _clean(v, roots) for k, v in value.items() if not VOLATILE.search(str(k)) and k != "device"}
    if isinstance(value, list):
        return [_clean(v, roots) for v in value]
    if isinstance(value, str):
        for i, root in enumerate(roots):
            value = value.replace(root, f"<ROOT{i}>")
    return value


def _csv(path: Path, roots: list[str]) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows:
        return rows
    keep = [i for i, c in enumerate(rows[0]) if not VOLATILE.search(c)]
    return [[_clean(r[i], roots) if i < len(r) else "" for i in keep] for r in rows]


def records(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.suffix in (".csv", ".json")
            and p.is_file()}


def compare(a: Path, b: Path) -> list[str]:
    """Every difference between the records of ``a`` and ``b`` (folder names replaced by a mark)."""
    mine, theirs = records(a), records(b)
    diffs = [f"only in {a}: {k}" for k in sorted(set(mine) - set(theirs))]
    diffs += [f"only in {b}: {k}" for k in sorted(set(theirs) - set(mine))]
    for key in sorted(set(mine) & set(theirs)):
        roots = [[str(a.resolve()), str(a)], [str(b.resolve()), str(b)]]
        if key.endswith(".json"):
            x, y = (_clean(json.loads(p.read_text()), r) for p, r in ((mine[key], roots[0]), (theirs[key], roots[1])))
        else:
            x, y = _csv(mine[key], roots[0]), _csv(theirs[key], roots[1])
        if x != y:
            diffs.append(f"differs: {key}" + (f" (first row that differs: {_first(x, y)})" if isinstance(x, list)
                                                else ""))
    return diffs


def _first(x: list, y: list) -> str:
    for i, (r, s) in enumerate(zip(x, y, strict=False)):
        if r != s:
            return f"{i}: {r} | {s}"
    return f"{len(x)} rows against {len(y)}"


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "make":
        make(Path(argv[1]), *argv[2:])
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        a, b = Path(argv[1]), Path(argv[2])
        diffs = compare(a, b)
        print("\n".join(diffs) if diffs else f"the same records: {len(records(a))} CSV and JSON files")
        return 1 if diffs else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The finished tasks of a results folder, carried to another machine: a job or a study that takes more than one
session restarts on a new machine with an empty disk, so what finished is archived in the repository and put back
before the job starts again.

An archive is a tar.gz of the records of finished run folders (``runs/DATASET/INIT/STRATEGY/seed-N``), baseline
folders (``baseline/DATASET[/seed-N]``) and a ladder's harm calibrations (``calibration/LADDER``, without the
datasets it makes again from its settings), without checkpoints, locks or partial files, and, for a study's results
folder, its ``study.json`` and marker (so that ``fairal study`` takes the folder as its own). It is byte-identical
for the same records. Restored, a finished run is found finished and not run again (a finished run's state is not
compared with the data's file times; a run that had not finished is never archived)::

    python scripts/task_archive.py save OUT FILE [--leave-out NAME ...]   # every finished task of OUT
    python scripts/task_archive.py restore FILE OUT    # those OUT lacks; nothing is overwritten

``--leave-out NAME`` (repeatable) leaves the files of that name out of every run folder, e.g. ``selections.csv``
(every pool case's scores of every round, most of a finished run's bytes): a run restored without it is still
finished, and its ``rounds.csv`` and ``cases.csv`` (what ``scripts/study_records.py`` and the report read) are whole.

Runs resumed this way on another machine are the same runs (data, initial sets and every random draw are the
same), but a CPU of another kind may round the training's floating point differently.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

#: The list of the archive's task folders, its first member.
INDEX = "TASKS"
#: A results folder's own files, carried with its tasks.
TOP = ("study.json", ".fairal")
SKIPPED = (".fairal.lock",)


def seed_of(folder: Path) -> int | None:
    """N of a task folder ``.../seed-N`` (None for a study's baseline folder, which has no seed)."""
    return int(folder.name.split("-")[1]) if folder.name.startswith("seed-") else None


def finished_tasks(out: Path) -> list[Path]:
    """The finished run and baseline folders under ``out``."""
    runs = [s.parent for s in sorted(out.glob("runs/*/*/*/seed-*/state.json"))
            if json.loads(s.read_text()).get("finished")]
    bases = [t.parent for pattern in ("baseline/*/baseline_table.csv", "baseline/*/seed-*/baseline_table.csv")
             for t in sorted(out.glob(pattern))]
    calibrations = [c.parent for c in sorted(out.glob("calibration/*/calibration.json"))]
    return runs + bases + calibrations


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
    return info


def archived_tasks(path: Path) -> list[str]:
    """The task folders an archive holds (its index)."""
    with tarfile.open(path, "r:gz") as tar:
        first = tar.next()
        if first is None or first.name != INDEX:
            raise SystemExit(f"{path} is not an archive of finished tasks (no {INDEX} list)")
        return tar.extractfile(first).read().decode().splitlines()


def save_tasks(out: Path, path: Path, folders: list[Path], leave_out: tuple[str, ...] = ()) -> None:
    """``folders`` (task folders under ``out``) and ``out``'s own files (:data:`TOP`) as the archive ``path``, without
    the run folders' files named in ``leave_out``; no folder, no file (an archive of an earlier session is
    removed)."""
    if not folders:
        path.unlink(missing_ok=True)
        return
    names = sorted(f.relative_to(out).as_posix() for f in folders)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        index = ("\n".join(names) + "\n").encode()
        info = _plain(tarfile.TarInfo(INDEX))
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
        for name in TOP:
            if (out / name).is_file():
                tar.add(out / name, arcname=name, recursive=False, filter=_plain)
        for name in names:
            folder = out / name
            # a calibration's datasets are made again from its settings; its records and models are kept
            skipped = {"checkpoints", *(("data",) if name.startswith("calibration/") else ())}
            left = (*SKIPPED, *(leave_out if name.startswith("runs/") else ()))
            for f in sorted(folder.rglob("*")):
                inner = f.relative_to(folder).parts
                if f.is_file() and not skipped & set(inner) and f.name not in left and not f.name.endswith(".part"):
                    tar.add(f, arcname=f.relative_to(out).as_posix(), recursive=False, filter=_plain)
    part.replace(path)


def _task_folder(name: str) -> bool:
    parts = Path(name).parts
    if ".." in parts or Path(name).is_absolute():
        return False
    return (len(parts) == 5 and parts[0] == "runs" and parts[4].startswith("seed-")) or \
        (parts[:1] == ("baseline",) and (len(parts) == 2 or (len(parts) == 3 and parts[2].startswith("seed-")))) or \
        (len(parts) == 2 and parts[0] == "calibration")


def restore_tasks(path: Path, out: Path) -> tuple[list[str], list[str]]:
    """The task folders of the archive ``path`` into ``out``, each only where ``out`` lacks it (nothing is
    overwritten), each complete or not at all; ``out``'s own files (:data:`TOP`) only into a new or empty ``out``,
    or one with the same ``study.json``. Returns the task folders restored and those ``out`` had already. An archive
    with a member outside its listed task folders, or of another study than ``out``'s, is refused before anything
    is written."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such archive")
    folders = archived_tasks(path)
    if bad := [f for f in folders if not _task_folder(f)]:
        raise SystemExit(f"{path}: {bad[0]} is not a run or baseline folder")
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()[1:]
        for m in members:
            inside = ".." not in Path(m.name).parts and any(Path(m.name).is_relative_to(f) for f in folders)
            if not m.isfile() or not (m.name in TOP or inside):
                raise SystemExit(f"{path}: {m.name} is not a file of a run or baseline folder")
        tops = {m.name: m for m in members if m.name in TOP}
        if "study.json" in tops and (out / "study.json").is_file() and \
                tar.extractfile(tops["study.json"]).read() != (out / "study.json").read_bytes():
            raise SystemExit(f"{path} holds the tasks of another study than {out} (study.json differs)")
        fresh = not out.exists() or not any(out.iterdir())
        new = [f for f in folders if not (out / f).exists()]
        own = fresh or ("study.json" in tops and (out / "study.json").is_file())  # out's own files: its folder
        take = [m for m in members if (m.name in TOP and own and not (out / m.name).exists())
                or any(Path(m.name).is_relative_to(f) for f in new)]
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".restore-", dir=out))
        try:  # into a scratch folder first, then each task folder into place whole
            tar.extractall(tmp, members=take, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            for name in [*(m.name for m in take if m.name in TOP), *new]:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).rename(out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return new, [f for f in folders if f not in new]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    save = sub.add_parser("save", help="archive every finished task of OUT into FILE")
    save.add_argument("out", type=Path)
    save.add_argument("file", type=Path)
    save.add_argument("--leave-out", action="append", default=[], metavar="NAME",
                      help="leave the files of this name out of every run folder (repeatable), e.g. selections.csv")
    restore = sub.add_parser("restore", help="put the tasks of FILE that OUT lacks into OUT")
    restore.add_argument("file", type=Path)
    restore.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.command == "save":
        if not args.out.is_dir():
            raise SystemExit(f"{args.out}: no such results folder")
        folders = finished_tasks(args.out)
        if bad := [n for n in args.leave_out if n in ("state.json", "rounds.csv", "cases.csv", ".fairal")]:
            raise SystemExit(f"--leave-out {bad[0]}: a finished run needs it")
        save_tasks(args.out, args.file, folders, tuple(args.leave_out))
        print(f"{len(folders)} finished tasks of {args.out} in {args.file}"
              + (f" (without {', '.join(args.leave_out)})" if args.leave_out else "") if folders else
              f"{args.out} has no finished task; no archive")
    else:
        restored, kept = restore_tasks(args.file, args.out)
        print(f"restored {len(restored)} finished task folders into {args.out}"
              + (f"; {len(kept)} were there already and are kept as they are: {', '.join(kept)}" if kept else ""))


if __name__ == "__main__":
    sys.exit(main())

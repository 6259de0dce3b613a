"""What the MONAI Label app (:mod:`fairal.owndata.monailabel`) keeps between two clicks of *Next Sample*: the leases
of the images it served, the rankings it stored and the key they are stored under, and where the Dice of the group
weights comes from. Apart from MONAI Label (this module does not import it), so it is tested without a server.

- **Leases** (``APP/work/leases.json``): an image served by *Next Sample* is held for the client that got it for
  ``lease_minutes``; the next click, from any client, gets the next image of the ranking that is neither labeled nor
  held. A lease ends when its time is up or a final label is saved for its image.
- **Stored rankings** (``APP/work/scores.json``): each strategy's last ranking, under the key of what it came from
  (the model file's version, every image's and final label's file stamps, the groups, the app's settings). A click
  whose key is the stored one reuses the ranking (``APP/work/query-NAME/``) instead of predicting every image again.
- **Group Dice** ``auto``: out of fold (``fairal query --group-dice cross-validated``) once every group of a labeled
  image has :data:`AUTO_CROSS_VALIDATED_MIN` labeled images, else the labeled images' own Dice, with a note saying
  why. Out of fold, the folds run over the app model's training images, and an image labeled since is out of
  sample for every fold model (the mean of their Dice); the folds (their Dice and models, :class:`FoldDice`) are
  kept under the model version, the settings and each image's and label's stamp, so that they are trained once per
  model, not once per saved label.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from fairal.errors import FairalError
from fairal.io import file_stamp, write_json
from fairal.owndata.query import GROUP_DICE, MIN_LABELED_PER_GROUP, Folds, case_stamps

logger = logging.getLogger(__name__)

#: The app's settings of the group Dice: those of ``fairal query --group-dice``, and ``auto``.
GROUP_DICE_SETTINGS = (*GROUP_DICE, "auto")
#: ``auto`` takes the out-of-fold Dice once every group of a labeled image has this many labeled images: each of the
#: five folds then trains on at least two images of the held-out image's group, and a group's mean Dice rests on at
#: least this many images (fewer, and ``fairal query`` warns that the weight rests on those few).
AUTO_CROSS_VALIDATED_MIN = MIN_LABELED_PER_GROUP
#: How long an image served by Next Sample is held for its client, unless the app says otherwise.
DEFAULT_LEASE_MINUTES = 30.0
LEASES_FILE = "leases.json"
SCORES_FILE = "scores.json"
FOLD_DICE_FILE = "fold-dice.json"


def check_app_settings(group_dice: str, lease_minutes: float) -> None:
    """The app's own settings (``--group-dice``, ``--lease-minutes``), refused with a one-line message."""
    if group_dice not in GROUP_DICE_SETTINGS:
        raise FairalError(f"--group-dice must be one of {', '.join(GROUP_DICE_SETTINGS)}, got {group_dice!r}")
    if isinstance(lease_minutes, bool) or not isinstance(lease_minutes, int | float) \
            or not math.isfinite(lease_minutes) or lease_minutes <= 0:
        raise FairalError(f"--lease-minutes must be a number of minutes > 0, got {lease_minutes!r}")


def resolve_group_dice(setting: str, cases: pd.DataFrame, steered: bool) -> tuple[str, list[str]]:
    """The group Dice a ranking uses (``labeled`` or ``cross-validated``) and, for ``auto``, a note saying why.
    ``cases``: the study as :func:`fairal.data.cohort.read_cases` reads it (``labeled``, ``group``,
    ``group_known``). An unweighted strategy, or one group, has no weights to measure: ``labeled``, no note."""
    if setting != "auto":
        return setting, []
    counts = cases.loc[cases["labeled"] & cases["group_known"], "group"].value_counts()
    if not steered or len(counts) < 2:
        return "labeled", []
    few = {str(g): int(n) for g, n in counts.items() if n < AUTO_CROSS_VALIDATED_MIN}
    if few:
        listed = ", ".join(f"{g} {n}" for g, n in sorted(few.items()))
        return "labeled", [f"group Dice: the labeled images' own (group_dice auto): cross-validated from "
                           f"{AUTO_CROSS_VALIDATED_MIN} labeled images in every group, and {listed} labeled so far; "
                           "a model that fits its own labels gives equal weights"]
    return "cross-validated", [f"group Dice: cross-validated (group_dice auto: every group has at least "
                               f"{AUTO_CROSS_VALIDATED_MIN} labeled images), each labeled image's Dice from a model "
                               "trained without it (5 folds over the model's training images, five more trainings "
                               "once per model; an image labeled since is measured by the fold models)"]


def ranking_key(strategy: str, group_dice: str, model_version: str, cases: pd.DataFrame, settings: dict) -> str:
    """The key a ranking is stored under: the strategy, the group Dice, the model's version, the app's settings, and
    every image with its file's stamp, its final label's (the labeled set) and its group (``cases`` as
    :func:`fairal.data.cohort.read_cases` reads them). A saved label, a new model, a replaced image or a changed
    group changes it."""
    rows = [[c, img, file_stamp(img), lab, file_stamp(lab) if lab else None, g]
            for c, img, lab, g in zip(cases["case_id"], cases["image_path"], cases["label_path"], cases["group"],
                                      strict=True)]
    text = json.dumps([strategy, group_dice, model_version, settings, rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _now_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def _read_json(path: Path, what: str) -> dict:
    """A JSON object of the app's work folder; an absent or unreadable one (edited by hand) is empty, with a
    warning in the log."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("fairal: %s (%s) is unreadable, started afresh: %s", path, what, err)
        return {}
    return data if isinstance(data, dict) else {}


class Leases:
    """The images served and held (``leases.json``: image id -> client, strategy, since and until, in seconds
    since the epoch), written whole (a temporary file moved into place) under ``lock``, the app's lock: MONAI Label
    may answer requests in threads."""

    def __init__(self, path: str | Path, minutes: float, lock, clock=time.time):
        self.path, self.minutes, self.lock, self.clock = Path(path), float(minutes), lock, clock

    def held(self, among: set[str] | None = None) -> dict[str, dict]:
        """The leases in force; with ``among``, only those of these images (the others, e.g. of an image labeled
        since by hand or removed, end here)."""
        with self.lock:
            leases = _read_json(self.path, "leases")
            now = self.clock()
            kept = {i: lease for i, lease in leases.items() if isinstance(lease, dict)
                    and float(lease.get("until", 0)) > now and (among is None or i in among)}
            if kept != leases:
                self._write(kept)
            return kept

    def take(self, image_id: str, client: str, strategy: str) -> dict:
        """Hold ``image_id`` for ``client``: the lease, with ``until`` also as a local time (``until_text``)."""
        with self.lock:
            leases = self.held()
            now = self.clock()
            lease = {"client": client, "strategy": strategy, "since": now, "until": now + 60.0 * self.minutes}
            leases[image_id] = lease
            self._write(leases)
            return {**lease, "until_text": _now_text(lease["until"])}

    def release(self, image_id: str) -> bool:
        """End the lease of ``image_id`` (its final label is saved); whether there was one."""
        with self.lock:
            leases = self.held()
            if image_id not in leases:
                return False
            del leases[image_id]
            self._write(leases)
            return True

    def _write(self, leases: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, leases)


class StoredScores:
    """Each strategy's last ranking (``scores.json``: strategy -> its key, model version, labeled count, group Dice,
    query folder and when it was scored), written whole under ``lock``."""

    def __init__(self, path: str | Path, lock, clock=time.time):
        self.path, self.lock, self.clock = Path(path), lock, clock

    def get(self, strategy: str, key: str) -> dict | None:
        """The stored entry of ``strategy`` if it was stored under ``key`` and its query folder is still there."""
        with self.lock:
            entry = _read_json(self.path, "stored rankings").get(strategy)
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        folder = self.path.parent / str(entry.get("folder", ""))
        if not (folder / "query.csv").is_file() or not (folder / "query.json").is_file():
            return None
        return entry

    def put(self, strategy: str, key: str, **fields) -> dict:
        with self.lock:
            stored = _read_json(self.path, "stored rankings")
            stored[strategy] = entry = {"key": key, **fields, "scored_at": _now_text(self.clock())}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, stored)
            return entry


class FoldDice:
    """The folds of the app model's training images (``fold-dice.json``: per key of the settings the folds were
    trained with, e.g. with or without MC dropout, the model version, the fold models, ``folds-KEY-*/fold-K.pt``, and
    per image its out-of-fold Dice with its image's and final label's stamps and its group), written whole under
    ``lock``. An entry is given back whole or not at all: only while its model and settings are today's, its fold
    models are there and every image it covers still has the files and the group it had (a new model, a label saved
    again over a training image's or removed, a training image's changed group trains the folds again). Entries of
    another model version, and their folders, go when one is kept."""

    def __init__(self, path: str | Path, lock):
        self.path, self.lock = Path(path), lock

    @staticmethod
    def _of(cases: pd.DataFrame) -> dict[str, list]:
        return case_stamps(zip(cases["case_id"], cases["image_path"], cases["label_path"], cases["group"],
                               strict=True))

    @staticmethod
    def _key(settings: dict) -> str:
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, model_version: str, settings: dict, cases: pd.DataFrame) -> Folds | None:
        """The kept folds trained with ``settings`` on this model, if every image they cover is as it was
        (``cases``: today's) and the fold models are there; else None."""
        with self.lock:
            kept = _read_json(self.path, "kept folds").get(self._key(settings))
        if not isinstance(kept, dict) or kept.get("model_version") != model_version \
                or not isinstance(kept.get("cases"), dict) or not isinstance(kept.get("models"), list):
            return None
        now, entries = self._of(cases), kept["cases"]
        models = [self.path.parent / str(m) for m in kept["models"]]
        if not entries or not models or not all(m.is_file() for m in models) or not all(
                isinstance(e, dict) and isinstance(e.get("dice"), int | float) and now.get(c) == e.get("files")
                for c, e in entries.items()):
            return None
        return Folds({c: float(e["dice"]) for c, e in entries.items()}, models)

    def put(self, model_version: str, settings: dict, cases: pd.DataFrame, folds: Folds) -> None:
        """Keep ``folds`` (of a query folder, :meth:`Folds.of_query`): their models copied into a new folder of the
        app's work folder, then their Dice and the images' stamps into ``fold-dice.json``, then the ``folds-*``
        folders it no longer names removed (a reader of the last entry never finds its folder half written; one
        that loses the race trains its folds again)."""
        files, key = self._of(cases), self._key(settings)
        with self.lock:
            stored = _read_json(self.path, "kept folds")
            stored = {k: v for k, v in stored.items() if isinstance(v, dict) and v.get("model_version") == model_version
                      and k != key}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f"folds-{key[:12]}-", dir=self.path.parent))
            for m in folds.models:
                shutil.copyfile(m, folder / Path(m).name)
            stored[key] = {"model_version": model_version,
                           "models": [f"{folder.name}/{Path(m).name}" for m in folds.models],
                           "cases": {c: {"dice": float(d), "files": files[c]} for c, d in folds.dice.items()
                                     if c in files}}
            write_json(self.path, stored)
            named = {str(m).split("/")[0] for v in stored.values() for m in v.get("models", [])}
            for old in self.path.parent.glob("folds-*"):
                if old.is_dir() and old.name not in named:
                    shutil.rmtree(old, ignore_errors=True)


def prediction_name(image: str | Path) -> str:
    """The file name of ``/infer``'s segmentation of ``image``: the image's whole name but its NIfTI ending, then
    ``.nii.gz`` (the images ``sub.1.nii.gz`` and ``sub.2.nii.gz`` get two files, not one ``sub.nii.gz``)."""
    name = Path(image).name
    stem = name[:-len(".nii.gz")] if name.endswith(".nii.gz") else name.removesuffix(".nii")
    return f"{stem}.nii.gz"


def load_ranking(folder: str | Path) -> pd.DataFrame:
    """The ranked table of a query folder (``query.csv``, with ``query.json`` as ``attrs["query"]``), as
    :func:`fairal.owndata.query.run_query` returned it."""
    folder = Path(folder)
    table = pd.read_csv(folder / "query.csv", dtype={"case_id": str, "group": str})
    table["group"] = table["group"].fillna("")
    table.attrs["query"] = json.loads((folder / "query.json").read_text())
    return table

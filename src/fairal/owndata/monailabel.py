"""fairal inside MONAI Label: an app whose active-learning strategies, scoring, training and inference are fairal's.

``fairal monailabel-app OUT`` writes an app folder (:func:`fairal.owndata.app.write_app`): ``main.py``, which
MONAI Label's ``monailabel start_server --app OUT --studies STUDIES`` loads, and ``fairal.json``, the app's
settings (strategy, group columns, profile, seed, grid spacing, group Dice, lease minutes). The server then offers:

- **strategies** (``POST /activelearning/NAME``): the paper's four and any name of fairal's grammar
  (``weighted-bald``, ``stochastic-weighted-localized-entropy-t0.5``, ...). Each call ranks the datastore (images,
  the labels saved under ``labels/final/``, the groups) with the app's current model: one ``fairal query`` of budget
  1, or the ranking stored by an earlier call while its model, labels, images and groups stand
  (:mod:`fairal.owndata.serving`). The answer is the first image of the ranking that no lease holds, held now for
  the client (``client_id``) that asked, with fairal's score, weight, group, reason, the Dice behind the weights and
  where they came from (the group Dice setting, reused or computed scores, the model version), the lease and how
  many images are held, beside MONAI Label's fields. Without a model yet, the first call trains one on the saved
  labels. Each step (training, cross-validation folds, scoring, reuse, the image served) is logged.
- **scoring** (``POST /scoring/fairal``): the same ranking (stored or computed), stored per image in the datastore's
  image info (``fairal``: rank, score, weight, statistics; for a labeled image its Dice under the current model;
  each with the model version, labeled count and key of the scores; an image whose info came from the same scores
  is not written again).
- **training** (``POST /train/fairal``): fairal's training of the profile on the saved labels; the new model becomes
  the app's (``model/model.pt``), so the weights follow the annotators' work.
- **inference** (``POST /infer/fairal``): the model's segmentation of an image on that image's own grid, a label to
  correct.

Groups come from ``groups.csv`` in the studies folder (``case_id`` = the image id, plus the group columns), else
from each image's info in the datastore (``PUT /datastore/image/info``); an image of unknown group gets the expected
weight ``sum_g p(g|x) w_g``, as in ``fairal query``.

The datastore is MONAI Label's local one (a folder) with fairal's checks (:class:`FairalDatastore`): image ids follow
fairal's case-id rule, label tags are ``final`` or ``original``, only ``.nii``/``.nii.gz`` files are stored, every
file written or removed lies inside the studies folder, and an upload is read as fairal would read it (a finite 3D
image; a binary label on its image's grid) before it is stored; a refusal is an HTTP 400 with fairal's message and
leaves no file behind. ``/infer`` segments the datastore's images only. A case of the folder that fairal cannot read
(a file put there by hand) is left out of the rankings with a warning in the answer.

This module imports MONAI Label: it runs inside the server (install: docs/annotate.md). fairal's own records go to
``OUT/work/`` (fairal-made folders, replaced when a ranking is computed; the query folders of the
:data:`MAX_QUERY_FOLDERS` strategies asked for last; ``leases.json`` and ``scores.json``); the studies folder is only
read, except through the datastore's calls. A final label saved through the datastore ends its image's lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pandas as pd
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from fairal.acquisition import parse_strategy
from fairal.config import get_profile
from fairal.data.cohort import check_case, read_cases
from fairal.data.volumes import CASE_ID_RULES, names_a_file
from fairal.errors import FairalError
from fairal.io import file_stamp, file_version, is_fairal_folder, within, write_csv
from fairal.owndata.query import Folds, predict_image, run_query, train_query_model
from fairal.owndata.serving import (
    DEFAULT_LEASE_MINUTES,
    FOLD_DICE_FILE,
    LEASES_FILE,
    SCORES_FILE,
    FoldDice,
    Leases,
    StoredScores,
    check_app_settings,
    load_ranking,
    prediction_name,
    ranking_key,
    resolve_group_dice,
)
from fairal.plugins import load_all, load_entry_points
from fairal.records import PAPER_STRATEGIES  # the strategies every app lists (any other name is accepted too)

logger = logging.getLogger(__name__)

#: The file of the studies folder that gives the images' groups.
GROUPS_FILE = "groups.csv"
FINAL = "final"
#: The label tags a client may save under: MONAI Label's final labels (the annotators') and original ones (a
#: model's, saved by ``/infer`` with ``save_label``).
LABEL_TAGS = (FINAL, "original")
#: The files the datastore holds and stores.
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: The most strategy names the app keeps beyond those it lists, and the most ``work/query-NAME/`` folders: every
#: name of fairal's grammar is a strategy (``-t0.5``, ``-t0.51``, ...), so a client could otherwise fill the disk.
MAX_QUERY_FOLDERS = 8


class FairalContext:
    """What every task of the app shares: the settings, the app's folders, the current model, one lock (a query,
    a training and an inference never run at once: they read and replace the same model)."""

    def __init__(self, app_dir: str | Path, studies: str | Path):
        self.app_dir = Path(app_dir).resolve()
        self.studies = Path(studies).resolve()
        settings_file = self.app_dir / "fairal.json"
        try:
            self.settings = json.loads(settings_file.read_text())
        except (OSError, ValueError) as err:
            raise FairalError(f"{settings_file}: not a fairal app's settings ({err})") from err

        load_entry_points()
        load_all(self.settings.get("plugins") or [])  # those of `fairal --plugin ... monailabel-app`
        self.profile = get_profile(self.settings["profile"], self.settings.get("set") or {})
        self.group_by = list(self.settings.get("group_by") or [])
        self.seed = int(self.settings.get("seed", 0))
        self.spacing = float(self.settings.get("spacing", 2.0))
        self.label_value = self.settings.get("label_value")
        self.group_dice = self.settings.get("group_dice", "auto")
        self.lease_minutes = self.settings.get("lease_minutes", DEFAULT_LEASE_MINUTES)
        try:
            check_app_settings(self.group_dice, self.lease_minutes)
        except FairalError as err:
            raise FairalError(f"{settings_file}: {err}") from None
        self.work = self.app_dir / "work"
        self.model_file = self.app_dir / "model" / "model.pt"
        self.lock = threading.RLock()
        self.leases = Leases(self.work / LEASES_FILE, self.lease_minutes, self.lock)
        self.scores = StoredScores(self.work / SCORES_FILE, self.lock)
        self.folds = FoldDice(self.work / FOLD_DICE_FILE, self.lock)
        self._checked: dict[str, tuple[tuple, str]] = {}  # image id: (its files' stamps, the problem or "")

    # --- the study as fairal reads it --------------------------------------------------------------------------

    def groups(self, datastore) -> pd.DataFrame | None:
        """The group columns by image id: ``groups.csv`` of the studies folder, else the images' info."""
        if not self.group_by:
            return None
        path = self.studies / GROUPS_FILE
        if path.is_file():
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
            missing = [c for c in ["case_id", *self.group_by] if c not in table.columns]
            if missing:
                raise FairalError(f"{path}: no column {', '.join(map(repr, missing))} (columns: "
                                  f"{', '.join(table.columns)})")
            twice = table.loc[table["case_id"].duplicated(), "case_id"].tolist()
            if twice:
                raise FairalError(f"{path}: case_id {twice[0]!r} appears more than once")
            return table.set_index("case_id")[self.group_by]
        rows = {i: {c: str(datastore.get_image_info(i).get(c, "") or "") for c in self.group_by}
                for i in datastore.list_images()}
        return pd.DataFrame.from_dict(rows, orient="index", columns=self.group_by)

    def usable(self, datastore, image_id: str) -> tuple[str, str] | str:
        """The image's file and its final label's (or ""), or what is wrong with them: an id that cannot name a
        file, a file outside the studies folder, a file fairal cannot read (checked once per version of the
        files)."""
        if not names_a_file(image_id):
            return f"image id {image_id!r} cannot name a file (ids: {CASE_ID_RULES})"
        image = datastore.get_image_uri(image_id)
        label_id = datastore.get_label_by_image_id(image_id, FINAL)
        label = datastore.get_label_uri(label_id, FINAL) if label_id else ""
        if not image or (label_id and not label):
            return f"image {image_id!r}: its files do not lie inside the studies folder {self.studies}"
        stamps = (image, label, file_stamp(image), file_stamp(label))
        if self._checked.get(image_id, ((), ""))[0] != stamps:
            try:
                check_case(image_id, image, label or None, self.label_value)
                problem = ""
            except FairalError as err:
                problem = str(err)
            self._checked[image_id] = (stamps, problem)
        return self._checked[image_id][1] or (image, label)

    def cases_csv(self, datastore) -> tuple[Path, list[str]]:
        """The datastore as a fairal study (``work/cases.csv``): every usable image, its saved final label or
        none, its groups (empty = unknown); and a warning for each image left out (:meth:`usable`), so that one
        bad file in the folder does not stop the rankings of everyone."""
        groups = self.groups(datastore)
        rows, skipped = [], []
        for image_id in sorted(datastore.list_images()):
            files = self.usable(datastore, image_id)
            if isinstance(files, str):
                skipped.append(f"left out: {files}; fix or remove its files in the studies folder")
                logger.warning("fairal: %s", skipped[-1])
                continue
            row = {"case_id": image_id, "image": files[0], "label": files[1]}
            for col in self.group_by:
                row[col] = groups.at[image_id, col] if groups is not None and image_id in groups.index else ""
            rows.append(row)
        if not rows:
            raise FairalError(f"{self.studies}: the datastore holds no usable image"
                              + (f" ({skipped[0]})" if skipped else ""))
        self.work.mkdir(parents=True, exist_ok=True)
        path = within(self.work, "cases.csv")
        write_csv(path, pd.DataFrame(rows, columns=["case_id", "image", "label", *self.group_by]))
        return path, skipped

    # --- fairal's steps -----------------------------------------------------------------------------------------

    def train(self, datastore) -> dict:
        """Train the profile's network on the saved labels; it becomes the app's model."""
        with self.lock:
            csv, skipped = self.cases_csv(datastore)
            self.model_file.parent.mkdir(parents=True, exist_ok=True)
            # MONAI Label may train in a process of its own: each writes its own partial, moved into place whole
            partial = self.model_file.with_name(f".model.pt.partial-{os.getpid()}")
            info = train_query_model(csv, partial, self.profile, group_by=self.group_by, seed=self.seed,
                                     spacing=self.spacing, label_value=self.label_value,
                                     strategy=self.settings.get("strategy", PAPER_STRATEGIES[-1]))
            partial.replace(self.model_file)
            return {**info, "warnings": skipped}

    def rank(self, datastore, strategy: str) -> pd.DataFrame:
        """The ranking of ``strategy`` over the datastore with the current model (trained first if there is none):
        the stored one while its key stands (:func:`fairal.owndata.serving.ranking_key`: the same model, labels,
        images and groups), else one ``fairal query`` of budget 1, stored. The ranked table, with
        ``attrs["query"]`` (the weights, the Dice behind them, and ``scores``: reused or computed, the model
        version and the labeled count they came from)."""
        strat = parse_strategy(strategy)
        with self.lock:
            if not self.model_file.is_file():
                logger.info("fairal: no model yet: training one on the saved labels first")
                self.train(datastore)
            csv, skipped = self.cases_csv(datastore)
            cases = read_cases(csv, self.group_by)
            group_dice, notes = resolve_group_dice(self.group_dice, cases, strat.steered)
            version = file_version(self.model_file)
            key = ranking_key(strat.name, group_dice, version, cases, self.settings)
            out = within(self.work, f"query-{strat.name}")
            entry = self.scores.get(strat.name, key)
            table = self._stored(out) if entry is not None else None
            if table is not None:
                how = "reused"
                logger.info("fairal: %s: reused the stored scores (model %s, %d labeled images: no label saved and "
                            "no new model since %s)", strat.name, version, entry["n_labeled"], entry["scored_at"])
            else:
                table, how = self._score(csv, strat.name, out, group_dice, cases, version), "computed"
                entry = self.scores.put(strat.name, key, model_version=version, n_labeled=int(cases["labeled"].sum()),
                                        group_dice=group_dice, folder=out.name)
            info = table.attrs.setdefault("query", {})
            info["warnings"] = [*skipped, *info.get("warnings", [])]
            info["notes"] = [*notes, *info.get("notes", [])]
            info["scores"] = {"scores": how, **entry}
            return table

    @staticmethod
    def _stored(out: Path) -> pd.DataFrame | None:
        """The stored ranking of the query folder ``out``, or None (a file of it edited or damaged by hand: the
        ranking is computed again)."""
        try:
            table = load_ranking(out)
        except (OSError, ValueError, KeyError) as err:
            logger.warning("fairal: %s: the stored ranking is unreadable, scoring again: %s", out, err)
            return None
        os.utime(out)  # the folder asked for last: pruned last
        return table

    def _score(self, csv: Path, strategy: str, out: Path, group_dice: str, cases: pd.DataFrame,
               version: str) -> pd.DataFrame:
        """One ``fairal query`` of budget 1 with the app's model, its records in ``out``; out of fold, with the
        kept folds of this model (:class:`fairal.owndata.serving.FoldDice`), and those it trained kept."""
        logger.info("fairal: %s: scoring %d unlabeled images (%d labeled; group Dice %s)", strategy,
                    int((~cases["labeled"]).sum()), int(cases["labeled"].sum()), group_dice)
        start = time.monotonic()
        folds_with = {**self.settings, "mc_dropout": parse_strategy(strategy).needs_dropout}  # the folds' training
        kept = self.folds.get(version, folds_with, cases) if group_dice == "cross-validated" else None
        table = run_query(csv, 1, strategy, out, self.profile, group_by=self.group_by, model_path=self.model_file,
                          seed=self.seed, spacing=self.spacing, overwrite=True, montage_cases=1, progress=False,
                          group_dice=group_dice, label_value=self.label_value, folds=kept)
        info = table.attrs.get("query", {})
        sources = info.get("group_dice_sources") or {}
        if sources.get("folds") == "trained" and info.get("fold_models"):
            self.folds.put(version, folds_with, cases, Folds.of_query(out))
        if sources.get("folds"):
            logger.info("fairal: %s: group Dice of %d %s out of fold (folds %s, model %s), %d images labeled since "
                        "measured by the fold models", strategy, sources.get("out_of_fold", 0),
                        "training images" if sources.get("folds_over") == "training cases" else "labeled images",
                        sources["folds"], version, sources.get("out_of_sample", 0))
        prune_query_folders(self.work, MAX_QUERY_FOLDERS)
        logger.info("fairal: %s: scored %d unlabeled images in %.1f s", strategy, len(table), time.monotonic() - start)
        return table

    def serve(self, table: pd.DataFrame, strategy: str, client: str) -> tuple[pd.Series, dict, int]:
        """The first image of the ranking that no lease holds, held for ``client`` from now: its row, its lease
        and how many images are held (this one included)."""
        with self.lock:
            held = self.leases.held(among=set(table["case_id"]))
            free = table.loc[~table["case_id"].isin(list(held))]
            if free.empty:
                first = min(held, key=lambda i: held[i]["until"])
                raise FairalError(f"every unlabeled image ({len(table)}) is held for an annotator who got it from Next "
                                  f"Sample; the first lease ({first}) ends in "
                                  f"{max(0.0, held[first]['until'] - self.leases.clock()) / 60:.0f} min (leases last "
                                  f"{self.lease_minutes:g} min; a saved final label ends one)")
            top = free.iloc[0]
            lease = self.leases.take(str(top["case_id"]), client, strategy)
            logger.info("fairal: %s: served %s (rank %d) to %s, held until %s; images held: %d", strategy,
                        top["case_id"], int(top["rank"]), client, lease["until_text"], len(held) + 1)
            return top, lease, len(held) + 1

    def predict(self, image: str) -> str:
        """The current model's segmentation of ``image`` on the image's own grid: the path of a NIfTI file."""
        with self.lock:
            if not self.model_file.is_file():
                raise FairalError("no model yet: train one first (POST /train/fairal), or ask for a next sample, "
                                  "which trains one on the saved labels")
            out = self.work / "infer"
            out.mkdir(parents=True, exist_ok=True)
            target = within(out, prediction_name(image))
            predict_image(self.model_file, image, target, self.profile, label_value=self.label_value)
            return str(target)


def prune_query_folders(work: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` most recently written ``query-NAME`` folders of ``work`` (only fairal's own,
    marked folders; each is the last query of one strategy name, made again when that name is next asked for).
    Returns what was removed."""
    folders = [p for p in work.glob("query-*") if p.is_dir() and not p.is_symlink() and is_fairal_folder(p)]
    folders.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return folders[keep:]


def _clear(error: MONAILabelError, fn, *args):
    """``fn(*args)``, with fairal's clear messages of bad input (an unreadable image, a missing group column, no
    label to train on) passed on to the client: in a request, an HTTP 400 whose detail is the message (MONAI Label
    answers its own errors with a bare 500); in MONAI Label's background tasks, its error."""
    try:
        return fn(*args)
    except FairalError as err:
        if error is MONAILabelError.APP_TRAIN_FAILED:
            raise MONAILabelException(error, f"fairal: {err}") from None
        raise HTTPException(status_code=400, detail=f"fairal: {err}") from None


def answer(table: pd.DataFrame, strategy: str, top: pd.Series, lease: dict, held: int) -> dict:
    """The answer of ``/activelearning/STRATEGY``: MONAI Label's ``id`` and fairal's fields of the image served
    (``top``, the first of the ranking that no lease held), its lease and where the scores came from."""
    info = table.attrs.get("query", {})
    scores = info.get("scores", {})
    return {"id": str(top["case_id"]), "fairal_strategy": strategy, "fairal_rank": int(top["rank"]),
            "fairal_score": float(top["score"]), "fairal_weight": float(top["weight"]),
            "fairal_group": str(top["group"]) if str(top["group"]) else None, "fairal_reason": str(top["reason"]),
            "fairal_weights": info.get("weights"), "fairal_group_dice": info.get("labeled_dice"),
            "fairal_group_dice_method": scores.get("group_dice"), "fairal_n_labeled": info.get("n_labeled"),
            "fairal_scores": scores.get("scores"), "fairal_model_version": scores.get("model_version"),
            "fairal_scored_at": scores.get("scored_at"),
            "fairal_lease": {"client": lease["client"], "until": lease["until_text"],
                             "minutes": (lease["until"] - lease["since"]) / 60.0},
            "fairal_held": held, "fairal_notes": info.get("notes", []), "fairal_warnings": info.get("warnings", [])}


class FairalStrategy(Strategy):
    """A fairal strategy as a MONAI Label one: the image ``fairal query`` ranks first."""

    def __init__(self, context: FairalContext, name: str):
        self.context, self.name = context, parse_strategy(name).name
        super().__init__(f"fairal {self.name} (docs/own-data.md, section 7)")

    def __call__(self, request, datastore):
        if not datastore.get_unlabeled_images():
            return None
        client = str(request.get("client_id") or "anonymous")  # MONAI Label's clients send their client_id
        with self.context.lock:  # the ranking and the lease at once: two clicks never get the same image
            table = _clear(MONAILabelError.APP_ERROR, self.context.rank, datastore, self.name)
            top, lease, held = _clear(MONAILabelError.APP_ERROR, self.context.serve, table, self.name, client)
        return answer(table, self.name, top, lease, held)


class Strategies(dict):
    """The app's strategies: the listed ones, and any other name of fairal's grammar, built when asked for (MONAI
    Label looks a strategy up with ``get``); of those, the :data:`MAX_QUERY_FOLDERS` asked for last are kept."""

    def __init__(self, context: FairalContext, names):
        super().__init__({n: FairalStrategy(context, n) for n in names})
        self.context = context
        self.extra: list[str] = []  # the names built on demand, least recently asked for first

    def get(self, name, default=None):
        if name in self.extra:
            self.extra.remove(name)
            self.extra.append(name)
        if name in self:
            return self[name]
        try:
            strategy = FairalStrategy(self.context, name)
        except FairalError as err:  # answered as a 400 naming the strategy, with "did you mean"
            return _Refused(str(err))
        self[name] = strategy
        self.extra.append(name)
        while len(self.extra) > MAX_QUERY_FOLDERS:
            del self[self.extra.pop(0)]
        return strategy


class _Refused(Strategy):
    """A strategy name fairal cannot parse: each call answers HTTP 400 with fairal's message."""

    def __init__(self, message: str):
        super().__init__("not a fairal strategy")
        self.message = message

    def __call__(self, request, datastore):
        raise HTTPException(status_code=400, detail=f"fairal: {self.message}")


class FairalScoring(ScoringMethod):
    """The app's strategy's ranking stored per image (image info ``fairal``); a labeled image gets its Dice under
    the current model, the Dice behind the group weights."""

    def __init__(self, context: FairalContext):
        super().__init__("fairal: rank, score and weight of every unlabeled image; Dice of every labeled one")
        self.context = context

    def __call__(self, request, datastore):
        strategy = request.get("strategy") or self.context.settings.get("strategy", PAPER_STRATEGIES[-1])
        table = _clear(MONAILabelError.APP_ERROR, self.context.rank, datastore, strategy)
        info = table.attrs.get("query", {})
        scores = info.get("scores", {})
        source = {k: scores.get(k) for k in ("model_version", "n_labeled", "group_dice", "scored_at", "key")}
        records = {str(rec["case_id"]): {
            "strategy": strategy, "rank": int(rec["rank"]), "score": float(rec["score"]),
            "weight": float(rec["weight"]), "localized_entropy": float(rec["localized_entropy"]),
            "entropy": float(rec["entropy"]), "reason": str(rec["reason"])} for rec in table.to_dict("records")}
        for case, dice in (info.get("labeled_case_dice") or {}).items():
            records[case] = {"dice": float(dice), "weights": info.get("weights")}
        updated = 0
        for case, fields in records.items():  # an image whose info came from the same scores is left as it is
            if (datastore.get_image_info(case).get("fairal") or {}).get("key") != source["key"]:
                datastore.update_image_info(case, {"fairal": {**fields, **source}})
                updated += 1
        return {"strategy": strategy, "n_unlabeled": len(table), "weights": info.get("weights"),
                "scores": scores.get("scores"), "updated": updated, **source}


class FairalTrain(TrainTask):
    """fairal's training on the saved labels; the model replaces the app's."""

    def __init__(self, context: FairalContext):
        super().__init__("fairal: train the network of the app's profile on the saved final labels")
        self.context = context
        self._last: dict = {}

    def config(self):
        return {"profile": self.context.profile.name, "steps": self.context.profile.steps}

    def stats(self):
        return self._last

    def __call__(self, request, datastore):
        self._last = _clear(MONAILabelError.APP_TRAIN_FAILED, self.context.train, datastore)
        return self._last


class FairalInfer(InferTask):
    """The current model's segmentation of an image, on the image's own grid."""

    def __init__(self, context: FairalContext):
        super().__init__(type=InferType.SEGMENTATION, labels={"structure": 1}, dimension=3,
                         description="fairal: the current model's segmentation, a label to correct")
        self.context = context

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        path = _clear(MONAILabelError.APP_INFERENCE_FAILED, self.context.predict, request["image"])
        return path, {"model": str(self.context.model_file)}


def _endpoint_uploads() -> list[str]:
    """The temporary files MONAI Label's endpoint of the current request wrote the uploads to (its locals
    ``image_file`` and ``label_file``). It removes them only after a successful answer, so a refused request must
    remove them itself; found on the call stack, so that only files the endpoint made are ever removed, never a
    path a client names."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("monailabel.endpoints."):
            return [v for k, v in frame.f_locals.items() if k in ("image_file", "label_file") and isinstance(v, str)]
        frame = frame.f_back
    return []


@contextlib.contextmanager
def _refusing():
    """Inside a request: fairal's refusal becomes an HTTP 400 with its message; on any failure the request's
    uploads are removed."""
    try:
        yield
    except BaseException as err:
        for upload in _endpoint_uploads():
            with contextlib.suppress(OSError):
                os.remove(upload)
        if isinstance(err, FairalError):
            raise HTTPException(status_code=400, detail=f"fairal: {err}") from None
        raise


def _check_upload(case: str, image: str, label: str | None, label_value: float | None, upload: str) -> None:
    """:func:`fairal.data.cohort.check_case` of an upload, its messages naming "upload" rather than the temporary
    file."""
    try:
        check_case(case, image, label, label_value)
    except FairalError as err:
        raise FairalError(str(err).replace(upload, "upload")) from None


class FairalDatastore(LocalDatastore):
    """MONAI Label's local datastore with fairal's checks on everything a client writes or removes: ids by
    fairal's case-id rule, tags from :data:`LABEL_TAGS`, NIfTI files only, read as fairal reads them before they
    are stored, every path inside the studies folder (MONAI Label 0.8.5 checks none of these)."""

    def __init__(self, context: FairalContext, studies: str, **kwargs):
        self.context = context
        super().__init__(studies, extensions=[f"*{e}" for e in NIFTI_EXTENSIONS], **kwargs)

    def _inside(self, path: str | Path) -> bool:
        return Path(path).resolve().is_relative_to(self.context.studies)

    def _target(self, folder: str, image_id: str, filename: str) -> str:
        """The extension of ``filename`` (a NIfTI one), checked with the id and the file it will be stored as."""
        if not names_a_file(image_id):
            raise FairalError(f"image id {image_id!r} cannot name a file (ids: {CASE_ID_RULES})")
        ext = next((e for e in NIFTI_EXTENSIONS if filename.endswith(e)), None)
        if ext is None:
            raise FairalError(f"image {image_id}: only NIfTI files are stored (.nii, .nii.gz); the upload's name "
                              f"ends in {''.join(Path(filename).suffixes)!r}")
        if not self._inside(Path(folder) / f"{image_id}{ext}"):
            raise FairalError(f"image {image_id}: its file would lie outside the studies folder")
        return ext

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        return uri if uri and self._inside(uri) else ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        uri = super().get_label_uri(label_id, label_tag)
        return uri if uri and self._inside(uri) else ""

    def add_image(self, image_id: str, image_filename: str, image_info) -> str:
        with _refusing():
            self._target(self._datastore.image_path(), image_id, image_filename)
            label = self.get_label_uri(image_id, FINAL) if image_id in self._datastore.objects else ""
            _check_upload(image_id, image_filename, label or None, self.context.label_value, image_filename)
            return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info) -> str:
        with _refusing():
            if label_tag not in LABEL_TAGS:
                raise FairalError(f"label tag {label_tag!r} is not one of the app's ({', '.join(LABEL_TAGS)})")
            self._target(self._datastore.label_path(label_tag), image_id, label_filename)
            image = self.get_image_uri(image_id)
            if not image:
                raise FairalError(f"no image {image_id!r} in the datastore: upload the image first")
            _check_upload(image_id, image, label_filename, self.context.label_value, label_filename)
            saved = super().save_label(image_id, label_filename, label_tag, label_info)
            if label_tag == FINAL:  # labeled: no longer held for whoever got it from Next Sample
                self.context.leases.release(image_id)
            return saved

    def remove_image(self, image_id: str) -> None:
        with _refusing():  # only an image of the datastore, whose files all lie inside the studies folder
            obj = self._datastore.objects.get(image_id)
            if obj is None or not self.get_image_uri(image_id):
                raise FairalError(f"no image {image_id!r} in the studies folder")
            outside = [t for t in obj.labels if not self.get_label_uri(image_id, t)]
            if outside:
                raise FairalError(f"image {image_id!r}: its label {outside[0]!r} lies outside the studies folder")
            super().remove_image(image_id)
            self.context.leases.release(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with _refusing():
            if not self.get_label_uri(label_id, label_tag):
                raise FairalError(f"no label of image {label_id!r} with tag {label_tag!r} in the studies folder")
            super().remove_label(label_id, label_tag)


def _drop_model_uploads() -> None:
    """Inside the server, remove MONAI Label's PUT and DELETE ``/model/NAME``: the upload is written to a temporary
    file before the app is asked, and left there when it refuses. fairal's model is trained by the app (POST
    /train/fairal) or given with ``fairal monailabel-app --model``, never uploaded or deleted by a client."""
    server = sys.modules.get("monailabel.app")
    if server is None or not hasattr(server, "app"):
        return

    def writes_the_model(route) -> bool:
        return str(getattr(route, "path", "")).endswith("/model/{model}") and \
            bool(set(getattr(route, "methods", None) or ()) & {"PUT", "DELETE"})

    # the app's routes (FastAPI copied an included router's there) and the model router's own (newer FastAPI
    # keeps the included router and caches its routes by a version: told that they changed)
    for router in (server.app.router, getattr(sys.modules.get("monailabel.endpoints.model"), "router", None)):
        if router is not None:
            router.routes[:] = [r for r in router.routes if not writes_the_model(r)]
            if callable(getattr(router, "_mark_routes_changed", None)):
                router._mark_routes_changed()


class FairalApp(MONAILabelApp):
    """A MONAI Label app of fairal's strategies (the settings in ``APP/fairal.json``)."""

    def __init__(self, app_dir, studies, conf):
        self.context = FairalContext(app_dir, studies)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="fairal",
                         description="Fairness-aware active learning: fairal's strategies, training and inference",
                         version=self.context.settings.get("fairal_version", ""), labels={"structure": 1})
        # MONAI Label scores every image again after each request by default, in another process: with fairal
        # that is a second full ranking per click. Off unless the server is started with --conf auto_scoring true.
        self._auto_update_scoring = str(conf.get("auto_scoring", "false")).lower() in ("1", "true", "yes")
        _drop_model_uploads()

    def _load_sessions(self, load=False):
        """No sessions: /infer segments the datastore's images only, so a client's uploaded images (PUT /session/)
        would be kept for nothing; MONAI Label answers 406 and stores nothing."""
        return None

    def init_datastore(self):
        if str(self.studies).startswith(("http://", "https://")):
            return super().init_datastore()  # a remote datastore (DICOMweb, XNAT, DSA) keeps its own files
        return FairalDatastore(self.context, self.studies, auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                               read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def infer(self, request, datastore=None):
        """Only an image of the datastore, named by its id: never a path of the server (nor a session's or an
        uploaded file). The answer is the same whether such a path exists or not."""
        datastore = datastore if datastore else self.datastore()
        image = request.get("image")
        with _refusing():
            uri = datastore.get_image_uri(image) if isinstance(image, str) and names_a_file(image) else ""
            if not uri or "session" in request:
                raise FairalError(f"no image {image!r} in the datastore: /infer segments the datastore's images, "
                                  "named by id (GET /datastore/?output=all lists them)")
        return super().infer({**request, "image": uri}, datastore)

    def train(self, request):
        """MONAI Label's training; in the server (``run_sync=true``), fairal's refusal is an HTTP 400 with its
        message rather than a bare 500 (in a background task it stays the task's error, in the task's log)."""
        try:
            return super().train(request)
        except MONAILabelException as err:
            if self._server_mode and str(err.msg).startswith("fairal: "):
                raise HTTPException(status_code=400, detail=err.msg) from None
            raise

    def init_infers(self):
        return {"fairal": FairalInfer(self.context)}

    def init_trainers(self):
        return {"fairal": FairalTrain(self.context)}

    def init_strategies(self):
        names = dict.fromkeys([*PAPER_STRATEGIES, self.context.settings.get("strategy", PAPER_STRATEGIES[-1])])
        return Strategies(self.context, names)

    def init_scoring_methods(self):
        return {"fairal": FairalScoring(self.context)}

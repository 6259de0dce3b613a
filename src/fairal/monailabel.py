"""fairal inside MONAI Label: an app whose active-learning strategies, scoring, training and inference are fairal's.

``fairal monailabel-app OUT`` writes an app folder (:func:`fairal.monailabel_app.write_app`): ``main.py``, which
MONAI Label's ``monailabel start_server --app OUT --studies STUDIES`` loads, and ``fairal.json``, the app's
settings (strategy, group columns, profile, seed, grid spacing). The server then offers:

- **strategies** (``POST /activelearning/NAME``): the paper's four and any name of fairal's grammar
  (``weighted-bald``, ``stochastic-weighted-localized-entropy-t0.5``, ...). Each call is one ``fairal query`` with
  budget 1 over the datastore (images, the labels saved under ``labels/final/``, the groups) with the app's current
  model; the answer is the image ranked first, with fairal's score, weight, group, reason and the Dice behind the
  weights beside MONAI Label's fields. Without a model yet, the first call trains one on the saved labels.
- **scoring** (``POST /scoring/fairal``): the same ranking, stored per image in the datastore's image info
  (``fairal``: rank, score, weight, statistics; for a labeled image its Dice under the current model).
- **training** (``POST /train/fairal``): fairal's training of the profile on the saved labels; the new model becomes
  the app's (``model/model.pt``), so the weights follow the annotators' work.
- **inference** (``POST /infer/fairal``): the model's segmentation of an image on that image's own grid, a label to
  correct.

Groups come from ``groups.csv`` in the studies folder (``case_id`` = the image id, plus the group columns), else
from each image's info in the datastore (``PUT /datastore/image/info``); an image of unknown group gets the expected
weight ``sum_g p(g|x) w_g``, as in ``fairal query``.

This module imports MONAI Label: it runs inside the server (install: docs/annotate.md). fairal's own records go to
``OUT/work/`` (fairal-made folders, replaced at each call); the studies folder is only read, except through MONAI
Label's own datastore calls.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pandas as pd
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from fairal.acquisition import parse_strategy
from fairal.config import get_profile
from fairal.errors import FairalError
from fairal.io import within, write_csv
from fairal.query import run_query, train_query_model

logger = logging.getLogger(__name__)

#: The strategies every app lists (any other name of fairal's grammar is accepted too).
PAPER_STRATEGIES = ("random", "entropy", "localized-entropy", "weighted-localized-entropy")
#: The file of the studies folder that gives the images' groups.
GROUPS_FILE = "groups.csv"
FINAL = "final"


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
        from fairal.plugins import load_all, load_entry_points

        load_entry_points()
        load_all(self.settings.get("plugins") or [])  # those of `fairal --plugin ... monailabel-app`
        self.profile = get_profile(self.settings["profile"], self.settings.get("set") or {})
        self.group_by = list(self.settings.get("group_by") or [])
        self.seed = int(self.settings.get("seed", 0))
        self.spacing = float(self.settings.get("spacing", 2.0))
        self.label_value = self.settings.get("label_value")
        self.work = self.app_dir / "work"
        self.model_file = self.app_dir / "model" / "model.pt"
        self.lock = threading.RLock()

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

    def cases_csv(self, datastore) -> Path:
        """The datastore as a fairal study (``work/cases.csv``): every image, its saved final label or none, its
        groups (empty = unknown)."""
        groups = self.groups(datastore)
        rows = []
        for image_id in sorted(datastore.list_images()):
            label_id = datastore.get_label_by_image_id(image_id, FINAL)
            row = {"case_id": image_id, "image": datastore.get_image_uri(image_id),
                   "label": datastore.get_label_uri(label_id, FINAL) if label_id else ""}
            for col in self.group_by:
                row[col] = groups.at[image_id, col] if groups is not None and image_id in groups.index else ""
            rows.append(row)
        if not rows:
            raise FairalError(f"{self.studies}: the datastore holds no image")
        self.work.mkdir(parents=True, exist_ok=True)
        path = within(self.work, "cases.csv")
        write_csv(path, pd.DataFrame(rows, columns=["case_id", "image", "label", *self.group_by]))
        return path

    # --- fairal's steps -----------------------------------------------------------------------------------------

    def train(self, datastore) -> dict:
        """Train the profile's U-Net on the saved labels; it becomes the app's model."""
        with self.lock:
            csv = self.cases_csv(datastore)
            self.model_file.parent.mkdir(parents=True, exist_ok=True)
            # MONAI Label may train in a process of its own: each writes its own partial, moved into place whole
            partial = self.model_file.with_name(f".model.pt.partial-{os.getpid()}")
            info = train_query_model(csv, partial, self.profile, group_by=self.group_by, seed=self.seed,
                                     spacing=self.spacing, label_value=self.label_value,
                                     strategy=self.settings.get("strategy", PAPER_STRATEGIES[-1]))
            partial.replace(self.model_file)
            return info

    def rank(self, datastore, strategy: str) -> pd.DataFrame:
        """One ``fairal query`` of budget 1 over the datastore with the current model (trained first if there is
        none): the ranked table, with ``attrs["query"]`` (the weights, the labeled cases' Dice)."""
        with self.lock:
            if not self.model_file.is_file():
                self.train(datastore)
            csv = self.cases_csv(datastore)
            out = self.work / f"query-{parse_strategy(strategy).name}"
            return run_query(csv, 1, strategy, out, self.profile, group_by=self.group_by,
                             model_path=self.model_file, seed=self.seed, spacing=self.spacing, overwrite=True,
                             montage_cases=1, progress=False, label_value=self.label_value)

    def predict(self, image: str) -> str:
        """The current model's segmentation of ``image`` on the image's own grid: the path of a NIfTI file."""
        from fairal.query import predict_image

        with self.lock:
            if not self.model_file.is_file():
                raise FairalError("no model yet: train one first (POST /train/fairal), or ask for a next sample, "
                                  "which trains one on the saved labels")
            out = self.work / "infer"
            out.mkdir(parents=True, exist_ok=True)
            target = within(out, Path(image).name.split(".")[0] + ".nii.gz")
            predict_image(self.model_file, image, target, self.profile, label_value=self.label_value)
            return str(target)


def _clear(error: MONAILabelError, fn, *args):
    """``fn(*args)``, with fairal's clear messages of bad input (an unreadable image, a missing group column, no
    label to train on) passed on to the client: in a request, an HTTP 400 whose detail is the message (MONAI Label
    answers its own errors with a bare 500); in MONAI Label's background tasks, its error."""
    try:
        return fn(*args)
    except FairalError as err:
        from fastapi import HTTPException

        if error is MONAILabelError.APP_TRAIN_FAILED:
            raise MONAILabelException(error, f"fairal: {err}") from None
        raise HTTPException(status_code=400, detail=f"fairal: {err}") from None


def answer(table: pd.DataFrame, strategy: str) -> dict:
    """The answer of ``/activelearning/STRATEGY``: MONAI Label's ``id`` and fairal's fields of the first image."""
    top = table.iloc[0]
    info = table.attrs.get("query", {})
    weights = info.get("weights")
    return {"id": str(top["case_id"]), "fairal_strategy": strategy, "fairal_rank": 1,
            "fairal_score": float(top["score"]), "fairal_weight": float(top["weight"]),
            "fairal_group": str(top["group"]) if str(top["group"]) else None, "fairal_reason": str(top["reason"]),
            "fairal_weights": weights, "fairal_group_dice": info.get("labeled_dice"),
            "fairal_n_labeled": info.get("n_labeled"), "fairal_notes": info.get("notes", []),
            "fairal_warnings": info.get("warnings", [])}


class FairalStrategy(Strategy):
    """A fairal strategy as a MONAI Label one: the image ``fairal query`` ranks first."""

    def __init__(self, context: FairalContext, name: str):
        self.context, self.name = context, parse_strategy(name).name
        super().__init__(f"fairal {self.name} (docs/own-data.md, section 7)")

    def __call__(self, request, datastore):
        if not datastore.get_unlabeled_images():
            return None
        return answer(_clear(MONAILabelError.APP_ERROR, self.context.rank, datastore, self.name), self.name)


class Strategies(dict):
    """The app's strategies: the listed ones, and any other name of fairal's grammar, built when first asked for
    (MONAI Label looks a strategy up with ``get``)."""

    def __init__(self, context: FairalContext, names):
        super().__init__({n: FairalStrategy(context, n) for n in names})
        self.context = context

    def get(self, name, default=None):
        if name in self:
            return self[name]
        try:
            strategy = FairalStrategy(self.context, name)
        except FairalError as err:  # answered as a 400 naming the strategy, with "did you mean"
            return _Refused(str(err))
        self[name] = strategy
        return strategy


class _Refused(Strategy):
    """A strategy name fairal cannot parse: each call answers HTTP 400 with fairal's message."""

    def __init__(self, message: str):
        super().__init__("not a fairal strategy")
        self.message = message

    def __call__(self, request, datastore):
        from fastapi import HTTPException

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
        for rec in table.to_dict("records"):
            datastore.update_image_info(str(rec["case_id"]), {"fairal": {
                "strategy": strategy, "rank": int(rec["rank"]), "score": float(rec["score"]),
                "weight": float(rec["weight"]), "localized_entropy": float(rec["localized_entropy"]),
                "entropy": float(rec["entropy"]), "reason": str(rec["reason"])}})
        for case, dice in (info.get("labeled_case_dice") or {}).items():
            datastore.update_image_info(case, {"fairal": {"dice": float(dice), "weights": info.get("weights")}})
        return {"strategy": strategy, "n_unlabeled": len(table), "weights": info.get("weights")}


class FairalTrain(TrainTask):
    """fairal's training on the saved labels; the model replaces the app's."""

    def __init__(self, context: FairalContext):
        super().__init__("fairal: train the U-Net of the app's profile on the saved final labels")
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

    def init_infers(self):
        return {"fairal": FairalInfer(self.context)}

    def init_trainers(self):
        return {"fairal": FairalTrain(self.context)}

    def init_strategies(self):
        names = dict.fromkeys([*PAPER_STRATEGIES, self.context.settings.get("strategy", PAPER_STRATEGIES[-1])])
        return Strategies(self.context, names)

    def init_scoring_methods(self):
        return {"fairal": FairalScoring(self.context)}

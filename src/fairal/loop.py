"""One active-learning run (dataset, initial set, strategy, seed), resumable after a crash or a kill.

Each round: train on the labeled set, evaluate on the fixed test set, predict the labeled set (for the group
weights), score the pool and acquire the next cases, until the labeled set reaches the final budget (the paper:
10, 14, ..., 86). Records are tidy CSVs keyed by case id, rewritten whole and moved into place after every round,
and ``state.json`` says which round is complete; a run started again continues after it and ends with records
identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairal import versions
from fairal.acquisition import (
    STRATEGIES,
    group_weights,
    localized_entropy,
    mean_entropy,
    roi_mask,
    select_top_k,
    strategy_scores,
)
from fairal.config import Profile
from fairal.data import VolumeSet, load_volumes, read_manifest
from fairal.errors import FairalError
from fairal.fit import evaluate, model_factory, train_config
from fairal.io import write_csv, write_json
from fairal.metrics import fairness_summary
from fairal.train import load_checkpoint, predict_proba, save_checkpoint, train_model

#: Share of Group 1 in the initial labeled set (the paper: 5 + 5, 8 + 2, 2 + 8).
INITS = {"balanced": 0.5, "g1-heavy": 0.8, "g2-heavy": 0.2}
ROUND_COLUMNS = ["round", "n_labeled", "n_labeled_g1", "n_labeled_g2", "g1_ratio", "dice_all", "dice_g1", "dice_g2",
                 "delta", "essp", "w_g1", "w_g2"]
CASE_COLUMNS = ["round", "case_id", "group", "split", "dice"]
SELECTION_COLUMNS = ["round", "case_id", "group", "entropy", "localized_entropy", "weight", "score", "selected"]


@dataclass(frozen=True)
class RunSpec:
    """What identifies a run; with the profile, every setting it depends on."""

    data_dir: str
    strategy: str
    init: str
    seed: int
    profile: Profile

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise FairalError(f"unknown strategy {self.strategy!r}; strategies: {', '.join(STRATEGIES)}")
        if self.init not in INITS:
            raise FairalError(f"unknown initial set {self.init!r}; initial sets: {', '.join(INITS)}")
        if self.seed < 0:
            raise FairalError(f"--seed must be >= 0, got {self.seed}")

    def settings(self) -> dict:
        return {"data_dir": str(Path(self.data_dir).resolve()), "strategy": self.strategy, "init": self.init,
                "seed": self.seed, "profile": self.profile.as_dict()}


def schedule(profile: Profile) -> list[int]:
    """Labeled-set sizes of the rounds: init_size, init_size + acquire, ..., final_size (10, 14, ..., 86)."""
    if profile.init_size < 2 or profile.acquire < 1 or profile.final_size < profile.init_size:
        raise FairalError(f"impossible budget: start {profile.init_size}, acquire {profile.acquire}, "
                          f"final {profile.final_size}")
    if (profile.final_size - profile.init_size) % profile.acquire:
        raise FairalError(f"impossible budget: {profile.final_size} labeled cannot be reached from "
                          f"{profile.init_size} in steps of {profile.acquire}")
    return list(range(profile.init_size, profile.final_size + 1, profile.acquire))


def initial_set(manifest: pd.DataFrame, init: str, size: int, seed: int) -> list[str]:
    """The initial labeled set: ``round(share * size)`` Group 1 and the rest Group 2 cases, drawn from the pool
    with ``seed`` alone, so that every strategy of one seed starts from the same set."""
    if init not in INITS:
        raise FairalError(f"unknown initial set {init!r}; initial sets: {', '.join(INITS)}")
    pool = manifest[manifest["split"] == "pool"]
    n1 = int(round(INITS[init] * size))
    need = {1: n1, 2: size - n1}
    rng = np.random.default_rng([seed, 4, list(INITS).index(init)])
    chosen: list[str] = []
    for g, n in need.items():
        ids = sorted(pool.loc[pool["group"] == g, "case_id"])
        if n > len(ids):
            raise FairalError(f"initial set {init} needs {n} Group {g} cases, the pool has {len(ids)}")
        chosen += rng.choice(ids, size=n, replace=False).tolist() if n else []
    return sorted(chosen)


def _round_seed(seed: int, rnd: int) -> int:
    return int(np.random.SeedSequence([seed, rnd]).generate_state(1)[0] % (2**31 - 1))


class ActiveLearningRun:
    """A run folder: ``config.json``, ``rounds.csv``, ``cases.csv``, ``selections.csv``, ``state.json``,
    ``checkpoints/``."""

    def __init__(self, spec: RunSpec, out: str | Path, volumes: VolumeSet | None = None,
                 manifest: pd.DataFrame | None = None) -> None:
        spec.validate()
        self.spec = spec
        self.out = Path(out)
        self.profile = spec.profile
        self.sizes = schedule(self.profile)
        self.manifest = manifest if manifest is not None else read_manifest(
            spec.data_dir, test_per_group=self.profile.test_per_group)
        pool = self.manifest[self.manifest["split"] == "pool"]
        if len(pool) < self.profile.final_size:
            raise FairalError(f"impossible budget: {self.profile.final_size} labeled cases asked for, the pool of "
                              f"{spec.data_dir} has {len(pool)}")
        self.groups = sorted(set(self.manifest["group"]), key=str)
        self._volumes = volumes

    # -- state ------------------------------------------------------------------------------------------------

    def _load_state(self) -> dict | None:
        path = self.out / "state.json"
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            config = json.loads((self.out / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise FairalError(f"{self.out} holds an unreadable run state: {err}") from err
        if config.get("settings") != json.loads(json.dumps(self.spec.settings(), default=str)):
            raise FairalError(f"{self.out} holds a run with other settings; choose another --out or delete it")
        return state

    @property
    def volumes(self) -> VolumeSet:
        if self._volumes is None:
            self._volumes = load_volumes(self.spec.data_dir, self.manifest, crop_margin=self.profile.crop_margin,
                                         downsample=self.profile.downsample)
        return self._volumes

    def is_finished(self) -> bool:
        state = self._load_state()
        return bool(state and state.get("finished"))

    # -- the loop ---------------------------------------------------------------------------------------------

    def run(self, progress: bool = False, on_round=None) -> pd.DataFrame:
        """Run (or continue) to the final budget. Returns ``rounds.csv`` as a table."""
        state = self._load_state()
        if state and state.get("finished"):
            return pd.read_csv(self.out / "rounds.csv")
        self.out.mkdir(parents=True, exist_ok=True)
        if state is None:
            write_json(self.out / "config.json",
                       {"settings": self.spec.settings(), "versions": versions(), "schedule": self.sizes})
            records = {"rounds": [], "cases": [], "selections": []}
            labeled = initial_set(self.manifest, self.spec.init, self.profile.init_size, self.spec.seed)
            start = 0
        else:
            done = int(state["completed_round"])
            records = {
                "rounds": pd.read_csv(self.out / "rounds.csv").query("round <= @done").to_dict("records"),
                "cases": pd.read_csv(self.out / "cases.csv").query("round <= @done").to_dict("records"),
                "selections": pd.read_csv(self.out / "selections.csv").query("round <= @done").to_dict("records"),
            }
            labeled = list(state["next_labeled"])
            start = done + 1
        vol = self.volumes
        test_ids = self.manifest.loc[self.manifest["split"] == "test", "case_id"].tolist()
        pool_ids = self.manifest.loc[self.manifest["split"] == "pool", "case_id"].tolist()
        group_of = dict(zip(self.manifest["case_id"], self.manifest["group"], strict=True))
        for rnd in range(start, len(self.sizes)):
            labeled, finished = self._round(rnd, labeled, records, vol, test_ids, pool_ids, group_of, progress)
            if on_round is not None:
                on_round(rnd)
            if finished:
                break
        return pd.DataFrame(records["rounds"], columns=ROUND_COLUMNS)

    def _round(self, rnd, labeled, records, vol, test_ids, pool_ids, group_of, progress):
        p = self.profile
        rows = vol.rows(labeled)
        cfg = train_config(p, _round_seed(self.spec.seed, rnd))
        factory = model_factory(p, vol, rows)
        if rnd == 0 and p.first_round_steps is not None:
            cfg = dataclasses.replace(cfg, steps=p.first_round_steps, epochs=None)
        warm = p.warm_start and rnd > 0
        if warm:
            cfg = dataclasses.replace(cfg, steps=p.round_steps, epochs=None)
            previous = self.out / "checkpoints" / f"round-{rnd - 1:02d}.pt"

            def factory(base=factory, path=previous):
                model = base()
                load_checkpoint(path, model)
                return model

        result = train_model(vol.images[rows], vol.labels[rows], cfg, factory, progress=progress)
        model = result.model
        # Evaluate on the test set; Dice on the labeled set gives the group weights (Sec. 3.2).
        test_rows = vol.rows(test_ids)
        test_dice = evaluate(model, vol, test_rows, batch_size=8)
        summary = fairness_summary(test_dice, vol.groups[test_rows])
        labeled_dice = evaluate(model, vol, rows, batch_size=8)
        labeled_groups = [group_of[c] for c in labeled]
        weights = group_weights(labeled_dice, labeled_groups, self.groups, p.temperature)
        n1 = sum(g == 1 for g in labeled_groups)
        records["rounds"].append({
            "round": rnd, "n_labeled": len(labeled), "n_labeled_g1": n1, "n_labeled_g2": len(labeled) - n1,
            "g1_ratio": n1 / len(labeled), "dice_all": summary["dice_all"], "dice_g1": summary.get("dice_g1"),
            "dice_g2": summary.get("dice_g2"), "delta": summary["delta"], "essp": summary["essp"],
            "w_g1": weights.get(1), "w_g2": weights.get(2),
        })
        records["cases"] += [{"round": rnd, "case_id": c, "group": group_of[c], "split": "labeled", "dice": d}
                             for c, d in zip(labeled, labeled_dice, strict=True)]
        records["cases"] += [{"round": rnd, "case_id": c, "group": group_of[c], "split": "test", "dice": d}
                             for c, d in zip(test_ids, test_dice, strict=True)]
        finished = len(labeled) >= self.sizes[-1]
        next_labeled = labeled
        if not finished:
            chosen = set(labeled)
            candidates = [c for c in pool_ids if c not in chosen]
            k = min(p.acquire, self.sizes[-1] - len(labeled))
            selected, rows_sel = self._acquire(model, vol, candidates, group_of, weights, rnd, k)
            records["selections"] += rows_sel
            next_labeled = sorted(labeled + selected)
        # Records first, then the checkpoint, then the state: a kill between them repeats this round only.
        write_csv(self.out / "rounds.csv", pd.DataFrame(records["rounds"], columns=ROUND_COLUMNS))
        write_csv(self.out / "cases.csv", pd.DataFrame(records["cases"], columns=CASE_COLUMNS))
        write_csv(self.out / "selections.csv", pd.DataFrame(records["selections"], columns=SELECTION_COLUMNS))
        ckpt_dir = self.out / "checkpoints"
        save_checkpoint(model, ckpt_dir / f"round-{rnd:02d}.pt", {"round": rnd, "n_labeled": len(labeled)})
        write_json(self.out / "state.json",
                   {"completed_round": rnd, "next_labeled": next_labeled, "finished": finished,
                    "train": {"seed": result.seed, "restarts": result.restarts, "collapsed": result.collapsed,
                              "train_dice": result.train_dice}})
        for old in ckpt_dir.glob("round-*.pt"):  # only the last round's model is needed (warm start, resume)
            if old.name != f"round-{rnd:02d}.pt":
                old.unlink(missing_ok=True)
        return next_labeled, finished

    def _acquire(self, model, vol, candidates, group_of, weights, rnd, k):
        p = self.profile
        rows = vol.rows(candidates)
        fallback = vol.roi[0].numpy()
        ent, loc = [], []
        for proba in predict_proba(model, vol.images[rows], batch_size=8):
            ent.append(mean_entropy(proba))
            roi, _ = roi_mask(proba, p.roi_dilation, fallback)
            loc.append(localized_entropy(proba, roi))
        groups = [group_of[c] for c in candidates]
        rng = np.random.default_rng([self.spec.seed, rnd, 5])
        scores, w = strategy_scores(self.spec.strategy, candidates, groups, ent, loc, weights, rng)
        selected = select_top_k(candidates, scores, k)
        chosen = set(selected)
        rows_sel = [{"round": rnd, "case_id": c, "group": g, "entropy": e, "localized_entropy": lo,
                     "weight": wi, "score": s, "selected": c in chosen}
                    for c, g, e, lo, wi, s in zip(candidates, groups, ent, loc, w, scores, strict=True)]
        return selected, rows_sel

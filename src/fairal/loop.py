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
from fairal.acquisition import Strategy, parse_strategy
from fairal.config import Profile
from fairal.data import VolumeSet, case_records, data_files, describe_changes, load_volumes, read_manifest
from fairal.engine import acquisition_round, evaluate, fit
from fairal.errors import FairalError
from fairal.io import FolderLock, check_output_folder, clean_stale_partials, write_csv, write_json
from fairal.metrics import fairness_summary
from fairal.sampling import draw_per_group, split_evenly
from fairal.train import describe_device, save_checkpoint

#: Initial labeled sets: ``balanced`` splits evenly over the groups (the paper: 5 + 5); ``gX-heavy`` gives group X
#: 80% and splits the rest evenly over the others (the paper: 8 + 2 and 2 + 8).
INITS = ("balanced", "g1-heavy", "g2-heavy")
HEAVY_SHARE = 0.8
CASE_COLUMNS = ["round", "case_id", "group", "split", "dice"]
SELECTION_COLUMNS = ["round", "case_id", "group", "entropy", "localized_entropy", "bald", "weight", "score",
                     "selected"]


def round_columns(groups: list) -> list[str]:
    """Columns of ``rounds.csv`` for a dataset's groups; for the paper's groups 1 and 2: round, n_labeled,
    n_labeled_g1, n_labeled_g2, g1_ratio, dice_all, dice_g1, dice_g2, delta, essp, w_g1, w_g2."""
    per = [f"n_labeled_g{g}" for g in groups]
    ratio = ["g1_ratio"] if 1 in groups else []
    return (["round", "n_labeled", *per, *ratio, "dice_all", *[f"dice_g{g}" for g in groups], "delta", "essp",
             *[f"w_g{g}" for g in groups]])


@dataclass(frozen=True)
class RunSpec:
    """What identifies a run; with the profile, every setting it depends on. Checked when made: the strategy is
    parsed (a name is accepted and parsed), the initial set and the seed are valid."""

    data_dir: str
    strategy: Strategy
    init: str
    seed: int
    profile: Profile

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", parse_strategy(self.strategy))
        _heavy_group(self.init)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise FairalError(f"--seed must be a whole number >= 0, got {self.seed!r}")

    def settings(self) -> dict:
        """What the run's records depend on (the grid's list of strategies is not part of one run)."""
        profile = {k: v for k, v in self.profile.as_dict().items() if k != "strategies"}
        return {"data_dir": str(Path(self.data_dir).resolve()), "strategy": self.strategy.name, "init": self.init,
                "seed": self.seed, "profile": profile}


def same_settings(stored: dict, current: dict) -> bool:
    """A stored run matches these settings; a profile setting added after the run was written counts as equal
    when it holds its default (the default keeps the earlier behaviour)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Profile)}
    stored = json.loads(json.dumps(stored, default=str))
    current = json.loads(json.dumps(current, default=str))
    old, new = dict(stored.get("profile", {})), dict(current.get("profile", {}))
    for key in set(new) - set(old):
        if key in defaults and json.loads(json.dumps(defaults[key], default=str)) == new[key]:
            old[key] = new[key]
    return {**stored, "profile": old} == {**current, "profile": new}


def _heavy_group(init: str):
    """``balanced`` -> None; ``g<X>-heavy`` -> X (an int when it reads as one)."""
    if init == "balanced":
        return None
    if init.startswith("g") and init.endswith("-heavy") and len(init) > len("g-heavy"):
        name = init[1:-len("-heavy")]
        return int(name) if name.isdigit() else name
    raise FairalError(f"unknown initial set {init!r}; initial sets: balanced, g<GROUP>-heavy (e.g. "
                      f"{', '.join(INITS)})")


def schedule(profile: Profile) -> list[int]:
    """Labeled-set sizes of the rounds: init_size, init_size + acquire, ..., final_size (10, 14, ..., 86). The
    profile has checked that the budget adds up."""
    return list(range(profile.init_size, profile.final_size + 1, profile.acquire))


def initial_counts(groups: list, init: str, size: int) -> dict:
    """Cases per group in the initial set. ``balanced``: ``size`` split evenly (the first groups get the
    remainder); ``gX-heavy``: ``round(0.8 * size)`` of group X, the rest split evenly over the other groups."""
    heavy = _heavy_group(init)
    if heavy is not None and heavy not in groups:
        raise FairalError(f"initial set {init}: the dataset has no group {heavy} (groups: "
                          f"{', '.join(map(str, groups))})")
    if heavy is None or len(groups) == 1:
        return split_evenly(size, list(groups))
    need = {heavy: int(round(HEAVY_SHARE * size))}
    need.update(split_evenly(size - need[heavy], [g for g in groups if g != heavy]))
    return {g: need[g] for g in groups}


def initial_set(manifest: pd.DataFrame, init: str, size: int, seed: int) -> list[str]:
    """The initial labeled set (:func:`initial_counts` per group), drawn from the pool with ``seed`` alone, so
    that every strategy of one seed starts from the same set."""
    pool = manifest[manifest["split"] == "pool"]
    groups = sorted(set(manifest["group"]), key=str)
    need = initial_counts(groups, init, size)
    index = list(INITS).index(init) if init in INITS else 3 + sum(map(ord, init))
    ids = {g: pool.loc[pool["group"] == g, "case_id"].tolist() for g in groups}
    return draw_per_group(ids, need, np.random.default_rng([seed, 4, index]), what=f"initial set {init}")


def _round_seed(seed: int, rnd: int) -> int:
    return int(np.random.SeedSequence([seed, rnd]).generate_state(1)[0] % (2**31 - 1))


class ActiveLearningRun:
    """A run folder: ``config.json``, ``rounds.csv``, ``cases.csv``, ``selections.csv``, ``state.json``,
    ``checkpoints/``."""

    def __init__(self, spec: RunSpec, out: str | Path, volumes: VolumeSet | None = None,
                 manifest: pd.DataFrame | None = None) -> None:
        self.spec = spec
        self.out = check_output_folder(out)
        self.profile = spec.profile
        self.sizes = schedule(self.profile)
        self.manifest = manifest if manifest is not None else read_manifest(
            spec.data_dir, test_per_group=self.profile.test_per_group)
        pool = self.manifest[self.manifest["split"] == "pool"]
        if len(pool) < self.profile.final_size:
            raise FairalError(f"impossible budget: {self.profile.final_size} labeled cases asked for, the pool of "
                              f"{spec.data_dir} has {len(pool)}")
        self.groups = sorted(set(self.manifest["group"]), key=str)
        self.strategy = spec.strategy
        self.columns = round_columns(self.groups)
        initial_counts(self.groups, spec.init, self.profile.init_size)  # an init that names no group fails here
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
        if not same_settings(config.get("settings", {}), self.spec.settings()):
            raise FairalError(f"{self.out} holds a run with other settings; choose another --out or delete it")
        if not state.get("finished") and (self.out / "data.json").is_file():
            # Resume only on the data the run started from: a changed manifest or file would mix two datasets.
            started = json.loads((self.out / "data.json").read_text())
            changes = describe_changes(started, data_files(self.manifest))
            if changes:
                raise FairalError(f"{self.out} was started on other data than {self.spec.data_dir} holds now "
                                  f"({changes}); resume refused: restore the data or start a new run folder")
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
        """Run (or continue) to the final budget. Returns ``rounds.csv`` as a table. The run folder is locked
        while the run writes it: a second process on the same folder is refused."""
        with FolderLock(self.out, f"fairal run {self.spec.strategy.name}"):
            return self._run(progress, on_round)

    def _run(self, progress: bool, on_round) -> pd.DataFrame:
        state = self._load_state()
        if state and state.get("finished"):
            return pd.read_csv(self.out / "rounds.csv")
        self.out.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(self.out)
        clean_stale_partials(self.out / "checkpoints")
        if state is None:
            write_json(self.out / "data.json", data_files(self.manifest))
            write_json(self.out / "config.json",
                       {"settings": self.spec.settings(), "versions": versions(), "schedule": self.sizes,
                        "device": describe_device(self.profile.device)})
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
        cases = case_records(self.manifest)
        for rnd in range(start, len(self.sizes)):
            labeled, finished = self._round(rnd, labeled, records, vol, test_ids, pool_ids, cases, progress)
            if on_round is not None:
                on_round(rnd)
            if finished:
                break
        return pd.DataFrame(records["rounds"], columns=self.columns)

    def _round(self, rnd, labeled, records, vol, test_ids, pool_ids, cases, progress):
        p = self.profile
        rows = vol.rows(labeled)
        previous = self.out / "checkpoints" / f"round-{rnd - 1:02d}.pt"
        warm = previous if p.warm_start and rnd > 0 else None
        result = fit(p, vol, rows, p.train_config(_round_seed(self.spec.seed, rnd), rnd), self.strategy,
                     warm_from=warm, progress=progress)
        model = result.model
        test_rows = vol.rows(test_ids)
        test_dice = evaluate(model, vol, test_rows, batch_size=8)
        summary = fairness_summary(test_dice, vol.groups[test_rows])
        finished = len(labeled) >= self.sizes[-1]
        chosen = set(labeled)
        candidates = [] if finished else [c for c in pool_ids if c not in chosen]
        k = min(p.acquire, self.sizes[-1] - len(labeled))
        # Dice on the labeled set gives the group weights (Sec. 3.2); then the pool is scored and the batch chosen.
        done = acquisition_round(model, vol, labeled, candidates, cases, self.groups, self.strategy, p, k,
                                 rng=np.random.default_rng([self.spec.seed, rnd, 5]),
                                 mc_seed=_round_seed(self.spec.seed, rnd))
        labeled_groups = [cases[c].group for c in labeled]
        row = {"round": rnd, "n_labeled": len(labeled), "dice_all": summary["dice_all"], "delta": summary["delta"],
               "essp": summary["essp"]}
        for g in self.groups:
            row[f"n_labeled_g{g}"] = sum(x == g for x in labeled_groups)
            row[f"dice_g{g}"] = summary.get(f"dice_g{g}")
            row[f"w_g{g}"] = done.weights[g]
        if 1 in self.groups:
            row["g1_ratio"] = row["n_labeled_g1"] / len(labeled)
        records["rounds"].append(row)
        records["cases"] += [{"round": rnd, "case_id": c, "group": cases[c].group, "split": "labeled", "dice": d}
                             for c, d in zip(labeled, done.labeled_dice, strict=True)]
        records["cases"] += [{"round": rnd, "case_id": c, "group": cases[c].group, "split": "test", "dice": d}
                             for c, d in zip(test_ids, test_dice, strict=True)]
        next_labeled = labeled
        if not finished:
            chosen = set(done.selected)
            st = done.stats
            records["selections"] += [
                {"round": rnd, "case_id": c, "group": cases[c].group, "entropy": e, "localized_entropy": lo, "bald": b,
                 "weight": wi, "score": sc, "selected": c in chosen}
                for c, e, lo, b, wi, sc in zip(candidates, st["entropy"], st["localized_entropy"], st["bald"],
                                               done.case_weights, done.scores, strict=True)]
            next_labeled = sorted(labeled + done.selected)
        # Records first, then the checkpoint, then the state: a kill between them repeats this round only.
        write_csv(self.out / "rounds.csv", pd.DataFrame(records["rounds"], columns=self.columns))
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

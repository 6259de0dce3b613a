"""One active-learning run (dataset, initial set, strategy, seed), resumable after a crash or a kill.

Each round: train on the labeled set, evaluate on the fixed test set, predict the labeled set (for the group
weights), score the pool and acquire the next cases, until the labeled set reaches the final budget (the paper:
10, 14, ..., 86). Records are tidy CSVs keyed by case id, rewritten whole and moved into place after every round,
and ``state.json`` says which round is complete; a run started again continues after it and ends with records
identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from fairal import versions
from fairal.acquisition import STATISTICS, Strategy, parse_strategy
from fairal.config import Profile
from fairal.data.volumes import (
    VolumeSet,
    case_records,
    data_files,
    describe_changes,
    group_value,
    load_volumes,
    read_manifest,
)
from fairal.errors import FairalError
from fairal.io import (
    FolderLock,
    check_output_folder,
    check_own_folder,
    clean_stale_partials,
    make_own_folder,
    within,
    write_csv,
    write_json,
)
from fairal.metrics import fairness_summary
from fairal.records import (
    BALANCED,
    CASE_COLUMNS,
    EVAL,
    EVAL_PREFIX,
    G1_RATIO,
    HIDDEN_GROUP_COLUMNS,
    INITS,
    LABELED,
    POOL,
    TEST,
    fairness_columns,
    labeled_count,
    prefixed_summary,
    round_columns,
    selection_columns,
    weight_column,
)
from fairal.run.examples import write_examples
from fairal.run.group_model import hidden_group_model
from fairal.run.network import network_meta, network_of
from fairal.run.packed import Member, lockstep_key, train_packed
from fairal.run.rounds import acquisition_round, evaluate, training_member
from fairal.run.train import (
    TrainConfig,
    TrainResult,
    check_device,
    describe_device,
    resolve_bf16,
    resolve_device,
    save_checkpoint,
    train_model,
)
from fairal.sampling import draw_per_group, split_evenly, stream, stream_seed

HEAVY_SHARE = 0.8


def eval_rounds(n_rounds: int, every: int) -> set[int]:
    """The rounds measured on the evaluation split: all of them with ``every`` = 1, else every ``every``-th round
    from the first, and always the last."""
    return set(range(0, n_rounds, every)) | {n_rounds - 1}


@dataclass(frozen=True)
class RunSpec:
    """What identifies a run (its data folder, parsed strategy, initial set, seed and profile: every setting it
    depends on), typed: made once where a run is asked for (``fairal run``, a study's grid) and passed down as it is,
    to a grid's worker too (it pickles). Checked when made: a strategy name is parsed (a parsed
    :class:`fairal.acquisition.Strategy` is taken as it is), the initial set and the seed are valid. Where its
    records go is not part of it: the same run may be found in another folder (:func:`same_run_elsewhere`)."""

    data_dir: str
    strategy: Strategy
    init: str
    seed: int
    profile: Profile

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, Strategy):
            object.__setattr__(self, "strategy", parse_strategy(self.strategy))
        heavy_group(self.init)
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


def same_run_elsewhere(folder: Path, config: dict, spec: RunSpec, manifest: pd.DataFrame) -> bool:
    """The run in ``folder`` (its ``config``) has ``spec``'s settings but for the data's path, on the same data
    files: its ``data.json`` (every case's group, split, file sizes and modification times) is ``manifest``'s."""
    here = {k: v for k, v in spec.settings().items() if k != "data_dir"}
    there = {k: v for k, v in config.get("settings", {}).items() if k != "data_dir"}
    try:
        started = json.loads((Path(folder) / "data.json").read_text())
    except (OSError, ValueError):
        return False
    return same_settings(there, here) and started == json.loads(json.dumps(data_files(manifest)))


def heavy_group(init: str):
    """``balanced`` -> None; ``g<X>-heavy`` -> X, read as a group of the manifest is (:func:`group_value`: "2" is
    the int 2, "007" stays text)."""
    if init == BALANCED:
        return None
    if init.startswith("g") and init.endswith("-heavy") and len(init) > len("g-heavy"):
        return group_value(init[1:-len("-heavy")])
    raise FairalError(f"unknown initial set {init!r}; initial sets: balanced, g<GROUP>-heavy (e.g. "
                      f"{', '.join(INITS)})")


def schedule(profile: Profile) -> list[int]:
    """Labeled-set sizes of the rounds: init_size, init_size + acquire, ..., final_size (10, 14, ..., 86). The
    profile has checked that the budget adds up."""
    return list(range(profile.init_size, profile.final_size + 1, profile.acquire))


def initial_counts(groups: list, init: str, size: int) -> dict:
    """Cases per group in the initial set. ``balanced``: ``size`` split evenly (the first groups get the
    remainder); ``gX-heavy``: ``round(0.8 * size)`` of group X, the rest split evenly over the other groups."""
    heavy = heavy_group(init)
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
    pool = manifest[manifest["split"] == POOL]
    groups = sorted(set(manifest["group"]), key=str)
    need = initial_counts(groups, init, size)
    ids = {g: pool.loc[pool["group"] == g, "case_id"].tolist() for g in groups}
    return draw_per_group(ids, need, stream(seed, "initial-set", init), what=f"initial set {init}")


class ActiveLearningRun:
    """A run folder: ``config.json``, ``rounds.csv``, ``cases.csv``, ``selections.csv``, ``state.json``,
    ``checkpoints/`` and, once finished, ``examples.npz`` (:mod:`fairal.run.examples`)."""

    def __init__(self, spec: RunSpec, out: str | Path, volumes: VolumeSet | None = None,
                 manifest: pd.DataFrame | None = None, extensions: dict | None = None) -> None:
        self.spec = spec
        self.extensions = extensions  # what extends fairal where the run runs (fairal.plugins.record), recorded
        # fairal's run folder, or one with a run's state from before folders were marked (resumed only when its
        # settings are this run's)
        self.out = check_output_folder(out) if (Path(out) / "state.json").is_file() else check_own_folder(out, "run")
        self.profile = spec.profile
        self.sizes = schedule(self.profile)
        self.manifest = manifest if manifest is not None else read_manifest(
            spec.data_dir, test_per_group=self.profile.test_per_group)
        pool = self.manifest[self.manifest["split"] == POOL]
        if len(pool) < self.profile.final_size:
            raise FairalError(f"impossible budget: {self.profile.final_size} labeled cases asked for, the pool of "
                              f"{spec.data_dir} has {len(pool)}")
        self.groups = sorted(set(self.manifest["group"]), key=str)
        self.test_ids = self.manifest.loc[self.manifest["split"] == TEST, "case_id"].tolist()
        self.eval_ids = self.manifest.loc[self.manifest["split"] == EVAL, "case_id"].tolist()
        self.eval_at = eval_rounds(len(self.sizes), self.profile.eval_every)
        self.pool_ids = pool["case_id"].tolist()
        self.cases = case_records(self.manifest)
        self.strategy = spec.strategy
        self.columns = round_columns(self.groups)
        self.hide_groups = not self.profile.groups_known and self.strategy.steered
        if self.hide_groups:
            self.columns = [*self.columns, *HIDDEN_GROUP_COLUMNS]
        initial_counts(self.groups, spec.init, self.profile.init_size)  # an init that names no group fails here
        self._volumes = volumes
        self._rnd: int | None = None
        self._records: dict | None = None
        self._labeled: list[str] = []

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
        if not same_settings(config.get("settings", {}), self.spec.settings()) and not self._moved_data(config):
            raise FairalError(f"{self.out} holds a run with other settings; choose another --out or delete it")
        if not state.get("finished") and (self.out / "data.json").is_file():
            # Resume only on the data the run started from: a changed manifest or file would mix two datasets.
            started = json.loads((self.out / "data.json").read_text())
            changes = describe_changes(started, data_files(self.manifest))
            if changes:
                raise FairalError(f"{self.out} was started on other data than {self.spec.data_dir} holds now "
                                  f"({changes}); resume refused: restore the data or start a new run folder")
        return state

    def _moved_data(self, config: dict) -> bool:
        """The stored run has these settings on the same data under another path (:func:`same_run_elsewhere`):
        a run linked from another results folder (``--reuse``), or a results folder moved with its datasets, is
        the same run."""
        return same_run_elsewhere(self.out, config, self.spec, self.manifest)

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
        check_device(self.profile.device)  # a GPU that is not there fails before anything is written
        network_of(self.profile)  # so does a network that no plugin loaded here registered
        if not self.is_finished():
            _ = self.volumes  # every image and label read first: a corrupt one is refused before the folder is made
        with FolderLock(self.out, f"fairal run {self.spec.strategy.name}"):
            self.start()
            while self.next_round is not None:
                rnd = self.next_round
                m = self.training()
                self.finish_round(train_model(m.images, m.labels, m.config, m.factory, progress=progress))
                if on_round is not None:
                    on_round(rnd)
            return self.table()

    # -- one round at a time (``run``, and lockstep groups of runs: :func:`run_lockstep`) -------------------------

    def start(self) -> None:
        """Read the run's state (or begin it: ``data.json``, ``config.json``, the initial set); afterwards
        :attr:`next_round` is the round to do, None when the run is finished. The caller holds the folder's lock."""
        state = self._load_state()
        self._rnd, self._records = None, None
        if state and state.get("finished"):
            return
        make_own_folder(self.out, "run")
        clean_stale_partials(self.out)
        clean_stale_partials(self.out / "checkpoints")
        if state is None:
            write_json(within(self.out, "data.json"), data_files(self.manifest))

            config = {"settings": self.spec.settings(), "groups_known": self.profile.groups_known,
                      "versions": versions(), "schedule": self.sizes, "device": describe_device(self.profile.device),
                      "bf16": resolve_bf16(self.profile.bf16, resolve_device(self.profile.device))}
            if self.extensions is not None:
                config["extensions"] = self.extensions  # the plugins and registered names the run could use
            write_json(within(self.out, "config.json"), config)
            self._records = {"rounds": [], "cases": [], "selections": []}
            self._labeled = initial_set(self.manifest, self.spec.init, self.profile.init_size, self.spec.seed)
            self._rnd = 0
        else:
            done = int(state["completed_round"])
            self._records = {
                "rounds": pd.read_csv(self.out / "rounds.csv").query("round <= @done").to_dict("records"),
                "cases": pd.read_csv(self.out / "cases.csv").query("round <= @done").to_dict("records"),
                "selections": pd.read_csv(self.out / "selections.csv").query("round <= @done").to_dict("records"),
            }
            self._labeled = list(state["next_labeled"])
            self._rnd = done + 1 if done + 1 < len(self.sizes) else None

    @property
    def next_round(self) -> int | None:
        """The round that :meth:`training` and :meth:`finish_round` do next; None when the run is finished."""
        return self._rnd

    def training(self) -> Member:
        """The next round's training: the labeled cases, the round's settings (seed, steps) and the model factory
        (warm-started from the last round's checkpoint if the profile says so)."""
        p, rnd = self.profile, self._rnd
        previous = self.out / "checkpoints" / f"round-{rnd - 1:02d}.pt"
        warm = previous if p.warm_start and rnd > 0 else None
        return training_member(p, self.volumes, self.volumes.rows(self._labeled),
                               TrainConfig.of(p, stream_seed(self.spec.seed, "training", rnd), rnd), self.strategy,
                               warm_from=warm)

    def finish_round(self, result: TrainResult) -> None:
        """The rest of the round with the model trained on :meth:`training`: evaluate, acquire, write the records,
        the checkpoint and the state; then :attr:`next_round` moves on."""
        self._labeled, finished = self._round(self._rnd, result)
        self._rnd = None if finished else self._rnd + 1

    def table(self) -> pd.DataFrame:
        """``rounds.csv`` as a table."""
        if self._records is None:  # finished before this process started it
            return pd.read_csv(self.out / "rounds.csv")
        return pd.DataFrame(self._records["rounds"], columns=self.columns)

    def _hidden_groups(self, rnd: int, model, labeled: list[str], candidates: list[str]) -> tuple:
        """With ``groups_known`` false and a weighted strategy: ``p(g|x)`` of the candidates from a group
        classifier on the labeled cases (retrained every round, on this round's model), and its record; else
        (None, {})."""
        if not self.hide_groups or not candidates:
            return None, {}
        vol, cases = self.volumes, self.cases
        gm = hidden_group_model(model, vol.images[vol.rows(labeled)], [cases[c].group for c in labeled],
                                vol.images[vol.rows(candidates)], self.groups, self.spec.seed, (rnd,))
        truth = [self.groups.index(cases[c].group) for c in candidates]
        accuracy = float((gm.proba.argmax(axis=1) == truth).mean())
        return gm.proba, {"group_model": gm.method, "group_cv_accuracy": gm.cv_accuracy,
                          "pool_group_accuracy": accuracy}

    def _round(self, rnd: int, result: TrainResult) -> tuple[list[str], bool]:
        p, vol, labeled, records = self.profile, self.volumes, self._labeled, self._records
        test_ids, pool_ids, cases = self.test_ids, self.pool_ids, self.cases
        model = result.model
        test_rows = vol.rows(test_ids)
        test_dice = evaluate(model, vol, test_rows, batch_size=8)
        summary = fairness_summary(test_dice, vol.groups[test_rows])
        eval_ids = self.eval_ids if rnd in self.eval_at else []
        eval_rows = vol.rows(eval_ids)
        eval_dice = evaluate(model, vol, eval_rows, batch_size=8) if eval_rows else []
        summary.update(prefixed_summary(eval_dice, vol.groups[eval_rows], self.groups, EVAL_PREFIX))
        finished = len(labeled) >= self.sizes[-1]
        chosen = set(labeled)
        candidates = [] if finished else [c for c in pool_ids if c not in chosen]
        k = min(p.acquire, self.sizes[-1] - len(labeled))
        p_group, hidden = self._hidden_groups(rnd, model, labeled, candidates)
        # Dice on the labeled set gives the group weights (Sec. 3.2); then the pool is scored and the batch chosen.
        done = acquisition_round(model, vol, labeled, candidates, cases, self.groups, self.strategy, p, k,
                                 rng=stream(self.spec.seed, "selection", rnd),
                                 mc_seed=stream_seed(self.spec.seed, "mc-dropout", rnd), p_group=p_group,
                                 hide_groups=p_group is not None)
        labeled_groups = [cases[c].group for c in labeled]
        row = {"round": rnd, "n_labeled": len(labeled), **hidden,
               **{c: summary.get(c) for c in (*fairness_columns(self.groups),
                                               *fairness_columns(self.groups, EVAL_PREFIX))}}
        for g in self.groups:
            row[labeled_count(g)] = sum(x == g for x in labeled_groups)
            row[weight_column(g)] = done.weights[g]
        if 1 in self.groups:
            row[G1_RATIO] = row[labeled_count(1)] / len(labeled)
        records["rounds"].append(row)
        records["cases"] += [{"round": rnd, "case_id": c, "group": cases[c].group, "split": LABELED, "dice": d}
                             for c, d in zip(labeled, done.labeled_dice, strict=True)]
        records["cases"] += [{"round": rnd, "case_id": c, "group": cases[c].group, "split": TEST, "dice": d}
                             for c, d in zip(test_ids, test_dice, strict=True)]
        if finished:  # the final model's Dice on every evaluation case
            records["cases"] += [{"round": rnd, "case_id": c, "group": cases[c].group, "split": EVAL, "dice": d}
                                 for c, d in zip(eval_ids, eval_dice, strict=True)]
        next_labeled = labeled
        if not finished:
            chosen = set(done.selected)
            st = done.stats
            records["selections"] += [
                {"round": rnd, "case_id": c, "group": cases[c].group, **{name: st[name][i] for name in STATISTICS},
                 "weight": done.case_weights[i], "score": done.scores[i], "selected": c in chosen}
                for i, c in enumerate(candidates)]
            next_labeled = sorted(labeled + done.selected)
        else:  # what the report's example figure draws: the report never predicts
            write_examples(self.out, model, vol, test_ids, test_dice)
        self._write_round(rnd, result, len(labeled), next_labeled, finished)
        return next_labeled, finished

    def _write_round(self, rnd: int, result: TrainResult, n_labeled: int, next_labeled: list[str],
                     finished: bool) -> None:
        """Records first, then the checkpoint, then the state: a kill between them repeats this round only."""
        records = self._records
        write_csv(within(self.out, "rounds.csv"), pd.DataFrame(records["rounds"], columns=self.columns))
        write_csv(within(self.out, "cases.csv"), pd.DataFrame(records["cases"], columns=CASE_COLUMNS))
        write_csv(within(self.out, "selections.csv"),
                  pd.DataFrame(records["selections"], columns=selection_columns(STATISTICS)))
        save_checkpoint(result.model, within(self.out, "checkpoints", f"round-{rnd:02d}.pt"),
                        {"round": rnd, "n_labeled": n_labeled, **network_meta(self.profile)})
        write_json(within(self.out, "state.json"),
                   {"completed_round": rnd, "next_labeled": next_labeled, "finished": finished,
                    "train": {"seed": result.seed, "restarts": result.restarts, "collapsed": result.collapsed,
                              "train_dice": result.train_dice}})
        for old in (self.out / "checkpoints").glob("round-*.pt"):  # only the last round's model is needed
            if old.name != f"round-{rnd:02d}.pt":
                old.unlink(missing_ok=True)


def run_lockstep(runs: list[ActiveLearningRun], progress: bool = False, on_round=None) -> list[tuple]:
    """Run (or continue) several runs of one dataset, training each round of theirs together
    (:func:`fairal.run.packed.train_packed`) where they are in lockstep: the runs at the earliest unfinished round
    whose trainings agree in steps, learning rate, batch size, device and precision train as one group; a run whose
    strategy samples MC dropout trains alone (its dropout draws are its own), and so does a group of one. Each run
    evaluates, acquires and writes its records itself, so the records are the single runs' (within float
    tolerance) and a run resumes after its last complete round as alone. Runs that are rounds apart (resumed from
    different points) catch up first.

    Every run folder is locked for the whole call. Returns ``(run, error)`` for each run that failed (the others
    went on); ``on_round(run, round)`` after each finished round.
    """
    failures: list[tuple] = []
    for r in runs:
        check_device(r.profile.device)
        network_of(r.profile)
    with contextlib.ExitStack() as locks:
        for r in runs:
            locks.enter_context(FolderLock(r.out, f"fairal lockstep {r.spec.strategy.name}"))
        active = []
        for r in runs:
            try:
                r.start()
                active.append(r)
            except Exception as err:  # noqa: BLE001  (one broken run must not stop the group)
                failures.append((r, err))
        while True:
            active = [r for r in active if r.next_round is not None]
            if not active:
                return failures
            rnd = min(r.next_round for r in active)
            group = [r for r in active if r.next_round == rnd]
            trainings = {}
            for r in group:
                try:
                    trainings[r] = r.training()
                except Exception as err:  # noqa: BLE001
                    failures.append((r, err))
            results = _train_lockstep(trainings, progress)
            for r, result in results.items():
                try:
                    if isinstance(result, Exception):
                        raise result
                    r.finish_round(result)
                    if on_round is not None:
                        on_round(r, rnd)
                except Exception as err:  # noqa: BLE001
                    failures.append((r, err))
            broken = {id(r) for r, _ in failures}
            active = [r for r in active if id(r) not in broken]


def _train_lockstep(trainings: dict, progress: bool) -> dict:
    """Train each run's member: the packable ones that agree on the lockstep settings together, the rest alone."""
    alone, packs = [], {}
    for r, m in trainings.items():
        if r.strategy.needs_dropout:
            alone.append(r)
        else:
            packs.setdefault(lockstep_key(m), []).append(r)
    results: dict = {}
    for members in packs.values():
        if len(members) == 1:
            alone += members
            continue
        try:
            results.update(zip(members, train_packed([trainings[r] for r in members]), strict=True))
        except Exception as err:  # noqa: BLE001  (e.g. out of GPU memory: the members then train one by one)
            warnings.warn(f"training {len(members)} runs in lockstep failed ({err}); training them one by one",
                          RuntimeWarning, stacklevel=2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            alone += members
    for r in alone:
        m = trainings[r]
        try:
            results[r] = train_model(m.images, m.labels, m.config, m.factory, progress=progress)
        except Exception as err:  # noqa: BLE001
            results[r] = err
    return {r: results[r] for r in trainings if r in results}

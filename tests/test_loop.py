"""One active-learning run on a tiny dataset: schedule, bookkeeping, and kill-and-resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fairal.config import get_profile
from fairal.data.volumes import read_manifest
from fairal.errors import FairalError
from fairal.run.loop import ActiveLearningRun, RunSpec, initial_set, schedule

TINY = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "3", "round_steps": "2", "crop_margin": "4",
        "downsample": "1", "test_per_group": "6"}


def _spec(data, strategy="weighted-localized-entropy", init="g1-heavy", seed=0, **over):
    return RunSpec(str(data), strategy, init, seed, get_profile("smoke", {**TINY, **over}))


def test_schedule_is_the_papers():
    assert schedule(get_profile("standard")) == list(range(10, 87, 4))
    assert len(schedule(get_profile("standard"))) == 20
    with pytest.raises(FairalError, match="impossible budget"):
        schedule(get_profile("standard", {"final_size": "85"}))


def _fake_manifest(n_per_group=40):
    rows = [{"case_id": f"{g}-{i:03d}", "group": g, "split": "pool"} for g in (1, 2) for i in range(n_per_group)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("init,n1", [("balanced", 5), ("g1-heavy", 8), ("g2-heavy", 2)])
def test_initial_sets(init, n1):
    m = _fake_manifest()
    chosen = initial_set(m, init, 10, seed=3)
    assert len(chosen) == 10 and sum(c.startswith("1-") for c in chosen) == n1
    assert initial_set(m, init, 10, seed=3) == chosen  # a function of the seed only: the same for every strategy
    assert initial_set(m, init, 10, seed=4) != chosen


def test_run_records(tiny_dataset, tmp_path):
    run = ActiveLearningRun(_spec(tiny_dataset), tmp_path / "run")
    rounds = run.run()
    assert rounds["n_labeled"].tolist() == [4, 6, 8]
    assert rounds["n_labeled_g1"].iloc[0] == 3  # g1-heavy: round(0.8 * 4)
    assert ((rounds["w_g1"] + rounds["w_g2"]) - 1).abs().max() < 1e-9
    assert (rounds["g1_ratio"] == rounds["n_labeled_g1"] / rounds["n_labeled"]).all()
    m = read_manifest(tiny_dataset)
    test_ids = set(m.loc[m["split"] == "test", "case_id"])
    cases = pd.read_csv(tmp_path / "run" / "cases.csv")
    sel = pd.read_csv(tmp_path / "run" / "selections.csv")
    picked = sel[sel["selected"]]
    assert picked.groupby("round").size().tolist() == [2, 2]
    assert picked["case_id"].is_unique  # no case acquired twice
    assert not set(sel["case_id"]) & test_ids  # test cases are never candidates
    for rnd, labeled in cases[cases["split"] == "labeled"].groupby("round"):
        assert not set(labeled["case_id"]) & test_ids
        if rnd > 0:  # the labeled set grows by exactly what was selected the round before
            before = set(cases[(cases["round"] == rnd - 1) & (cases["split"] == "labeled")]["case_id"])
            assert set(labeled["case_id"]) == before | set(picked[picked["round"] == rnd - 1]["case_id"])
    assert set(cases[cases["split"] == "test"]["case_id"]) == test_ids
    # a pool case is scored once per round; weighted scores are the weight times the localized entropy
    assert (sel.groupby("round").size() == [12 - 4, 12 - 6]).all()
    assert ((sel["score"] - sel["weight"] * sel["localized_entropy"]).abs() < 1e-12).all()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["settings"]["strategy"] == "weighted-localized-entropy" and config["schedule"] == [4, 6, 8]


class Killed(Exception):
    pass


def test_kill_and_resume_gives_identical_records(tiny_dataset, tmp_path, monkeypatch):
    spec = _spec(tiny_dataset, strategy="random", init="balanced")
    ActiveLearningRun(spec, tmp_path / "whole").run()

    def kill_after_round_1(rnd):
        if rnd == 1:
            raise Killed

    with pytest.raises(Killed):
        ActiveLearningRun(spec, tmp_path / "resumed").run(on_round=kill_after_round_1)
    assert pd.read_csv(tmp_path / "resumed" / "rounds.csv")["round"].tolist() == [0, 1]
    # a kill in the middle of round 2's training
    import fairal.run.loop as loop_mod  # the run trains its rounds (train_model) itself

    real = loop_mod.train_model

    def dies(*a, **k):
        raise Killed

    monkeypatch.setattr(loop_mod, "train_model", dies)
    with pytest.raises(Killed):
        ActiveLearningRun(spec, tmp_path / "resumed").run()
    monkeypatch.setattr(loop_mod, "train_model", real)
    ActiveLearningRun(spec, tmp_path / "resumed").run()
    for name in ("rounds.csv", "cases.csv", "selections.csv"):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "resumed" / name).read_text(), name
    # a finished run is not run again
    monkeypatch.setattr(loop_mod, "train_model", dies)
    run = ActiveLearningRun(spec, tmp_path / "resumed")
    assert run.is_finished()
    assert run.run()["n_labeled"].tolist() == [4, 6, 8]


def test_a_run_folder_of_other_settings_is_refused(tiny_dataset, tmp_path):
    ActiveLearningRun(_spec(tiny_dataset, strategy="entropy"), tmp_path / "r").run(on_round=lambda r: None)
    with pytest.raises(FairalError, match="other settings"):
        ActiveLearningRun(_spec(tiny_dataset, strategy="random"), tmp_path / "r").run()


def test_impossible_budget(tiny_dataset, tmp_path):
    with pytest.raises(FairalError, match="impossible budget: 40 labeled cases asked for"):
        ActiveLearningRun(_spec(tiny_dataset, final_size="40"), tmp_path / "r")


def test_run_command(tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from fairal.cli import app

    args = ["run", str(tiny_dataset), "--strategy", "localized-entropy", "--init", "balanced", "--out",
            str(tmp_path / "r"), "--profile", "smoke"]
    for k, v in TINY.items():
        args += ["--set", f"{k}={v}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "round  2/2: 8 labeled" in res.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "finished: nothing to do" in again.output
    bad = CliRunner().invoke(app, args[:5] + ["g3-heavy"] + args[6:])
    assert bad.exit_code == 2 and "initial set g3-heavy: the dataset has no group 3" in bad.output
    bad = CliRunner().invoke(app, args[:5] + ["mostly-g1"] + args[6:])
    assert bad.exit_code == 2 and "unknown initial set 'mostly-g1'" in bad.output


def test_initial_sets_of_three_groups():
    from fairal.run.loop import initial_counts

    assert initial_counts([1, 2, 3], "balanced", 10) == {1: 4, 2: 3, 3: 3}
    assert initial_counts([1, 2, 3], "g2-heavy", 10) == {1: 1, 2: 8, 3: 1}
    assert initial_counts(["a", "b"], "gb-heavy", 10) == {"a": 2, "b": 8}
    with pytest.raises(FairalError, match="no group 3"):
        initial_counts([1, 2], "g3-heavy", 10)


def test_a_run_with_three_groups_and_new_strategies(tiny_dataset, tmp_path):
    """Groups 1, 2 and 3 (a third of the cases relabelled) everywhere: initial set, weights, metrics, records."""
    m = pd.read_csv(tiny_dataset / "manifest.csv")
    m["image"] = [str(tiny_dataset / p) for p in m["image"]]
    m["label"] = [str(tiny_dataset / p) for p in m["label"]]
    m.loc[m.index % 3 == 0, "group"] = 3
    data = tmp_path / "three"
    data.mkdir()
    m.to_csv(data / "manifest.csv", index=False)
    for strategy in ("weighted-bald", "stochastic-weighted-localized-entropy-t0.5"):
        rounds = ActiveLearningRun(_spec(data, strategy, "balanced", mc_samples="2"), tmp_path / strategy).run()
        for col in ("n_labeled_g3", "dice_g3", "w_g3", "g1_ratio"):
            assert col in rounds.columns
        assert rounds[["n_labeled_g1", "n_labeled_g2", "n_labeled_g3"]].iloc[0].tolist() == [2, 1, 1]
        assert ((rounds[["w_g1", "w_g2", "w_g3"]].sum(axis=1)) - 1).abs().max() < 1e-9
        sel = pd.read_csv(tmp_path / strategy / "selections.csv")
        assert sel.groupby("round")["selected"].sum().tolist() == [2, 2]
        if strategy == "weighted-bald":
            assert (sel["bald"] >= 0).all()
            assert (sel["score"] - sel["weight"] * sel["bald"]).abs().max() < 1e-12
        else:
            assert sel["bald"].isna().all()


@pytest.mark.parametrize("strategy", ["worst-group-random", "group-drawn-localized-entropy",
                                      "power-weighted-localized-entropy", "fair-influence"])
def test_the_new_parts_of_the_grammar_run_a_whole_run(tiny_dataset, tmp_path, strategy, monkeypatch):
    """Each steering, selection and base of the grammar through the round engine: a run's records, the steered
    choice drawn from the group the weights name, the fair-influence statistic recorded where it ranks."""
    if strategy == "worst-group-random":  # the tiny model's Dice are all equal (weights tie): fix them unequal
        import fairal.run.rounds

        monkeypatch.setattr(fairal.run.rounds, "group_weights", lambda dice, groups, all_groups, *a, **k:
                            {g: 0.7 if str(g) == "2" else 0.3 for g in all_groups})
    run = ActiveLearningRun(_spec(tiny_dataset, strategy, init="balanced"), tmp_path / "run")
    rounds = run.run()
    assert rounds["n_labeled"].tolist() == [4, 6, 8]
    sel = pd.read_csv(tmp_path / "run" / "selections.csv")
    picked = sel[sel["selected"]]
    assert picked.groupby("round").size().tolist() == [2, 2] and picked["case_id"].is_unique
    assert sel["fair_influence"].notna().all() == (strategy == "fair-influence")
    if strategy == "worst-group-random":  # min-max: the cases of the group of the largest weight, Group 2's
        for rnd, chosen in picked.groupby("round"):
            r, offered = rounds.iloc[rnd], sel[sel["round"] == rnd]
            top = {g for g in (1, 2) if r[f"w_g{g}"] == max(r["w_g1"], r["w_g2"])}
            assert top == {2}  # the weights the run recorded are the ones it steered by
            assert all((offered["group"] == g).sum() >= len(chosen) for g in top)  # each could fill the batch
            assert chosen["group"].nunique() == 1 and chosen["group"].iloc[0] in top
            # within the group, random's top-k: the highest of its uniform scores
            ranked = offered[offered["group"] == chosen["group"].iloc[0]].nlargest(len(chosen), "score")
            assert set(chosen["case_id"]) == set(ranked["case_id"])
    if strategy == "group-drawn-localized-entropy":  # its draws: the same seed, the same run
        again = ActiveLearningRun(_spec(tiny_dataset, strategy, init="balanced"), tmp_path / "again").run()
        pd.testing.assert_frame_equal(rounds, again)


@pytest.fixture
def pool_entries():
    """Two pool-wide base scores registered for a test, each keeping what it saw: a scorer (each candidate's distance
    to the nearest labeled case) and a chooser (the built-in core-set's greedy k-center, its batch kept)."""
    import numpy as np

    from fairal.acquisition import Base, PoolScore, k_center_greedy, register, unregister

    seen: dict = {"far": [], "chooser": []}

    def far(view):
        d = np.linalg.norm(view.features[:, None] - view.labeled_features[None], axis=2).min(axis=1)
        seen["far"].append((view, d))
        return d

    def chooser(view):
        chosen = k_center_greedy(view.features, view.labeled_features, view.k)
        seen["chooser"].append((view, chosen))
        return chosen

    register(Base("far-from-labeled", None, "far from labeled", "far from the labeled cases",
                  pool=PoolScore("far_from_labeled", far, "distance to the nearest labeled case")))
    register(Base("spy-set", None, "spy set", "core-set, kept", pool=PoolScore("spy_set", chooser, "k-center",
                                                                              chooses=True)))
    yield seen
    unregister("far-from-labeled")
    unregister("spy-set")


def test_a_pool_wide_score_sees_the_whole_pool_in_a_run(tiny_dataset, tmp_path, pool_entries):
    """A pool-wide scorer, weighted (Eq. 2), and a pool-wide chooser (core-set) through the round engine: each sees
    every candidate and labeled case at once and the round's budget; the scorer's values times the weights are
    the records' scores; the chooser's batch is what the round selects, as the built-in core-set does."""
    import numpy as np

    rounds = ActiveLearningRun(_spec(tiny_dataset, "weighted-far-from-labeled", "balanced"), tmp_path / "far").run()
    sel = pd.read_csv(tmp_path / "far" / "selections.csv")
    assert len(pool_entries["far"]) == 2  # rounds 0 and 1 acquire; the last does not
    for rnd, (view, d) in enumerate(pool_entries["far"]):
        here = sel[sel["round"] == rnd]
        labeled = rounds["n_labeled"].iloc[rnd]
        assert view.candidates == here["case_id"].tolist() and view.k == 2
        assert view.features.shape == (len(here), 64) and view.labeled_features.shape == (labeled, 64)
        np.testing.assert_array_equal(here["score"].to_numpy(), here["weight"].to_numpy() * d)
        assert set(here.loc[here["selected"], "case_id"]) == set(here.sort_values("score")["case_id"].iloc[-2:])
    ActiveLearningRun(_spec(tiny_dataset, "spy-set", "balanced"), tmp_path / "spy").run()
    ActiveLearningRun(_spec(tiny_dataset, "core-set", "balanced"), tmp_path / "core").run()
    spy, core = (pd.read_csv(tmp_path / name / "selections.csv") for name in ("spy", "core"))
    for rnd, (view, chosen) in enumerate(pool_entries["chooser"]):
        here = spy[spy["round"] == rnd]
        assert set(here.loc[here["selected"], "case_id"]) == {view.candidates[i] for i in chosen}
    assert spy["selected"].equals(core["selected"]) and spy["case_id"].equals(core["case_id"])
    assert core[["entropy", "localized_entropy"]].notna().all().all()  # the statistics still recorded

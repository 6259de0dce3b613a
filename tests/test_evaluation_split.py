"""The measurement design: named random streams, the evaluation split, independent datasets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairal.data.volumes import read_manifest
from fairal.errors import FairalError
from fairal.grid.baselines import baseline_cohorts, run_baseline
from fairal.grid.datasets import DATASETS
from fairal.run.loop import ActiveLearningRun, RunSpec, eval_rounds, initial_set
from fairal.sampling import STREAMS, entropy, stream, stream_seed
from fairal.simulate.dataset import SimulationConfig, draw_subjects, simulate_dataset

from .conftest import LABEL_VALUE, OUT_SHAPE, make_template
from .test_loop import TINY, _spec

# --- named streams --------------------------------------------------------------------------------------------


def test_streams_are_named_and_distinct():
    with pytest.raises(FairalError, match="unknown random stream 'initial_set'"):
        stream(0, "initial_set")
    with pytest.raises(FairalError, match="seed must be a whole number >= 0"):
        stream(-1, "training", 0)
    ours = [n for n, (number, _) in STREAMS.items() if number >= 0xFA1A0000]
    assert len({STREAMS[n][0] for n in ours}) == len(ours)  # one number per stream
    # The same seed and key in two streams: different draws (training and MC dropout are no longer one seed).
    firsts = {n: stream(3, n, 0).integers(2**62) for n in ours}
    assert len(set(firsts.values())) == len(ours)
    assert stream_seed(3, "training", 5) != stream_seed(3, "mc-dropout", 5)
    # Text keys are hashed, not summed: g12-heavy and g21-heavy used to get the same initial set.
    assert entropy(0, "initial-set", "g12-heavy") != entropy(0, "initial-set", "g21-heavy")
    # NumPy pads entropy with zeros: [s, n] and [s, n, 0] draw alike, so a stream appends its key count.
    assert entropy(0, "training", 0) == [0, STREAMS["training"][0], 0, 2]
    # the layout by hand (a change would silently move every initial set and every round's training):
    # [seed, 0xFA1A0000 + the stream's number, keys (text: the first 8 bytes of its SHA-256, little-endian), count]
    import hashlib

    word = int.from_bytes(hashlib.sha256(b"g12-heavy").digest()[:8], "little")
    assert entropy(0, "initial-set", "g12-heavy") == [0, 0xFA1A0000 + 20, word, 2]
    assert entropy(7, "training", 2) == [7, 0xFA1A0000 + 21, 2, 2]
    assert stream(0, "training", 0).random() != stream(0, "training").random()
    assert stream(7, "selection", 2).random() == stream(7, "selection", 2).random()


def test_simulator_streams_keep_their_layout():
    """The calibration of docs/simulation.md was measured on these draws: they must not move."""
    assert entropy(4, "subject", 9) == [4, 10]
    assert entropy(4, "subject-groups") == [4, 0]
    assert entropy(4, "test-split") == [4, 0, 1]
    assert entropy(2, "global-model") == [2, 1] and entropy(2, "local-model") == [2, 2]
    # No stream of fairal's own can meet a subject's [seed, 1 + i] (its number is far above any index).
    assert min(n for n, _ in STREAMS.values() if n > 2) > 10**9


def test_initial_sets_of_two_heavy_groups_differ():
    rows = [{"case_id": f"{g}-{i:03d}", "group": g, "split": "pool"} for g in (12, 21, 3) for i in range(30)]
    m = pd.DataFrame(rows)
    a, b = initial_set(m, "g12-heavy", 10, 0), initial_set(m, "g21-heavy", 10, 0)
    assert sum(c.startswith("12-") for c in a) == 8 and sum(c.startswith("21-") for c in b) == 8
    others_a = sorted(c for c in a if c.startswith("3-"))
    others_b = sorted(c for c in b if c.startswith("3-"))
    assert others_a != others_b  # different streams (the old +sum(ord) rule drew them alike)


# --- the evaluation split ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalset")
    tpl, lab = make_template(folder)
    cfg = SimulationConfig(n_subjects=24, eval_per_group=5, shape=OUT_SHAPE, template=str(tpl), label=str(lab),
                           label_value=LABEL_VALUE, jobs=1, preview=False)
    return simulate_dataset(cfg, folder / "data", progress=False)


def test_eval_split_is_disjoint_from_pool_test_and_cohorts(eval_dataset):
    m = read_manifest(eval_dataset)
    ev = m[m["split"] == "eval"]
    assert len(ev) == 10 and ev.groupby("group").size().to_dict() == {1: 5, 2: 5}
    assert ev["case_id"].str.fullmatch(r"eval-\d{4}").all()
    assert len(m[m["split"] != "eval"]) == 24  # the dataset itself is unchanged in size
    assert m.groupby("split").size().to_dict() == {"eval": 10, "pool": 12, "test": 12}
    eval_ids = set(ev["case_id"])
    cohorts = baseline_cohorts(m, 6, seed=0)
    assert all(not set(c) & eval_ids for c in cohorts.values())
    for init in ("balanced", "g1-heavy", "g2-heavy"):
        for seed in range(5):
            assert not set(initial_set(m, init, 4, seed)) & eval_ids


def test_eval_subjects_leave_the_others_unchanged(tiny_config):
    plain = draw_subjects(tiny_config(n_subjects=10), 4)
    more = draw_subjects(tiny_config(n_subjects=10, eval_per_group=3), 4)
    assert len(more) == 16
    for a, b in zip(plain, more[:10], strict=True):
        assert (a.case_id, a.group, a.bias_scale) == (b.case_id, b.group, b.bias_scale)
        assert np.array_equal(a.global_z, b.global_z)
    assert [s.group for s in more[10:]].count(1) == 3
    assert all(s.bias_scale is not None for s in more[10:] if s.group == 1)  # Group 1 gets its bias, as the others


def test_the_two_default_datasets_share_no_subject():
    (bias_s, seed_s), (bias_w, seed_w) = DATASETS["strong"], DATASETS["weak"]
    assert seed_s != seed_w
    strong = draw_subjects(SimulationConfig(bias=bias_s, seed=seed_s, eval_per_group=150), 10)
    weak = draw_subjects(SimulationConfig(bias=bias_w, seed=seed_w, eval_per_group=150), 10)
    zs = {tuple(s.global_z) for s in strong}
    assert not zs & {tuple(s.global_z) for s in weak}
    assert len(zs) == len(strong)  # no two subjects of one dataset alike either
    assert [s.group for s in strong[:312]] != [s.group for s in weak[:312]]


def test_simulate_refuses_bad_counts(tiny_config, tmp_path):
    for kw, msg in (({"seed": -1}, "--seed must be a whole number >= 0"),
                    ({"eval_per_group": -2}, "--eval-per-group must be a whole number >= 0")):
        with pytest.raises(FairalError, match=msg):
            simulate_dataset(tiny_config(**kw), tmp_path / "x", progress=False)
        assert not (tmp_path / "x").exists()


def test_eval_rounds():
    assert eval_rounds(20, 1) == set(range(20))
    assert eval_rounds(20, 3) == {0, 3, 6, 9, 12, 15, 18, 19}
    assert eval_rounds(1, 5) == {0}


def test_runs_and_baselines_measure_the_eval_split(eval_dataset, tmp_path):
    m = read_manifest(eval_dataset)
    eval_ids = set(m.loc[m["split"] == "eval", "case_id"])
    rounds = ActiveLearningRun(_spec(eval_dataset, eval_every="2"), tmp_path / "run").run()
    ev = ["eval_dice_all", "eval_dice_g1", "eval_dice_g2", "eval_delta", "eval_essp"]
    assert list(rounds.columns[-5:]) == ev
    measured = rounds.dropna(subset=["eval_essp"])["round"].tolist()
    assert measured == [0, 2]  # every 2nd round and the last (rounds 0, 1, 2)
    last = rounds.iloc[-1]
    assert last["eval_essp"] == pytest.approx(last["eval_dice_all"] / (1 + last["eval_delta"]))
    cases = pd.read_csv(tmp_path / "run" / "cases.csv")
    final_eval = cases[cases["split"] == "eval"]
    assert set(final_eval["round"]) == {2} and set(final_eval["case_id"]) == eval_ids
    assert final_eval["dice"].mean() == pytest.approx(last["eval_dice_all"])
    g1 = final_eval[final_eval["group"] == 1]["dice"].mean()
    assert g1 == pytest.approx(last["eval_dice_g1"])
    sel = pd.read_csv(tmp_path / "run" / "selections.csv")
    labeled = cases[cases["split"] == "labeled"]
    assert not (set(sel["case_id"]) | set(labeled["case_id"])) & eval_ids  # never a candidate, never labeled

    from fairal.config import get_profile

    table = run_baseline(eval_dataset, tmp_path / "base", get_profile("smoke", {**TINY, "cohort_size": "6"}),
                         progress=False)
    assert list(table.columns[-5:]) == ev and table["eval_essp"].notna().all()
    bc = pd.read_csv(tmp_path / "base" / "baseline_cases.csv")
    assert set(bc.loc[bc["split"] == "eval", "case_id"]) == eval_ids
    all_eval = bc[(bc["cohort"] == "all") & (bc["split"] == "eval")]["dice"].mean()
    assert all_eval == pytest.approx(table.set_index("cohort").loc["all", "eval_dice_all"])


def test_without_eval_split_the_columns_are_empty(tiny_dataset, tmp_path):
    rounds = ActiveLearningRun(_spec(tiny_dataset, init="balanced"), tmp_path / "run").run()
    assert rounds["eval_essp"].isna().all() and rounds["essp"].notna().all()
    spec = RunSpec(str(tiny_dataset), "random", "balanced", 0, _spec(tiny_dataset).profile)
    assert spec.profile.eval_every == 1

"""Lockstep training of several U-Nets at once gives each member what training it alone gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairal.errors import FairalError
from fairal.run.model import UNet3D
from fairal.run.packed import Member, train_packed
from fairal.run.train import TrainConfig, predict_proba, train_model

from .records import same_records


def _data(seed: int, n: int = 6, shape=(12, 14, 10)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros((n, 1, *shape), dtype=torch.uint8)
    labels[:, :, 3:9, 4:11, 2:8] = 1
    images = torch.rand((n, 1, *shape), generator=g) * 0.3 + labels.float()  # learnable in a few steps
    return images, labels


def _members():
    out = []
    for k, (seed, n) in enumerate(((0, 6), (1, 5), (7, 8))):
        images, labels = _data(seed, n)
        cfg = TrainConfig(lr=1e-2, steps=12, batch_size=2, seed=100 + k, min_train_dice=0.0, bf16="off")
        out.append(Member(images, labels, cfg, lambda: UNet3D(features=(8, 16), foreground_prior=0.3)))
    return out


def test_packed_members_match_independent_trainings():
    # fp32 on both sides (bf16="off"): "auto" would autocast the single path on a CPU with AMX
    members = _members()
    packed = train_packed(members)
    for m, p in zip(members, packed, strict=True):
        alone = train_model(m.images, m.labels, m.config, m.factory)
        assert p.seed == alone.seed and p.restarts == 0
        np.testing.assert_allclose(p.losses, alone.losses, rtol=1e-4, atol=1e-6)  # same batches, same steps
        for (name, a), b in zip(p.model.state_dict().items(), alone.model.state_dict().values(), strict=True):
            # Adam divides by sqrt(v): where a gradient is ~0, float noise can change a step of size lr (1e-2), so
            # a few weights may differ by a fraction of one step; the bulk is equal to float precision
            diff = np.abs(a.numpy() - b.numpy())
            assert diff.max() < 1e-3 and np.median(diff) < 1e-5, name
        pa = np.stack(list(predict_proba(p.model, m.images, bf16="off")))
        pb = np.stack(list(predict_proba(alone.model, m.images, bf16="off")))
        np.testing.assert_allclose(pa, pb, atol=1e-3)  # probabilities: the same to 3 decimals
        assert p.train_dice == pytest.approx(alone.train_dice, abs=1e-3)


def test_packed_bf16_follows_the_members_setting():
    # bf16="on": the group trains under bfloat16 autocast as each member alone would (a CPU autocasts too); bf16
    # keeps ~3 significant digits, so the agreement is to bf16's precision, not float32's
    members = _members()
    for m in members:
        m.config = TrainConfig(lr=1e-2, steps=12, batch_size=2, seed=m.config.seed, min_train_dice=0.0, bf16="on")
    for m, p in zip(members, train_packed(members), strict=True):
        alone = train_model(m.images, m.labels, m.config, m.factory)
        np.testing.assert_allclose(p.losses, alone.losses, rtol=3e-2)  # measured: at most 0.0045 apart
        assert p.train_dice == pytest.approx(alone.train_dice, abs=0.03)  # measured: at most 0.0072 apart
    members[0].config = TrainConfig(lr=1e-2, steps=12, batch_size=2, seed=1, bf16="off")
    with pytest.raises(FairalError, match="share lr, batch size, device and bf16"):
        train_packed(members)


def test_members_must_be_in_lockstep():
    members = _members()
    members[1].config = TrainConfig(lr=1e-2, steps=13, batch_size=2, seed=1, bf16="off")
    with pytest.raises(FairalError, match="same number of steps"):
        train_packed(members)
    members = _members()
    members[2].images = members[2].images[:, :, :-1]
    members[2].labels = members[2].labels[:, :, :-1]
    with pytest.raises(FairalError, match="volume shape"):
        train_packed(members)


def test_a_collapsed_member_is_retrained_alone():
    members = _members()
    members[0].config = TrainConfig(lr=1e-2, steps=12, batch_size=2, seed=100, min_train_dice=1.0, bf16="off",
                                     max_restarts=1)
    with pytest.warns(RuntimeWarning, match="collapsed"):
        packed = train_packed(members)
    assert packed[0].restarts == 1 and packed[0].collapsed  # the single path's guard ran, with its restart
    assert packed[1].restarts == 0


# --- lockstep runs: the round engine's records when a group of runs trains together ----------------------------

LOCKSTEP = {"init_size": "4", "acquire": "2", "final_size": "8", "steps": "6", "round_steps": "3", "crop_margin": "4",
            "downsample": "1", "test_per_group": "6", "bf16": "off", "mc_samples": "2"}
RUNS = (("balanced", "random"), ("balanced", "weighted-localized-entropy"), ("g1-heavy", "entropy"),
        ("g1-heavy", "weighted-bald"))  # weighted-bald samples dropout: it trains alone inside the group


def _runs(data, root, **over):
    from fairal.config import get_profile
    from fairal.run.loop import ActiveLearningRun, RunSpec

    profile = get_profile("smoke", {**LOCKSTEP, **over})
    return [ActiveLearningRun(RunSpec(str(data), s, i, 0, profile), root / f"{i}-{s}") for i, s in RUNS]


def test_lockstep_runs_give_the_records_of_single_runs(tiny_dataset, tmp_path, monkeypatch):
    import fairal.run.loop as loop
    from fairal.run.loop import run_lockstep

    alone = _runs(tiny_dataset, tmp_path / "alone")
    for run in alone:
        run.run()

    class Stop(Exception):
        pass

    def stop(rnd):
        raise Stop

    together = _runs(tiny_dataset, tmp_path / "together")
    with pytest.raises(Stop):  # one run is a round ahead when the group starts: it waits for the others
        together[1].run(on_round=stop)
    packed_sizes = []
    real = loop.train_packed

    def spy(members):
        packed_sizes.append(len(members))
        return real(members)

    monkeypatch.setattr(loop, "train_packed", spy)
    rounds = []
    assert run_lockstep(_runs(tiny_dataset, tmp_path / "together"), on_round=lambda r, k: rounds.append(k)) == []
    # round 0: 2 of the 3 packable runs (the third did it alone before); rounds 1-2: all 3; weighted-bald alone
    assert packed_sizes == [2, 3, 3]
    assert sorted(rounds) == [0] * 3 + [1] * 4 + [2] * 4
    for a, b in zip(alone, _runs(tiny_dataset, tmp_path / "together"), strict=True):
        assert b.is_finished()
        same_records(a.out, b.out)

    class Killed(BaseException):  # as a kill: not caught as one run's failure
        pass

    done = []

    def kill_in_round_1(run, rnd):
        done.append(rnd)
        if done.count(1) == 2:
            raise Killed

    with pytest.raises(Killed):  # the group dies with two of its runs past round 1, two not
        run_lockstep(_runs(tiny_dataset, tmp_path / "killed"), on_round=kill_in_round_1)
    assert run_lockstep(_runs(tiny_dataset, tmp_path / "killed")) == []  # started again: each resumes
    for a, b in zip(alone, _runs(tiny_dataset, tmp_path / "killed"), strict=True):
        same_records(a.out, b.out)


def test_a_failing_run_does_not_stop_its_lockstep_group(tiny_dataset, tmp_path):
    from fairal.run.loop import run_lockstep

    runs = _runs(tiny_dataset, tmp_path)
    (runs[0].out).mkdir(parents=True)
    (runs[0].out / "state.json").write_text("{broken")  # an unreadable run state: refused, the others go on
    failures = run_lockstep(runs)
    assert [r for r, _ in failures] == [runs[0]]
    assert isinstance(failures[0][1], FairalError) and "unreadable run state" in str(failures[0][1])
    assert all(r.is_finished() for r in runs[1:])


def test_a_group_that_cannot_train_together_trains_one_by_one(tiny_dataset, tmp_path, monkeypatch):
    import fairal.run.loop as loop
    from fairal.run.loop import run_lockstep

    def out_of_memory(members):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(loop, "train_packed", out_of_memory)
    runs = _runs(tiny_dataset, tmp_path / "together")
    with pytest.warns(RuntimeWarning, match="lockstep failed .*CUDA out of memory.*one by one"):
        assert run_lockstep(runs) == []
    for run in _runs(tiny_dataset, tmp_path / "alone"):
        run.run()
        same_records(run.out, tmp_path / "together" / run.out.name, tolerance=0.0)  # the single path exactly

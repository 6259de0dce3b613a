"""Lockstep training of several U-Nets at once gives each member what training it alone gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairal.errors import FairalError
from fairal.model import UNet3D
from fairal.packed import Member, train_packed
from fairal.train import TrainConfig, predict_proba, train_model


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


def test_members_must_be_in_lockstep():
    members = _members()
    members[1].config = TrainConfig(lr=1e-2, steps=13, batch_size=2, seed=1)
    with pytest.raises(FairalError, match="same number of steps"):
        train_packed(members)
    members = _members()
    members[2].images = members[2].images[:, :, :-1]
    members[2].labels = members[2].labels[:, :, :-1]
    with pytest.raises(FairalError, match="volume shape"):
        train_packed(members)


def test_a_collapsed_member_is_retrained_alone():
    members = _members()
    members[0].config = TrainConfig(lr=1e-2, steps=12, batch_size=2, seed=100, min_train_dice=1.0,
                                     max_restarts=1)
    with pytest.warns(RuntimeWarning, match="collapsed"):
        packed = train_packed(members)
    assert packed[0].restarts == 1 and packed[0].collapsed  # the single path's guard ran, with its restart
    assert packed[1].restarts == 0

"""Tests of training, the collapse guard, streaming prediction and checkpoints, on tiny 16^3 volumes."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import fairal.run.train as train_mod
from fairal.errors import FairalError
from fairal.run.model import UNet3D
from fairal.run.train import (
    TrainConfig,
    _batch_indices,
    collapse_check,
    load_checkpoint,
    predict_proba,
    resolve_bf16,
    save_checkpoint,
    train_model,
)

SIZE = 16


def _spheres(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy bright balls of radius 3.5 voxels in 16^3 volumes; the label is the ball."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randint(5, 11, (n, 3), generator=g).float()
    grid = torch.stack(torch.meshgrid(*[torch.arange(SIZE)] * 3, indexing="ij"), -1).float()
    labels = ((grid[None] - centres[:, None, None, None]).norm(dim=-1) < 3.5).to(torch.uint8)[:, None]
    images = 2.0 * labels.float() + 0.3 * torch.randn(labels.shape, generator=g)
    return images, labels


# lr 1e-3 and 30 steps learn the balls (train Dice ~0.9) in well under a second.
# One thread: on a shared 2-core machine OpenMP threads that wait on a busy core slow tiny steps ~10x.
FAST = {"lr": 1e-3, "steps": 30, "batch_size": 2, "bf16": "off", "num_threads": 1}


def test_training_learns_and_is_bit_identical_for_the_same_seed() -> None:
    images, labels = _spheres()
    r1 = train_model(images, labels, TrainConfig(**FAST), UNet3D)
    r2 = train_model(images, labels, TrainConfig(**FAST), UNet3D)
    assert r1.restarts == 0 and not r1.collapsed and r1.seed == 0
    assert len(r1.losses) == 30
    assert r1.losses[-1] < 0.5 * r1.losses[0]
    assert r1.train_dice > 0.5
    assert not r1.model.training
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.losses == r2.losses
    r3 = train_model(images, labels, TrainConfig(**{**FAST, "seed": 1}), UNet3D)
    assert not torch.equal(r3.model.head.weight, r1.model.head.weight)


def test_first_loss_is_the_hand_computed_bce() -> None:
    # A network whose output is the constant logit log(p/(1-p)) with p = 0.2 on labels with foreground
    # fraction f = 1/8 (an 8^3 cube in 16^3) has BCE = -(f ln p + (1-f) ln(1-p))
    #   = 0.125 * 1.6094379 + 0.875 * 0.2231436 = 0.2011797 + 0.1952506 = 0.3964303.
    labels = torch.zeros(3, 1, SIZE, SIZE, SIZE)
    labels[:, :, 4:12, 4:12, 4:12] = 1
    images = torch.randn(labels.shape, generator=torch.Generator().manual_seed(0))

    def factory() -> UNet3D:
        model = UNet3D(foreground_prior=0.2)
        with torch.no_grad():
            model.head.weight.zero_()
        return model

    config = TrainConfig(
        lr=1e-3, steps=1, batch_size=2, bf16="off", min_train_dice=0.0, max_restarts=0, num_threads=1
    )
    with pytest.warns(RuntimeWarning, match="collapsed"):  # it predicts no foreground after one step
        result = train_model(images, labels, config, factory)
    assert result.losses[0] == pytest.approx(0.3964303, abs=1e-6)


def test_bf16_training_and_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = _spheres(n=2)
    cfg = {**FAST, "steps": 3, "min_train_dice": 0.0}
    fp32 = train_model(images, labels, TrainConfig(**cfg), UNet3D)
    bf16 = train_model(images, labels, TrainConfig(**{**cfg, "bf16": "on"}), UNet3D, progress=True)
    # the first loss is computed before any update, so it differs only by bf16 rounding of the forward pass
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], abs=1e-2)
    assert bf16.losses[0] != fp32.losses[0]  # autocast really ran
    assert all(math.isfinite(v) for v in bf16.losses)
    assert "loss" in capsys.readouterr().out


def test_epochs_override_steps() -> None:
    images, labels = _spheres(n=5)
    # ceil(3 * 5 / 2) = ceil(7.5) = 8 steps
    config = TrainConfig(lr=1e-3, steps=1000, epochs=3, batch_size=2, bf16="off", num_threads=1)
    assert config.total_steps(5) == 8
    result = train_model(images, labels, config, UNet3D)
    assert len(result.losses) == 8


def test_batches_are_permutations_per_pass() -> None:
    g = torch.Generator().manual_seed(0)
    batches = list(_batch_indices(5, 2, 10, g))
    assert [len(b) for b in batches] == [2] * 10
    stream = torch.cat(batches).tolist()
    for start in (0, 5, 10, 15):
        assert sorted(stream[start : start + 5]) == [0, 1, 2, 3, 4]
    # a batch larger than the data set is capped at n
    assert [b.tolist() for b in _batch_indices(3, 8, 1, torch.Generator().manual_seed(0))][0] != []
    assert len(next(_batch_indices(3, 8, 1, torch.Generator().manual_seed(0)))) == 3


class _Factory:
    """Builds UNet3D; the first `bad` builds get an output bias of -50, i.e. they predict nothing."""

    def __init__(self, bad: int) -> None:
        self.bad = bad
        self.seeds: list[int] = []

    def __call__(self) -> UNet3D:
        self.seeds.append(torch.initial_seed())
        model = UNet3D()
        if len(self.seeds) <= self.bad:
            with torch.no_grad():
                model.head.bias.fill_(-50.0)  # Adam at lr 1e-3 moves it ~0.03 in 30 steps: no recovery
        return model


def test_collapse_guard_restarts_with_a_derived_seed() -> None:
    images, labels = _spheres()
    factory = _Factory(bad=1)
    result = train_model(images, labels, TrainConfig(**FAST, seed=1), factory)
    assert factory.seeds == [1, train_mod.restart_seed(1, 1)]
    assert result.restarts == 1
    assert result.seed == train_mod.restart_seed(1, 1)
    assert not result.collapsed
    assert result.attempt_dice[0] == 0.0
    assert result.train_dice == result.attempt_dice[1] > 0.5


def test_collapse_guard_gives_up_after_max_restarts() -> None:
    images, labels = _spheres()
    factory = _Factory(bad=10)
    with pytest.warns(RuntimeWarning, match="after 2 restarts"):
        result = train_model(images, labels, TrainConfig(**FAST, max_restarts=2), factory)
    assert factory.seeds == [0, train_mod.restart_seed(0, 1), train_mod.restart_seed(0, 2)]
    assert result.restarts == 2
    assert result.collapsed
    assert result.attempt_dice == [0.0, 0.0, 0.0]


def test_collapse_guard_fires_on_no_foreground_even_with_zero_threshold() -> None:
    images, labels = _spheres()
    factory = _Factory(bad=1)
    config = TrainConfig(**{**FAST, "min_train_dice": 0.0, "seed": 3})
    result = train_model(images, labels, config, factory)
    # Dice 0.0 is not below 0.0, but the first model predicts no foreground voxel while labels have some
    assert result.restarts == 1 and factory.seeds == [3, train_mod.restart_seed(3, 1)]
    assert result.attempt_dice[0] == 0.0 and result.train_dice > 0.5


@pytest.mark.parametrize("bias, dice, collapsed", [(50.0, "all", False), (-50.0, 0.0, True)])
def test_collapse_check_by_hand(bias: float, dice: float | str, collapsed: bool) -> None:
    """A constant model: +50 logits everywhere predicts every voxel, Dice 2|L| / (|L| + 16^3) per case; -50 predicts
    none: Dice 0 and collapsed, even with min_train_dice 0 (the labels have foreground)."""
    images, labels = _spheres(n=3)
    model = UNet3D()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(bias)
    k = labels.flatten(1).sum(1).double()
    expected = float((2 * k / (k + SIZE**3)).mean()) if dice == "all" else dice
    config = TrainConfig(**{**FAST, "min_train_dice": 0.0})
    got, got_collapsed = collapse_check(model, images, labels, config, bf16=False)
    assert got == pytest.approx(expected, abs=1e-6) and got_collapsed is collapsed
    assert collapse_check(model, images, labels, TrainConfig(**{**FAST, "min_train_dice": 0.9}), bf16=False)[1]


def test_num_threads_is_restored() -> None:
    images, labels = _spheres(n=2)
    before = torch.get_num_threads()
    train_model(
        images, labels, TrainConfig(**{**FAST, "steps": 2, "num_threads": 1, "min_train_dice": 0.0}), UNet3D
    )
    assert torch.get_num_threads() == before


def test_channels_last_and_contiguous_training_agree() -> None:
    images, labels = _spheres(n=4)
    cfg = {**FAST, "steps": 5}
    a = train_model(images, labels, TrainConfig(**cfg, channels_last=True), UNet3D)
    b = train_model(images, labels, TrainConfig(**cfg, channels_last=False), UNet3D)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-4)
    assert a.model.head.weight.is_contiguous()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bf16": "maybe"},
        {"steps": -1},
        {"batch_size": 0},
        {"lr": float("nan")},
        {"epochs": -2},
        {"min_train_dice": 1.5},
        {"max_restarts": -1},
        {"num_threads": 0},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(FairalError):
        TrainConfig(**kwargs)


def test_training_data_validation() -> None:
    images, labels = _spheres(n=2)
    with pytest.raises(FairalError, match="binary"):
        train_model(images, labels * 2, TrainConfig(**FAST), UNet3D)
    with pytest.raises(FairalError, match="labels must have shape"):
        train_model(images, labels[:, :, :8], TrainConfig(**FAST), UNet3D)
    with pytest.raises(FairalError, match="N = 0"):
        train_model(images[:0], labels[:0], TrainConfig(**FAST), UNet3D)


def test_resolve_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_bf16("on") is True
    assert resolve_bf16("off") is False
    with pytest.raises(FairalError):
        resolve_bf16("yes")
    # avx512_bf16 alone does not count as native (measured slower than fp32); AMX does
    monkeypatch.setattr(train_mod, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    train_mod.bf16_native.cache_clear()
    assert resolve_bf16("auto") is False
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        monkeypatch.setattr(
            train_mod, "_cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})
        )
        train_mod.bf16_native.cache_clear()
        assert resolve_bf16("auto") is True
    train_mod.bf16_native.cache_clear()
    # on CUDA, "auto" asks the GPU (compute capability >= 8 has bf16), not the CPU's flags
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_bf16("auto", "cuda") is False and resolve_bf16("on", "cuda") is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_bf16("auto", torch.device("cuda", 0)) is True
    from fairal.config import get_profile

    assert TrainConfig.of(get_profile("smoke", {"bf16": "off"}), 0).bf16 == "off"
    with pytest.raises(FairalError, match="setting bf16 must be auto, on or off"):
        get_profile("smoke", {"bf16": "maybe"})


def test_predict_proba_streams_per_case_maps() -> None:
    torch.manual_seed(0)
    model = UNet3D().eval()
    cases = [torch.randn(1, 8, 8, 8) for _ in range(3)] + [torch.randn(6, 10, 4), np.random.rand(8, 8, 8)]
    pulled = 0

    def source() -> Iterator[torch.Tensor]:
        nonlocal pulled
        for c in cases:
            pulled += 1
            yield c

    stream = predict_proba(model, source(), batch_size=2, bf16="off")
    first = next(stream)
    assert pulled <= 3  # lazily read: one batch of 2 plus at most one look-ahead
    rest = list(stream)
    out = [first, *rest]
    assert [o.shape for o in out] == [(8, 8, 8)] * 3 + [(6, 10, 4), (8, 8, 8)]
    assert all(o.dtype == np.float32 for o in out)
    with torch.no_grad():
        for o, c in zip(out, cases, strict=True):
            x = torch.as_tensor(c, dtype=torch.float32).reshape(1, 1, *o.shape)
            np.testing.assert_allclose(o, torch.sigmoid(model(x))[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_predict_proba_tensor_input_and_bf16_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = UNet3D().eval()
    x = torch.randn(3, 1, 8, 8, 8)
    fp32 = np.stack(list(predict_proba(model, x, batch_size=2, bf16="off", channels_last=False)))
    cl = np.stack(list(predict_proba(model, x, batch_size=2, bf16="off", channels_last=True)))
    bf16 = np.stack(list(predict_proba(model, x, batch_size=2, bf16="on")))
    assert fp32.shape == (3, 8, 8, 8)
    np.testing.assert_allclose(cl, fp32, atol=1e-5)
    np.testing.assert_allclose(bf16, fp32, atol=2e-2)
    assert np.all((fp32 > 0) & (fp32 < 1))
    with pytest.raises(FairalError):
        list(predict_proba(model, torch.randn(8, 8, 8)))
    with pytest.raises(FairalError):
        list(predict_proba(model, x, batch_size=0))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet3D(features=(4, 8)).to(memory_format=torch.channels_last_3d)
    meta = {"round": 3, "seed": 7, "dice": 0.8125, "ids": ["s1", "s2"], "nested": {"a": [1, 2.5, None]}}
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(model, path, meta)
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary file left behind
    other = UNet3D(features=(4, 8))
    assert load_checkpoint(path, other) == meta
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    model = UNet3D(features=(4, 8))
    missing = tmp_path / "nothing.pt"
    with pytest.raises(FairalError, match="not found.*nothing.pt"):
        load_checkpoint(missing, model)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(FairalError, match="corrupt.pt"):
        load_checkpoint(corrupt, model)
    good = tmp_path / "good.pt"
    save_checkpoint(model, good, {})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FairalError, match="truncated.pt"):
        load_checkpoint(truncated, model)
    with pytest.raises(FairalError, match="architecture"):
        load_checkpoint(good, UNet3D(features=(8, 16)))
    with pytest.raises(FairalError, match=r"meta\['bad'\]"):
        save_checkpoint(model, tmp_path / "x.pt", {"bad": object()})
    assert not (tmp_path / "x.pt").exists()


def test_restart_seeds_come_from_their_own_stream() -> None:
    from fairal.sampling import stream_seed

    assert train_mod.restart_seed(7, 0) == 7
    assert train_mod.restart_seed(7, 1) == stream_seed(7, "training-restart", 1)
    assert len({train_mod.restart_seed(s, k) for s in range(5) for k in range(3)}) == 15
    assert math.isclose(TrainConfig().lr, 1e-4)


def test_the_records_name_the_processor_and_its_kernels(monkeypatch):
    """A CPU run's device names the processor and torch's kernel instruction set (the same seed reproduces its
    records on one kind of CPU; another kind may round the training differently)."""
    from fairal.run import train as train_mod

    monkeypatch.setattr(train_mod, "cpu_model", lambda: "Some CPU 9000")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert train_mod.describe_device("cpu") == "cpu (Some CPU 9000; AVX2)"
    assert train_mod.cpu_model()  # this machine's, whatever it is


def test_device_setting_is_validated():
    from fairal.run.train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FairalError, match="device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device="tpu")

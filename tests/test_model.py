"""Tests of the 3D U-Net: shapes, padding, initialisation, parameter and FLOP counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairal.config import get_profile
from fairal.errors import FairalError
from fairal.run.model import UNet3D, build_unet, flops_per_voxel, save_checkpoint
from fairal.run.network import load_network


def test_paper_network_parameter_count() -> None:
    # Hand count for features (8, 16), 1 -> 1 channel, bias-free 3x3x3 convs, GroupNorm with weight + bias:
    #   encoder 0: 27*1*8 + 16 + 27*8*8 + 16           =  1976
    #   encoder 1: 27*8*16 + 32 + 27*16*16 + 32        = 10432
    #   up:        ConvTranspose3d 16->8, k=2: 8*16*8 + 8 = 1032
    #   decoder 0: 27*16*8 + 16 + 27*8*8 + 16          =  5216
    #   head:      8 + 1                               =     9
    #   total                                          = 18665
    model = UNet3D()
    assert sum(p.numel() for p in model.parameters()) == 18665


def test_group_norm_groups_are_capped_by_channels() -> None:
    model = UNet3D(features=(2, 8), norm_groups=4)
    groups = [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)]
    channels = [m.num_channels for m in model.modules() if isinstance(m, nn.GroupNorm)]
    # encoder 0 (2 channels -> 2 groups), encoder 1 (8 -> 4), decoder 0 (2 -> 2)
    assert channels == [2, 2, 8, 8, 2, 2]
    assert groups == [2, 2, 4, 4, 2, 2]


@pytest.mark.parametrize(
    ("features", "shape"),
    [((8, 16), (16, 16, 16)), ((8, 16), (15, 17, 9)), ((4, 8, 8), (13, 6, 11)), ((4,), (5, 7, 3))],
)
def test_output_shape_equals_input_shape(features: tuple[int, ...], shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = UNet3D(features=features).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1, *shape)
    assert torch.isfinite(y).all()


def test_padding_is_replicate_at_far_end_then_cropped() -> None:
    # For sizes that are not multiples of 2**(depth-1), forward must equal running the network on the input
    # replicate-padded at the far end of each axis and cropping the result back.
    torch.manual_seed(1)
    model = UNet3D(features=(4, 8, 8)).eval()  # multiple of 4
    x = torch.randn(1, 1, 9, 6, 7)
    padded = F.pad(x, (0, 1, 0, 2, 0, 3), mode="replicate")  # z 7->8, y 6->8, x 9->12
    assert padded.shape == (1, 1, 12, 8, 8)
    with torch.no_grad():
        expected = model(padded)[:, :, :9, :6, :7]
        actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_foreground_prior_sets_output_bias() -> None:
    model = UNet3D(foreground_prior=0.2)
    # log(0.2 / 0.8) = log(0.25) = -1.3862944
    assert model.head.bias.item() == pytest.approx(-1.3862944, abs=1e-6)
    with torch.no_grad():
        model.head.weight.zero_()
        proba = torch.sigmoid(model(torch.randn(1, 1, 8, 8, 8)))
    torch.testing.assert_close(proba, torch.full_like(proba, 0.2))


def test_multi_channel_input_and_output() -> None:
    model = UNet3D(in_channels=2, out_channels=3)
    with torch.no_grad():
        y = model(torch.randn(1, 2, 8, 8, 8))
    assert y.shape == (1, 3, 8, 8, 8)


def test_flops_per_voxel_paper_network_by_hand() -> None:
    # Multiply-adds per input voxel for features (8, 16):
    #   level 0 encoder: 27*1*8 + 27*8*8           =  216 + 1728 = 1944
    #   level 1 encoder: (27*8*16 + 27*16*16) / 8  = 10368 / 8   = 1296
    #   up (one tap per output voxel): 16*8        =  128
    #   level 0 decoder: 27*16*8 + 27*8*8          = 3456 + 1728 = 5184
    #   head: 8*1                                  =    8
    #   total 8560 MACs -> 17120 FLOPs
    assert flops_per_voxel(UNet3D()) == pytest.approx(17120.0)


def _hook_flops(model: UNet3D, x: torch.Tensor) -> float:
    """FLOPs of every conv layer counted from the actual tensors of a forward pass."""
    total = 0.0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        k = math.prod(module.kernel_size)
        if isinstance(module, nn.ConvTranspose3d):
            # every input element meets every kernel tap for every output channel
            total += 2 * inputs[0].numel() * module.out_channels * k
        else:
            total += 2 * output.numel() * module.in_channels * k

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total / x[0, 0].numel() / x.shape[0]


@pytest.mark.parametrize(("features", "in_ch"), [((8, 16), 1), ((4, 8, 16), 2), ((6,), 1)])
def test_flops_per_voxel_matches_a_measured_forward(features: tuple[int, ...], in_ch: int) -> None:
    model = UNet3D(in_channels=in_ch, features=features, norm_groups=2)
    x = torch.randn(1, in_ch, 8, 8, 8)
    assert flops_per_voxel(model) == pytest.approx(_hook_flops(model, x), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"features": ()},
        {"features": (8, 0)},
        {"features": (6, 16), "norm_groups": 4},  # 6 channels cannot form 4 groups
        {"norm_groups": 0},
        {"in_channels": 0},
        {"foreground_prior": 1.0},
        {"foreground_prior": 0.0},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(FairalError):
        UNet3D(**kwargs)


def test_wrong_input_rank_raises() -> None:
    with pytest.raises(FairalError, match=r"\(N, 1, X, Y, Z\)"):
        UNet3D()(torch.randn(1, 8, 8, 8))


def test_flops_per_voxel_rejects_other_modules() -> None:
    with pytest.raises(FairalError):
        flops_per_voxel(nn.Conv3d(1, 1, 3))  # type: ignore[arg-type]


def test_mc_dropout_samples_only_the_dropout_layers():
    from torch import nn

    from fairal.run.model import enable_mc_dropout
    from fairal.run.train import predict_mc_dropout, predict_proba

    torch.manual_seed(0)
    plain, dropped = UNet3D(), UNet3D(dropout=0.3)
    assert set(plain.state_dict()) == set(dropped.state_dict())  # checkpoints fit either
    assert not any(isinstance(m, nn.Dropout3d) for m in plain.modules())
    assert enable_mc_dropout(dropped) == 2  # after the deepest encoder block and the decoder block
    assert all(not m.training for m in dropped.modules() if isinstance(m, nn.GroupNorm | nn.Conv3d))
    assert all(m.training for m in dropped.modules() if isinstance(m, nn.Dropout3d))
    x = torch.rand(3, 1, 8, 10, 6)
    a = list(predict_mc_dropout(dropped, x, samples=4, seed=1, bf16="off"))
    b = list(predict_mc_dropout(dropped, x, samples=4, seed=1, bf16="off"))
    c = list(predict_mc_dropout(dropped, x, samples=4, seed=2, bf16="off"))
    assert len(a) == 3 and a[0].shape == (4, 8, 10, 6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))  # same seed, same draws
    assert not np.array_equal(a[0], c[0])
    assert not np.allclose(a[0][0], a[0][1])  # the samples differ from each other
    assert not dropped.training and not any(m.training for m in dropped.modules())  # left in eval mode
    d1, d2 = list(predict_proba(dropped, x, bf16="off")), list(predict_proba(dropped, x, bf16="off"))
    assert all(np.array_equal(u, v) for u, v in zip(d1, d2, strict=True))  # evaluation is deterministic
    with pytest.raises(FairalError, match="dropout layers"):
        list(predict_mc_dropout(plain, x, samples=4, seed=1))
    with pytest.raises(FairalError, match="dropout must lie"):
        UNet3D(dropout=1.0)


def test_build_unet_is_the_paper_network_and_load_network_reads_its_checkpoint(tmp_path) -> None:
    model = build_unet((8, 16), foreground_prior=0.2)
    assert isinstance(model, UNet3D) and model.features == (8, 16) and model.dropout == 0.0
    assert sum(p.numel() for p in model.parameters()) == 18665  # the hand count above
    assert model.head.bias.item() == pytest.approx(-1.3862944, abs=1e-6)  # log(0.2 / 0.8)
    path = tmp_path / "model.pt"
    save_checkpoint(model, path, {"round": 2})
    loaded, meta = load_network(path, get_profile("smoke", {"features": "8,16"}), dropout=0.2)
    assert meta == {"round": 2} and loaded.dropout == 0.2
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(FairalError, match="model.pt does not match the model's architecture") as err:
        load_network(path, get_profile("smoke", {"features": "4,8"}))
    assert "\n" not in str(err.value) and "size mismatch for" in str(err.value) and "more)" in str(err.value)
    save_checkpoint(model, path, {"features": [8, 16]})  # as a query's model says what it was trained with
    with pytest.raises(FairalError, match=r"trained with features \[8, 16\]"):
        load_network(path, get_profile("smoke", {"features": "4,8"}))


"""The paper's 3D U-Net: GroupNorm, 3x3x3 convolutions and ReLU, two levels with 8 and 16 feature maps, its builder
(:func:`build_unet`, the built-in entry of :mod:`fairal.run.network`'s table) and the checkpoints of any network.

The network returns LOGITS. The paper's output layer is a sigmoid; here the sigmoid is left to the caller
(``torch.sigmoid(logits)`` is the paper's foreground probability) so that training can use the numerically
safe ``BCEWithLogitsLoss`` instead of a sigmoid followed by a binary cross-entropy.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fairal.errors import FairalError
from fairal.io import write_torch
from fairal.limits import check_network

__all__ = ["UNet3D", "build_unet", "enable_mc_dropout", "flops_per_voxel", "save_checkpoint", "read_checkpoint",
           "load_checkpoint", "load_weights"]


def _conv_block(in_ch: int, out_ch: int, norm_groups: int, dropout: float = 0.0) -> nn.Sequential:
    """Two [Conv3d 3x3x3 (padding 1) -> GroupNorm -> ReLU] blocks, then channel dropout if ``dropout > 0``.

    The convolutions carry no bias: GroupNorm subtracts the per-group mean straight after, which would
    cancel it. The dropout layer comes last and has no weights, so the parameter names (and checkpoints) are the
    same with or without it.
    """
    groups = min(norm_groups, out_ch)
    layers = [
        nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout3d(dropout))
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """A U-Net for 3D volumes with ``len(features)`` resolution levels.

    Level ``l`` works at ``1/2**l`` of the input resolution with ``features[l]`` channels. The encoder runs
    two conv blocks per level and a 2x max-pool between levels; the decoder upsamples with a
    ``ConvTranspose3d(kernel=2, stride=2)``, concatenates the encoder's skip connection and runs two conv
    blocks.
    A final 1x1x1 convolution gives ``out_channels`` logits; ``sigmoid(logits)`` is the paper's output.

    Inputs of any spatial size are accepted: ``forward`` pads each spatial axis at its far end (replicating
    the edge voxels) up to a multiple of ``2**(depth-1)`` and crops the output back, so the output has the
    input's spatial shape.

    Args:
        in_channels: channels of the input volume.
        out_channels: channels of the output logits.
        features: channels per level; its length is the depth (the paper uses ``(8, 16)``).
        norm_groups: GroupNorm groups, capped at the channel count of each layer (``min(norm_groups, ch)``).
        foreground_prior: if given, a probability ``p`` in (0, 1); the output bias starts at
            ``log(p / (1 - p))`` so that the initial prediction is ``p`` everywhere. A small positive prior
            keeps the output layer's gradient alive at the start and guards against the collapse in which
            every ReLU feeding the output dies and the network never predicts foreground.
        dropout: channel dropout (``Dropout3d``) after every conv block but the first, for MC-dropout BALD;
            0 (the paper's network) adds no layer. GroupNorm has no running statistics, so switching only the
            dropout layers to training mode (:func:`enable_mc_dropout`) samples the network without changing it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (8, 16),
        norm_groups: int = 4,
        foreground_prior: float | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = tuple(features)
        if len(features) < 1:
            raise FairalError(f"features must list at least one channel count, got {features!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FairalError(f"{name} must be a positive integer, got {value!r}")
        if any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features):
            raise FairalError(f"features must be positive integers, got {features!r}")
        check_network(features)
        if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 1:
            raise FairalError(f"norm_groups must be a positive integer, got {norm_groups!r}")
        for ch in features:
            groups = min(norm_groups, ch)
            if ch % groups != 0:
                raise FairalError(
                    f"GroupNorm needs the channel count to be divisible by the group count: "
                    f"{ch} channels with {groups} groups (norm_groups={norm_groups}, features={features})"
                )
        if foreground_prior is not None and not (0.0 < float(foreground_prior) < 1.0):
            raise FairalError(f"foreground_prior must lie strictly between 0 and 1, got {foreground_prior!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise FairalError(f"dropout must lie in [0, 1), got {dropout!r}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.norm_groups = norm_groups
        self.foreground_prior = foreground_prior
        self.depth = len(features)
        self.dropout = float(dropout)

        self.encoders = nn.ModuleList()
        prev = in_channels
        for level, ch in enumerate(features):
            self.encoders.append(_conv_block(prev, ch, norm_groups, self.dropout if level > 0 else 0.0))
            prev = ch
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        # ups[i] / decoders[i] bring level i+1 back to level i.
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(features[i + 1], features[i], kernel_size=2, stride=2)
            for i in range(self.depth - 1)
        )
        self.decoders = nn.ModuleList(
            _conv_block(2 * features[i], features[i], norm_groups, self.dropout) for i in range(self.depth - 1)
        )
        self.head = nn.Conv3d(features[0], out_channels, kernel_size=1)
        if foreground_prior is not None:
            p = float(foreground_prior)
            with torch.no_grad():
                self.head.bias.fill_(math.log(p / (1.0 - p)))

    @property
    def size_multiple(self) -> int:
        """Every spatial size is padded to a multiple of this inside ``forward``: ``2**(depth-1)``."""
        return 2 ** (self.depth - 1)

    def feature_layers(self) -> list[nn.Module]:
        """The layers whose channel means describe a case for the group classifier
        (:func:`fairal.run.group_model.case_features`): the deepest encoder block and the last decoder block."""
        return [self.encoders[-1]] + ([self.decoders[0]] if len(self.decoders) else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, X, Y, Z)`` to logits ``(N, out_channels, X, Y, Z)``."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise FairalError(
                f"UNet3D expects a 5-D input (N, {self.in_channels}, X, Y, Z), got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        m = self.size_multiple
        pads = [(-s) % m for s in spatial]
        if any(pads):
            # F.pad lists the last axis first: (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi). Padding only at the far
            # end keeps voxel (0, 0, 0) in place, so the crop below is a plain slice.
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")

        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        for i in reversed(range(self.depth - 1)):
            x = self.ups[i](x)
            x = self.decoders[i](torch.cat([x, skips[i]], dim=1))
        x = self.head(x)

        if any(pads):
            x = x[:, :, : spatial[0], : spatial[1], : spatial[2]]
        return x


def build_unet(features: Sequence[int] = (8, 16), *, foreground_prior: float | None = None,
               dropout: float = 0.0) -> UNet3D:
    """The paper's U-Net: one input channel (the T1 image), one output channel (the structure's logits), ``features``
    channels per level; fairal's network ``unet`` (every part of fairal builds its network through
    :mod:`fairal.run.network`). Arguments as :class:`UNet3D`'s; its weights come from the torch generator's state."""
    return UNet3D(features=features, foreground_prior=foreground_prior, dropout=dropout)


def enable_mc_dropout(model: nn.Module) -> int:
    """Evaluation mode for everything but the dropout layers, which sample (Monte-Carlo dropout). Returns the
    number of dropout layers switched on (0: the model cannot sample)."""
    model.eval()
    n = 0
    for layer in model.modules():
        if isinstance(layer, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d | nn.AlphaDropout):
            layer.train()
            n += 1
    return n


def flops_per_voxel(model: UNet3D) -> float:
    """Floating-point operations of the convolutions of one forward pass, per input voxel.

    A multiply-add counts as 2 FLOPs. A ``Conv3d`` with kernel ``k`` costs ``c_in * c_out * prod(k)``
    multiply-adds per output voxel; a ``ConvTranspose3d`` with kernel = stride = 2 writes each output voxel
    from exactly one kernel tap, so it costs ``c_in * c_out`` per output voxel. A layer at level ``l`` works
    on ``1/8**l`` of the input's voxels. Normalisation, ReLU, pooling and bias additions are left out (they
    are a few FLOPs per voxel against thousands). Padding to a multiple of ``2**(depth-1)`` is ignored, so
    this is exact for inputs whose sizes already are multiples.

    For the paper's network (``features=(8, 16)``, one input and one output channel) this is 17120.
    """
    if not isinstance(model, UNet3D):
        raise FairalError(f"flops_per_voxel expects a UNet3D, got {type(model).__name__}")

    def conv_macs(block: nn.Module) -> int:
        total = 0
        for layer in block.modules():
            if isinstance(layer, nn.Conv3d):
                total += layer.in_channels // layer.groups * layer.out_channels * math.prod(layer.kernel_size)
        return total

    macs = 0.0
    for level, encoder in enumerate(model.encoders):
        macs += conv_macs(encoder) / 8**level
    for level, (up, decoder) in enumerate(zip(model.ups, model.decoders, strict=True)):
        # ConvTranspose3d's output voxels live at `level`; with kernel == stride each receives one tap.
        taps = math.prod(up.kernel_size) / math.prod(up.stride)
        macs += (up.in_channels * up.out_channels * taps + conv_macs(decoder)) / 8**level
    macs += conv_macs(model.head)
    return 2.0 * macs


_ALLOWED_META = (str, int, float, bool, type(None))


def _check_meta(value: object, where: str = "meta") -> None:
    # torch.load(weights_only=True) accepts only plain containers and scalars; refuse anything else on save
    # so that a checkpoint that cannot be read back is never written.
    if isinstance(value, _ALLOWED_META):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise FairalError(f"{where} keys must be str or int, got {type(k).__name__} key {k!r}")
            _check_meta(v, f"{where}[{k!r}]")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]")
        return
    raise FairalError(
        f"{where} must hold only str, int, float, bool, None, lists, tuples and dicts, "
        f"got {type(value).__name__}"
    )


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict) -> None:
    """Write ``{"state_dict": model.state_dict(), "meta": meta}`` to ``path`` atomically.

    The file is written beside ``path``, flushed to disk and moved over it (:func:`fairal.io.atomic_write`), so a
    crash never leaves a half-written checkpoint. Missing parent folders are created.
    """
    if not isinstance(meta, dict):
        raise FairalError(f"meta must be a dict, got {type(meta).__name__}")
    _check_meta(meta)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_torch(target, {"state_dict": state, "meta": meta})


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The ``{"state_dict", "meta"}`` that :func:`save_checkpoint` wrote to ``path``, read with
    ``torch.load(weights_only=True)``, which never runs code from the file.

    Raises:
        FairalError: naming the file if it is missing, unreadable or not a fairal checkpoint.
    """
    source = Path(path)
    if source.is_dir():
        raise FairalError(f"checkpoint {source} is a folder, not a model file (e.g. {source / 'model.pt'})")
    if not source.is_file():
        raise FairalError(f"checkpoint file not found: {source}")
    with open(source, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch saves a zip archive (a pickle before torch 1.6)
        raise FairalError(f"checkpoint file {source} is corrupt or not a torch checkpoint (the file is neither a zip "
                          "archive nor a pickle)")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message advises loading it with weights_only=False: never
        what = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise FairalError(f"checkpoint file {source} holds Python objects, not only weights ("
                          f"{'it names ' + what.group(1) if what else 'a pickle'}): fairal never loads such a file"
                          ) from None
    except Exception as exc:  # torch raises several types (RuntimeError, EOFError, a bare KeyError of a byte, ...)
        why = " ".join(str(exc).split()) if not isinstance(exc, KeyError) else "damaged contents"
        raise FairalError(f"checkpoint file {source} is corrupt or not a torch checkpoint ({why})") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
        raise FairalError(
            f"checkpoint file {source} is not a fairal checkpoint: "
            "expected a dict with 'state_dict' and 'meta'"
        )
    return payload


def load_weights(payload: dict, model: nn.Module, path: str | os.PathLike) -> dict:
    """Load the weights of a checkpoint read by :func:`read_checkpoint` from ``path`` into ``model``; its ``meta``.
    A model of another architecture is refused naming the file."""
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:  # torch lists every mismatched tensor: the first is named, the rest counted
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        meta = payload["meta"] if isinstance(payload["meta"], dict) else {}
        hint = (f"; it was trained with features {meta['features']} (a --set features or a profile of other "
                "features differs)" if "features" in meta else "")
        raise FairalError(f"checkpoint file {Path(path)} does not match the model's architecture: {first}{more}"
                          f"{hint}") from None
    return payload["meta"]


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict:
    """Load the weights saved by :func:`save_checkpoint` into ``model`` and return the saved ``meta``
    (:func:`read_checkpoint`, :func:`load_weights`)."""
    return load_weights(read_checkpoint(path), model, path)

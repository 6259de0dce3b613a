"""The ``fair-influence`` base score: how much one more labeled case is expected to shrink the group gap.

An adaptation of Pang et al. (NeurIPS 2024, "Fairness without harm: an influence-guided active sampling
approach") to segmentation, first order and on the network's last layer only:

- θ = the weights and bias of the last layer, a 1x1x1 convolution ``z = w·f + b`` of the penultimate features f;
- labeling a pool case x and taking a gradient step on it moves θ by ``-η ∇ℓ(x)``, with ℓ the mean binary
  cross-entropy of the network's logits against its own prediction ŷ(x) = (p > 0.5) (the label is not known yet);
- the labeled set's differentiable gap ``Δ̃ = Σ_g |mean_i sDSC_i - mean_{i in g} sDSC_i|`` (Eq. 3 of the paper on
  the soft Dice ``sDSC = (2 Σ p y + ε) / (Σ p + Σ y + ε)``; groups of the labeled cases only) then changes by
  ``≈ -η ∇ℓ(x) · ∇Δ̃``;
- so ``score(x) = ∇ℓ(x) · ∇Δ̃``: higher = more expected reduction of the gap.

For the last layer the pseudo-label gradient is closed-form: ``∂ℓ/∂w_c = mean_v (σ(z_v) - ŷ_v) f_{c,v}``,
``∂ℓ/∂b = mean_v (σ(z_v) - ŷ_v)``. Cost per round: one forward pass of the pool and of the labeled set (the
features), one backward pass through the last layer on the labeled set; no per-case backward pass.
When the labeled cases are of one group, Δ̃ is 0 and so is every score (the ranking falls back on case id).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn

from fairal.errors import FairalError

_EPS = 1e-6


def last_layer(model: nn.Module) -> nn.Conv3d:
    """The network's last 1x1x1 convolution (fairal's U-Net: ``head``), the θ of the influence."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d) and tuple(m.kernel_size) == (1, 1, 1)]
    if not convs or convs[-1].out_channels != 1 or convs[-1].bias is None:
        raise FairalError("fair-influence needs a network whose last layer is a 1x1x1 convolution to one "
                          "foreground channel, with a bias (fairal's U-Net has one: head)")
    return convs[-1]


def features(model: nn.Module, images: torch.Tensor, batch_size: int = 8):
    """Yield each image's penultimate features (C, X, Y, Z): the input of :func:`last_layer`, cropped to the
    image's grid (a network may pad its input)."""
    head = last_layer(model)
    device = next(model.parameters()).device
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(device).float()
                seen.clear()
                model(batch)
                f = seen[-1].float()[..., :batch.shape[2], :batch.shape[3], :batch.shape[4]]
                yield from f
    finally:
        hook.remove()
        model.train(was_training)


def soft_dice(proba: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per case (first axis) ``(2 Σ p y + ε) / (Σ p + Σ y + ε)``, differentiable in p."""
    p, y = proba.flatten(1), label.flatten(1).to(proba.dtype)
    return (2 * (p * y).sum(1) + _EPS) / (p.sum(1) + y.sum(1) + _EPS)


def soft_gap(dice: torch.Tensor, groups: Sequence[Hashable]) -> torch.Tensor:
    """Eq. 3 on soft Dice: ``Σ_g |mean(d) - mean_g(d)|`` over the groups of the cases (None: no group)."""
    overall = dice.mean()
    total = dice.new_zeros(())
    for g in dict.fromkeys(x for x in groups if x is not None):
        idx = torch.tensor([i for i, x in enumerate(groups) if x == g], device=dice.device)
        total = total + (overall - dice[idx].mean()).abs()
    return total


def gap_gradient(feats: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], groups: Sequence[Hashable],
                 weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``∇Δ̃`` with respect to the last layer: a vector ``(∂Δ̃/∂w_1, ..., ∂Δ̃/∂w_C, ∂Δ̃/∂b)``."""
    w = weight.detach().flatten().double().requires_grad_(True)
    b = bias.detach().flatten().double().requires_grad_(True)
    probas = [torch.sigmoid(torch.einsum("c...,c->...", f.double(), w) + b) for f in feats]
    dice = torch.stack([soft_dice(p[None], y[None])[0] for p, y in zip(probas, labels, strict=True)])
    gw, gb = torch.autograd.grad(soft_gap(dice, groups), (w, b), allow_unused=False)
    return torch.cat([gw, gb])


def pseudo_label_gradient(feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``∇ℓ(x)`` of the mean BCE against the network's own prediction, with respect to the last layer."""
    w, b = weight.detach().flatten().double(), bias.detach().flatten().double()
    f = feat.double()
    z = torch.einsum("c...,c->...", f, w) + b
    residual = torch.sigmoid(z) - (z > 0).double()  # p - ŷ, ŷ = (p > 0.5)
    return torch.cat([(f * residual).flatten(1).mean(1), residual.mean().reshape(1)])


def fair_influence(model: nn.Module, candidates: torch.Tensor, labeled: torch.Tensor, labels: torch.Tensor,
                   groups: Sequence[Hashable], batch_size: int = 8) -> list[float]:
    """Each candidate's ``∇ℓ(x) · ∇Δ̃`` (module docstring). ``labeled``/``labels``: (N, 1, X, Y, Z) images and
    binary labels of the labeled cases, ``groups`` theirs (None: unknown)."""
    if len(labeled) != len(groups) or len(labeled) != len(labels):
        raise FairalError(f"fair-influence: {len(labeled)} labeled images, {len(labels)} labels, {len(groups)} "
                          "groups")
    head = last_layer(model)
    lab_feats = list(features(model, labeled, batch_size))
    grad_gap = gap_gradient(lab_feats, [y[0].to(f.device) for y, f in zip(labels, lab_feats, strict=True)], groups,
                            head.weight, head.bias)
    return [float(pseudo_label_gradient(f, head.weight, head.bias) @ grad_gap)
            for f in features(model, candidates, batch_size)]

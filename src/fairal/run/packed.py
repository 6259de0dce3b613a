"""Lockstep training of many U-Nets as one network, for a GPU.

The runs of a grid that share a dataset and seed follow the same schedule: at each round they train the same number
of steps on labeled sets of the same size. :func:`train_packed` trains such a group at once: the members' weights are
stacked and the network is vectorised over them (``torch.func.vmap``: on a GPU one launch of batched convolutions
serves every member), each member with its own data, batches, seed and Adam state. Adam is element-wise, so one
Adam over the stacked weights is N independent Adams; the loss is the sum of the members' own mean losses, so each
member's gradient is its own. A member that collapses is retrained alone by :func:`fairal.run.train.train_model` (with
its restarts). The data and the batch schedule stay on the device and no step waits for the host (losses are read
once at the end). :func:`fairal.run.loop.run_lockstep` drives the rounds of such a group of runs.

On a CPU packing is slower than training the members one after another (0.5-0.96x,
``benchmarks/bench_gpu.py --device cpu``): the grid packs only runs that train on a GPU (``--pack auto``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fairal.errors import FairalError
from fairal.run.train import (
    TrainConfig,
    TrainResult,
    batch_schedule,
    bf16_autocast,
    check_training_data,
    collapse_check,
    fresh_model,
    resolve_bf16,
    resolve_device,
    train_model,
)


@dataclass
class Member:
    """One run's training in a packed group: its cases, its settings (seed, steps) and its model factory."""

    images: torch.Tensor
    labels: torch.Tensor
    config: TrainConfig
    factory: Callable[[], nn.Module]


def lockstep_key(member: Member) -> tuple:
    """What members must share to train as one group: the number of steps, the volume shape, and the learning rate,
    batch size, device and precision."""
    c = member.config
    return (c.total_steps(len(member.images)), tuple(member.images.shape[1:]),
            (c.lr, c.batch_size, c.device, c.bf16))


def _check_group(members: list[Member]) -> None:
    if not members:
        raise FairalError("a packed group needs at least one member")
    first = members[0]
    steps0, shape0, settings0 = lockstep_key(first)
    for m in members:
        check_training_data(m.images, m.labels)
        steps, shape, settings = lockstep_key(m)
        if settings != settings0:
            raise FairalError("packed members must share lr, batch size, device and bf16")
        if steps != steps0:
            raise FairalError("packed members must train the same number of steps (lockstep)")
        if shape != shape0:
            raise FairalError(f"packed members must share the volume shape, got {shape} and {shape0}")


def train_packed(members: list[Member], compile: bool = False) -> list[TrainResult]:
    """Train every member as :func:`fairal.run.train.train_model` would (same initial weights from its seed, same
    batches, Adam, BCE with logits, bf16 autocast as its ``config.bf16`` resolves on the device, collapse guard),
    all at once. ``compile``: fuse the vectorised network with ``torch.compile`` (measured by
    ``benchmarks/bench_gpu.py --compile``; compiling takes tens of seconds, so it pays only for long trainings)."""
    _check_group(members)
    start = time.perf_counter()
    device = resolve_device(members[0].config.device)
    bf16 = resolve_bf16(members[0].config.bf16, device)
    models = [fresh_model(m.factory, m.config.seed).to(device).train() for m in members]
    params, history = _train_stacked(members, models, device, bf16, compile)
    results = []
    for k, (m, model) in enumerate(zip(members, models, strict=True)):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name][k])
        model.eval()
        dice, collapsed = collapse_check(model, m.images, m.labels, m.config, bf16)
        if collapsed:  # the single path, restarts and all: the same result as training this member alone
            results.append(train_model(m.images, m.labels, m.config, m.factory))
            continue
        results.append(TrainResult(model=model.to(memory_format=torch.contiguous_format), losses=history[:, k].tolist(),
                                   train_dice=dice, restarts=0, seconds=time.perf_counter() - start,
                                   seed=m.config.seed, collapsed=False, attempt_dice=[dice]))
    return results


def _train_stacked(members: list[Member], models: list[nn.Module], device: torch.device, bf16: bool,
                   compile: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The lockstep steps: the members' weights stacked, one vectorised network, one Adam. Returns the trained
    stacked weights (name -> (members, ...)) and the losses (steps, members)."""
    from torch.func import functional_call, stack_module_state, vmap

    cfg0 = members[0].config
    steps = cfg0.total_steps(len(members[0].images))
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, x):
        return functional_call(template, (p, b), (x,))

    batched = vmap(forward)
    if compile:
        batched = torch.compile(batched)
    optimizer = torch.optim.Adam(params.values(), lr=cfg0.lr)
    # Data and every step's batch indices are resident on the device for the whole run; no step reads from or
    # waits for the host (the losses are read once, at the end).
    images = [m.images.to(device, torch.float32) for m in members]
    labels = [m.labels.to(device) for m in members]  # in their own dtype (uint8), cast per batch
    schedules = [batch_schedule(len(m.images), m.config.batch_size, steps, m.config.seed).to(device)
                 for m in members]
    losses = []
    for k in range(steps):
        x = torch.stack([im[s[k]] for im, s in zip(images, schedules, strict=True)])
        y = torch.stack([lab[s[k]] for lab, s in zip(labels, schedules, strict=True)]).float()
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(bf16, device):
            logits = batched(params, buffers, x)
        per_member = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none").flatten(1).mean(1)
        per_member.sum().backward()
        optimizer.step()
        losses.append(per_member.detach())
    return params, torch.stack(losses).float().cpu() if losses else torch.zeros(0, len(members))

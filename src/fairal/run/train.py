"""Training and prediction for the U-Net (its checkpoints are :mod:`fairal.run.model`'s, named here too).

Training minimises the binary cross-entropy of ``sigmoid(logits)`` against the labels, computed by
``BCEWithLogitsLoss`` (the same value as the paper's sigmoid + BCE, without its overflow for large logits),
with Adam. Runs are seeded: on the CPU the same seed and inputs give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairal.errors import FairalError
from fairal.limits import MAX_EPOCHS, MAX_STEPS, refuse_above
from fairal.metrics import dice_from_proba
from fairal.run.model import UNet3D, enable_mc_dropout, load_checkpoint, save_checkpoint
from fairal.sampling import stream_seed

__all__ = [
    "TrainConfig",
    "TrainResult",
    "bf16_native",
    "resolve_bf16",
    "bf16_autocast",
    "check_training_data",
    "fresh_model",
    "collapse_check",
    "train_step",
    "train_model",
    "predict_proba",
    "predict_mc_dropout",
    "save_checkpoint",
    "load_checkpoint",
]

# The progress bar shows the loss of every PROGRESS_EVERY-th step.
PROGRESS_EVERY = 25


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        lr: Adam learning rate (the paper's 1e-4).
        steps: optimiser steps; ignored when ``epochs`` is set.
        epochs: if set, the step budget is ``ceil(epochs * n / batch_size)`` for ``n`` training cases.
        batch_size: cases per step (capped at ``n``).
        seed: seeds the weights and the batch order.
        channels_last: run convolutions in ``torch.channels_last_3d`` (about 2x faster training on CPU).
        bf16: ``"auto"`` uses bfloat16 autocast on a CUDA GPU that supports it and on a CPU with native bf16
            matrix units (AMX, see :func:`bf16_native`); ``"on"`` / ``"off"`` force it. The loss is float32.
        min_train_dice: the collapse guard retrains when the final model's mean training-set Dice is below.
        max_restarts: how many times the collapse guard may retrain from scratch.
        num_threads: torch intra-op threads during the call (restored afterwards); ``None`` leaves them alone.
    """

    lr: float = 1e-4
    steps: int = 300
    epochs: int | None = None
    batch_size: int = 4
    seed: int = 0
    channels_last: bool = True
    bf16: str = "auto"
    min_train_dice: float = 0.05
    max_restarts: int = 2
    num_threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr >= 0):
            raise FairalError(f"lr must be a finite number >= 0, got {self.lr!r}")
        if not is_int(self.steps) or self.steps < 0:
            raise FairalError(f"steps must be an integer >= 0, got {self.steps!r}")
        if self.epochs is not None and (not is_int(self.epochs) or self.epochs < 0):
            raise FairalError(f"epochs must be None or an integer >= 0, got {self.epochs!r}")
        refuse_above("steps", self.steps, MAX_STEPS, "MAX_STEPS")
        if self.epochs is not None:
            refuse_above("epochs", self.epochs, MAX_EPOCHS, "MAX_EPOCHS")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise FairalError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise FairalError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.bf16 not in ("auto", "on", "off"):
            raise FairalError(f"bf16 must be 'auto', 'on' or 'off', got {self.bf16!r}")
        if not (isinstance(self.min_train_dice, int | float) and 0.0 <= self.min_train_dice <= 1.0):
            raise FairalError(f"min_train_dice must lie in [0, 1], got {self.min_train_dice!r}")
        if not is_int(self.max_restarts) or self.max_restarts < 0:
            raise FairalError(f"max_restarts must be an integer >= 0, got {self.max_restarts!r}")
        resolve_device(self.device)
        if self.num_threads is not None and (not is_int(self.num_threads) or self.num_threads < 1):
            raise FairalError(f"num_threads must be None or an integer >= 1, got {self.num_threads!r}")

    def total_steps(self, n: int) -> int:
        """The step budget for ``n`` training cases: ``ceil(epochs * n / batch_size)`` or ``steps``."""
        if self.epochs is None:
            return self.steps
        steps = math.ceil(self.epochs * n / min(self.batch_size, n))
        refuse_above(f"epochs {self.epochs} of {n} cases in batches of {min(self.batch_size, n)}: the steps", steps,
                     MAX_STEPS, "MAX_STEPS")
        return steps


    @classmethod
    def of(cls, profile, seed: int, rnd: int | None = None, num_threads: int | None = None) -> TrainConfig:
        """The training settings of a profile (:class:`fairal.config.Profile`) for a baseline (``rnd`` None) or
        for active-learning round ``rnd``: the first round trains ``first_round_steps`` (if set), a warm-started
        round ``round_steps``, any other ``steps``/``epochs``."""
        steps, epochs = profile.steps, profile.epochs
        if rnd is not None and rnd == 0 and profile.first_round_steps is not None:
            steps, epochs = profile.first_round_steps, None
        elif rnd is not None and rnd > 0 and profile.warm_start:
            steps, epochs = profile.round_steps, None
        return cls(lr=profile.lr, steps=steps, epochs=epochs, batch_size=profile.batch_size, seed=seed,
                   num_threads=num_threads, device=profile.device, bf16=profile.bf16)


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    Attributes:
        model: the trained network, in eval mode and default (contiguous) memory format.
        losses: training loss of every optimiser step of the returned attempt.
        train_dice: mean Dice of ``model`` over the training cases (threshold 0.5 on ``sigmoid(logits)``).
        restarts: how many times the collapse guard retrained from scratch.
        seconds: wall time of the whole call, restarts included.
        seed: the seed of the returned attempt (after ``k`` restarts, :func:`restart_seed` ``(config.seed, k)``).
        collapsed: True if even the returned attempt failed the collapse guard (all restarts used up).
        attempt_dice: the training-set Dice of every attempt, in order.
    """

    model: nn.Module
    losses: list[float]
    train_dice: float
    restarts: int
    seconds: float
    seed: int = 0
    collapsed: bool = False
    attempt_dice: list[float] = field(default_factory=list)


def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where that file does not exist, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively AND faster than float32.

    Requires oneDNN with bf16 support (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) and the AMX
    ``amx_bf16`` flag in ``/proc/cpuinfo``. The ``avx512_bf16`` flag alone is deliberately not enough: on such
    a CPU (a Xeon without AMX) bf16 autocast was measured to make this network's training ~1.7x SLOWER, and a
    2048^2 bf16 matmul ran at half the fp32 rate.
    """
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    return "amx_bf16" in _cpu_flags()


def resolve_bf16(setting: str | bool, device: torch.device | str = "cpu") -> bool:
    """Turn ``"auto"``/``"on"``/``"off"`` (or a bool) into whether to autocast to bfloat16 on ``device``:
    ``"auto"`` is on for a CUDA GPU with bf16 support (compute capability >= 8: A100, H100, H200) and for a CPU with
    AMX (:func:`bf16_native`)."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        if torch.device(device).type == "cuda":
            return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return bf16_native()
    if setting in ("on", "off"):
        return setting == "on"
    raise FairalError(f"bf16 must be 'auto', 'on' or 'off', got {setting!r}")


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU that this process may use if there is one (Ray assigns it), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise FairalError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type not in ("cpu", "cuda"):
        raise FairalError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def check_device(name: str) -> None:
    """Refuse, before anything is written, a device that this process does not have (``cuda`` on a CPU-only
    torch, ``cuda:3`` on a machine with one GPU). Called where the training runs: a Ray driver need not have the
    GPUs of its workers."""
    device = resolve_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FairalError(f"setting device={name}: this process sees no CUDA GPU (torch {torch.__version__}"
                          f"{'' if torch.version.cuda else ', a build without CUDA'}); use device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FairalError(f"setting device={name}: this process sees {torch.cuda.device_count()} CUDA GPU(s), "
                          "numbered from 0")


def describe_device(name: str) -> str:
    """The device that ``name`` resolves to, in words for the records: ``cpu (AMD EPYC; AVX512)`` (the processor
    and the instruction set of torch's CPU kernels: another kind may round the training differently) or
    ``cuda:0 (NVIDIA H200)``."""
    device = resolve_device(name)
    if device.type != "cuda":
        return f"cpu ({cpu_model()}; {torch.backends.cpu.get_cpu_capability()})"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def cpu_model() -> str:
    """The processor's model name (Linux's /proc/cpuinfo, else the platform's word for it)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and (model := line.split(":", 1)[1].strip()):
                return model
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def bf16_autocast(bf16: bool, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device``'s type (CPU or CUDA) when ``bf16``, else nothing."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels_last: bool = True,
    bf16: bool = False,
) -> float:
    """One optimiser step on a batch; returns the loss.

    ``loss = mean_v BCE(sigmoid(z_v), y_v) = mean_v [softplus(z_v) - y_v z_v]`` over all voxels ``v``,
    computed in float32 even under bf16 autocast (the logits are cast up first) so the loss keeps its
    precision.
    The model must already be in the memory format that ``channels_last`` asks for.
    """
    return float(_step(model, optimizer, images, labels, _memory_format(channels_last), bf16))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
          fmt: torch.memory_format, bf16: bool) -> torch.Tensor:
    """:func:`train_step` without reading the loss back: on a GPU the host never waits for the step."""
    device = _model_device(model)
    x = images.to(device=device, dtype=torch.float32, memory_format=fmt)
    y = labels.to(device=device, dtype=torch.float32, memory_format=fmt)
    optimizer.zero_grad(set_to_none=True)
    with bf16_autocast(bf16, device):
        logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def check_training_data(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse training data that is not (N >= 1, C, X, Y, Z) finite floating-point images with binary labels of the
    same cases and spatial shape."""
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise FairalError(
            "images and labels must be torch tensors, "
            f"got {type(images).__name__} and {type(labels).__name__}"
        )
    if images.dim() != 5:
        raise FairalError(f"images must have shape (N, C, X, Y, Z), got {tuple(images.shape)}")
    if labels.dim() != 5 or labels.shape[0] != images.shape[0] or labels.shape[2:] != images.shape[2:]:
        raise FairalError(
            f"labels must have shape (N, C_out, X, Y, Z) matching images {tuple(images.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise FairalError("train_model needs at least one training case, got N = 0")
    if not images.is_floating_point():
        raise FairalError(f"images must be a floating-point tensor, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise FairalError("images contain NaN or infinite values")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise FairalError("labels must be binary: every voxel 0 or 1")


def batch_schedule(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """Every step's batch of case indices, a (steps, min(batch_size, n)) tensor, drawn as :func:`_batch_indices`
    draws them from a generator seeded with ``seed``. Made once before training so that it can live on the device
    (indexing device-resident data with it never copies from the host)."""
    b = min(batch_size, n)
    rows = list(_batch_indices(n, batch_size, steps, torch.Generator().manual_seed(seed)))
    return torch.stack(rows) if rows else torch.zeros((0, b), dtype=torch.long)


def _batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Indices of ``steps`` batches of ``min(batch_size, n)`` cases.

    The cases are read from a stream of random permutations of ``0..n-1``, so each pass over the data draws
    without replacement and every case is seen equally often. A batch that straddles two passes can hold a
    case twice; that is rare and harmless.
    """
    b = min(batch_size, n)
    buffer = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while buffer.numel() < b:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:b]
        buffer = buffer[b:]


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        transient=False,
    )


def fresh_model(model_factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """The untrained model of one training: ``model_factory()`` after ``torch.manual_seed(seed)``, so the seed fixes
    the initial weights."""
    torch.manual_seed(seed)
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise FairalError(f"model_factory must return a torch.nn.Module, got {type(model).__name__}")
    return model


def _train_once(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    model_factory: Callable[[], nn.Module],
    seed: int,
    bf16: bool,
    progress: bool,
    description: str,
) -> tuple[nn.Module, list[float]]:
    device = resolve_device(config.device)
    fmt = _memory_format(config.channels_last)
    model = fresh_model(model_factory, seed).to(device=device, memory_format=fmt)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.total_steps(images.shape[0])
    # The cases and the batch schedule live on the training device for the whole run (one copy, not one per
    # step), and the losses stay there until the end: on a GPU no step waits for the host.
    x_all = images.to(device=device, dtype=torch.float32)
    y_all = labels.to(device=device)  # in its own dtype (uint8: a quarter of float32), cast per batch
    schedule = batch_schedule(images.shape[0], config.batch_size, steps, seed).to(device)
    losses: list[torch.Tensor] = []
    bar = _progress() if progress else contextlib.nullcontext()
    with bar:
        task = bar.add_task(description, total=steps, loss=float("nan")) if progress else None
        for k in range(steps):
            idx = schedule[k]
            losses.append(_step(model, optimizer, x_all[idx], y_all[idx], fmt, bf16))
            if progress:  # the shown loss is read every PROGRESS_EVERY steps (a read makes the host wait)
                shown = {"loss": float(losses[-1])} if k % PROGRESS_EVERY == 0 or k == steps - 1 else {}
                bar.update(task, advance=1, **shown)
    model.eval()
    return model, torch.stack(losses).float().cpu().tolist() if losses else []


def _training_dice(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, bf16: bool
) -> tuple[float, bool]:
    """Mean Dice of ``model`` over the training cases, and whether it predicts any foreground voxel."""
    scores: list[float] = []
    any_foreground = False
    probas = predict_proba(model, images, config.batch_size, channels_last=config.channels_last, bf16=bf16)
    for proba, target in zip(probas, labels, strict=True):
        scores.append(dice_from_proba(proba, target.numpy().reshape(proba.shape)))
        any_foreground = any_foreground or bool((proba >= 0.5).any())
    return float(np.mean(scores)), any_foreground


def collapse_check(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, bf16: bool
) -> tuple[float, bool]:
    """The collapse guard: the model's mean Dice over its training cases, and whether it collapsed (that Dice below
    ``config.min_train_dice``, or no foreground voxel predicted while the labels have some)."""
    train_dice, any_foreground = _training_dice(model, images, labels, config, bf16)
    return train_dice, train_dice < config.min_train_dice or (bool(labels.any()) and not any_foreground)


def restart_seed(seed: int, attempt: int) -> int:
    """The seed of attempt ``attempt`` of a training (0: ``seed`` itself; restart k: the stream
    ``"training-restart"``, so no restart repeats another training's seed)."""
    return seed if attempt == 0 else stream_seed(seed, "training-restart", attempt)


def train_model(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    model_factory: Callable[[], UNet3D],
    progress: bool = False,
) -> TrainResult:
    """Train a fresh model from ``model_factory`` on ``images`` (N, 1, X, Y, Z) against ``labels`` in {0, 1}.

    Minimises ``BCEWithLogits(model(x), y)`` with Adam for ``config.total_steps(N)`` steps. Before the model
    is built, ``torch.manual_seed(seed)`` is called; batches come from a ``torch.Generator`` seeded with the
    same ``seed``. So on the CPU the same inputs and config give bit-identical weights.

    Collapse guard: afterwards the mean Dice over the training cases is measured; if it is below
    ``config.min_train_dice``, or the model predicts no foreground voxel at all while the labels have some,
    training starts again from scratch with the seed :func:`restart_seed` ``(seed, k)`` (k = 1, 2, ...) up to
    ``config.max_restarts`` times. If every attempt collapses the best one is returned with ``collapsed=True``
    and a warning.
    """
    check_training_data(images, labels)
    if not callable(model_factory):
        raise FairalError(f"model_factory must be callable, got {type(model_factory).__name__}")
    use_bf16 = resolve_bf16(config.bf16, resolve_device(config.device))
    start = time.perf_counter()
    with _threads(config.num_threads):
        attempts, collapsed = _attempts(images, labels, config, model_factory, use_bf16, progress)
    restarts = len(attempts) - 1
    # The last attempt if it passed the guard, else the best one (the first of equals).
    train_dice, model, losses, seed = attempts[-1] if not collapsed else max(attempts, key=lambda a: a[0])
    if collapsed:
        warnings.warn(
            f"training collapsed: best train Dice {train_dice:.4f} (min_train_dice {config.min_train_dice}, "
            f"or no foreground voxel predicted) after {restarts} restarts; returning the best attempt",
            RuntimeWarning,
            stacklevel=2,
        )
    model = model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(
        model=model,
        losses=losses,
        train_dice=train_dice,
        restarts=restarts,
        seconds=time.perf_counter() - start,
        seed=seed,
        collapsed=collapsed,
        attempt_dice=[a[0] for a in attempts],
    )


def _attempts(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    model_factory: Callable[[], nn.Module],
    bf16: bool,
    progress: bool,
) -> tuple[list[tuple[float, nn.Module, list[float], int]], bool]:
    """Train from scratch until an attempt passes the collapse guard or the restarts are used up: every attempt's
    (training Dice, model, losses, seed), and whether the last one collapsed."""
    attempts: list[tuple[float, nn.Module, list[float], int]] = []
    collapsed = True
    for attempt in range(config.max_restarts + 1):
        seed = restart_seed(config.seed, attempt)
        model, losses = _train_once(images, labels, config, model_factory, seed, bf16, progress,
                                    f"training (seed {seed})")
        train_dice, collapsed = collapse_check(model, images, labels, config, bf16)
        attempts.append((train_dice, model, losses, seed))
        if not collapsed:
            break
    return attempts, collapsed


def _as_case(volume: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One case as a (C, X, Y, Z) float32 tensor; a (X, Y, Z) volume gets a channel axis."""
    t = torch.as_tensor(volume)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise FairalError(f"each volume must have shape (X, Y, Z) or (C, X, Y, Z), got {tuple(t.shape)}")
    return t.to(torch.float32)


def predict_proba(
    model: nn.Module,
    volumes: Iterable[torch.Tensor] | torch.Tensor,
    batch_size: int = 4,
    *,
    channels_last: bool = True,
    bf16: str | bool = "auto",
    as_tensor: bool = False,
) -> Iterator[np.ndarray]:
    """Yield ``sigmoid(model(x))`` for each case, streaming ``batch_size`` cases at a time.

    ``volumes`` is either a (N, C, X, Y, Z) tensor or any iterable of (C, X, Y, Z) / (X, Y, Z) tensors or
    arrays (read lazily, so a large pool never sits in memory at once). Consecutive cases of equal shape are
    batched together. Each yielded map is a float32 array of shape (X, Y, Z) when the model has one output
    channel, (C_out, X, Y, Z) otherwise.

    Runs under ``torch.inference_mode`` with the model in eval mode. ``channels_last`` converts the model's
    weights to ``torch.channels_last_3d`` in place (values unchanged). ``bf16`` ("auto"/"on"/"off" or a bool)
    autocasts to bfloat16 as in training (pass "off" for full-precision probabilities: bf16 logits carry only
    ~3 significant digits). ``as_tensor``: yield float32 tensors on the model's device instead (no copy to the host).
    """
    device = _model_device(model)
    use_bf16 = resolve_bf16(bf16, device)
    fmt = _memory_format(channels_last)
    model.to(memory_format=fmt)
    model.eval()

    def run(x: torch.Tensor) -> Iterator[np.ndarray]:
        with torch.inference_mode(), bf16_autocast(use_bf16, device):
            logits = model(x)
        proba = torch.sigmoid(logits.float()).contiguous()
        for p in proba if as_tensor else proba.cpu().numpy():
            yield p[0] if p.shape[0] == 1 else p

    yield from _batched(model, volumes, batch_size, fmt, run)


def predict_mc_dropout(
    model: nn.Module,
    volumes: Iterable[torch.Tensor] | torch.Tensor,
    samples: int,
    seed: int,
    batch_size: int = 4,
    *,
    channels_last: bool = True,
    bf16: str | bool = "auto",
    as_tensor: bool = False,
) -> Iterator[np.ndarray]:
    """Yield ``samples`` Monte-Carlo dropout predictions per case, a float32 array (samples, X, Y, Z) of the
    foreground probability, for MC-dropout BALD (Gal et al. 2017).

    Only the model's dropout layers sample (:func:`fairal.run.model.enable_mc_dropout`); everything else, GroupNorm
    included, runs as in evaluation. The draws come from ``seed`` (and the batch's position), so the same seed,
    inputs and batch size give the same samples. A model without dropout layers is refused: its samples would all
    be equal and BALD zero. ``as_tensor``: yield tensors on the model's device instead.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise FairalError(f"MC dropout needs at least 2 samples, got {samples!r}")
    device = _model_device(model)
    use_bf16 = resolve_bf16(bf16, device)
    fmt = _memory_format(channels_last)
    model.to(memory_format=fmt)
    if enable_mc_dropout(model) == 0:
        raise FairalError("MC-dropout BALD needs a model with dropout layers (dropout > 0)")
    counter = iter(range(1 << 62))

    def run(x: torch.Tensor) -> Iterator[np.ndarray]:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode(), bf16_autocast(use_bf16, device):
            torch.manual_seed(stream_seed(seed, "mc-dropout-batch", next(counter)))
            draws = torch.stack([torch.sigmoid(model(x).float()) for _ in range(samples)], dim=1)
        draws = draws.contiguous()
        for d in draws if as_tensor else draws.cpu().numpy():  # (samples, C, X, Y, Z)
            yield d[:, 0] if d.shape[1] == 1 else d

    try:
        yield from _batched(model, volumes, batch_size, fmt, run)
    finally:
        model.eval()


def _batched(model, volumes, batch_size, fmt, run) -> Iterator[np.ndarray]:
    """Stream ``volumes`` through ``run`` in batches of up to ``batch_size`` cases of one shape."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FairalError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(volumes, torch.Tensor) and volumes.dim() != 5:
        raise FairalError(f"a tensor of volumes must have shape (N, C, X, Y, Z), got {tuple(volumes.shape)}")
    device = _model_device(model)
    batch: list[torch.Tensor] = []
    for volume in volumes:
        case = _as_case(volume)
        if batch and (case.shape != batch[0].shape or len(batch) == batch_size):
            yield from run(torch.stack(batch).to(device=device, memory_format=fmt))
            batch = []
        batch.append(case)
    if batch:
        yield from run(torch.stack(batch).to(device=device, memory_format=fmt))

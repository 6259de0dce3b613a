"""Training throughput of single runs against a packed group (``fairal.packed``), fp32 against bf16, and what it
means for the ``paper`` profile.

    python benchmarks/bench_gpu.py                 # on the GPU: the paper's 170x170x76 volumes
    python benchmarks/bench_gpu.py --device cpu    # the same comparison on the CPU with small volumes (< 1 min)

Prints, per path, training steps in Mvox/s (members x batch x voxels x steps per second), the share of the HBM
roofline on a GPU (an unfused train step of this U-Net moves about 2 kB per voxel), and the projected GPU-hours of
the ``paper`` profile's 120 runs (200 epochs of 10, 14, ..., 86 volumes per run: 5.1e13 voxel-steps). Every path is
timed in the same process after a warm-up; ratios against the single fp32 path are what carry over between machines.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from fairal.model import UNet3D
from fairal.packed import Member, train_packed
from fairal.train import TrainConfig, train_model

PAPER_SHAPE = (170, 170, 76)
BYTES_PER_VOXEL_STEP = 2048  # an unfused forward + backward + Adam step of the 8/16-feature U-Net, measured


def paper_voxel_steps(shape=PAPER_SHAPE, epochs: int = 200, runs: int = 120) -> float:
    """Voxel-steps of training in the paper's protocol: each run trains ``epochs`` passes over 10, 14, ..., 86
    labeled volumes, from scratch every round."""
    passes = epochs * sum(range(10, 87, 4))
    return float(math.prod(shape)) * passes * runs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _members(n: int, shape, batch: int, steps: int, device: str, bf16: str) -> list[Member]:
    members = []
    for k in range(n):
        g = torch.Generator().manual_seed(k)
        # empty labels: the same work per step, and no collapse guard retraining inside the timings
        labels = torch.zeros((batch * 2, 1, *shape), dtype=torch.uint8)
        images = torch.rand((batch * 2, 1, *shape), generator=g)
        cfg = TrainConfig(lr=1e-4, steps=steps, batch_size=batch, seed=k, device=device, bf16=bf16,
                          min_train_dice=0.0, max_restarts=0)
        members.append(Member(images, labels, cfg, lambda: UNet3D(features=(8, 16), foreground_prior=0.03)))
    return members


def timed(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--members", type=int, default=None, help="runs per packed group (default 8 GPU, 4 CPU)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=None)
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="HBM bandwidth of the GPU (H200: 4.8 TB/s)")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    n = args.members or (8 if gpu else 4)
    steps = args.steps or (20 if gpu else 5)
    shape = tuple(args.shape) if args.shape else (PAPER_SHAPE if gpu else (24, 32, 24))
    if gpu:
        torch.backends.cudnn.benchmark = True
    vox = math.prod(shape)
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if gpu else ''}, torch "
          f"{torch.__version__}, volumes {shape}, batch {args.batch}, {n} members, {steps} steps")
    rows = []

    def single(bf16: str) -> None:
        for m in _members(n, shape, args.batch, steps, args.device, bf16):
            train_model(m.images, m.labels, m.config, m.factory)

    def packed(bf16: str) -> None:
        train_packed(_members(n, shape, args.batch, steps, args.device, bf16))

    cases = [("single fp32", lambda: single("off")), ("packed fp32", lambda: packed("off"))]
    if gpu:
        cases.append(("packed bf16", lambda: packed("on")))
    else:
        cases.append(("single bf16 (CPU autocast)", lambda: single("on")))
    for name, fn in cases:
        warm = timed(fn, device)  # warm-up: allocator, cuDNN autotuning, first-call overheads
        seconds = min(timed(fn, device), warm)
        rate = n * args.batch * vox * steps / seconds / 1e6
        rows.append((name, seconds, rate))
    base = rows[0][2]
    roof = args.bandwidth_tbs * 1e12 / BYTES_PER_VOXEL_STEP / 1e6
    total = paper_voxel_steps()
    print(f"{'path':28s} {'seconds':>8s} {'Mvox/s':>9s} {'vs single':>9s}"
          + (f" {'% roofline':>10s} {'paper GPU-h':>11s}" if gpu else ""))
    for name, seconds, rate in rows:
        line = f"{name:28s} {seconds:8.2f} {rate:9.1f} {rate / base:8.2f}x"
        if gpu:
            line += f" {100 * rate / roof:9.1f}% {total / (rate * 1e6) / 3600:11.1f}"
        print(line)
    if gpu:
        print(f"HBM roofline at {args.bandwidth_tbs} TB/s and {BYTES_PER_VOXEL_STEP} B per voxel-step: "
              f"{roof:.0f} Mvox/s; the paper profile is {total:.2e} voxel-steps")


if __name__ == "__main__":
    main()

"""Training throughput of single runs against a packed group (``fairal.run.packed``), fp32 against bf16, the time of a
``paper``-profile round, and what it means for the 120-run protocol.

    python benchmarks/bench_gpu.py                               # GPU: throughput at the paper's 170x170x76 volumes
    python benchmarks/bench_gpu.py --rounds 10,46,86 --compile   # + paper rounds at 10/46/86 labeled; + compiled
    python benchmarks/bench_gpu.py --device cpu --rounds 10,46,86   # the same on the CPU, small volumes (< 1 min)

Throughput: training steps in Mvox/s (members x batch x voxels x steps per second), the share of the HBM roofline on
a GPU (an unfused train step of this U-Net moves about 2 kB per voxel) and the projected GPU-hours of the ``paper``
profile's training alone (200 epochs of 10, 14, ..., 86 volumes per run: 5.1e13 voxel-steps). Every path is timed
in the same process after a warm-up; ratios against the single fp32 path carry over between machines.

Rounds (``--rounds``): one round of the ``paper`` profile at each labeled-set size n, for a single run and for a
lockstep group of ``--group`` runs (the paper's grid: 3 initial sets x 4 strategies per dataset and seed). Training
is timed at two step counts (T = a + steps x t: ``a`` builds the model, copies the cases to the device and measures
the training Dice, ``t`` is one step) and extended to the round's ceil(200 n / 4) steps; evaluation (30 test + n
labeled cases) and scoring of the 282 - n pool cases are timed per case on the same model. The projected times per
run and per 120-run protocol sum the 20 rounds 10, 14, ..., 86 (a and t interpolated between the measured sizes);
they are projections from measured per-step and per-case times, not a timed protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch

from fairal.config import get_profile
from fairal.metrics import dice_from_proba
from fairal.run.model import UNet3D
from fairal.run.packed import Member, train_packed
from fairal.run.rounds import uncertainty_stats
from fairal.run.train import TrainConfig, predict_proba, train_model

PAPER_SHAPE = (170, 170, 76)
PAPER_SIZES = list(range(10, 87, 4))  # labeled-set sizes of the paper's 20 rounds
PAPER_POOL, PAPER_TEST, PAPER_RUNS = 282, 30, 120  # 312 subjects - 2 x 15 test cases; 2 x 3 x 4 x 5 runs
BYTES_PER_VOXEL_STEP = 2048  # an unfused forward + backward + Adam step of the 8/16-feature U-Net, measured


def paper_voxel_steps(shape=PAPER_SHAPE, epochs: int = 200, runs: int = PAPER_RUNS) -> float:
    """Voxel-steps of training in the paper's protocol: each run trains ``epochs`` passes over 10, 14, ..., 86
    labeled volumes, from scratch every round."""
    passes = epochs * sum(PAPER_SIZES)
    return float(math.prod(shape)) * passes * runs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _members(n_members: int, n_cases: int, shape, batch: int, steps: int, device: str, bf16: str) -> list[Member]:
    members = []
    for k in range(n_members):
        g = torch.Generator().manual_seed(k)
        # empty labels: the same work per step, and no collapse guard retraining inside the timings
        labels = torch.zeros((n_cases, 1, *shape), dtype=torch.uint8)
        images = torch.rand((n_cases, 1, *shape), generator=g)
        cfg = TrainConfig(lr=1e-4, steps=steps, batch_size=batch, seed=k, device=device, bf16=bf16,
                          min_train_dice=0.0, max_restarts=0)
        members.append(Member(images, labels, cfg, lambda: UNet3D(features=(8, 16), foreground_prior=0.03)))
    return members


def timed(fn, device: torch.device) -> float:
    return timed_result(fn, device)[0]


def timed_result(fn, device: torch.device) -> tuple[float, object]:
    """Seconds of ``fn()`` with the device's queue drained before and after, and what it returned."""
    _sync(device)
    t = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - t, result


def throughput(args, device: torch.device, shape, n: int, steps: int) -> None:
    gpu = device.type == "cuda"
    vox = math.prod(shape)
    print(f"\n## Training throughput: volumes {shape}, batch {args.batch}, {n} members, {steps} steps")
    rows = []

    def single(bf16: str) -> None:
        for m in _members(n, 2 * args.batch, shape, args.batch, steps, args.device, bf16):
            train_model(m.images, m.labels, m.config, m.factory)

    def packed(bf16: str, compile: bool = False) -> list:
        return train_packed(_members(n, 2 * args.batch, shape, args.batch, steps, args.device, bf16), compile=compile)

    cases = [("single fp32", lambda: single("off")), ("single bf16", lambda: single("on")),
             ("packed fp32", lambda: packed("off")), ("packed bf16", lambda: packed("on"))]
    if args.compile:
        cases.append(("packed bf16 compiled", lambda: packed("on", compile=True)))
    results = {}
    for name, fn in cases:
        timed(fn, device)  # warm-up: allocator, cuDNN autotuning, first-call overheads
        seconds, results[name] = timed_result(fn, device)
        rows.append((name, seconds, n * args.batch * vox * steps / seconds / 1e6))
    if args.compile:  # compiling must not change what is learned (each call compiles again: timed with it)
        pairs = zip(results["packed bf16"], results["packed bf16 compiled"], strict=True)
        diff = max(float(np.max(np.abs(np.subtract(x.losses, y.losses)))) for x, y in pairs)
        print(f"compiled vs eager losses: max difference {diff:.2e} (the compiled time includes any recompiling)")
    base = rows[0][2]
    roof = args.bandwidth_tbs * 1e12 / BYTES_PER_VOXEL_STEP / 1e6
    total = paper_voxel_steps()
    print(f"{'path':22s} {'seconds':>8s} {'Mvox/s':>9s} {'vs single':>9s}"
          + (f" {'% roofline':>10s} {'paper GPU-h':>11s}" if gpu else ""))
    for name, seconds, rate in rows:
        line = f"{name:22s} {seconds:8.2f} {rate:9.1f} {rate / base:8.2f}x"
        if gpu:
            line += f" {100 * rate / roof:9.1f}% {total / (rate * 1e6) / 3600:11.1f}"
        print(line)
    if gpu:
        print(f"HBM roofline at {args.bandwidth_tbs} TB/s and {BYTES_PER_VOXEL_STEP} B per voxel-step: "
              f"{roof:.0f} Mvox/s; the paper profile trains {total:.2e} voxel-steps (training alone: the GPU-h "
              "column leaves out evaluation and scoring, see --rounds)")


def _fit_line(t1: float, t2: float, s1: int, s2: int) -> tuple[float, float]:
    """T = a + steps * t through two timings; t >= 0, a >= 0."""
    t = max((t2 - t1) / (s2 - s1), 0.0)
    return max(t1 - s1 * t, 0.0), t


def rounds(args, device: torch.device, shape, sizes: list[int], group: int, steps: int, bf16: str) -> None:
    paper = get_profile("paper", {"device": args.device, "bf16": bf16})
    vox = math.prod(shape)
    fallback = np.zeros(shape, bool)
    c = [s // 2 for s in shape]
    fallback[c[0] - 4:c[0] + 4, c[1] - 6:c[1] + 6, c[2] - 4:c[2] + 4] = True  # a caudate-sized region
    print(f"\n## paper-profile rounds: volumes {shape}, batch {paper.batch_size}, bf16 {bf16}, lockstep group of "
          f"{group}; training timed at {steps} and {2 * steps} steps, inference on {args.infer_cases} cases")
    print(f"{'n':>3s} {'steps':>6s} | {'single: train':>13s} {'infer':>7s} {'round':>7s} | "
          f"{'group: train':>12s} {'infer':>7s} {'round':>7s} {'per run':>7s}")
    measured = {}
    for n in sizes:
        measured[n] = _round_at(n, args, device, shape, paper, group, steps, bf16, fallback)
        a1, t1, ag, tg, infer, per_eval, per_score = measured[n]
        round_steps = TrainConfig.of(paper, 0, 0).total_steps(n)
        single_round = a1 + round_steps * t1 + infer
        group_round = ag + round_steps * tg + group * infer
        print(f"{n:3d} {round_steps:6d} | {a1 + round_steps * t1:12.1f}s {infer:6.1f}s {single_round:6.1f}s | "
              f"{ag + round_steps * tg:11.1f}s {group * infer:6.1f}s {group_round:6.1f}s {group_round / group:6.1f}s")
        rate_single = paper.batch_size * vox / t1 / 1e6 if t1 else float("inf")
        rate_group = group * paper.batch_size * vox / tg / 1e6 if tg else float("inf")
        print(f"    training: single {rate_single:.1f} Mvox/s, group {rate_group:.1f} Mvox/s "
              f"({rate_group / rate_single:.2f}x); inference {per_eval:.3f} s/case evaluated, "
              f"{per_score:.3f} s/case scored")
    if len(measured) < 2:
        return
    ns = sorted(measured)
    cols = np.array([measured[n] for n in ns])

    def at(k: int, n: int) -> float:
        return float(np.interp(n, ns, cols[:, k]))  # within the measured sizes; held constant outside them

    run_single = sum(at(0, n) + TrainConfig.of(paper, 0, 0).total_steps(n) * at(1, n) + at(4, n) for n in PAPER_SIZES)
    run_group = sum(at(2, n) + TrainConfig.of(paper, 0, 0).total_steps(n) * at(3, n) + group * at(4, n)
                    for n in PAPER_SIZES)
    groups = math.ceil(PAPER_RUNS / group)
    print(f"\nprojected (20 rounds 10..86, {PAPER_RUNS} runs): single runs one after another "
          f"{run_single / 3600:.2f} h per run, {PAPER_RUNS * run_single / 3600:.1f} h per protocol; lockstep groups "
          f"of {group}: {run_group / 3600:.2f} h per group ({run_group / group / 3600:.2f} h per run), "
          f"{groups * run_group / 3600:.1f} h per protocol ({groups} groups one after another)")


def _round_at(n: int, args, device: torch.device, shape, paper, group: int, steps: int, bf16: str,
              fallback: np.ndarray) -> tuple:
    """At labeled-set size n: (a, t) of a single run's training, (a, t) of a group's, the inference of one run's
    round in seconds, and the per-case evaluation and scoring times."""

    group_members = _members(group, n, shape, paper.batch_size, 1, args.device, bf16)  # made once: not timed

    def with_steps(members: list[Member], s: int) -> list[Member]:
        return [Member(m.images, m.labels, dataclasses.replace(m.config, steps=s), m.factory) for m in members]

    def single(s: int) -> None:
        m = with_steps(group_members[:1], s)[0]
        train_model(m.images, m.labels, m.config, m.factory)

    def packed(s: int) -> None:
        train_packed(with_steps(group_members, s))

    timed(lambda: single(2), device)  # warm-up (cuDNN autotuning for this shape)
    a1, t1 = _fit_line(timed(lambda: single(steps), device), timed(lambda: single(2 * steps), device),
                       steps, 2 * steps)
    timed(lambda: packed(2), device)
    ag, tg = _fit_line(timed(lambda: packed(steps), device), timed(lambda: packed(2 * steps), device),
                       steps, 2 * steps)
    model = UNet3D(features=paper.features, foreground_prior=0.03).to(device).eval()
    images = torch.rand((args.infer_cases, 1, *shape), generator=torch.Generator().manual_seed(1))
    labels = np.zeros((args.infer_cases, *shape), np.uint8)
    labels[:, fallback] = 1

    def evaluate() -> None:  # as fairal.run.rounds.evaluate: probabilities to the host, Dice there
        for p, lab in zip(predict_proba(model, images, batch_size=8, bf16=bf16), labels, strict=True):
            dice_from_proba(p, lab)

    def score() -> None:  # the pool's statistics (on the model's device)
        uncertainty_stats(model, images, fallback, paper, dropout=False, seed=0)

    timed(score, device)
    per_eval = timed(evaluate, device) / args.infer_cases
    per_score = timed(score, device) / args.infer_cases
    infer = (PAPER_TEST + n) * per_eval + (PAPER_POOL - n) * per_score
    return a1, t1, ag, tg, infer, per_eval, per_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--members", type=int, default=None, help="runs per packed group (default 8 GPU, 4 CPU)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=None)
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="HBM bandwidth of the GPU (H200: 4.8 TB/s)")
    ap.add_argument("--compile", action="store_true", help="also time the packed path under torch.compile")
    ap.add_argument("--rounds", default="", help="labeled-set sizes of paper rounds to time, e.g. 10,46,86")
    ap.add_argument("--group", type=int, default=12, help="runs per lockstep group in --rounds (the paper: 12)")
    ap.add_argument("--bf16", default="auto", help="precision of --rounds: auto, on or off")
    ap.add_argument("--infer-cases", type=int, default=None, help="cases timed for inference (default 8 GPU, 2 CPU)")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    shape = tuple(args.shape) if args.shape else (PAPER_SHAPE if gpu else (24, 32, 24))
    args.infer_cases = args.infer_cases or (8 if gpu else 2)
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if gpu else ''}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.skip_throughput:
        throughput(args, device, shape, args.members or (8 if gpu else 4), args.steps or (20 if gpu else 5))
    sizes = [int(v) for v in args.rounds.split(",") if v]
    if sizes:
        rounds(args, device, shape, sizes, args.group if gpu else min(args.group, 4), args.steps or (10 if gpu else 2),
               args.bf16)


if __name__ == "__main__":
    main()

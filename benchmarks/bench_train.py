"""Training and inference throughput of fairal's U-Net on the CPU (run on demand; not a test).

    python benchmarks/bench_train.py [--shape 40 72 56] [--batch 4] [--steps 12] [--warmup 2] [--bf16 auto]

Compares, in the same run and on the same network and data:

* ours: ``fairal.run.train.train_step`` as ``train_model`` runs it (``torch.channels_last_3d``, bfloat16 autocast
  where ``--bf16`` resolves to on), forward + backward + Adam step;
* reference: a plain fp32 loop in the default memory format.

and reports voxels/s, the speed-up, inference throughput of ``predict_proba``, and the fraction of the CPU's
peak FLOP rate reached. The peak is estimated in the same run by timing a large fp32 matmul; the network's
FLOPs come from ``flops_per_voxel`` (forward = 1x, training step ~ 3x: forward, input and weight gradients).
Per-step times are medians, which resists other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fairal.run.model import UNet3D, flops_per_voxel
from fairal.run.train import predict_proba, resolve_bf16, train_step


def _median_seconds(fn: Callable[[], object], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n fp32 matmul (2 n^3 FLOPs), the best of ``reps`` runs."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b  # warm-up: thread pool and kernel selection
    best = min(_median_seconds(lambda: a @ b, 1, 0) for _ in range(reps))
    return 2.0 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 72, 56), metavar=("X", "Y", "Z"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument(
        "--bf16", choices=("auto", "on", "off"), default="auto", help="our path's bf16 setting"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = (args.batch, 1, *args.shape)
    voxels = args.batch * args.shape[0] * args.shape[1] * args.shape[2]
    use_bf16 = resolve_bf16(args.bf16)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(shape, generator=gen)
    labels = (torch.rand(shape, generator=gen) < 0.05).float()
    fpv = flops_per_voxel(UNet3D())

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(f"input: batch {args.batch} x 1 x {'x'.join(map(str, args.shape))} = {voxels:,} voxels per step; "
          f"{args.steps} timed steps after {args.warmup} warm-up steps (median step time)")  # fmt: skip
    print(f"network: UNet3D features (8, 16); {fpv:,.0f} conv FLOPs per voxel forward")

    # Reference: the plain loop, fp32, default memory format.
    torch.manual_seed(0)
    ref_model = UNet3D()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-4)

    def ref_step() -> None:
        ref_opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ref_model(images), labels)
        loss.backward()
        ref_opt.step()

    # Ours: exactly train_model's step.
    torch.manual_seed(0)
    our_model = UNet3D().to(memory_format=torch.channels_last_3d)
    our_opt = torch.optim.Adam(our_model.parameters(), lr=1e-4)

    def our_step() -> None:
        train_step(our_model, our_opt, images, labels, channels_last=True, bf16=use_bf16)

    t_ref = _median_seconds(ref_step, args.steps, args.warmup)
    t_our = _median_seconds(our_step, args.steps, args.warmup)

    # Inference: predict_proba over a pool of 2 batches, against a plain fp32 contiguous forward.
    pool = torch.randn((2 * args.batch, *shape[1:]), generator=gen)
    our_model.eval()
    ref_model.eval()

    def our_infer() -> None:
        for _ in predict_proba(our_model, pool, batch_size=args.batch, channels_last=True, bf16=use_bf16):
            pass

    def ref_infer() -> None:
        with torch.inference_mode():
            for chunk in pool.split(args.batch):
                torch.sigmoid(ref_model(chunk)).numpy()

    infer_reps = max(3, args.steps // 4)
    t_inf_ref = _median_seconds(ref_infer, infer_reps, 1)
    t_inf_our = _median_seconds(our_infer, infer_reps, 1)
    peak = _matmul_peak()

    train_ref = voxels / t_ref
    train_our = voxels / t_our
    inf_ref = pool.numel() / t_inf_ref
    inf_our = pool.numel() / t_inf_our
    print()
    print(f"peak estimate: {peak / 1e9:.1f} GFLOP/s (2048x2048 fp32 matmul timed in this run)")
    print(f"our path: channels_last_3d, bf16 autocast {'ON' if use_bf16 else 'OFF'} (--bf16 {args.bf16})")
    print()
    print(f"{'':28s}{'step ms':>10s}{'Mvoxel/s':>10s}{'GFLOP/s':>10s}{'of peak':>9s}")
    rows = [
        ("train  reference fp32 NCDHW", t_ref, train_ref, 3 * fpv),
        ("train  ours", t_our, train_our, 3 * fpv),
        ("infer  reference fp32 NCDHW", t_inf_ref / 2, inf_ref, fpv),
        ("infer  ours (predict_proba)", t_inf_our / 2, inf_our, fpv),
    ]
    for name, seconds, rate, flops in rows:
        gflops = rate * flops / 1e9
        print(f"{name:28s}{seconds * 1e3:10.0f}{rate / 1e6:10.2f}{gflops:10.1f}{gflops * 1e9 / peak:9.1%}")
    print()
    print(f"training speed-up ours / reference: {train_our / train_ref:.2f}x (target >= 2x)")
    print(f"inference speed-up ours / reference: {inf_our / inf_ref:.2f}x")
    print("FLOPs: training step counted as 3x the forward conv FLOPs; inference step ms is per batch")


if __name__ == "__main__":
    main()

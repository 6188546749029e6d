#!/usr/bin/env python
"""What subnormal gradients cost a convolution's backward pass on the CPU, with and without flushing them to zero.

Late in training some gradients fall below float32's normal range (about 1.2e-38); the CPU's vector units then take
a slow path. One 13-band FC-EF training seed on this project's machine slowed from 53 to 129-264 seconds per epoch
after epoch 32 (profiled: the oneDNN convolution backward kernels took 62 % of its time, against 30 % in a seed on the
same machine at normal speed), which is why :func:`changedet.training.train` and the detect engine run inside
:func:`changedet.models.flush_denormals`.

This script times the backward pass of one 3x3 convolution (64 -> 64 channels, channels-last, as in the FC
models' middle layers) on gradients of which a given fraction is subnormal, without flushing (the baseline, torch's
default) and with it, side by side in one process, and prints the ratios:

    python scripts/bench_denormals.py
    python scripts/bench_denormals.py --threads 2 --fractions 0,0.001,0.01,0.1
"""

from __future__ import annotations

import argparse
import time

import torch

from changedet.models import flush_denormals


def backward_ms(conv: torch.nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    """Best of ``repeats`` timings of one backward pass (milliseconds)."""
    best = float("inf")
    for _ in range(repeats):
        y = conv(x)
        t0 = time.perf_counter()
        y.backward(grad)
        best = min(best, time.perf_counter() - t0)
        x.grad = None
        conv.zero_grad(set_to_none=True)
    return 1e3 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the training configs)")
    ap.add_argument("--fractions", default="0,0.001,0.01,0.1", help="fractions of subnormal gradient values")
    ap.add_argument("--batch", type=int, default=4, help="batch of 48 x 48 feature maps")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 64, 48, 48).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    supported = torch.set_flush_denormal(False)
    print(f"torch {torch.__version__}, {args.threads} thread(s), flushing supported by this CPU: {supported}")
    print("| subnormal fraction | kept (torch default) ms | flushed ms | kept / flushed |")
    print("|---:|---:|---:|---:|")
    for frac in (float(f) for f in args.fractions.split(",") if f.strip()):
        grad = torch.randn(args.batch, 64, 48, 48).contiguous(memory_format=torch.channels_last) * 1e-3
        tiny = torch.rand(grad.shape) < frac
        grad[tiny] = grad[tiny].sign() * 1e-39  # subnormal in float32
        kept = backward_ms(conv, x, grad, args.repeats)
        with flush_denormals():
            flushed = backward_ms(conv, x, grad, args.repeats)
        print(f"| {frac:g} | {kept:.1f} | {flushed:.1f} | {kept / flushed:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Benchmark changedet's architectures: parameters, FLOPs per pixel and CPU inference throughput.

For each model at 13 and 3 bands: parameter count, forward FLOPs per output pixel (``torch.utils.flop_counter``,
one multiply-add = 2 FLOPs, counted on a 256 x 256 pair), and CPU inference megapixels per second at tiles of 256 and
512 in float32 (channels-last, batch norm folded by ``optimize_for_inference``, inside
``changedet.inference.large_allocations`` as the detect engine runs it) and in bfloat16. Times are the best of
``--repeats`` runs after a warm-up, so other processes on the machine inflate them less. Prints a markdown table.

Usage::

    python scripts/bench_models.py                      # all models, 2 threads
    python scripts/bench_models.py --models fc-siam-diff --bands 13 --threads 2 --repeats 5
    python scripts/bench_models.py --models fc-ef fc-siam-diff --bands 13 --tiles 512 --unfused   # Conv2d+ReLU fusion
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from changedet.inference import large_allocations
from changedet.models import count_parameters, create_model, list_models, optimize_for_inference


def flops_per_pixel(model: torch.nn.Module, bands: int, size: int = 256) -> float:
    x = torch.randn(1, bands, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, x.clone())
    return counter.get_total_flops() / (size * size)


def throughput(model: torch.nn.Module, bands: int, tile: int, batch: int, dtype: torch.dtype,
               repeats: int, fold: bool = True, fuse: bool = True) -> float:
    """Output megapixels per second (best of ``repeats``)."""
    if fold:
        fast = optimize_for_inference(model, dtype=dtype, channels_last=True, fuse_relu=fuse)
    else:  # what plain ``model.eval().to(dtype, memory_format=channels_last)`` gives
        fast = model.eval().to(dtype=dtype, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    before = torch.randn(batch, bands, tile, tile, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    after = torch.randn(batch, bands, tile, tile, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode(), large_allocations():  # as the detect engine runs it
        fast(before, after)  # warm-up (oneDNN primitive creation)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fast(before, after)
            best = min(best, time.perf_counter() - t0)
    return batch * tile * tile / best / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list_models(), help="architectures (default: all)")
    parser.add_argument("--bands", nargs="*", type=int, default=[13, 3])
    parser.add_argument("--tiles", nargs="*", type=int, default=[256, 512])
    parser.add_argument("--pixels-per-batch", type=int, default=512 * 512,
                        help="batch = this / tile^2 (at least 1): the same work per call at every tile size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--unfolded", action="store_true",
                        help="add a column: fp32 at the first tile size without batch-norm folding")
    parser.add_argument("--unfused", action="store_true",
                        help="add columns: each precision at the first tile size without the Conv2d+ReLU fusion, "
                             "and the fused/unfused speed ratio")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dtypes = [("fp32", torch.float32)] + ([] if args.no_bf16 else [("bf16", torch.bfloat16)])
    cols = [f"{d} {t}" for d, _ in dtypes for t in args.tiles]
    if args.unfolded:
        cols.append(f"fp32 {args.tiles[0]} unfolded")
    if args.unfused:
        cols += [f"{d} {args.tiles[0]} {what}" for d, _ in dtypes for what in ("unfused", "fused/unfused")]
    print(f"CPU inference, {args.threads} threads, torch {torch.__version__}, {platform.machine()}, "
          f"{args.pixels_per_batch} px per call, best of {args.repeats}; Mpx/s of output", file=sys.stderr)
    print("| model | bands | parameters | kFLOP/px | " + " | ".join(c if c.endswith("/unfused") else f"{c} Mpx/s" for c in cols) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(cols))
    for name in args.models:
        for bands in args.bands:
            model = create_model(name, in_channels=bands).eval()
            row = [name, str(bands), f"{count_parameters(model) / 1e6:.2f} M",
                   f"{flops_per_pixel(model, bands) / 1e3:.0f}"]
            first_tile = {}  # dtype -> fused rate at the first tile size (for --unfused)
            for _, dtype in dtypes:
                for tile in args.tiles:
                    batch = max(1, args.pixels_per_batch // (tile * tile))
                    rate = throughput(model, bands, tile, batch, dtype, args.repeats)
                    first_tile.setdefault(dtype, rate)
                    row.append(f"{rate:.2f}")
            if args.unfolded:
                tile = args.tiles[0]
                batch = max(1, args.pixels_per_batch // (tile * tile))
                row.append(f"{throughput(model, bands, tile, batch, torch.float32, args.repeats, fold=False):.2f}")
            if args.unfused:
                tile = args.tiles[0]
                batch = max(1, args.pixels_per_batch // (tile * tile))
                for _, dtype in dtypes:
                    plain = throughput(model, bands, tile, batch, dtype, args.repeats, fuse=False)
                    row += [f"{plain:.2f}", f"{first_tile[dtype] / plain:.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

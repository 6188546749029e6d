#!/usr/bin/env python
"""Soak test: many ``changedet.detect`` runs in one process must not leak memory, file handles or threads.

It writes a few small synthetic pairs (with a painted change, some nodata and, for some, AFTER in another CRS),
then runs ``detect`` ``--runs`` times in this process, alternating CVA and a tiny FC-Siam-diff checkpoint, each run
into a fresh output folder that is deleted afterwards. It prints the resident set size (RSS) at the start, after the
warm-up runs (imports, GDAL/PROJ caches, torch kernels) and at the end, the growth after warm-up in percent, and
the open file descriptors and threads, so that leaks of datasets or engine threads show too. Exit status 1 when the
growth after warm-up exceeds ``--max-growth`` percent (10 by default).

Usage::

    python scripts/soak_detect.py                  # 200 runs, 20 warm-up, 96 px pairs
    python scripts/soak_detect.py --runs 500 --size 128 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def open_fds() -> int:
    import psutil

    proc = psutil.Process()
    return proc.num_fds() if hasattr(proc, "num_fds") else len(proc.open_files())


def make_inputs(folder: Path, size: int, n_pairs: int) -> list[tuple[Path, Path]]:
    """``n_pairs`` small pairs of different kinds (aligned with a change, nodata borders, other CRS)."""
    from changedet.testing import make_pair, paint_change

    kinds = ["aligned", "nodata-border", "other-crs", "half-pixel-shift"]
    pairs = []
    for i in range(n_pairs):
        before, after = make_pair(folder / f"pair{i}", kinds[i % len(kinds)], size=size, seed=i)
        if kinds[i % len(kinds)] == "aligned":
            paint_change(after)
        pairs.append((before, after))
    return pairs


def make_checkpoint(folder: Path) -> Path:
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(create_model("fc-siam-diff", in_channels=3), folder / "tiny",
                           CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0, name="tiny"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="detect runs in all (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="runs before the reference RSS (default 20)")
    parser.add_argument("--size", type=int, default=96, help="pair size in pixels (default 96)")
    parser.add_argument("--pairs", type=int, default=8, help="distinct pairs cycled through (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--max-growth", type=float, default=10.0, help="allowed RSS growth after warm-up, %%")
    parser.add_argument("--vectorize", action=argparse.BooleanOptionalAction, default=True,
                        help="also write polygons (default on)")
    args = parser.parse_args(argv)

    rss_start = rss_mib()  # before torch, GDAL and changedet are imported
    fds_start, threads_start = open_fds(), threading.active_count()
    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the pairs warn on purpose (reprojection, nodata)

    from changedet import detect

    work = Path(tempfile.mkdtemp(prefix="changedet-soak-"))
    try:
        pairs = make_inputs(work / "inputs", args.size, args.pairs)
        ckpt = make_checkpoint(work)
        t0 = time.perf_counter()
        rss_warm = fds_warm = threads_warm = None
        samples: list[float] = []
        for i in range(args.runs):
            before, after = pairs[i % len(pairs)]
            out = work / "out"
            opts = {"method": "cva"} if i % 2 == 0 else {"method": "model", "model": str(ckpt)}
            result = detect(before, after, output_dir=out, tile_size=64, overlap=16, quicklook=False,
                            vectorize=args.vectorize, **opts)
            assert result.report["summary"]["valid_pixels"] > 0
            del result
            shutil.rmtree(out)
            if i + 1 == args.warmup:
                gc.collect()
                rss_warm, fds_warm, threads_warm = rss_mib(), open_fds(), threading.active_count()
            if (i + 1) % 20 == 0:
                samples.append(rss_mib())
                print(f"  run {i + 1:4d}: RSS {samples[-1]:7.1f} MiB", file=sys.stderr)
        gc.collect()
        seconds = time.perf_counter() - t0
        rss_end, fds_end, threads_end = rss_mib(), open_fds(), threading.active_count()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    assert rss_warm is not None and fds_warm is not None and threads_warm is not None
    growth = 100.0 * (rss_end - rss_warm) / rss_warm
    print(f"runs: {args.runs} ({args.runs // 2} cva + {args.runs - args.runs // 2} fc-siam-diff), "
          f"{args.size} px pairs, {seconds:.1f} s ({seconds / args.runs * 1000:.0f} ms/run)")
    print(f"RSS start:            {rss_start:8.1f} MiB")
    print(f"RSS after warm-up ({args.warmup}): {rss_warm:8.1f} MiB")
    print(f"RSS end:              {rss_end:8.1f} MiB")
    print(f"RSS growth after warm-up: {growth:+.2f} %  (limit {args.max_growth:g} %)")
    print(f"open file descriptors: start {fds_start}, after warm-up {fds_warm}, end {fds_end}")
    print(f"threads: start {threads_start}, after warm-up {threads_warm}, end {threads_end}")
    leaked = fds_end > fds_warm + 2 or threads_end > threads_warm
    if leaked:
        print("LEAK: file descriptors or threads grew after warm-up", file=sys.stderr)
    return 1 if growth > args.max_growth or leaked else 0


if __name__ == "__main__":
    sys.exit(main())

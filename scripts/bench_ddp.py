"""Training throughput of :func:`changedet.training.train` with 1 and N processes (DDP, gloo, CPU), side by side.

Each configuration is one ``torchrun --standalone --nproc_per_node N`` launch of this script in worker mode
(``--worker``): every rank builds the same synthetic scenes (smooth texture, bright painted rectangles as change),
trains ``fc-siam-diff`` for a few epochs without validation, and rank 0 reports the summed ``train_seconds`` of
its epochs (the training loop only: no data preparation, calibration or writing). Printed: a markdown table of
optimiser steps/s and chips/s, for

* ``N=1``: one process (torchrun with one process runs the ordinary single-process path);
* ``N=k, same global batch``: ``batch_size`` unchanged, each rank computes ``batch_size / k`` chips per step
  (the same steps and optimisation as one process);
* ``N=k, k x batch``: ``batch_size`` multiplied by ``k`` (each rank keeps the single-process batch; half the
  steps per epoch with k=2).

Every process uses ``--threads`` torch threads (default 1).

    python scripts/bench_ddp.py                         # 1 vs 2 processes, 1 thread each
    python scripts/bench_ddp.py --procs 1,2,4 --chip-size 96 --batch-size 16 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _scenes(n: int, size: int, seed0: int = 0) -> list:
    import numpy as np
    from affine import Affine
    from scipy.ndimage import gaussian_filter

    from changedet.data import Scene

    out = []
    for seed in range(seed0, seed0 + n):
        rng = np.random.default_rng(seed)
        before = gaussian_filter(rng.normal(size=(3, size, size)), (0, 2, 2)).astype(np.float32) * 400 + 1000
        after = before * rng.uniform(0.9, 1.1) + rng.normal(0, 5, before.shape).astype(np.float32)
        label = np.zeros((size, size), np.uint8)
        for _ in range(max(3, size // 16)):
            r, c = rng.integers(0, size - 16, 2)
            h, w = rng.integers(5, 16, 2)
            label[r : r + h, c : c + w] = 1
        after[:, label == 1] = np.array([[2500.0], [2200.0], [600.0]])
        out.append(Scene(name=f"s{seed}", before=before, after=after.astype(np.float32), label=label,
                         valid=np.ones((size, size), bool), crs="EPSG:32631",
                         transform=Affine(10, 0, 500000, 0, -10, 5700000), band_names=["red", "green", "blue"],
                         pixel_size=10.0))
    return out


def worker(args: argparse.Namespace) -> None:
    from changedet.training import train

    rank = int(os.environ.get("RANK", "0"))
    result = train(
        out=Path(args.out) / f"rank{rank}", train_scenes=_scenes(args.scenes, args.scene_size), val_scenes=None,
        model=args.model, chip_size=args.chip_size, batch_size=args.batch_size, chips_per_epoch=args.chips,
        epochs=args.epochs, threads=args.threads, plots=False, seed=0, schedule="none", augment=True,
    )
    if rank == 0:
        seconds = sum(h["train_seconds"] for h in result.history)
        steps = len(result.history) * (args.chips // args.batch_size)
        Path(args.report).write_text(json.dumps({
            "seconds": seconds, "steps": steps, "chips": steps * args.batch_size,
            "epoch_seconds": [h["train_seconds"] for h in result.history],
            "world_size": (result.distributed or {}).get("world_size", 1),
        }))


def launch(nproc: int, batch_size: int, args: argparse.Namespace, root: Path) -> dict:
    report = root / f"report-{nproc}-{batch_size}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(Path(__file__).resolve()), "--worker", "--out", str(root / f"run-{nproc}-{batch_size}"),
           "--report", str(report), "--batch-size", str(batch_size), "--chips", str(args.chips),
           "--epochs", str(args.epochs), "--chip-size", str(args.chip_size), "--threads", str(args.threads),
           "--scenes", str(args.scenes), "--scene-size", str(args.scene_size), "--model", args.model]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(report.read_text())
    out["wall"] = wall
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated (first is the baseline)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size of the baseline")
    parser.add_argument("--chips", type=int, default=128, help="chips per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--scene-size", type=int, default=192)
    parser.add_argument("--model", default="fc-siam-diff")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per launch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    procs = [int(p) for p in args.procs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        for n in procs:
            configs = [(args.batch_size, "same global batch" if n > 1 else "baseline")]
            if n > 1:
                configs.append((args.batch_size * n, f"{n} x batch"))
            for batch, label in configs:
                r = launch(n, batch, args, Path(tmp))
                rows.append((n, label, batch, r))
    base = rows[0][3]
    base_chips = base["chips"] / base["seconds"]
    print(f"fc-siam-diff training loop, chips {args.chip_size} px, {args.chips} chips/epoch x {args.epochs} epochs, "
          f"{args.threads} torch thread(s) per process, {os.cpu_count()} CPU cores")
    print()
    print("| processes | batch | global batch | per-rank batch | steps | train s | steps/s | chips/s | speed-up "
          "(chips/s) | launch wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, label, batch, r in rows:
        chips_s = r["chips"] / r["seconds"]
        print(f"| {n} | {label} | {batch} | {batch // n} | {r['steps']} | {r['seconds']:.2f} | "
              f"{r['steps'] / r['seconds']:.2f} | {chips_s:.1f} | {chips_s / base_chips:.2f}x | {r['wall']:.1f} |")


if __name__ == "__main__":
    main()

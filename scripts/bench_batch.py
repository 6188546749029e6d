"""Throughput of ``changedet batch`` (Dask) with 1 and 2 workers on this machine, side by side.

Synthetic pairs (:func:`changedet.testing.make_pair`) are written to a temporary folder; for each worker count a
LocalCluster (processes, 1 thread each, torch 1 thread) is started and warmed up (imports and model loaded on
every worker, untimed), then :func:`changedet.distributed.run_batch` runs over all pairs. Printed: a markdown table
of pairs/s and Mpx/s, where a pair's time goes (from each pair's report.json), and the scheduler's own overhead
per task (an empty task's round trip), which together say what limits scaling.

    python scripts/bench_batch.py                      # 6 pairs of 384 x 384, fc-siam-diff, workers 1 and 2
    python scripts/bench_batch.py --pairs 16 --size 1024 --workers 1,2,4 --method cva
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path


def _pairs(root: Path, n: int, size: int) -> Path:
    from changedet.testing import make_pair, paint_change

    lines = ["name,before,after"]
    for i in range(n):
        before, after = make_pair(root / f"p{i}", "aligned", size=size, bands=3, seed=i)
        paint_change(after, (size // 4, size // 4, size // 5, size // 6))
        lines.append(f"p{i},{before},{after}")
    path = root / "pairs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _checkpoint(root: Path) -> Path:
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = create_model("fc-siam-diff", in_channels=3)
    return save_checkpoint(model, root / "bench-model",
                           CheckpointMeta(band_names=["B1", "B2", "B3"], pixel_size=10.0, threshold=0.5))


KEYS = ("open_and_check", "fit", "read", "model", "predict", "vectorize", "quicklook", "total")


def _noop(_i: int) -> None:
    return None


def _run(n_workers: int, csv_path: Path, warm_csv: Path, out: Path, options: dict) -> dict:
    """One timed batch into the fresh folder ``out`` (a re-used folder would skip the done pairs)."""
    import distributed

    from changedet.distributed import run_batch

    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster, \
            distributed.Client(cluster) as client:
        run_batch(warm_csv, out / "warm", client=client, retries=0, **options)  # imports + model
        t = time.perf_counter()
        client.gather(client.map(_noop, range(200), pure=False))
        overhead_ms = (time.perf_counter() - t) / 200 * 1e3
        t0 = time.perf_counter()
        report = run_batch(csv_path, out / "timed", client=client, retries=0, **options)
        wall = time.perf_counter() - t0
    assert report.exit_code == 0, report.table()
    mpx = sum(p["megapixels"] for p in report.pairs)
    timings = []
    for p in report.pairs:
        pair_report = json.loads((Path(p["output_dir"]) / "report.json").read_text())
        t = dict(pair_report["timings"])
        t["read"] = pair_report["stats"]["seconds_read"]  # inside predict, on the prefetch thread
        t["model"] = pair_report["stats"]["seconds_predict"]
        timings.append(t)
    parts = {k: statistics.mean(t.get(k, 0.0) for t in timings) for k in KEYS}
    return {"workers": n_workers, "pairs": len(report.pairs), "mpx": mpx, "wall": wall,
            "pairs_s": len(report.pairs) / wall, "mpx_s": mpx / wall, "overhead_ms": overhead_ms, "parts": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--size", type=int, default=384, help="pixels per side of each scene")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--method", default="model", choices=["model", "cva"])
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--no-quicklook", action="store_true")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        csv_path = _pairs(root / "data", args.pairs, args.size)
        warm_csv = _pairs(root / "warm", max(counts), 64)
        options: dict = {"tile_size": args.tile_size, "overlap": 32, "threads": 1,
                         "quicklook": not args.no_quicklook}
        if args.method == "model":
            options["model"] = str(_checkpoint(root))
        else:
            options["method"] = "cva"
        load = os.getloadavg()[0]
        rows = [_run(n, csv_path, warm_csv, root / f"run{i}", options) for i, n in enumerate(counts)]

    base = rows[0]["wall"]
    print(f"changedet batch, {args.pairs} pairs of {args.size} x {args.size} x 3 bands, method {args.method}, "
          f"tile {args.tile_size}, quicklook {'off' if args.no_quicklook else 'on'}; {os.cpu_count()} CPU cores, "
          f"load average {load:.1f} at start\n")
    print("| workers | pairs | Mpx | wall s | pairs/s | Mpx/s | speed-up | scheduler overhead / task |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['pairs']} | {r['mpx']:.1f} | {r['wall']:.1f} | {r['pairs_s']:.2f} | "
              f"{r['mpx_s']:.2f} | {base / r['wall']:.2f}x | {r['overhead_ms']:.1f} ms |")
    print("\nMean seconds per pair inside a worker (from each report.json; read and model are parts of predict, "
          "read overlapping the model on a prefetch thread):\n")
    keys = list(KEYS)
    print("| workers | " + " | ".join(keys) + " |")
    print("|---:|" + "---:|" * len(keys))
    for r in rows:
        print(f"| {r['workers']} | " + " | ".join(f"{r['parts'][k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()

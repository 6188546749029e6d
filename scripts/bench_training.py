"""Time training steps and whole-scene validation on real OSCD data (a SHORT run, to budget real training).

    python scripts/bench_training.py --threads 2 --steps 24 [--bands all|rgb] [--model fc-siam-diff]

Trains for ``--steps`` steps (one epoch of steps x batch chips) on the labelled OSCD cities minus the validation
cities, validates once on whole scenes, and prints seconds per step and the extrapolated time of one epoch of
``--chips-per-epoch`` chips. Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OSCD = Path(os.environ.get("CHANGEDET_SHARED_DATA", REPO.parent / "shared" / "data")) / "oscd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chip-size", type=int, default=96)
    parser.add_argument("--chips-per-epoch", type=int, default=512)
    parser.add_argument("--bands", choices=("all", "rgb"), default="all")
    parser.add_argument("--model", default="fc-siam-diff")
    parser.add_argument("--val-cities", default="pisa,rennes")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--no-deterministic", action="store_true")
    args = parser.parse_args()

    from changedet.data import read_oscd_cities
    from changedet.data.oscd import OSCD_RGB, list_oscd_cities
    from changedet.training import train

    bands = None if args.bands == "all" else list(OSCD_RGB)
    val = args.val_cities.split(",")
    t0 = time.perf_counter()
    train_cities = [c for c in list_oscd_cities(OSCD) if c not in val]
    train_scenes = read_oscd_cities(OSCD, train_cities, bands=bands)
    val_scenes = read_oscd_cities(OSCD, val, bands=bands)
    read_s = time.perf_counter() - t0
    marks: dict[str, list[float]] = {"step": [], "epoch": []}

    def progress(event: dict) -> None:  # CPU time of this process at each step: robust to a loaded machine
        if event.get("event") in marks:
            marks[event["event"]].append(time.process_time())

    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        result = train(progress=progress,
            out=tmp, train_scenes=train_scenes, val_scenes=val_scenes, model=args.model, epochs=1,
            chips_per_epoch=args.steps * args.batch_size, batch_size=args.batch_size, chip_size=args.chip_size,
            threads=args.threads, plots=False, channels_last=not args.no_channels_last,
            deterministic=not args.no_deterministic, augment={"flips": True, "rotations": True, "date_swap": 0.5},
        )
        total_s = time.perf_counter() - t1
        with open(Path(tmp) / "metrics.csv", newline="") as fh:
            row = next(csv.DictReader(fh))
    step_s = float(row["train_seconds"]) / args.steps
    steps = marks["step"]
    cpu_step = (steps[-1] - steps[0]) / max(len(steps) - 1, 1)
    cpu_val = marks["epoch"][0] - steps[-1] if marks["epoch"] else float("nan")
    steps_per_epoch = args.chips_per_epoch // args.batch_size
    report = {
        "model": args.model,
        "bands": len(train_scenes[0].band_names),
        "train_cities": len(train_cities),
        "val_cities": val,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "chip_size": args.chip_size,
        "steps_timed": args.steps,
        "read_seconds": round(read_s, 1),
        "seconds_per_step": round(step_s, 3),
        "val_seconds": float(row["val_seconds"]),
        "cpu_seconds_per_step": round(cpu_step, 3),
        "cpu_seconds_validation": round(cpu_val, 1),
        "epoch_cpu_seconds_estimate": round(cpu_step * steps_per_epoch + cpu_val, 1),
        "epoch_seconds_estimate": round(step_s * steps_per_epoch + float(row["val_seconds"]), 1),
        "chips_per_epoch": args.chips_per_epoch,
        "run_seconds": round(total_s, 1),
        "load_average": os.getloadavg(),
        "val_f1_after_run": result.metrics.get("f1"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

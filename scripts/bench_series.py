"""Benchmark ``detect_series``: wall time and peak memory against the number of dates.

Each run happens in a fresh Python process (so ``ru_maxrss`` is that run's peak) on a synthetic series of N dates
of one ``--size`` x ``--size`` px, 4-band scene (CVA, no model download). Peak memory should grow with N only by the
tile stack and one strip buffer per pair, not with the scene size.

    python scripts/bench_series.py --size 2048 --dates 2 4 8 --tile-size 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from changedet.series import detect_series
paths, out, tile = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
s = detect_series(paths, output_dir=out, method="cva", tile_size=tile, overlap=32, quicklook=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "strip_buffer_mb": s.report["stats"]["strip_buffer_bytes"] / 2**20,
                  "predict_s": s.report["timings"]["predict"], "fit_s": s.report["timings"]["fit"],
                  "polygons": s.report["summary"]["n_polygons"]}))
"""


def make_series(folder: Path, n: int, size: int) -> list[str]:
    import numpy as np
    from scipy import ndimage

    from changedet.testing import make_geotiff

    rng = np.random.default_rng(0)
    base = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 4) for _ in range(4)])
    base = (1000 + 300 * base / base.std()).astype("float32")
    paths = []
    for k in range(n):
        arr = base + rng.normal(0, 10, base.shape).astype("float32")
        for j in range(1, k + 1):  # one new 64 px block per date
            r, c = (97 * j) % (size - 64), (211 * j) % (size - 64)
            arr[:, r : r + 64, c : c + 64] += 900
        paths.append(str(make_geotiff(folder / f"scene_{2015 + k}-06-01.tif", arr)))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--dates", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--tile-size", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_series(Path(tmp), max(args.dates), args.size)
        print(f"scene {args.size} x {args.size} px, 4 bands, CVA, tile {args.tile_size}")
        print(f"{'dates':>5} {'pairs':>5} {'wall s':>8} {'predict s':>9} {'Mpx/s/pair':>10} {'peak RSS MB':>11} "
              f"{'strips MB':>9}")
        for n in args.dates:
            out = Path(tmp) / f"out{n}"
            res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(paths[:n]), str(out), str(args.tile_size)],
                                 check=True, capture_output=True, text=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            mpx = args.size * args.size * (n - 1) / 1e6 / r["predict_s"]
            print(f"{n:>5} {n - 1:>5} {r['seconds']:>8.2f} {r['predict_s']:>9.2f} {mpx:>10.2f} "
                  f"{r['peak_rss_mb']:>11.0f} {r['strip_buffer_mb']:>9.1f}")


if __name__ == "__main__":
    main()

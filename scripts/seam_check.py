"""How far a tiled `changedet detect` is from one whole-image pass of the same model, on a real pair.

    python scripts/seam_check.py --city beirut                       # OSCD city from ../shared/data, the default model
    python scripts/seam_check.py before.tif after.tif --model s2-rgb --tile-size 256 --overlaps 16,32,64

The whole-image reference is one tile covering the scene (a tile size >= the scene's larger side). For each
overlap, the tiled run's ``probability.tif`` is compared with it on the pixels that are valid in both, leaving out a
``--margin`` along the scene border (edge tiles are moved inward, so near the border the two runs see different
context for another reason than the overlap): maximum and mean absolute difference, and how many pixels of the
change mask flip. ``--city`` reuses the stacked pair of ``compare_methods.py`` (``tiles/compare/<city>/``).
A translation-equivariant model with a small receptive field gives zero (the tiling tests assert 1e-5); a real
network's receptive field is wider than ``overlap/4``, which is what this measures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import rasterio


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(folder / "probability.tif") as ds:
        prob = ds.read(1, masked=True)
    with rasterio.open(folder / "change.tif") as ds:
        change = ds.read(1, masked=True)
    return prob, change


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", nargs="?", type=Path)
    parser.add_argument("after", nargs="?", type=Path)
    parser.add_argument("--city", default=None, help="stack this OSCD city's two dates instead of BEFORE/AFTER")
    parser.add_argument("--model", default=None, help="bundled name or checkpoint (default: chosen from the bands)")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlaps", default="32,64")
    parser.add_argument("--margin", type=int, default=32, help="border pixels left out of the comparison")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from compare_methods import oscd_pair  # the same folder: stacks the city once, with `changedet stack`

    from changedet import detect

    with tempfile.TemporaryDirectory(prefix="seam-") as tmp_name:
        tmp = Path(tmp_name)
        if args.city:
            before, after = oscd_pair(args.city)[:2]
        elif args.before and args.after:
            before, after = args.before, args.after
        else:
            parser.error("give BEFORE and AFTER, or --city")
        with rasterio.open(before) as ds:
            side = max(ds.width, ds.height)
        common = {"model": args.model, "threads": args.threads, "vectorize": False, "quicklook": False}
        whole_tile = -(-side // 64) * 64  # a multiple of any model's stride
        detect(before, after, output_dir=tmp / "whole", tile_size=whole_tile, overlap=0, **common)
        ref_p, ref_c = _read(tmp / "whole")
        m = args.margin
        inner = np.zeros(ref_p.shape, bool)
        inner[m:ref_p.shape[0] - m, m:ref_p.shape[1] - m] = True
        rows = []
        for overlap in [int(v) for v in args.overlaps.split(",")]:
            out = tmp / f"tiled{overlap}"
            res = detect(before, after, output_dir=out, tile_size=args.tile_size, overlap=overlap, **common)
            p, c = _read(out)
            ok = inner & ~np.ma.getmaskarray(ref_p) & ~np.ma.getmaskarray(p)
            diff = np.abs(p.data[ok].astype("float64") - ref_p.data[ok])
            flips = int((c.data[ok] != ref_c.data[ok]).sum())
            rows.append({"tile_size": res.report["tiling"]["tile_size_used"], "overlap": overlap,
                         "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                         "mask_flips": flips, "changed_pixels_whole": int((ref_c.data[ok] == 1).sum()),
                         "pixels_compared": int(ok.sum())})
    print(f"whole-image reference: one tile of {whole_tile} px; margin {m} px left out")
    print("| tile used | overlap | max abs diff | mean abs diff | mask flips | changed px (whole) | px compared |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tile_size']} | {r['overlap']} | {r['max_abs_diff']:.4f} | {r['mean_abs_diff']:.1e} | "
              f"{r['mask_flips']} | {r['changed_pixels_whole']} | {r['pixels_compared']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Benchmark: the streaming detect engine against a naive full-scene baseline, side by side in one run.

For synthetic 13-band uint16 pairs of 2048, 4096 and 8192 pixels square (written once into ``tiles/bench/``), it
runs, each in a fresh child process so that peak RSS is clean:

* ``stream``: ``changedet.api.detect`` (streaming engine, COG outputs, no vectorisation/quick-look), timed after
  the one-off ``import torch`` of the process (printed apart: 1.5-2 s here),
* ``naive``: read both full rasters into memory, normalise, predict tile by tile into a full-scene array,
  write the probability GeoTIFF at the end (what several peers do),
* ``bare``: the model alone on in-memory tiles of the requested size, as the engine runs it (batch norm folded,
  channels-last, :func:`changedet.inference.large_allocations`): the compute ceiling,

and prints megapixels per second, peak RSS and the ratios stream/naive and stream/bare as a markdown table, plus
the tile edge the engine used, the work (tile pixels computed per scene pixel: the price of the overlap) and the
engine's efficiency on that work (``stream Mpx/s x work / bare``: 1.0 would mean no time lost to reading, blending,
writing or thread contention).

Usage::

    python scripts/bench_detect.py                       # 2048 4096 8192, fp32, FC-Siam-diff, 2 threads
    python scripts/bench_detect.py --sizes 2048 --precision bf16
    python scripts/bench_detect.py --naive-max 4096      # skip the naive baseline above 4096 (it needs ~5 GiB)
    python scripts/bench_detect.py --model s2-rgb        # the bundled default for 13 bands (B04, B03, B02 of them)
    python scripts/bench_detect.py --model s2-13band     # the bundled 13-band model
    python scripts/bench_detect.py --interleave pixel    # scenes whose blocks hold all 13 bands (GDAL's default)

The scenes are band-interleaved by default, as ``changedet stack`` writes them (``--interleave pixel``: as it wrote
them until 2026-12-07, and as many other tools write multi-band GeoTIFFs).
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

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "tiles" / "bench"


def make_scene(path: Path, size: int, *, seed: int, bands: int = 13, change: bool = False,
               interleave: str = "band") -> Path:
    """A smooth 13-band uint16 texture (written block by block, tiled DEFLATE), optionally with changed blocks.

    ``interleave`` is the TIFF layout: ``band`` (what ``changedet stack`` writes: a block holds one band, so a reader
    of 3 bands decodes 3 blocks) or ``pixel`` (a block holds all bands: GDAL's default for a new multi-band GTiff
    and what many tools write; reading any band decodes all of them).
    """
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32631", "transform": Affine(10, 0, 500000, 0, -10, 5700000), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2, "interleave": interleave,
    }
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(0.002, 0.05, size=(bands, 4, 2))
    phases = rng.uniform(0, 6.28, size=(bands, 4))
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as ds:
        ds.descriptions = tuple(["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                                 "B11", "B12"][:bands])
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            yy, xx = np.mgrid[r0 : r0 + h, 0:size].astype(np.float32)
            block = np.empty((bands, h, size), np.uint16)
            for b in range(bands):
                v = sum(np.sin(freqs[b, k, 0] * yy + freqs[b, k, 1] * xx + phases[b, k]) for k in range(4))
                v = 1500 + 300 * v + rng.normal(0, 30, size=v.shape)
                if change:
                    v[(((yy // 300) + (xx // 300)) % 7) == 0] += 900
                block[b] = np.clip(v, 1, 65535).astype(np.uint16)
            ds.write(block, window=Window(0, r0, size, h))
    os.replace(tmp, path)
    return path


def _checkpoint(folder: Path, arch: str) -> Path:
    import torch

    from changedet.models import create_model
    from changedet.models.checkpoint import CheckpointMeta, save_checkpoint

    path = folder / f"bench-{arch}.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
        save_checkpoint(create_model(arch, in_channels=13), folder / f"bench-{arch}",
                        CheckpointMeta(band_names=names, pixel_size=10.0, threshold=0.5, name=f"bench-{arch}"))
    return path


# ------------------------------------------------------------------------------------------------------------
# child-process workers (each prints one JSON line)
# ------------------------------------------------------------------------------------------------------------
def model_bands(ckpt: str) -> list[int]:
    """1-based bands of the unnamed 13-band scene that ``ckpt`` reads, as detect picks them (Sentinel-2 order)."""
    from types import SimpleNamespace

    from changedet.api import _bands_by_s2_order
    from changedet.models.bundled import list_bundled
    from changedet.models.checkpoint import read_meta

    bundled = {m.name: m for m in list_bundled()}
    meta = bundled[ckpt] if ckpt in bundled else read_meta(ckpt)
    picked = _bands_by_s2_order(SimpleNamespace(count=13, descriptions=()), list(meta.band_names or ()))
    return picked or list(range(1, 14))


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_stream(before: str, after: str, ckpt: str, out: str, tile: int, overlap: int, precision: str,
               threads: int) -> dict:
    t_import = time.perf_counter()
    import changedet.api as api
    import changedet.models  # noqa: F401 - torch: a one-off per process (printed apart), as in a notebook or worker

    t_import = time.perf_counter() - t_import
    rss_import = _peak_rss_mb()  # the floor before any work: torch's libraries (several hundred MB with CUDA)
    t0 = time.perf_counter()
    res = api.detect(before, after, model=ckpt, output_dir=out, tile_size=tile, overlap=overlap,
                     precision=precision, threads=threads, vectorize=False, quicklook=False, overwrite=True)
    dt = time.perf_counter() - t0
    px = res.report["grid"]["width"] * res.report["grid"]["height"]
    st = res.report["stats"]
    tile_px = st["tiles_predicted"] * min(st["tile_size"], res.report["grid"]["height"]) * min(
        st["tile_size"], res.report["grid"]["width"])
    return {"seconds": dt, "mpx_s": px / 1e6 / dt, "rss_mb": _peak_rss_mb(), "work": tile_px / px,
            "import_s": t_import, "import_rss_mb": rss_import, "setup_s": res.report["timings"].get("open_and_check", 0.0),
            "tile_size": st["tile_size"],
            "predict_s": res.report["stats"]["seconds_predict"], "read_s": res.report["stats"]["seconds_read"],
            "write_s": res.report["stats"]["seconds_write"], "finalize_s": res.report["stats"]["seconds_finalize"]}


def run_naive(before: str, after: str, ckpt: str, out: str, tile: int, overlap: int, precision: str,
              threads: int) -> dict:
    """Read both full rasters, normalise, predict tile by tile into a full-scene array, write at the end."""
    import numpy as np
    import rasterio
    import torch

    from changedet.models.bundled import resolve_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    bands = model_bands(ckpt)
    model, _meta = resolve_model(ckpt, band_count=len(bands))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = model.eval().to(dtype=dtype, memory_format=torch.channels_last)
    with rasterio.open(before) as b, rasterio.open(after) as a:
        xb = b.read(bands).astype(np.float32)
        xa = a.read(bands).astype(np.float32)
        profile = b.profile
    for x in (xb, xa):
        m, s = x.mean(axis=(1, 2), keepdims=True), x.std(axis=(1, 2), keepdims=True) + 1e-6
        x -= m
        x /= s
    _, h, w = xb.shape
    acc = np.zeros((h, w), np.float32)
    cnt = np.zeros((h, w), np.float32)
    stride = tile - overlap
    rows = sorted({*range(0, max(1, h - tile + 1), stride), max(0, h - tile)})
    cols = sorted({*range(0, max(1, w - tile + 1), stride), max(0, w - tile)})
    with torch.inference_mode():
        for r in rows:
            for c in cols:
                tb = torch.from_numpy(xb[None, :, r : r + tile, c : c + tile]).to(dtype)
                ta = torch.from_numpy(xa[None, :, r : r + tile, c : c + tile]).to(dtype)
                tb = tb.contiguous(memory_format=torch.channels_last)
                ta = ta.contiguous(memory_format=torch.channels_last)
                p = torch.sigmoid(model(tb, ta).float())[0, 0].numpy()
                acc[r : r + tile, c : c + tile] += p
                cnt[r : r + tile, c : c + tile] += 1
    prob = acc / np.maximum(cnt, 1)
    profile.update(count=1, dtype="float32", nodata=-1, compress="deflate")
    with rasterio.open(Path(out) / "probability.tif", "w", **profile) as ds:
        ds.write(prob, 1)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "mpx_s": h * w / 1e6 / dt, "rss_mb": _peak_rss_mb()}


def run_bare(ckpt: str, tile: int, precision: str, threads: int, repeats: int = 6) -> dict:
    import torch

    from changedet.inference import large_allocations
    from changedet.models import optimize_for_inference
    from changedet.models.bundled import resolve_model

    torch.set_num_threads(threads)
    n = len(model_bands(ckpt))
    model, _ = resolve_model(ckpt, band_count=n)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # the ceiling: the same inference copy and allocator setting as the engine's TorchPredictor, on tiles in memory
    model = optimize_for_inference(model, dtype=dtype, channels_last=True)
    # both dates side by side in one buffer where the model joins them, as TorchPredictor lays them out
    dim = getattr(model, "pair_dim", None)
    shape = (2, n, tile, tile) if dim == 0 else (1, 2 * n, tile, tile) if dim == 1 else None
    if shape is None:
        x = torch.randn(1, n, tile, tile).to(dtype).contiguous(memory_format=torch.channels_last)
        y = torch.randn(1, n, tile, tile).to(dtype).contiguous(memory_format=torch.channels_last)
    else:
        pair = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
        x, y = (pair[:1], pair[1:]) if dim == 0 else (pair[:, :n], pair[:, n:])
    with torch.inference_mode(), large_allocations():
        model(x, y)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x, y)
        dt = time.perf_counter() - t0
    return {"seconds": dt, "mpx_s": repeats * tile * tile / 1e6 / dt, "rss_mb": _peak_rss_mb()}


def _child(kind: str, **kwargs: object) -> dict:
    here = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import bench_detect as b; "
        f"print('RESULT ' + json.dumps(b.run_{kind}(**json.loads(sys.argv[1]))))"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--arch", default="fc-siam-diff", help="architecture, run with random weights")
    ap.add_argument("--model", default=None,
                    help="a bundled model name or checkpoint file instead of --arch (e.g. s2-rgb, the default for 13 "
                         "bands, which reads B04, B03, B02 of the scene)")
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--naive-max", type=int, default=4096, help="largest size for the naive baseline")
    ap.add_argument("--interleave", choices=["band", "pixel"], default="band",
                    help="TIFF layout of the synthetic scenes: band (as `changedet stack` writes) or pixel")
    args = ap.parse_args()

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    ckpt = args.model or str(_checkpoint(BENCH_DIR, args.arch))
    common = {"tile": args.tile_size, "precision": args.precision, "threads": args.threads}
    bare = _child("bare", ckpt=ckpt, **common)
    print(f"# bench_detect: {args.model or args.arch}, 13 bands uint16 ({args.interleave}-interleaved), "
          f"tile {args.tile_size}, overlap {args.overlap}, {args.precision}, {args.threads} torch threads")
    print(f"bare compute on in-memory {args.tile_size}px tiles: {bare.get('mpx_s', float('nan')):.3f} Mpx/s\n")
    print("| size | stream Mpx/s | stream peak RSS MB | naive Mpx/s | naive peak RSS MB | stream/naive speed "
          "| stream/naive RSS | stream/bare | tile used | work (tile px / scene px) | stream x work / bare |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        tag = "" if args.interleave == "pixel" else "_band"  # the pixel-interleaved files keep their old names
        b = make_scene(BENCH_DIR / f"before_{size}{tag}.tif", size, seed=1, interleave=args.interleave)
        a = make_scene(BENCH_DIR / f"after_{size}{tag}.tif", size, seed=1, change=True, interleave=args.interleave)
        with tempfile.TemporaryDirectory(dir=BENCH_DIR) as o1, tempfile.TemporaryDirectory(dir=BENCH_DIR) as o2:
            s = _child("stream", before=str(b), after=str(a), ckpt=ckpt, out=o1, overlap=args.overlap, **common)
            if size <= args.naive_max:
                n = _child("naive", before=str(b), after=str(a), ckpt=ckpt, out=o2, overlap=args.overlap, **common)
            else:
                n = {"error": f"skipped (> --naive-max {args.naive_max})"}
        def f(d: dict, k: str) -> str:
            return f"{d[k]:.3f}" if k in d else d.get("error", "-")[:40]
        speed = f"{s['mpx_s'] / n['mpx_s']:.2f}" if "mpx_s" in s and "mpx_s" in n else "-"
        rss = f"{s['rss_mb'] / n['rss_mb']:.2f}" if "rss_mb" in s and "rss_mb" in n else "-"
        vs_bare = f"{s['mpx_s'] / bare['mpx_s']:.2f}" if "mpx_s" in s and "mpx_s" in bare else "-"
        # the engine's efficiency on the tiles it had to compute (1.0 = no time lost to I/O, blending, threads)
        eff = f"{s['mpx_s'] * s['work'] / bare['mpx_s']:.2f}" if "work" in s and "mpx_s" in bare else "-"
        work = f"{s['work']:.3f}" if "work" in s else "-"
        print(f"| {size} | {f(s, 'mpx_s')} | {f(s, 'rss_mb')} | {f(n, 'mpx_s')} | {f(n, 'rss_mb')} | {speed} "
              f"| {rss} | {vs_bare} | {s.get('tile_size', '-')} | {work} | {eff} |", flush=True)
        if "predict_s" in s:
            print(f"<!-- {size}: import torch {s['import_s']:.1f} s (not counted), peak RSS after it "
                  f"{s['import_rss_mb']:.0f} MB; stream seconds {s['seconds']:.1f}: "
                  f"open/check/statistics {s['setup_s']:.1f}, predict {s['predict_s']:.1f}, read "
                  f"{s['read_s']:.1f}, write {s['write_s']:.1f} (thread), finalize {s['finalize_s']:.1f} -->")


if __name__ == "__main__":
    main()

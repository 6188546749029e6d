#!/usr/bin/env python
"""Score every detection method on real pairs through the user's path: `changedet detect` then `changedet evaluate`.

For each OSCD city (stacked with `changedet stack`, labels 1/2) and each AirChange pair (BMP triplets, labels 0/255),
runs `changedet detect --method M` for the unsupervised baselines (cva, irmad, dsfa) and the bundled supervised
model(s), then `changedet evaluate --json`, and prints a markdown table of the F1 (change class, in %) per pair and
pooled over all pixels of the listed pairs (the published convention).

    python scripts/compare_methods.py                  # the validation cities of the bundled Sentinel-2 models
    python scripts/compare_methods.py --cities pisa,rennes --methods cva,irmad,dsfa,s2-13band,s2-rgb
    python scripts/compare_methods.py --airchange Szada/7,Tiszadob/5 --methods cva,irmad,dsfa,aerial-rgb
    python scripts/compare_methods.py --cities "" --folders levir-cd-samples,dsifn-samples --methods cva,aerial-rgb
    python scripts/compare_methods.py --methods s2-13band,s2-rgb --tta flip   # test-time augmentation

``--folders`` scores the A/B/label crops of ../shared/data/<name> (LEVIR-CD / DSIFN-CD layout, labels 0/255) as one
column per folder, pooled over its crops; the crops are not georeferenced, so detect warns and works in pixels.

Outputs go under tiles/compare/ (git-ignored). Not part of CI: it takes minutes per pair on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHANGEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
OSCD = DATA / "oscd" / "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS = DATA / "oscd" / "Onera Satellite Change Detection dataset - Train Labels"
AIRCHANGE = DATA / "sztaki-airchange"
WORK = REPO / "tiles" / "compare"
UNSUPERVISED = ("cva", "irmad", "dsfa")


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("changedet")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "changedet.cli.main"]


def _run(args: list[str]) -> str:
    proc = subprocess.run([*_cli(), "-q", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"changedet {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return proc.stdout


def _georeferenced_label(city: str, before: Path) -> Path:
    """The OSCD label with the georeferencing of imgs_1/*B02.tif (the label TIFFs carry none)."""
    import rasterio

    out = WORK / city / "label.tif"
    if out.exists():
        return out
    src = next((OSCD_LABELS / city / "cm").glob("*-cm.tif"))
    with rasterio.open(src) as lab, rasterio.open(before) as ref:
        profile = {"driver": "GTiff", "width": lab.width, "height": lab.height, "count": 1, "dtype": "uint8",
                   "crs": ref.crs, "transform": ref.transform}
        data = lab.read(1)
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(data, 1)
    return out


def oscd_pair(city: str) -> tuple[Path, Path, Path, list[str]]:
    folder = WORK / city
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in (1, 2):
        out = folder / f"{'before' if k == 1 else 'after'}.tif"
        if not out.exists():
            _run(["stack", str(OSCD / city / f"imgs_{k}"), "-o", str(out)])
        paths.append(out)
    return paths[0], paths[1], _georeferenced_label(city, paths[0]), ["--truth-values", "1,2"]


def airchange_pair(name: str) -> tuple[Path, Path, Path, list[str]]:
    folder = AIRCHANGE / name
    files = {p.name.lower(): p for p in folder.iterdir()}
    return files["im1.bmp"], files["im2.bmp"], files["gt.bmp"], ["--truth-change-value", "255"]


def _method_tag(method: str) -> str:
    """A folder name for a method: the name itself, or for a checkpoint path its parts joined (runs/a/seed0/model
    and runs/b/seed0/model must not share an output folder)."""
    path = Path(method)
    if path.suffix not in (".safetensors", ".pt", ".pth", ".json"):
        return method
    return "_".join(path.with_suffix("").parts[-3:])


def _f1(conf: dict[str, int]) -> float:
    return 2 * conf["tp"] / max(1, 2 * conf["tp"] + conf["fp"] + conf["fn"])


def folder_pairs(name: str) -> list[tuple[str, tuple[Path, Path, Path, list[str]]]]:
    """The (A, B, label) crops of a LEVIR-CD / DSIFN-CD style folder under ../shared/data."""
    root = DATA / name
    crops = sorted(p.name for p in (root / "A").iterdir() if (root / "B" / p.name).exists())
    if not crops:
        raise SystemExit(f"{root}: no A/B crops")
    return [(f"{name}/{c}", (root / "A" / c, root / "B" / c, root / "label" / c, ["--truth-change-value", "255"]))
            for c in crops]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cities", default="pisa,rennes", help="OSCD cities (comma-separated; '' for none)")
    ap.add_argument("--airchange", default="", help="AirChange pairs, e.g. Szada/7,Tiszadob/5")
    ap.add_argument("--folders", default="", help="A/B/label folders under ../shared/data, one pooled column each")
    ap.add_argument("--methods", default="cva,irmad,dsfa,s2-13band,s2-rgb",
                    help="unsupervised methods and/or bundled model names / checkpoint paths")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["float32", "bf16"], default="float32", help="for the supervised models")
    ap.add_argument("--tta", default="none", help="test-time augmentation of the supervised models (detect --tta)")
    ap.add_argument("--json", type=Path, default=None, help="also write the scores as JSON")
    args = ap.parse_args()

    # columns: one per OSCD city or AirChange pair, one per folder (pooled over its crops)
    groups: list[tuple[str, list[tuple[str, tuple[Path, Path, Path, list[str]]]]]] = []
    groups += [(c, [(c, oscd_pair(c))]) for c in args.cities.split(",") if c.strip()]
    groups += [(p, [(p, airchange_pair(p))]) for p in args.airchange.split(",") if p.strip()]
    groups += [(f"{f} ({len(fp)} crops)", fp) for f in args.folders.split(",") if f.strip()
               for fp in [folder_pairs(f.strip())]]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    scores: dict[str, dict[str, dict]] = {}
    keys = ("tp", "fp", "fn", "tn")
    for method in methods:
        conf = dict.fromkeys(keys, 0)
        for column, pairs in groups:
            group = dict.fromkeys(keys, 0)
            for name, (before, after, truth, truth_opts) in pairs:
                tag = args.precision + ("" if args.tta == "none" else f"-tta-{args.tta}")
                out = WORK / "runs" / name.replace("/", "_") / f"{_method_tag(method)}-{tag}"
                opts = (["--method", method] if method in UNSUPERVISED
                        else ["--model", method, "--precision", args.precision, "--tta", args.tta])
                _run(["detect", str(before), str(after), "-o", str(out), *opts, "--overwrite", "--no-quicklook",
                      "--no-vectorize", "--threads", str(args.threads)])
                result = json.loads(_run(["evaluate", str(out / "change.tif"), str(truth), *truth_opts, "--json"]))
                pooled = result["pooled"]
                for k in keys:
                    group[k] += int(pooled[k])
                print(f"{method:>12} {name:>14}: F1 {100 * pooled['f1']:.2f}", file=sys.stderr, flush=True)
            scores.setdefault(method, {})[column] = {**group, "f1": _f1(group)}
            for k in keys:
                conf[k] += group[k]
        scores[method]["pooled"] = {**conf, "f1": _f1(conf)}
    names = [n for n, _ in groups]
    print("| method | " + " | ".join(names) + " | pooled |")
    print("|---|" + "---|" * (len(names) + 1))
    for method in methods:
        row = [f"{100 * scores[method][n]['f1']:.1f}" for n in [*names, "pooled"]]
        print(f"| {method} | " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()

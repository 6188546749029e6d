"""Which files a band stack holds, in what order and under what names: the layout step of
:func:`~changedet.io.stack.stack_bands`.

A folder (or a Sentinel-2 ``.zip``) is resolved to a SAFE product, a Landsat scene, a folder of Sentinel-2 band files
(its non-reflectance layers left out) or any other folder of rasters, named after the files (:func:`_folder_layout`);
an explicit list of files is named the same way (:func:`_named_layout`). Also here: the acquisition date from OSCD's
``dates.txt`` and the warning about a Sentinel-2 stack that misses some of a bundled model's bands. The product
recognition itself is :mod:`changedet.io.products`' part.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from changedet.errors import ChangedetWarning, InputError
from changedet.io.products import (
    _RES_SUFFIX,
    _S2_AUX,
    RASTER_SUFFIXES,
    SENTINEL2_BANDS,
    _enclosing_safe,
    _landsat_layout,
    _Layout,
    _read_mtl,
    _safe_layout,
    band_name_from_file,
    list_band_files,
)


def _generic_names(files: Sequence[Path]) -> list[str]:
    """Band names from file stems: the parts they share, cut at a separator (``_ - . space``), are dropped.

    >>> _generic_names([Path("scene_band1_v1.tif"), Path("scene_band10_v1.tif")])
    ['band1', 'band10']
    """
    stems = [p.stem for p in files]
    if len(stems) == 1:
        return stems
    seps = "_-. "
    prefix = os.path.commonprefix(stems)  # noqa: RUF071 - character prefix of names, not paths
    cut = max(prefix.rfind(c) for c in seps) + 1 if any(c in prefix for c in seps) else 0
    suffix = os.path.commonprefix([s[::-1] for s in stems])[::-1]  # noqa: RUF071
    tail = min((suffix.find(c) for c in seps if c in suffix), default=len(suffix))
    cut_end = len(suffix) - tail
    names = [s[cut : len(s) - cut_end] for s in stems]
    if any(not n.strip(seps) for n in names) or len(set(names)) != len(names):
        return stems
    return [n.strip(seps) for n in names]


def _dates_txt_date(folder: Path) -> _dt.date | None:
    """The acquisition date of an OSCD-style ``imgs_1``/``imgs_2`` folder from the ``dates.txt`` beside it.

    OSCD file names carry the L1C *processing* date, not the acquisition date; ``dates.txt`` (``date_1: 20150820``)
    holds the acquisition dates of ``imgs_1`` and ``imgs_2``.
    """
    m = re.fullmatch(r"imgs_(\d+)", folder.name)
    dates = folder.parent / "dates.txt"
    if m is None or not dates.is_file():
        return None
    try:
        text = dates.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    hit = re.search(rf"date_{m.group(1)}\s*[:=]\s*(\d{{8}})", text)
    if hit is None:
        return None
    try:
        return _dt.datetime.strptime(hit.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def _named_layout(source: Any, paths: list[Path]) -> _Layout:
    """Band names and order of files named as Landsat or Sentinel-2 bands (sensor names and order), else after the
    files (given order)."""
    landsat = _landsat_layout(Path(os.fspath(source)), paths, select=False)
    if landsat is not None:
        return landsat
    s2 = [band_name_from_file(p) for p in paths]
    if all(s2) and len(set(s2)) < len(s2):  # Sentinel-2 band files, one band twice (a copy, two resolutions)
        twice = sorted({b for b in s2 if s2.count(b) > 1})  # type: ignore[type-var]
        shown = "; ".join(f"{b}: " + ", ".join(p.name for p, n in zip(paths, s2, strict=True) if n == b)
                          for b in twice)
        raise InputError(
            f"{source}: several files hold the same Sentinel-2 band ({shown}); keep one file per band: move the "
            "others out of the folder, or name the files to stack (`changedet stack FILE FILE ... -o OUT.tif`; in "
            "Python stack_bands(..., files=[...]))"
        )
    if all(s2):
        order = sorted(range(len(paths)), key=lambda i: SENTINEL2_BANDS.index(s2[i]))  # type: ignore[arg-type]
        return _Layout([paths[i] for i in order], [str(s2[i]) for i in order], "sentinel2")
    names = _generic_names(paths)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"{source}: several files give the band name(s) {sorted(dup)}; rename them.")
    return _Layout(list(paths), names)


def _folder_layout(d: Path, out: Path) -> _Layout:
    """The band files of a folder (or a Sentinel-2 ``.zip``): a SAFE product, a Landsat scene, a folder of
    Sentinel-2 band files (its non-reflectance layers left out) or any other folder of rasters."""
    safe = _safe_layout(d)
    if safe is not None:
        return safe
    if not d.is_dir():
        raise InputError(f"{d}: a ZIP archive without Sentinel-2 band files; extract it and stack the folder.")
    rasters = [p for p in list_band_files(d) if p.resolve() != out]
    mtl_number, mtl_date = _read_mtl(d)
    landsat = _landsat_layout(d, rasters, mtl_number)
    if landsat is not None:
        landsat.date = mtl_date
        return landsat
    if not rasters:
        raise InputError(
            f"{d}: no raster files ({', '.join(RASTER_SUFFIXES)}) found; give the folder that holds one file per band."
        )
    aux = [p for p in rasters if _S2_AUX.search(p.stem)]
    rest = [p for p in rasters if p not in aux]
    skipped = []
    if aux and rest and all(band_name_from_file(p) for p in rest):  # Sentinel-2 bands and L2A/TCI layers
        rasters, skipped = rest, [p.name for p in aux]
    layout = _named_layout(d, rasters)
    layout.skipped = skipped
    if layout.sensor == "sentinel2":
        res = {m.group(1) for m in (_RES_SUFFIX.search(p.stem) for p in layout.paths) if m is not None}
        if len(res) == 1 and all(_RES_SUFFIX.search(p.stem) for p in layout.paths):
            _safe, granule = _enclosing_safe(d)
            warnings.warn(
                f"{d}: holds only the {res.pop()} m files of a Sentinel-2 L2A product ({', '.join(layout.names)} "
                f"stacked); to stack every band, each from its finest resolution, give the product's .SAFE folder or "
                f"its GRANULE/<name> folder{f' ({granule})' if granule is not None else ''}",
                ChangedetWarning, stacklevel=3,
            )
    return layout


def _bundled_s2_models() -> dict[str, list[str]]:
    """The Sentinel-2 bands each bundled model reads (from the model cards' JSON beside the weights; no torch)."""
    out = {}
    for f in sorted((Path(__file__).resolve().parents[1] / "weights").glob("*.json")):
        try:
            bands = [str(b).upper() for b in json.loads(f.read_text(encoding="utf-8")).get("band_names") or []]
        except (OSError, ValueError, AttributeError):
            continue
        if bands and set(bands) <= set(SENTINEL2_BANDS):
            out[f.stem] = bands
    return out


def _warn_missing_s2_bands(folder: Any, names: Sequence[str]) -> None:
    """Warn when a Sentinel-2 stack holds at least half of a bundled model's bands but not all of them (B10 aside:
    L2A products have none), naming the missing bands."""
    have = set(names)
    models = _bundled_s2_models()
    short = {}
    for model, bands in models.items():
        need = [b for b in bands if b != "B10" or "B10" in have]
        missing = [b for b in need if b not in have]
        if missing and 2 * (len(need) - len(missing)) >= len(need):
            short[model] = missing
    if short:
        missing = [b for b in SENTINEL2_BANDS if any(b in m for m in short.values())]
        warnings.warn(
            f"{folder}: Sentinel-2 band(s) {', '.join(missing)} missing (stacked: {', '.join(names)}); the bundled "
            + ", ".join(f"{m} model reads {', '.join(models[m])}" for m in short)
            + ": add the missing band files to use it on this stack",
            ChangedetWarning, stacklevel=3,
        )

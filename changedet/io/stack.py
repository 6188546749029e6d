"""Stack a folder of single-band rasters into one multi-band GeoTIFF on the finest grid.

This is how a Sentinel-2 date delivered as one file per band (e.g. an OSCD city's ``imgs_1`` folder: B01..B12 and
B8A at 10, 20 and 60 m) becomes one raster that :func:`~changedet.io.alignment.open_pair` can compare: every band is
resampled onto the grid of the finest band (pixel sizes compared in metres, degrees converted), bands are ordered as
on the sensor (B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12) and named in the band descriptions,
the acquisition (sensing) date is written as the ``ACQUISITION_DATE`` tag and, where the files tell, the sensor as
the ``SPACECRAFT_ID`` tag (``SENTINEL_2A``, ``LANDSAT_5``, ...). Sentinel-2 layers that are not reflectance bands
(``TCI``, ``AOT``, ``WVP``, ``SCL``, ...) are left out. Landsat files (named with a Landsat product id, as USGS and
Google Earth Engine export them, or beside an ``MTL`` file) keep Landsat's own band names (``B1``, ``SR_B4``) without
the thermal, panchromatic and QA layers. Any other folder of single-band files works too: bands are then named after
the files and ordered naturally (``band2`` before ``band10``). Recognising Sentinel-2 and Landsat products, their
bands, dates and sensors is :mod:`changedet.io.products`' part; this module lists the folder, reads each band onto the
reference grid and writes the stack.

The output is a Cloud-Optimised GeoTIFF (tiled, DEFLATE, overviews) written under a temporary name and renamed when
complete; memory use is bounded by one block row of one band.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from changedet.errors import ChangedetWarning, InputError, NotGeoreferencedWarning, ReprojectedInputWarning
from changedet.io.products import (
    _RES_SUFFIX,
    _S2_AUX,
    _S2_OLD_FORMAT,
    RASTER_SUFFIXES,
    SENTINEL2_BANDS,
    _enclosing_safe,
    _landsat_layout,
    _Layout,
    _only_sentinel2,
    _read_mtl,
    _s2_folder_info,
    _s2_product_info,
    _safe_layout,
    band_name_from_file,
    landsat_band_files,
    list_band_files,
    safe_band_files,
)
from changedet.io.raster import COGWriter, date_from_name, open_raster

# the product recognition lives in changedet.io.products; its public names stay importable from here
__all__ = ["RASTER_SUFFIXES", "SENTINEL2_BANDS", "band_name_from_file", "landsat_band_files", "list_band_files",
           "safe_band_files", "stack_bands"]

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _Band:
    path: Path
    name: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None


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


def _coverage_problems(bands: Sequence[_Band], ref: _Band, folder: Any) -> list[str]:
    """The names of the bands whose footprint covers only part of ``ref``'s grid; an :class:`InputError` for a band
    that does not touch it at all."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    ref_box = array_bounds(ref.height, ref.width, ref.transform)  # (west, south, east, north)
    partial = []
    for b in bands:
        bb = array_bounds(b.height, b.width, b.transform)
        box = transform_bounds(b.crs, ref.crs, *bb, densify_pts=21) if b.crs != ref.crs else bb
        w, s_, e, n = max(box[0], ref_box[0]), max(box[1], ref_box[1]), min(box[2], ref_box[2]), min(box[3], ref_box[3])
        if w >= e or s_ >= n:
            raise InputError(
                f"{folder}: {b.path.name} does not overlap {ref.path.name} (bounds {tuple(round(v, 3) for v in box)} "
                f"against {tuple(round(v, 3) for v in ref_box)}); stack files of the same place"
            )
        tx, ty = 0.5 * abs(ref.transform.a), 0.5 * abs(ref.transform.e)  # half a pixel
        if box[0] > ref_box[0] + tx or box[1] > ref_box[1] + ty or box[2] < ref_box[2] - tx \
                or box[3] < ref_box[3] - ty:
            partial.append(b.path.name)
    return partial


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


def _pixel_area_m2(b: _Band) -> float:
    """A band's pixel area in square metres: degrees converted at the band's centre latitude, other linear units
    by the CRS's factor (pixel units for a band without georeferencing)."""
    det = abs(b.transform.determinant)
    if b.crs is None:
        return det
    if b.crs.is_geographic:
        lat = max(-89.0, min(89.0, (b.transform * (b.width / 2, b.height / 2))[1]))
        return det * 111_320.0 * math.cos(math.radians(lat)) * 110_574.0
    try:
        factor = float(b.crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - a CRS without linear units: take them as metres
        factor = 1.0
    return det * factor * factor


def _reference_band(bands: Sequence[_Band], folder: Any) -> _Band:
    """The band whose grid the stack takes: the finest pixel in metres; bands within 10 % of it tie, and the tie
    goes to the CRS most bands share, then the finer pixel, then more pixels, then file order. Warns naming the bands
    in other CRSs, which are reprojected."""
    areas = [_pixel_area_m2(b) for b in bands]
    finest = min(areas)
    crs_count: dict[str, int] = {}
    for b in bands:
        key = b.crs.to_wkt()  # type: ignore[union-attr]
        crs_count[key] = crs_count.get(key, 0) + 1
    tied = [i for i, a in enumerate(areas) if a <= finest * 1.21]  # 1.1 ** 2: 10 % in pixel size
    i_ref = min(tied, key=lambda i: (-crs_count[bands[i].crs.to_wkt()], areas[i],  # type: ignore[union-attr]
                                     -bands[i].width * bands[i].height, i))
    ref = bands[i_ref]
    other = [b for b in bands if b.crs != ref.crs]
    if other:
        crss = ", ".join(dict.fromkeys(b.crs.to_string() for b in other))  # type: ignore[union-attr]
        warnings.warn(
            f"{folder}: the CRS of {', '.join(b.path.name for b in other)} ({crss}) differs from that of "
            f"{ref.path.name} ({ref.crs.to_string()}), the band with the finest pixel "  # type: ignore[union-attr]
            f"({math.sqrt(areas[i_ref]):.3g} m); reprojected onto its grid",
            ReprojectedInputWarning, stacklevel=3,
        )
    return ref


def stack_bands(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    resampling: str = "bilinear",
    files: Sequence[str | os.PathLike[str]] | None = None,
    blocksize: int = 512,
    progress: Callable[[int, int], None] | None = None,
    interleave: str = "band",
) -> Path:
    """Stack single-band rasters into one multi-band COG on the finest grid.

    Parameters
    ----------
    folder
        Folder of single-band rasters (``.tif``, ``.jp2``, ...), a Sentinel-2 ``.SAFE`` product or its ``.zip`` (L1C
        or L2A; see :func:`safe_band_files`: the finest file of each band) or a Landsat scene folder
        (:func:`landsat_band_files`: the reflective 30 m bands under Landsat's names). In a folder of Sentinel-2 band
        files (an L2A ``IMG_DATA/R10m`` folder, Earth Search's ``B01.tif`` .. ``B12.tif``) the layers that are not
        reflectance bands (``TCI``, ``AOT``, ``WVP``, ``SCL``, ``QA*``, ...) are left out (logged at INFO). With
        ``files``, used only to name the source and to find the date and the product around the files.
    out
        Output GeoTIFF.
    overwrite
        Replace ``out`` if it exists.
    resampling
        How coarser bands are resampled onto the finest grid (``bilinear``, ``nearest``, ``cubic``, ...).
    files
        Explicit list of files, used in the given order (unless all carry Sentinel-2 band names, or all are Landsat
        band files: then named and ordered as on the sensor); nothing is left out.
    blocksize
        Tile size of the output.
    progress
        Called as ``progress(done, total)`` after each band.
    interleave
        ``"band"`` (each block holds one band; see :class:`~changedet.io.raster.COGWriter`): the default
        true-colour model reads B04, B03, B02 of a 13-band stack without decoding the other ten, which made
        ``changedet detect`` 16-24 % faster end to end at 8192 px (README, Performance); reading every band is
        10-35 % slower than from ``"pixel"`` (each block holds all bands) and a 13-band model 3-7 % slower end to end.

    Notes
    -----
    The grid is that of the band with the finest pixel measured in metres (pixel sizes in degrees converted at the
    band's latitude); bands within 10 % of it tie and the CRS most bands share wins. Bands in another CRS are
    reprojected onto it with a :class:`~changedet.errors.ReprojectedInputWarning` naming them.

    Without a declared nodata value, 0 is nodata for Landsat bands and for Sentinel-2 bands stored as 16-bit (or
    wider) integers: ESA's and USGS's fill value.

    The ``ACQUISITION_DATE`` tag: OSCD's ``dates.txt`` beside an ``imgs_1``/``imgs_2`` folder; else the sensing date
    of a Sentinel-2 product (granule ``SENSING_TIME``, product start time, the ``_V<date>`` of an old-format product
    name, a current-format product or file name; the date in an old-format ``S2A_OPER_..._TL_...`` file name is the
    processing date and is not used) or a Landsat ``MTL`` file's ``DATE_ACQUIRED``; else the first date in the file
    names, then in the folder name. The ``SPACECRAFT_ID`` tag names the sensor where the files tell it (Landsat
    product ids or the ``MTL`` file: ``LANDSAT_5`` .. ``LANDSAT_9``; Sentinel-2: ``SENTINEL_2A`` .. ``SENTINEL_2D``,
    ``SENTINEL_2`` where the satellite is not named).

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    InputError
        The folder does not exist or has no raster, a file has more than one band, two files have the same band
        name, the folder holds several Landsat scenes, or the files mix georeferenced and non-georeferenced rasters
        (or differ in size without georeferencing).
    RasterReadError
        A file cannot be read.
    OutputExistsError
        ``out`` exists and ``overwrite`` is False.

    Warns
    -----
    ChangedetWarning
        A folder with only one resolution of an L2A product; a Sentinel-2 stack that misses some of the bands a
        bundled model reads; files with different nodata values; bands that do not cover the whole grid; old-format
        Sentinel-2 names without a sensing date.
    ReprojectedInputWarning
        Bands in another CRS than the grid's.
    """
    src_dir = Path(os.fspath(folder))
    if files is None:
        d = src_dir
        if not d.exists():
            raise InputError(f"{d}: does not exist; give the folder that holds one file per band.")
        if not d.is_dir() and not (d.is_file() and d.suffix.lower() == ".zip"):
            raise InputError(f"{d}: not a folder; give the folder that holds one file per band.")
        layout = _folder_layout(d, Path(os.fspath(out)).resolve())
    else:
        paths = [Path(os.fspath(p)) for p in files]
        if not paths:
            raise InputError("stack_bands: the list of files is empty.")
        layout = _named_layout(folder, paths)
    try:
        rs = Resampling[resampling.lower()]
    except KeyError:
        raise InputError(
            f"resampling {resampling!r} is not known; use nearest, bilinear, cubic or average."
        ) from None
    paths, names = layout.paths, layout.names
    if layout.skipped:
        log.info("%s: left out %s (%s)", folder, ", ".join(layout.skipped),
                 "thermal, panchromatic, QA and other files that are not the scene's reflective 30 m bands"
                 if layout.sensor == "landsat" else "layers that are not reflectance bands")
    if layout.sensor == "sentinel2":
        if layout.spacecraft is None:  # a folder of band files, not a SAFE product: look around it
            date, layout.spacecraft = _s2_folder_info(src_dir, [p.name for p in paths]) if src_dir.is_dir() \
                else _s2_product_info([p.name for p in paths], [])
            layout.date = layout.date or date
            if layout.spacecraft is None and _only_sentinel2(src_dir, paths, layout.skipped):
                layout.spacecraft = "SENTINEL_2"
        _warn_missing_s2_bands(folder, names)

    bands: list[_Band] = []
    for p, name in zip(paths, names, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(p) as ds:
                if ds.count != 1:
                    raise InputError(
                        f"{p}: has {ds.count} bands; `stack` combines single-band files. Split it first "
                        "(`gdal_translate -b N`) or use it directly."
                    )
                georef = ds.crs is not None and not ds.transform.is_identity
                bands.append(
                    _Band(
                        p,
                        name,
                        ds.crs if georef else None,
                        ds.transform,
                        ds.width,
                        ds.height,
                        ds.dtypes[0],
                        ds.nodata,
                    )
                )
    georefs = {b.crs is not None for b in bands}
    if len(georefs) > 1:
        missing = [b.path.name for b in bands if b.crs is None]
        raise InputError(
            f"{folder}: {', '.join(missing)} have no georeferencing but the other files have; fix them."
        )
    georeferenced = georefs == {True}

    if georeferenced:
        ref = _reference_band(bands, folder)
    else:
        sizes = {(b.width, b.height) for b in bands}
        if len(sizes) > 1:
            raise InputError(
                f"{folder}: the files have no georeferencing and different sizes {sorted(sizes)}; they cannot be "
                "placed on one grid."
            )
        ref = bands[0]

    dtype = np.result_type(*[np.dtype(b.dtype) for b in bands])
    declared = [b.nodata for b in bands if b.nodata is not None]
    # one nodata value for the stack: the first band's where several differ (each band's own nodata pixels are
    # written as that value, so none of them turns into data)
    nodata = declared[0] if declared else None
    if len(set(declared)) > 1:
        warnings.warn(
            f"{folder}: the files declare different nodata values ({', '.join(f'{v:g}' for v in dict.fromkeys(declared))}); "
            f"the stack marks every file's nodata pixels with {nodata:g}",
            ChangedetWarning, stacklevel=2,
        )
    fill_zero = layout.sensor == "landsat" or (
        layout.sensor == "sentinel2"
        and all(np.dtype(b.dtype).kind in "ui" and np.dtype(b.dtype).itemsize >= 2 for b in bands)
    )
    if fill_zero and not declared:
        # ESA's L1C/L2A products and USGS's Landsat bands mark pixels outside the swath with 0 (fill) without a
        # nodata tag
        nodata = 0
        bands = [_Band(b.path, b.name, b.crs, b.transform, b.width, b.height, b.dtype, 0) for b in bands]
    if georeferenced:
        partial = _coverage_problems(bands, ref, folder)
        if partial:  # the uncovered pixels must not read as data
            nodata_declared = nodata is not None
            if not nodata_declared:
                nodata = float("nan") if np.dtype(dtype).kind == "f" else 0
            warnings.warn(
                f"{folder}: {', '.join(partial)} do(es) not cover the whole grid of {ref.path.name}; the pixels "
                f"outside are marked nodata ({nodata:g}"
                + (", the files' nodata value)" if nodata_declared else "), as no file declares a nodata value"),
                ChangedetWarning, stacklevel=2,
            )
    date = _dates_txt_date(src_dir) or layout.date
    processing = None
    for text in ([] if date is not None else [*(p.name for p in paths), src_dir.name]):
        if _S2_OLD_FORMAT.match(text):  # its date is the processing time
            processing = processing or date_from_name(text)
            continue
        date = date_from_name(text)
        if date is not None:
            break
    if date is None and processing is not None:
        warnings.warn(
            f"{folder}: the date in the file names ({processing.isoformat()}) is the Sentinel-2 processing date, not "
            "the sensing date, and no product metadata was found: no ACQUISITION_DATE written; stack the .SAFE "
            "product (its name carries the sensing date after _V) to record it",
            ChangedetWarning, stacklevel=2,
        )
    tags = {"STACK_SOURCE": src_dir.name, "STACK_BANDS": ",".join(names)}
    if date is not None:
        tags["ACQUISITION_DATE"] = date.isoformat()
    if layout.spacecraft is not None:
        tags["SPACECRAFT_ID"] = layout.spacecraft

    width, height = ref.width, ref.height
    rows = max(blocksize, (4 * 1024 * 1024) // max(1, width * dtype.itemsize) // blocksize * blocksize)
    with (
        COGWriter(
            out,
            width=width,
            height=height,
            count=len(bands),
            dtype=dtype,
            crs=ref.crs,
            transform=ref.transform if georeferenced else None,
            nodata=nodata,
            descriptions=names,
            tags=tags,
            overwrite=overwrite,
            blocksize=blocksize,
            overview_resampling="average",
            interleave=interleave,
        ) as writer,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for i, b in enumerate(bands):
            same_grid = (
                b.crs == ref.crs
                and b.transform.almost_equals(ref.transform)
                and (b.width, b.height) == (width, height)
            )
            with open_raster(b.path, probe=False) as ds:
                src = (
                    ds
                    if same_grid or not georeferenced
                    else WarpedVRT(
                        ds,
                        crs=ref.crs,
                        transform=ref.transform,
                        width=width,
                        height=height,
                        resampling=rs,
                        src_nodata=b.nodata,
                        nodata=b.nodata if b.nodata is not None else nodata,
                    )
                )
                try:
                    for r0 in range(0, height, rows):
                        h = min(rows, height - r0)
                        win = Window(0, r0, width, h)
                        if nodata is None:
                            arr = src.read(1, window=win, out_dtype=dtype)
                        else:  # this band's nodata (and, warped, the pixels it does not cover) as the stack's
                            arr = src.read(1, window=win, masked=True).astype(dtype).filled(nodata)
                        writer.write_band(i + 1, arr, win)
                finally:
                    if src is not ds:
                        src.close()
            if progress is not None:
                progress(i + 1, len(bands))
    return Path(os.fspath(out))

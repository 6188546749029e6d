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
bands, dates and sensors is :mod:`changedet.io.products`' part; this module reads each band onto the reference grid
and writes the stack. Listing the folder (which files, in what order, under what names) is in
:mod:`changedet.io.stack_layout` and the choice of the reference grid in :mod:`changedet.io.stack_grid`.

The output is a Cloud-Optimised GeoTIFF (tiled, DEFLATE, overviews) written under a temporary name and renamed when
complete; memory use is bounded by one block row of one band.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from changedet.errors import (  # noqa: F401
    ChangedetWarning,
    InputError,
    NotGeoreferencedWarning,
    ReprojectedInputWarning,
)
from changedet.io.products import (  # noqa: F401 - the private names the layout uses stay importable from here
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
from changedet.io.stack_grid import _Band, _coverage_problems, _pixel_area_m2, _reference_band  # noqa: F401
from changedet.io.stack_layout import (  # noqa: F401
    _bundled_s2_models,
    _dates_txt_date,
    _folder_layout,
    _generic_names,
    _named_layout,
    _warn_missing_s2_bands,
)

# the product recognition lives in changedet.io.products; its public names stay importable from here
__all__ = ["RASTER_SUFFIXES", "SENTINEL2_BANDS", "band_name_from_file", "landsat_band_files", "list_band_files",
           "safe_band_files", "stack_bands"]

log = logging.getLogger(__name__)


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

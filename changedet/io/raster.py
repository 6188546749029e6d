"""Raster input/output: validated open, metadata, windowed reads and Cloud-Optimised GeoTIFF writing.

Only this module (and :mod:`changedet.io.stack`) touches raster paths; the rest of changedet passes open datasets
or :class:`~changedet.io.alignment.AlignedPair` objects around. Arrays are always (band, row, col).

Every writer goes through :func:`atomic_output`: the data are written under a temporary name in the output folder
and renamed onto the final name only when complete, so a failed or interrupted run leaves no half-written file.

Header metadata (:class:`RasterInfo`, acquisition dates) is in :mod:`changedet.io.metadata`, atomic output in
:mod:`changedet.io.output` and the COG writer in :mod:`changedet.io.cog`; their public names stay importable
from here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window

from changedet.errors import (
    InputError,
    NotGeoreferencedWarning,
    RasterReadError,
    root_message,
)
from changedet.io.cog import COGWriter, cog_layout_errors, overview_factors, to_cog, write_cog
from changedet.io.metadata import (  # noqa: F401
    PathLike,
    RasterInfo,
    _info_from_dataset,
    crs_to_string,
    date_from_name,
    date_from_tags,
    ensure_open,
    is_georeferenced,
)
from changedet.io.output import atomic_output

__all__ = [
    "DEFAULT_MAX_BLOCK_BYTES",
    "DEFAULT_MAX_SAMPLES",
    "COGWriter",
    "RasterInfo",
    "atomic_output",
    "cog_layout_errors",
    "date_from_name",
    "date_from_tags",
    "is_georeferenced",
    "open_raster",
    "overview_factors",
    "raster_info",
    "read_window",
    "to_cog",
    "write_cog",
]

#: Largest ``width * height * count`` a raster header may declare before :func:`open_raster` refuses it
#: (2**36 samples, about 69 billion: a 13-band Sentinel-2 tile has 1.6 billion). Override per call with
#: ``max_samples=`` or for a whole session with the ``CHANGEDET_MAX_SAMPLES`` environment variable.
DEFAULT_MAX_SAMPLES = 2**36

#: Largest block (tile or strip, all bands of a pixel-interleaved file) in bytes that :func:`open_raster` accepts:
#: GDAL allocates a whole block to read any part of it. 1 GiB; override with ``CHANGEDET_MAX_BLOCK_BYTES``.
DEFAULT_MAX_BLOCK_BYTES = 2**30

# GDAL drivers whose files carry no georeferencing of their own (a world file or .aux.xml may add it).
_PLAIN_IMAGE_DRIVERS = {"PNG", "JPEG", "BMP", "GIF", "WEBP"}


def _max_samples(max_samples: int | None) -> int:
    if max_samples is not None:
        return int(max_samples)
    env = os.environ.get("CHANGEDET_MAX_SAMPLES")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise RasterReadError(
                f"CHANGEDET_MAX_SAMPLES={env!r} is not a number; set it to a sample count such as 1e11 or unset it"
            ) from None
    return DEFAULT_MAX_SAMPLES


def _max_block_bytes() -> int:
    env = os.environ.get("CHANGEDET_MAX_BLOCK_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise RasterReadError(
                f"CHANGEDET_MAX_BLOCK_BYTES={env!r} is not a number; set it to a byte count such as 4e9 or unset it"
            ) from None
    return DEFAULT_MAX_BLOCK_BYTES


def unsupported_input_message(obj: Any) -> str:
    """Why ``obj`` cannot be read as a raster input, and what to pass instead (the message of an InputError).

    >>> unsupported_input_message(42)
    'an int was given where a raster is expected; changedet reads a path (str or pathlib.Path, any raster GDAL reads, a .vrt file included), a dataset opened with rasterio.open(), or an xarray.DataArray with a CRS (rioxarray)'
    """
    accepted = ("changedet reads a path (str or pathlib.Path, any raster GDAL reads, a .vrt file included), a "
                "dataset opened with rasterio.open(), or an xarray.DataArray with a CRS (rioxarray)")
    kind = type(obj).__name__
    if kind == "WarpedVRT" and hasattr(obj, "src_dataset"):
        src = getattr(obj.src_dataset, "name", "the source file")
        return (f"{obj.name}: a rasterio WarpedVRT is not accepted; {accepted}. changedet aligns AFTER onto "
                f"BEFORE's grid itself (reprojecting and resampling it): pass the file the VRT was made from "
                f"({src}), or save the VRT with rasterio.shutil.copy(vrt, 'after.vrt', driver='VRT') and pass "
                "that path")
    if type(obj).__module__.split(".")[0] == "xarray":
        return (f"an xarray {kind} was given where a raster file or an open rasterio dataset is expected; "
                "changedet.detect, detect_series, check_pair and open_pair accept an xarray.DataArray with a CRS "
                "(rioxarray), but this function reads a path or a dataset opened with rasterio.open(): write the "
                "array to a GeoTIFF first (da.rio.to_raster('before.tif')) and pass that path")
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return f"{article} {kind} was given where a raster is expected; {accepted}"


def open_raster(path: PathLike, *, max_samples: int | None = None, probe: bool = True) -> DatasetReader:
    """Open a raster for reading, with clear errors for every way a file can be unusable.

    Parameters
    ----------
    path
        Any raster GDAL reads (GeoTIFF, COG, ENVI, JP2, VRT, PNG/JPEG/BMP, ``/vsi...`` paths).
    max_samples
        Largest ``width * height * count`` accepted (default :data:`DEFAULT_MAX_SAMPLES` or the
        ``CHANGEDET_MAX_SAMPLES`` environment variable). The check runs on the header, before any pixel is read.
        Blocks (tiles or strips) larger than :data:`DEFAULT_MAX_BLOCK_BYTES` (or ``CHANGEDET_MAX_BLOCK_BYTES``)
        are refused too, since GDAL allocates a whole block to read any pixel of it.
    probe
        Read a corner of the first and of the last block, so that a truncated file fails here and not halfway
        through a run.

    Returns
    -------
    rasterio.io.DatasetReader
        The open dataset; close it (or use it as a context manager).

    Raises
    ------
    RasterReadError
        Missing file, a directory, an empty file, not a raster, a truncated/corrupt file, or a header that
        declares more than ``max_samples`` samples or a gigantic block. The message names the path and the fix.

    Warns
    -----
    NotGeoreferencedWarning
        The raster has no CRS/geotransform (e.g. a PNG): pixel coordinates are used.
    InputError
        ``path`` is not a path (e.g. a rasterio ``WarpedVRT``): the message says what is accepted.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(unsupported_input_message(path))
    text = os.fspath(path)
    is_vsi = text.startswith("/vsi") or "://" in text  # GDAL's virtual file systems and URLs (https://, s3://)
    p = Path(text)
    if not is_vsi:
        try:
            if p.is_dir():
                raise RasterReadError(
                    f"{text}: is a directory, not a raster. Pass a raster file; to combine a folder of single-band "
                    f"files into one raster run `changedet stack {text} -o stacked.tif`."
                )
            if not p.exists():
                hint = "" if p.is_absolute() else f" (relative paths start at {Path.cwd()})"
                raise RasterReadError(f"{text}: no such file. Check the path{hint}.")
            if p.is_file() and p.stat().st_size == 0:
                raise RasterReadError(f"{text}: the file is empty (0 bytes). Re-download or re-export it.")
        except OSError as exc:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
            if isinstance(exc, RasterReadError):
                raise
            raise RasterReadError(f"{text}: cannot be opened ({exc.strerror or exc}). Check the path.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(text)
    except _CORRUPT_HEADER_ERRORS as exc:  # a corrupt header can fail in GDAL or while rasterio decodes it
        msg = str(exc)
        if (
            "not recognized as being in a supported file format" in msg
            or "not recognized as a supported" in msg
        ):
            raise RasterReadError(
                f"{text}: not a raster format GDAL can read (found: {_sniff(p) if not is_vsi else 'unknown'}). "
                "Check that the file is a GeoTIFF/JP2/PNG/... and not an HTML page, a text file or an archive; "
                "re-download or re-export it."
            ) from exc
        raise RasterReadError(
            f"{text}: cannot be opened as a raster ({msg}). The file may be truncated or corrupt: re-download or "
            "re-export it."
        ) from exc
    try:
        _validate(ds, text, _max_samples(max_samples), probe)
    except BaseException:
        ds.close()
        raise
    if not is_georeferenced(ds):
        extra = ""
        if ds.gcps[0]:
            extra = (
                " It has ground control points: warp it first with `gdalwarp -t_srs EPSG:xxxx in out.tif`."
            )
        where = (
            "pixel coordinates are used (identity transform, no CRS)" if ds.transform.is_identity
            else f"it has a geotransform {tuple(round(v, 6) for v in tuple(ds.transform)[:6])} but no CRS, so "
                 "its units are unknown (areas are not in square metres)"
        )
        warnings.warn(
            f"{text}: no georeferencing (driver {ds.driver}); {where}.{extra}",
            NotGeoreferencedWarning,
            stacklevel=2,
        )
    return ds


def _sniff(p: Path) -> str:
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return "unreadable"
    if not head:
        return "empty file"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if head.startswith(b"PK"):
        return "a ZIP archive (extract it first, or open it as /vsizip/...)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"text starting with {head[:32].decode('ascii', 'replace')!r}"
    return f"{len(head)}+ bytes of unknown binary data"


# What a damaged file can raise while rasterio reads its header: GDAL errors, but also undecodable text (a CRS or
# a metadata item with invalid UTF-8) and out-of-range numbers.
_CORRUPT_HEADER_ERRORS = (rasterio.errors.RasterioError, UnicodeError, ValueError, OverflowError)

_MIN_BLOCK_BYTES_CHECKED = 64 << 20

#: Largest window side read by the open-time probe (a damaged header may declare blocks of a billion pixels).
_PROBE_SIDE = 256


def _validate(ds: DatasetReader, text: str, limit: int, probe: bool) -> None:
    try:  # everything raster_info and the readers use from the header
        ds.crs, ds.transform, ds.nodata, ds.dtypes, ds.descriptions, ds.mask_flag_enums  # noqa: B018
        ds.tags()
        block_shapes = ds.block_shapes
    except _CORRUPT_HEADER_ERRORS as exc:
        raise RasterReadError(
            f"{text}: the raster header is corrupt ({type(exc).__name__}: {exc}). Re-download or re-export it."
        ) from exc
    samples = int(ds.width) * int(ds.height) * int(ds.count)
    if ds.count == 0 or ds.width == 0 or ds.height == 0:
        raise RasterReadError(
            f"{text}: the raster has no pixels ({ds.count} bands of {ds.width}x{ds.height}); "
            "it may be a container of subdatasets: open one of ds.subdatasets instead."
        )
    if samples > limit:
        raise RasterReadError(
            f"{text}: the header declares {ds.width} x {ds.height} pixels x {ds.count} bands = {samples:,} samples, "
            f"more than the limit of {limit:,}. If the file really is that large, raise the limit with "
            "max_samples= or the CHANGEDET_MAX_SAMPLES environment variable; otherwise the header is corrupt."
        )
    # GDAL decodes whole blocks: a (damaged) header declaring a block of gigabytes would allocate that much on the
    # first read, even for a small window.
    block_limit = _max_block_bytes()
    try:
        pixel_interleaved = ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE", "").upper() == "PIXEL"
    except _CORRUPT_HEADER_ERRORS:
        pixel_interleaved = True
    interleaved = ds.count if pixel_interleaved else 1
    for (bh, bw), dtype in zip(block_shapes, ds.dtypes, strict=False):
        itemsize = np.dtype(dtype).itemsize
        nbytes = int(bh) * int(bw) * itemsize * interleaved
        # a block far larger than the whole image (beyond 64 MiB) only comes from a damaged header
        image_bytes = int(ds.width) * int(ds.height) * itemsize * interleaved
        if nbytes > max(_MIN_BLOCK_BYTES_CHECKED, 4 * image_bytes):
            raise RasterReadError(
                f"{text}: the header declares blocks of {bw} x {bh} pixels ({nbytes:,} bytes each) for an image of "
                f"{ds.width} x {ds.height} pixels; the header is corrupt: re-download or re-export it."
            )
        if nbytes > block_limit:
            raise RasterReadError(
                f"{text}: the header declares blocks of {bw} x {bh} pixels ({nbytes:,} bytes each), more than the "
                f"limit of {block_limit:,} bytes that one read may allocate. If the file is intact, re-tile it "
                "(`gdal_translate -co TILED=YES in.tif out.tif`) or raise the limit with the "
                "CHANGEDET_MAX_BLOCK_BYTES environment variable; otherwise the header is corrupt: re-download or "
                "re-export it."
            )
    if not probe:
        return
    # Read a corner of the first block of band 1 and of the last block of the last band (GDAL decodes those whole
    # blocks): a truncated file fails here. The windows stay small whatever block size the header declares.
    try:
        for bidx, last in ((1, False), (ds.count, True)):
            bh, bw = block_shapes[bidx - 1]
            bh, bw = max(1, min(bh, ds.height, _PROBE_SIDE)), max(1, min(bw, ds.width, _PROBE_SIDE))
            if last:
                win = Window(ds.width - bw, ds.height - bh, bw, bh)
            else:
                win = Window(0, 0, bw, bh)
            ds.read(bidx, window=win)
    except (*_CORRUPT_HEADER_ERRORS, MemoryError) as exc:
        raise RasterReadError(
            f"{text}: the header is readable but the pixel data are not ({root_message(exc)}); the file is probably truncated "
            "or corrupt. Re-download or re-export it."
        ) from exc


def raster_info(source: PathLike | DatasetReader) -> RasterInfo:
    """Header metadata of a raster (a path, opened with :func:`open_raster`, or an open dataset).

    >>> import numpy as np, tempfile, os
    >>> from changedet.testing import make_geotiff
    >>> d = tempfile.mkdtemp()
    >>> p = make_geotiff(os.path.join(d, "S2_20190501_x.tif"), np.zeros((2, 8, 8), "uint16"), nodata=0)
    >>> info = raster_info(p)
    >>> info.count, info.width, info.dtypes, info.nodata, info.date.isoformat(), str(info.crs)
    (2, 8, ('uint16', 'uint16'), 0.0, '2019-05-01', 'EPSG:32631')
    """
    if isinstance(source, DatasetReader | DatasetWriter):
        return _info_from_dataset(source)
    with open_raster(source) as ds:
        return _info_from_dataset(ds)


def read_window(
    ds: DatasetReader,
    window: Window | None = None,
    indexes: Sequence[int] | int | None = None,
    *,
    out_dtype: str | np.dtype | None = None,
) -> np.ndarray:
    """Read a window of a dataset as a (band, row, col) array.

    Parameters
    ----------
    ds
        An open dataset.
    window
        A :class:`rasterio.windows.Window` (None reads everything).
    indexes
        1-based band indexes (an int reads one band but still returns a 3-D array); None reads all bands.
    out_dtype
        Cast on read (e.g. ``"float32"``).

    Raises
    ------
    RasterReadError
        The dataset is closed, the indexes are out of range or the pixels cannot be read (truncated file, I/O
        error).
    """
    ensure_open(ds)
    if indexes is None:
        idx = list(range(1, ds.count + 1))
    elif isinstance(indexes, int | np.integer):
        idx = [int(indexes)]
    else:
        idx = [int(i) for i in indexes]
    bad = [i for i in idx if not 1 <= i <= ds.count]
    if bad:
        raise RasterReadError(
            f"{ds.name}: band index {bad} out of range; the raster has {ds.count} band(s), indexes are 1-based "
            f"(1..{ds.count})."
        )
    try:
        return ds.read(idx, window=window, out_dtype=out_dtype)
    except rasterio.errors.RasterioError as exc:
        raise RasterReadError(
            f"{ds.name}: cannot read window {window} ({root_message(exc)}); the file may be truncated or corrupt."
        ) from exc

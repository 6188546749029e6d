"""What changedet knows about a raster from its header: :class:`RasterInfo` and the acquisition date.

:func:`~changedet.io.raster.raster_info` fills a :class:`RasterInfo` from an open dataset (no pixel is read). The
acquisition date comes from the metadata items (:func:`date_from_tags`) or the file name (:func:`date_from_name`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rasterio.errors
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReader, DatasetWriter

from changedet.errors import RasterReadError

__all__ = ["RasterInfo", "crs_to_string", "date_from_name", "date_from_tags", "is_georeferenced"]

# a path as text or os.PathLike (the path type of the raster modules)
PathLike = str | os.PathLike[str]

# Metadata items that hold an acquisition date, most specific first (GDAL, Sentinel-2 SAFE, Landsat MTL, IMAGERY).
_DATE_TAGS = (
    "ACQUISITION_DATE",
    "ACQUISITIONDATETIME",
    "DATE_ACQUIRED",
    "ACQUISITION_DATETIME",
    "SENSING_TIME",
    "SENSING_DATE",
    "DATATAKE_1_DATATAKE_SENSING_START",
    "PRODUCT_START_TIME",
    "START_TIME",
    "DATETIME",
    "DATE",
    "TIFFTAG_DATETIME",  # usually the processing time: last resort, after the file name
)

_DATE_IN_TEXT = re.compile(
    r"(?<![0-9])((?:19|20)[0-9]{2})([-_:./]?)(0[1-9]|1[0-2])\2(0[1-9]|[12][0-9]|3[01])(?:[T_ ]?[0-9]{2}:?[0-9]{2}(?::?[0-9]{2})?)?(?![0-9])"
)


def _parse_date(text: str) -> _dt.date | None:
    """The first plausible calendar date in ``text`` (``2016:01:20 10:43:45``, ``2019-05-01``, ``20190501T...``)."""
    for m in _DATE_IN_TEXT.finditer(text):
        try:
            return _dt.date(int(m.group(1)), int(m.group(3)), int(m.group(4)))
        except ValueError:
            continue
    return None


def date_from_tags(tags: Mapping[str, str]) -> _dt.date | None:
    """Acquisition date from raster metadata items, or None.

    Acquisition-specific items (``ACQUISITION_DATE``, ``DATE_ACQUIRED``, ``SENSING_TIME``, ...) are tried before
    the generic ``TIFFTAG_DATETIME``, which is usually the processing time.

    >>> date_from_tags({"TIFFTAG_DATETIME": "2016:01:20 10:43:45"})
    datetime.date(2016, 1, 20)
    >>> date_from_tags({"ACQUISITION_DATE": "2019-05-01", "TIFFTAG_DATETIME": "2021:01:01 00:00:00"})
    datetime.date(2019, 5, 1)
    """
    upper = {str(k).upper(): str(v) for k, v in tags.items()}
    for key in _DATE_TAGS:
        if key in upper:
            parsed = _parse_date(upper[key])
            if parsed is not None:
                return parsed
    return None


def date_from_name(name: PathLike) -> _dt.date | None:
    """Acquisition date found in a file name, or None.

    >>> date_from_name("S2A_OPER_MSI_L1C_TL_MTI__20160120T104345_A003020_T39QZG_B01.tif")
    datetime.date(2016, 1, 20)
    >>> date_from_name("city_2019-05-01.tif"), date_from_name("before_20190501.tif"), date_from_name("b.tif")
    (datetime.date(2019, 5, 1), datetime.date(2019, 5, 1), None)
    """
    return _parse_date(Path(os.fspath(name)).name)


def is_georeferenced(ds: DatasetReader | DatasetWriter) -> bool:
    """Whether a dataset has a CRS and a non-identity geotransform."""
    return ds.crs is not None and not ds.transform.is_identity


@dataclass(frozen=True)
class RasterInfo:
    """What changedet knows about a raster, read from its header (no pixel is read).

    Attributes mirror rasterio's names. ``crs`` is None and ``transform`` the identity (pixel coordinates, y down)
    for a raster without georeferencing; ``georeferenced`` says which case applies. ``date`` is the acquisition
    date from the metadata or the file name, when one is found.
    """

    path: str
    driver: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    descriptions: tuple[str | None, ...]
    date: _dt.date | None
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]
    georeferenced: bool
    tags: Mapping[str, str] = field(default_factory=dict, compare=False)
    block_shapes: tuple[tuple[int, int], ...] = ()
    compression: str | None = None
    overviews: tuple[int, ...] = ()
    date_source: str | None = None
    colorinterp: tuple[str, ...] = ()  # GDAL colour interpretation per band: "red", "green", "blue", "alpha"...
    interleave: str | None = None  # "band" or "pixel" for a multi-band GeoTIFF (what a block holds), else None
    tiled: bool | None = None  # GDAL's TIFF layout (tiles, not strips); None where the driver does not say
    mask: str | None = None  # "per-dataset mask" (an internal or .msk mask), "alpha band", or None (nodata/none)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(count, height, width)."""
        return (self.count, self.height, self.width)

    @property
    def is_geographic(self) -> bool:
        """Whether the CRS is geographic (degrees)."""
        return bool(self.crs is not None and self.crs.is_geographic)

    @property
    def name(self) -> str:
        """The file name (last path component)."""
        return Path(self.path).name

    def band_names(self) -> list[str]:
        """Band descriptions where set, else ``B1``, ``B2``, ..."""
        return [d if d else f"B{i}" for i, d in enumerate(self.descriptions, start=1)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (CRS as ``EPSG:xxxx`` or WKT, transform as 6 numbers, date as ISO text)."""
        return {
            "path": self.path,
            "driver": self.driver,
            "crs": crs_to_string(self.crs),
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtypes": list(self.dtypes),
            "nodata": _json_float(self.nodata),
            "descriptions": list(self.descriptions),
            "date": self.date.isoformat() if self.date else None,
            "date_source": self.date_source,
            "res": list(self.res),
            "bounds": list(self.bounds),
            "georeferenced": self.georeferenced,
            "block_shapes": [list(b) for b in self.block_shapes],
            "compression": self.compression,
            "overviews": list(self.overviews),
            "interleave": self.interleave,
            "tiled": self.tiled,
            "mask": self.mask,
            "colorinterp": list(self.colorinterp),
            "tags": dict(self.tags),
        }


def _json_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def crs_to_string(crs: CRS | None) -> str | None:
    """``EPSG:xxxx`` when the CRS has an EPSG code, else its WKT; None for None."""
    if crs is None:
        return None
    epsg = crs.to_epsg(confidence_threshold=90)
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def ensure_open(ds: Any) -> None:
    """Raise :class:`~changedet.errors.RasterReadError` when an open-dataset input (a rasterio dataset) is closed.

    A dataset from a ``with rasterio.open(...) as ds:`` block that has ended still has its name, CRS and transform,
    but reading its metadata or pixels makes GDAL print ``ERROR 10: Pointer 'hObject' is NULL`` and rasterio raise
    ``RasterioIOError: Dataset is closed``: this check comes first and says what to pass instead.
    """
    if getattr(ds, "closed", False):
        name = getattr(ds, "name", "the dataset")
        raise RasterReadError(
            f"{name}: the rasterio dataset given is closed (its `with rasterio.open(...)` block has ended or "
            f".close() was called), so it cannot be read. Pass the path ({name!r}) instead, or keep the dataset "
            "open (call changedet inside the `with` block)."
        )


def _info_from_dataset(ds: DatasetReader | DatasetWriter) -> RasterInfo:
    ensure_open(ds)
    name = ds.name
    try:
        tags = dict(ds.tags())
    except rasterio.errors.RasterioError:  # pragma: no cover - defensive
        tags = {}
    date_source: str | None = None
    date = None
    # Specific acquisition tags, then the file name, then TIFFTAG_DATETIME (usually a processing time).
    specific = {k: v for k, v in tags.items() if k.upper() != "TIFFTAG_DATETIME"}
    for domain in ("IMAGERY",):
        with contextlib.suppress(Exception):
            specific.update(ds.tags(ns=domain))
    date = date_from_tags(specific)
    if date is not None:
        date_source = "tags"
    if date is None:
        date = date_from_name(name)
        if date is not None:
            date_source = "file name"
    if date is None:
        date = date_from_tags(tags)
        if date is not None:
            date_source = "TIFFTAG_DATETIME"
    compression = None
    with contextlib.suppress(Exception):
        compression = ds.compression.name if ds.compression is not None else None
    overviews: tuple[int, ...] = ()
    with contextlib.suppress(Exception):
        overviews = tuple(ds.overviews(1))
    nodata = ds.nodata
    colorinterp: tuple[str, ...] = ()
    with contextlib.suppress(Exception):
        colorinterp = tuple(ci.name for ci in ds.colorinterp)
    interleave = None
    if ds.count > 1:
        with contextlib.suppress(Exception):
            interleave = ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE", "").lower() or None
    tiled = None
    if ds.driver == "GTiff" and ds.block_shapes:
        # TIFF strips span the image's width; tiles are multiples of 16 px and may be wider than a small image
        bh, bw = ds.block_shapes[0]
        tiled = bw > ds.width or (bw < ds.width and bh > 1) or (bw == bh and bw % 16 == 0)
    mask = None
    with contextlib.suppress(Exception):
        flags = ds.mask_flag_enums[0]
        if MaskFlags.alpha in flags:
            mask = "alpha band"
        elif MaskFlags.per_dataset in flags:
            mask = "per-dataset mask"
    return RasterInfo(
        path=name,
        driver=ds.driver,
        crs=ds.crs if is_georeferenced(ds) else None,
        transform=ds.transform,
        width=int(ds.width),
        height=int(ds.height),
        count=int(ds.count),
        dtypes=tuple(str(d) for d in ds.dtypes),
        nodata=None if nodata is None else float(nodata),
        descriptions=tuple(d if d else None for d in ds.descriptions),
        date=date,
        res=(float(ds.res[0]), float(ds.res[1])),
        bounds=tuple(float(v) for v in ds.bounds),  # type: ignore[arg-type]
        georeferenced=is_georeferenced(ds),
        tags=tags,
        block_shapes=tuple((int(h), int(w)) for h, w in ds.block_shapes),
        compression=compression,
        overviews=overviews,
        colorinterp=colorinterp,
        tiled=tiled,
        mask=mask,
        date_source=date_source,
        interleave=interleave,
    )

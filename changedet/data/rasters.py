"""Raster helpers shared by the dataset readers: open and read rasters, read label rasters, regrid arrays.

Images are read as float32 (band, row, col) with a bool (row, col) ``valid`` mask; label rasters are mapped onto
uint8 0/1 change labels with a ``known`` mask (the 0/1, 0/255 and OSCD 1/2 conventions, and a nodata value that is
one of the label's classes). Re-exported by :mod:`changedet.data.generic`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferencedWarning
from rasterio.warp import Resampling, reproject

from changedet.errors import InputError

__all__ = [
    "label_from_array",
    "open_dataset",
    "oscd_no_change_labels",
    "pixel_size_metres",
    "read_label_raster",
    "read_raster",
    "reproject_to_grid",
    "same_grid",
]


def open_dataset(path: str | Path) -> Any:
    """Open a raster read-only with :func:`changedet.io.raster.open_raster` (clear errors on bad files).

    Missing, empty, truncated or non-raster files raise :class:`~changedet.errors.RasterReadError` naming the file;
    the not-georeferenced warnings of the benchmark BMP/PNG files are silenced (their scenes have ``crs=None``).
    """
    from changedet.errors import NotGeoreferencedWarning
    from changedet.io.raster import open_raster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RioNotGeoreferencedWarning)
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return open_raster(Path(path))


def read_raster(path: str | Path) -> tuple[np.ndarray, np.ndarray, Any, Affine, list[str]]:
    """Read all bands of a raster: (float32 (band,row,col), valid (row,col), crs, transform, band names).

    ``valid`` is False where any band is nodata or non-finite. Band names are the band descriptions, else
    ``band1, band2, ...``. Non-georeferenced files get ``crs=None`` and the identity transform.
    """
    values, valid, crs, transform, names, _ = _read_raster(path)
    return values, valid, crs, transform, names


def _read_raster(path: str | Path) -> tuple[np.ndarray, np.ndarray, Any, Affine, list[str], float | None]:
    """:func:`read_raster` and the file's nodata value."""
    with open_dataset(path) as ds:
        data = ds.read(masked=True)
        crs = ds.crs
        transform = ds.transform if (ds.crs is not None or not ds.transform.is_identity) else Affine.identity()
        names = [d if d else f"band{i + 1}" for i, d in enumerate(ds.descriptions)]
        nodata = ds.nodata
    values = np.ma.getdata(data).astype(np.float32, copy=False)
    valid = np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)
    valid &= np.isfinite(values).all(axis=0)
    return values, valid, crs, transform, [str(n) for n in names], nodata


def read_label_raster(
    path: str | Path,
    *,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, Any, Affine]:
    """Read a label raster like :func:`read_raster`: (float32 (band,row,col), known (row,col), crs, transform).

    The label's nodata value marks unknown pixels, unless it is one of the label's classes
    (:func:`changedet.evaluation.label_nodata_class`): a 0/255 mask tagged ``nodata=0`` (``gdal_rasterize -a_nodata
    0``) keeps its 0s as "no change", with a :class:`~changedet.errors.ChangedetWarning` naming the file, instead of
    losing its whole no-change class.
    """
    from changedet.errors import ChangedetWarning
    from changedet.evaluation import label_nodata_class, label_nodata_message

    path = Path(path)
    values, valid, crs, transform, _, nodata = _read_raster(path)
    if nodata is None or valid.all():
        return values, valid, crs, transform
    held = ~valid & np.isfinite(values).all(axis=0) & (values == np.float32(nodata)).any(axis=0)
    if not held.any():
        return values, valid, crs, transform
    band = _label_band(path, values)
    found = np.unique(band[valid]) if valid.any() else np.zeros(0)
    cls = label_nodata_class(nodata, found, change_values=change_values, no_change_values=no_change_values)
    if cls is None:
        return values, valid, crs, transform
    warnings.warn(label_nodata_message(path, float(nodata), cls), ChangedetWarning, stacklevel=3)
    return values, valid | held, crs, transform


def reproject_to_grid(
    source: np.ndarray,
    src_transform: Affine,
    src_crs: Any,
    dst_shape: tuple[int, int],
    dst_transform: Affine,
    dst_crs: Any,
    resampling: Resampling = Resampling.bilinear,
) -> np.ndarray:
    """Resample a (band, row, col) float32 array onto another grid with :func:`rasterio.warp.reproject`.

    Pixels outside the source are NaN. Invalid source pixels should be NaN already (they are the source nodata).
    """
    source = np.asarray(source, dtype=np.float32)
    squeeze = source.ndim == 2
    if squeeze:
        source = source[None]
    dst = np.full((source.shape[0], *dst_shape), np.nan, dtype=np.float32)
    reproject(
        source=source,
        destination=dst,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=np.nan,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return dst[0] if squeeze else dst


def same_grid(
    shape_a: tuple[int, int], transform_a: Affine, crs_a: Any, shape_b: tuple[int, int], transform_b: Affine, crs_b: Any
) -> bool:
    """Whether two rasters share shape, transform (within 1e-6 pixel) and CRS."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    if (crs_a is None) != (crs_b is None) or (crs_a is not None and crs_a != crs_b):
        return False
    return bool(transform_a.almost_equals(transform_b, precision=1e-9 * max(abs(transform_a.a), 1e-12) + 1e-12))


def pixel_size_metres(crs: Any, transform: Affine, shape: tuple[int, int]) -> float | None:
    """Nominal ground pixel size in metres: the mean of x/y resolution, converted at the centre for degree CRSs."""
    if crs is None:
        return None
    res_x, res_y = abs(transform.a), abs(transform.e)
    if crs.is_geographic:
        lat = (transform * (shape[1] / 2, shape[0] / 2))[1]
        metres_per_degree = 111_320.0
        return float(0.5 * (res_x * metres_per_degree * math.cos(math.radians(lat)) + res_y * metres_per_degree))
    factor = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return float(0.5 * (res_x + res_y) * factor)


def label_from_array(
    values: np.ndarray,
    valid: np.ndarray,
    *,
    change_values: Sequence[float] | None = None,
    no_change_values: Sequence[float] | None = None,
    where: str = "label",
) -> tuple[np.ndarray, np.ndarray]:
    """Map a label raster onto (uint8 0/1 label, known mask).

    Without ``change_values``, the label must be binary: {0, 1}, {0, 255} or {1, 2} (OSCD: 1 no change, 2 change);
    anything else is an error that names the values found. With ``change_values`` those values are change; with
    ``no_change_values`` as well, the remaining values are unknown (not valid).
    """
    values = np.asarray(values)
    if values.ndim == 3:
        values = values[0]
    known = np.asarray(valid, dtype=bool).copy()
    if change_values is not None:
        change = np.isin(values, np.asarray(change_values, dtype=values.dtype))
        if no_change_values is not None:
            known &= change | np.isin(values, np.asarray(no_change_values, dtype=values.dtype))
    else:
        uniq = np.unique(values[known]) if known.any() else np.zeros(0)
        found = set(float(v) for v in uniq)
        if found <= {0.0, 1.0}:
            change = values == 1
        elif found <= {0.0, 255.0}:
            change = values == 255
        elif found <= {0.0, 1.0, 2.0}:  # OSCD convention, 0 = unknown
            change = values == 2
            known &= values != 0
        else:
            shown = ", ".join(f"{v:g}" for v in sorted(found)[:10])
            raise InputError(
                f"{where}: label values {{{shown}}} are not a binary change mask (expected 0/1, 0/255 or 1/2); "
                "say which values are change with change_values=[...]"
            )
    return change.astype(np.uint8), known


def _label_band(path: Path, values: np.ndarray) -> np.ndarray:
    """The one band of label values in a label raster: band 1, or for a colour label whose colour bands differ (change
    painted green or blue on black) their maximum, so that a pixel is change where any colour band is non-zero. An
    alpha band is left out."""
    if values.shape[0] == 1:
        return values[0]
    from rasterio.enums import ColorInterp

    with open_dataset(path) as ds:
        colour = [i for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha] or [0]
    bands = values[colour]
    if all(np.array_equal(bands[0], b) for b in bands[1:]):
        return bands[0]
    return bands.max(axis=0)


def _label_values(path: Path) -> set[float]:
    """The distinct valid values of a label raster's label band (see :func:`_label_band`)."""
    values, valid, *_ = read_raster(path)
    band = _label_band(path, values)
    return {float(v) for v in np.unique(band[valid])} if valid.any() else set()


def oscd_no_change_labels(labels: Sequence[Path]) -> set[Path]:
    """The labels among ``labels`` that hold only 1s while others hold OSCD's 1/2 (1 no change, 2 change): OSCD's
    label of a scene without change, which read on its own (as 0/1) would be all change. A warning names them.

    Labels with other values (0/1 with both, 0/255) keep their own reading. The scan stops at the first label with
    a value outside 0, 1, 2 (a 0/255 dataset is not OSCD's).
    """
    found: dict[Path, set[float]] = {}
    for p in labels:
        found[Path(p)] = _label_values(Path(p))
        if not found[Path(p)] <= {0.0, 1.0, 2.0}:
            return set()
    oscd = [p for p, v in found.items() if 2.0 in v]
    ones = {p for p, v in found.items() if v == {1.0}}
    if not oscd or not ones:
        return set()
    shown = ", ".join(str(p) for p in sorted(ones)[:3]) + (" ..." if len(ones) > 3 else "")
    warnings.warn(
        f"{shown}: only 1s, beside OSCD labels such as {oscd[0]} (1 no change, 2 change): read as a scene without "
        "change; if every pixel there is change, write it as 255 (or 2)", UserWarning, stacklevel=3,
    )
    return ones

"""Colour composites of BEFORE and AFTER for the figures and maps of :mod:`changedet.plotting`.

True-colour band selection (:func:`rgb_indexes`), stretch limits pooled over both dates (:func:`stretch_limits`),
the stretched (row, col, 3) composite (:func:`rgb_composite`), the colours of the change shared by the figure and
the map, and the decimated read of a BEFORE/AFTER source onto the result grid that both draw from.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from rasterio.crs import CRS

__all__ = ["CHANGE_COLOR", "OUTLINE_COLOR", "RGB_NAMES", "rgb_composite", "rgb_indexes", "stretch_limits"]

#: Band names of a true-colour composite (Sentinel-2, then generic names); kept for reference: :func:`rgb_indexes`
#: identifies the bands with :func:`changedet.io.bands.display_bands`.
RGB_NAMES = (("B04", "B03", "B02"), ("B4", "B3", "B2"), ("RED", "GREEN", "BLUE"), ("R", "G", "B"))
#: Colour of the change in every figure and map: polygons' fill, the mask overlay.
CHANGE_COLOR = "#ff2200"
OUTLINE_COLOR = "#ffee00"


def _out_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def rgb_indexes(
    descriptions: Sequence[str | None] | None,
    count: int,
    *,
    colorinterp: Sequence[Any] | None = None,
    dtypes: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[int]:
    """1-based band indexes of a true-colour composite: the red, green and blue bands a true-colour model reads
    (:func:`changedet.io.bands.display_bands`: Sentinel-2 names, colour interpretation, colour names, Landsat
    numbering per the ``SPACECRAFT_ID`` tag, 13 unnamed bands as Sentinel-2), else 1-3, else band 1.

    >>> rgb_indexes(["B01", "B02", "B03", "B04", "B05"], 5)
    [4, 3, 2]
    >>> rgb_indexes([None] * 3, 3, colorinterp=["blue", "green", "red"])
    [3, 2, 1]
    >>> rgb_indexes([None, None, None, None], 4), rgb_indexes(["pan"], 1)
    ([1, 2, 3], [1])
    """
    from changedet.io.bands import display_bands_of

    found = display_bands_of(count, descriptions, colorinterp=colorinterp, dtypes=dtypes, tags=tags)
    return list(found) if found is not None else [1]


def stretch_limits(
    reads: Sequence[tuple[np.ndarray, np.ndarray | None]], percentiles: tuple[float, float] = (2, 98)
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band stretch limits pooled over several (band, row, col) arrays, e.g. BEFORE and AFTER.

    Parameters
    ----------
    reads
        ``(array, valid)`` pairs with the same band count; ``valid`` (row, col) bool or None for finite pixels.
    percentiles
        Lower and upper percentile of the pooled valid values of each band.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Low and high limit per band (float64). A band without valid pixels gets (0, 1).
    """
    if not reads:
        raise ValueError("stretch_limits needs at least one array")
    n = reads[0][0].shape[0]
    lo, hi = np.zeros(n), np.ones(n)
    for b in range(n):
        vals = []
        for array, valid in reads:
            band = np.asarray(array[b], dtype=np.float64)
            ok = np.isfinite(band) if valid is None else (valid & np.isfinite(band))
            vals.append(band[ok])
        pooled = np.concatenate(vals)
        if pooled.size:
            lo[b], hi[b] = np.percentile(pooled, percentiles)
    return lo, hi


def rgb_composite(
    array: np.ndarray,
    valid: np.ndarray | None = None,
    percentiles: tuple[float, float] = (2, 98),
    *,
    limits: tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray] | None = None,
) -> np.ndarray:
    """Stretch a (band, row, col) array of 1 or 3 bands to a float (row, col, 3) image in 0..1.

    Each band is stretched linearly between ``limits`` (low and high per band, e.g. from :func:`stretch_limits` over
    both dates) or, without them, between its own ``percentiles`` over the valid pixels. Invalid pixels are white (the quick-look figure makes them transparent over a hatch).
    """
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if valid is None:
        valid = np.all(np.isfinite(a), axis=0)
    if limits is None:
        lo, hi = stretch_limits([(a, valid)], percentiles)
    else:
        lo, hi = (np.broadcast_to(np.asarray(x, np.float64), (a.shape[0],)) for x in limits)
    out = np.ones((*a.shape[1:], 3), np.float32)
    channel = [0, 1, 2] if a.shape[0] >= 3 else [0, 0, 0]
    for i, b in enumerate(channel):
        span = hi[b] - lo[b]
        scaled = np.clip((a[b] - lo[b]) / (span if span > 0 else 1.0), 0, 1)
        out[..., i] = np.where(valid, scaled, 1.0)
    return out


# -- reading -----------------------------------------------------------------------------------------------------
def _open(source: Any) -> tuple[Any, bool]:
    """An open dataset for a path / dataset (and whether we opened it), or (None, False) if unreadable."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    if source is None:
        return None, False
    if hasattr(source, "read") and not getattr(source, "closed", False):
        return source, False
    name = getattr(source, "name", source) if hasattr(source, "read") else source
    try:
        with warnings.catch_warnings():  # detect already warned about a raster in pixel coordinates
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(os.fspath(name)), True
    except Exception:  # noqa: BLE001 - a missing preview must not break the figure
        return None, False


def _read_on_grid(
    source: Any, crs: CRS | None, transform: Any, width: int, height: int, shape: tuple[int, int],
    resampling: str = "average",
) -> tuple[np.ndarray, np.ndarray] | None:
    """The composite bands of ``source`` on the result grid, decimated to ``shape``: ``(array, valid)`` or None."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from changedet.io.bands import display_bands

    ds, close = _open(source)
    if ds is None:
        return None
    try:
        rgb = display_bands(ds)  # the bands a true-colour model reads (names, colour marks, Landsat numbering)
        idx = list(rgb) if rgb is not None else [1]
        if ds.crs is not None and crs is not None:
            with WarpedVRT(ds, crs=crs, transform=transform, width=width, height=height,
                           resampling=Resampling.bilinear) as vrt:
                arr = vrt.read(idx, out_shape=(len(idx), *shape), resampling=Resampling[resampling], masked=True)
        else:
            arr = ds.read(idx, out_shape=(len(idx), *shape), resampling=Resampling[resampling], masked=True)
        valid = ~np.ma.getmaskarray(arr).any(axis=0)
        data = np.asarray(arr.filled(0), dtype=np.float32)
        return data, np.asarray(valid & np.all(np.isfinite(data), axis=0))
    except Exception:  # noqa: BLE001 - e.g. a closed dataset or a source that moved: show the others
        return None
    finally:
        if close:
            ds.close()

"""Areas in square metres on the ground, whatever the CRS.

A projected CRS such as UTM keeps areas within a fraction of a per cent, so its map units are used as they are.
A geographic CRS (degrees) and projections that stretch areas (Web Mercator, EPSG:3857, by 1/cos^2 of the latitude:
four times at 60 degrees; polar stereographic away from its standard parallel) are measured on the CRS's ellipsoid
instead: :func:`needs_geodesic_area` says which, from the projection's areal scale factor (``pyproj``) at the
corners and centre of the extent.

>>> from rasterio.crs import CRS
>>> needs_geodesic_area(CRS.from_epsg(32631), (500000, 5000000, 510000, 5010000))
False
>>> needs_geodesic_area(CRS.from_epsg(3857), (1113195, 8399738, 1124327, 8410870))  # 10 km at 60 N
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine

#: Largest departure of the projection's areal scale from 1 for which planar areas in map units are kept.
AREAL_SCALE_TOLERANCE = 0.01


def _pyproj_crs(crs: Any) -> Any:
    from pyproj import CRS as PCRS

    return PCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def needs_geodesic_area(crs: Any, bounds: Sequence[float]) -> bool:
    """Whether areas in ``crs`` over ``bounds`` (left, bottom, right, top) must be measured geodesically.

    True for a geographic CRS, and for a projected one whose areal scale factor departs from 1 by more than
    :data:`AREAL_SCALE_TOLERANCE` at a corner or the centre of ``bounds``; False when it cannot be told (an
    engineering CRS, a projection pyproj cannot evaluate there): map units are then used as they are.
    """
    if crs is None:
        return False
    if getattr(crs, "is_geographic", False):
        return True
    try:
        from pyproj import Proj, Transformer

        pcrs = _pyproj_crs(crs)
        if not pcrs.is_projected:
            return False
        left, bottom, right, top = (float(v) for v in bounds)
        xs = [left, right, right, left, (left + right) / 2]
        ys = [top, top, bottom, bottom, (bottom + top) / 2]
        lons, lats = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True).transform(xs, ys)
        factors = Proj(pcrs).get_factors(lons, lats)
        scales = np.asarray(factors.areal_scale, dtype="float64")
    except Exception:  # noqa: BLE001 - no answer from pyproj: keep map units
        return False
    scales = scales[np.isfinite(scales)]
    return bool(len(scales)) and bool(np.abs(scales - 1.0).max() > AREAL_SCALE_TOLERANCE)


def geodesic_area_perimeter(geoms: np.ndarray, crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Absolute areas (m^2) and perimeters (m) of shapely ``geoms`` in ``crs``, on its ellipsoid.

    Projected geometries are first transformed to the CRS's geographic CRS (densified edges are not needed for
    pixel outlines, whose edges are a pixel long).
    """
    from pyproj import Transformer

    pcrs = _pyproj_crs(crs)
    geod = pcrs.get_geod()
    geoms = np.asarray(geoms, dtype=object)
    if geod is None or len(geoms) == 0:
        return np.full(len(geoms), np.nan), np.full(len(geoms), np.nan)
    if not pcrs.is_geographic:
        to_geo = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            lon, lat = to_geo.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([lon, lat])

        geoms = shapely.transform(geoms, project)
    out = np.array([geod.geometry_area_perimeter(g) for g in geoms], dtype="float64").reshape(-1, 2)
    return np.abs(out[:, 0]), out[:, 1]


def pixel_area_cells(crs: Any, transform: Affine, width: int, height: int,
                     cell: int | None = None) -> tuple[np.ndarray, int]:
    """Mean ground area (m^2) of one pixel in each ``cell`` x ``cell`` block of a grid, geodesically.

    Returns ``(areas, cell)`` with ``areas`` of shape ``(ceil(height / cell), ceil(width / cell))``; the cell edge
    defaults to 32 px, larger for grids of more than 256 x 256 cells. Multiply per-cell pixel counts by it to get
    areas that follow the latitude (a geographic grid spanning degrees, a Web Mercator scene).
    """
    if cell is None:
        cell = max(32, math.ceil(max(width, height) / 256))
    rows = np.append(np.arange(0, height, cell), height)
    cols = np.append(np.arange(0, width, cell), width)
    polys = []
    for r0, r1 in itertools.pairwise(rows):
        for c0, c1 in itertools.pairwise(cols):
            corners = [transform @ (c0, r0), transform @ (c1, r0), transform @ (c1, r1), transform @ (c0, r1)]
            polys.append(shapely.Polygon(corners))
    areas, _ = geodesic_area_perimeter(np.asarray(polys, dtype=object), crs)
    counts = np.outer(np.diff(rows), np.diff(cols)).ravel()
    return (areas / counts).reshape(len(rows) - 1, len(cols) - 1), cell


def cell_sums(mask: np.ndarray, cell: int) -> np.ndarray:
    """Per-cell counts of the True pixels of a (rows, cols) block whose first row and column start a cell."""
    h, w = mask.shape
    nh, nw = -(-h // cell), -(-w // cell)
    padded = np.zeros((nh * cell, nw * cell), dtype=np.int64)
    padded[:h, :w] = mask
    return padded.reshape(nh, cell, nw, cell).sum(axis=(1, 3))


def ground_areas(path: Any, crs: Any, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """(valid, changed) ground area in m^2 of a change raster on a grid (0 no change, 1 or more changed, 255
    nodata: ``change.tif`` or a series' ``change_count.tif``), summed cell by cell with :func:`pixel_area_cells`
    where the pixel area varies over the scene (:func:`needs_geodesic_area`); None where one pixel area holds for
    the whole scene (the caller multiplies pixel counts by it) or without a CRS.
    """
    import rasterio
    from rasterio.windows import Window

    if crs is None or not Path(path).exists():
        return None
    xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (width, 0), (width, height), (0, height))), strict=True)
    if not needs_geodesic_area(crs, (min(xs), min(ys), max(xs), max(ys))):
        return None
    areas, cell = pixel_area_cells(crs, transform, width, height)
    valid = changed = 0.0
    strip = cell * max(1, 1024 // cell)
    with rasterio.open(path) as ds:
        for r0 in range(0, height, strip):
            band = ds.read(1, window=Window(0, r0, width, min(strip, height - r0)))
            a = areas[r0 // cell : r0 // cell + -(-band.shape[0] // cell)]
            known = band != 255
            valid += float((cell_sums(known, cell) * a).sum())
            changed += float((cell_sums(known & (band >= 1), cell) * a).sum())
    return valid, changed

"""Areas in square metres on the ground, whatever the CRS.

A projected CRS such as UTM keeps areas within a fraction of a per cent, so its map units are used as they are.
A geographic CRS (degrees) and projections that stretch areas (Web Mercator, EPSG:3857, by about 1/cos^2 of the
latitude: four times at 60 degrees; polar stereographic away from its standard parallel) are measured on the CRS's
ellipsoid instead: :func:`needs_geodesic_area` says which, from the ratio of map area to ground area of small squares at
the corners and centre of the extent (:func:`areal_scales`).

>>> from rasterio.crs import CRS
>>> needs_geodesic_area(CRS.from_epsg(32631), (500000, 5000000, 510000, 5010000))
False
>>> needs_geodesic_area(CRS.from_epsg(3857), (1113195, 8399738, 1124327, 8410870))  # 10 km at 60 N
True
>>> needs_geodesic_area(CRS.from_epsg(3857), (1113195, 0, 1124327, 11132))  # at the equator: 0.7 % off
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine

#: Largest departure of the map's area from the ground's (at a corner or the centre of the scene) for which planar
#: areas in map units are kept.
AREAL_SCALE_TOLERANCE = 0.005


def _pyproj_crs(crs: Any) -> Any:
    from pyproj import CRS as PCRS

    return PCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def areal_scales(crs: Any, bounds: Sequence[float]) -> np.ndarray:
    """Map area / ground area of small squares at the corners and centre of ``bounds`` in a projected ``crs``.

    Measured directly (each square's corners taken to the CRS's geographic CRS, its area on the ellipsoid with
    :class:`pyproj.Geod`), not with the projection's own scale factors, which for Web Mercator are those of the
    sphere it projects from and miss the sphere/ellipsoid difference (0.7 % at the equator).
    """
    from pyproj import Transformer

    pcrs = _pyproj_crs(crs)
    unit = float(pcrs.axis_info[0].unit_conversion_factor or 1.0)
    geod = pcrs.get_geod()
    to_geo = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)
    left, bottom, right, top = (float(v) for v in bounds)
    side = max(right - left, top - bottom, 1e-9) / 1000.0
    out = []
    for x, y in ((left, top), (right, top), (right, bottom), (left, bottom),
                 ((left + right) / 2, (bottom + top) / 2)):
        xs = [x, x + side, x + side, x]
        ys = [y, y, y - side, y - side]
        lons, lats = to_geo.transform(xs, ys)
        ground = abs(geod.polygon_area_perimeter(lons, lats)[0])
        out.append((side * unit) ** 2 / ground if ground > 0 else np.nan)
    return np.asarray(out, dtype="float64")


def needs_geodesic_area(crs: Any, bounds: Sequence[float]) -> bool:
    """Whether areas in ``crs`` over ``bounds`` (left, bottom, right, top) must be measured geodesically.

    True for a geographic CRS, and for a projected one whose map areas depart from the ground's by more than
    :data:`AREAL_SCALE_TOLERANCE` at a corner or the centre of ``bounds`` (:func:`areal_scales`); False when it
    cannot be told (an engineering CRS, a projection pyproj cannot evaluate there): map units are then used.
    """
    if crs is None:
        return False
    if getattr(crs, "is_geographic", False):
        return True
    try:
        if not _pyproj_crs(crs).is_projected:
            return False
        scales = areal_scales(crs, bounds)
    except Exception:  # noqa: BLE001 - no answer from pyproj: keep map units
        return False
    scales = scales[np.isfinite(scales)]
    return bool(len(scales)) and bool(np.abs(scales - 1.0).max() > AREAL_SCALE_TOLERANCE)


def geodesic_area_perimeter(geoms: np.ndarray, crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Absolute areas (m^2, holes subtracted) and perimeters (m, hole edges included) of shapely ``geoms`` in
    ``crs``, on its ellipsoid.

    Edges are first densified (to 1/512 of the geometries' extent, at most 0.1 degree in a geographic CRS): a
    polygon edge is straight in the map, not a geodesic, and merged pixel outlines run for many degrees along a
    parallel. Projected geometries are then taken to the CRS's geographic CRS.
    """
    from pyproj import Transformer

    pcrs = _pyproj_crs(crs)
    geod = pcrs.get_geod()
    geoms = np.asarray(geoms, dtype=object)
    if geod is None or len(geoms) == 0:
        return np.full(len(geoms), np.nan), np.full(len(geoms), np.nan)
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    step = max(x1 - x0, y1 - y0) / 512.0
    if pcrs.is_geographic:
        step = min(step, 0.1)
    if step > 0 and np.isfinite(step):
        geoms = shapely.segmentize(geoms, step)
    if not pcrs.is_geographic:
        to_geo = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            lon, lat = to_geo.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([lon, lat])

        geoms = shapely.transform(geoms, project)
    out = np.array([_polygon_area_perimeter(geod, g) for g in geoms], dtype="float64").reshape(-1, 2)
    return out[:, 0], out[:, 1]


def _polygon_area_perimeter(geod: Any, geom: Any) -> tuple[float, float]:
    """Area (exterior minus holes, whatever the rings' orientation) and perimeter (every ring, holes included, as
    ``shapely.length`` and QGIS measure it) of a lon/lat (Multi)Polygon on ``geod``.

    :meth:`pyproj.Geod.geometry_area_perimeter` leaves the holes out of the perimeter and adds their signed areas,
    which subtracts them only when they wind against the exterior.
    """
    area = perimeter = 0.0
    for part in shapely.get_parts(geom):
        if part.is_empty or not hasattr(part, "exterior"):
            continue
        for k, ring in enumerate((part.exterior, *part.interiors)):
            lon, lat = ring.xy
            a, p = geod.polygon_area_perimeter(lon, lat)
            area += abs(a) if k == 0 else -abs(a)
            perimeter += p
    return abs(area), perimeter


def local_metric_crs(geoms: Any, crs: Any) -> Any:
    """A projected CRS in metres for simplifying ``geoms`` (a GeoSeries-like in ``crs``) by a tolerance in metres:
    their UTM zone, or beyond UTM's latitudes (|lat| > 84 / 80 degrees) an azimuthal equidistant projection
    centred on them."""
    import geopandas as gpd
    from pyproj import CRS as PCRS

    series = geoms if isinstance(geoms, gpd.GeoSeries) else gpd.GeoSeries(geoms, crs=crs)
    try:
        return series.estimate_utm_crs()
    except RuntimeError:  # polar: no UTM zone
        lon0, lat0, lon1, lat1 = series.to_crs(4326).total_bounds
        return PCRS.from_proj4(f"+proj=aeqd +lat_0={(lat0 + lat1) / 2} +lon_0={(lon0 + lon1) / 2} +datum=WGS84 "
                               "+units=m +no_defs")


def pixel_area_cells(crs: Any, transform: Affine, width: int, height: int,
                     cell: int | None = None) -> tuple[np.ndarray, int]:
    """Mean ground area (m^2) of one pixel in each ``cell`` x ``cell`` block of a grid, on the CRS's ellipsoid.

    Returns ``(areas, cell)`` with ``areas`` of shape ``(ceil(height / cell), ceil(width / cell))``; the cell edge
    defaults to 1 px, larger for grids of more than 256 x 256 pixels (at most 256 x 256 cells). Multiply per-cell
    pixel counts by it to get areas that follow the latitude (a geographic grid spanning degrees, a Web Mercator
    scene). Each cell's corners are taken to longitude/latitude and its area is the area of that quadrilateral in
    radians times the ellipsoid's local scale ``M N cos(lat)`` at its centre (vectorised; for cells a 256th of the
    scene or smaller this matches :class:`pyproj.Geod` to about 1e-5).
    """
    from pyproj import Transformer

    if cell is None:
        cell = max(1, math.ceil(max(width, height) / 256))
    rows = np.append(np.arange(0, height, cell), height).astype("float64")
    cols = np.append(np.arange(0, width, cell), width).astype("float64")
    cc, rr = np.meshgrid(cols, rows)
    t = transform
    xs, ys = t.a * cc + t.b * rr + t.c, t.d * cc + t.e * rr + t.f
    pcrs = _pyproj_crs(crs)
    if pcrs.is_geographic:
        lon, lat = xs, ys
    else:
        lon, lat = Transformer.from_crs(pcrs, pcrs.geodetic_crs, always_xy=True).transform(xs, ys)
    lon, lat = np.radians(np.asarray(lon)), np.radians(np.asarray(lat))
    corners = [(lon[:-1, :-1], lat[:-1, :-1]), (lon[:-1, 1:], lat[:-1, 1:]), (lon[1:, 1:], lat[1:, 1:]),
               (lon[1:, :-1], lat[1:, :-1])]
    shoelace = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True))
    centre = (lat[:-1, :-1] + lat[:-1, 1:] + lat[1:, 1:] + lat[1:, :-1]) / 4.0
    ell = pcrs.ellipsoid
    a = float(ell.semi_major_metre)
    e2 = 1.0 - (float(ell.semi_minor_metre) / a) ** 2
    w = 1.0 - e2 * np.sin(centre) ** 2
    m, n = a * (1.0 - e2) / w**1.5, a / np.sqrt(w)
    ground = np.abs(shoelace) / 2.0 * m * n * np.cos(centre)
    counts = np.outer(np.diff(rows), np.diff(cols))
    return ground / counts, cell


def cell_sums(mask: np.ndarray, cell: int) -> np.ndarray:
    """Per-cell counts of the True pixels of a (rows, cols) block whose first row and column start a cell."""
    h, w = mask.shape
    nh, nw = -(-h // cell), -(-w // cell)
    padded = np.zeros((nh * cell, nw * cell), dtype=np.int64)
    padded[:h, :w] = mask
    return padded.reshape(nh, cell, nw, cell).sum(axis=(1, 3))


def grid_bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a ``width`` x ``height`` grid, whatever the signs (or rotation) of its
    transform."""
    xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (width, 0), (width, height), (0, height))), strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def area_summary(path: Any, crs: Any, transform: Affine, width: int, height: int, valid_pixels: int,
                 changed_pixels: int, pixel_area: float | None) -> tuple[float | None, float | None]:
    """(valid, changed) area in m^2, rounded to cm^2, of a change raster on a grid: pixel counts x ``pixel_area``
    where one pixel area holds for the scene, summed on the ground (:func:`ground_areas`) where it does not, None
    without a pixel area (no CRS)."""
    if not pixel_area:
        return None, None
    ground = ground_areas(path, crs, transform, width, height)
    valid, changed = ground if ground is not None else (valid_pixels * pixel_area, changed_pixels * pixel_area)
    return round(valid, 2), round(changed, 2)


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
    if not needs_geodesic_area(crs, grid_bounds(transform, width, height)):
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

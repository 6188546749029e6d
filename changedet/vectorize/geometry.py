"""Polygon post-processing for :func:`~changedet.vectorize.vectorize`: pixel to map coordinates, areas in
metres, small holes filled (and the islands inside them absorbed), topology-preserving simplification and the repair
that keeps every polygon one valid Polygon."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from changedet.geodesy import geodesic_area_perimeter

if TYPE_CHECKING:  # pragma: no cover
    from affine import Affine
    from pyproj import CRS


def _metres_per_unit(crs: CRS) -> float:
    try:
        factor = crs.axis_info[0].unit_conversion_factor
    except (IndexError, AttributeError):
        return float("nan")
    return float(factor) if factor else float("nan")


def _ring_areas(rings: list[Any], crs: CRS | None, scale: float) -> np.ndarray:
    polys = shapely.polygons(np.asarray(rings, dtype=object))
    if crs is not None and not math.isfinite(scale):  # geodesic (see the caller)
        return geodesic_area_perimeter(polys, crs)[0]
    return shapely.area(polys) * scale * scale


def _fill_holes(
    geoms: np.ndarray, max_area: float, crs: CRS | None, scale: float, invalid: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[int, Any]]]:
    """Remove interior rings smaller than ``max_area`` that hold no nodata pixel (``invalid``: the nodata areas);
    return the new geometries and the filled holes."""
    filled: list[tuple[int, Any]] = []
    out = geoms.copy()
    tree = shapely.STRtree(invalid) if invalid is not None and len(invalid) else None

    def holds_nodata(ring: Any) -> bool:
        if tree is None:
            return False
        hole = shapely.Polygon(ring)
        near = tree.query(hole, predicate="intersects")
        return bool(len(near)) and float(shapely.area(shapely.intersection(invalid[near], hole)).max()) > 0.0  # type: ignore[index]

    n_holes = shapely.get_num_interior_rings(geoms)
    for idx in np.flatnonzero(n_holes > 0):
        poly = geoms[idx]
        holes = list(poly.interiors)
        areas = _ring_areas(holes, crs, scale)
        small = [a < max_area and not holds_nodata(h) for h, a in zip(holes, areas, strict=True)]
        keep = [h for h, fill in zip(holes, small, strict=True) if not fill]
        if len(keep) == len(holes):
            continue
        out[idx] = shapely.Polygon(poly.exterior, keep)
        filled.extend((int(idx), shapely.Polygon(h)) for h, fill in zip(holes, small, strict=True) if fill)
    return out, filled


def _simplify(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Topology-preserving simplification of a polygon coverage (shared edges stay shared)."""
    if len(geoms) == 0 or tolerance <= 0:
        return geoms
    if hasattr(shapely, "coverage_simplify") and shapely.geos_version >= (3, 12, 0):
        simplified = shapely.coverage_simplify(geoms, tolerance, simplify_boundary=True)
    else:  # pragma: no cover - GEOS < 3.12
        simplified = shapely.simplify(geoms, tolerance, preserve_topology=True)
    bad = shapely.is_empty(simplified) | ~shapely.is_valid(simplified)
    if bad.any():  # never lose a polygon to simplification
        simplified[bad] = shapely.simplify(geoms[bad], tolerance, preserve_topology=True)
    return _valid_polygons(simplified, geoms)


#: Parts of a repaired polygon smaller than this fraction of its area are numerical slivers and dropped.
_SLIVER = 1e-6


def _polygonal_parts(geom: Any) -> list[Any]:
    """The Polygons of ``make_valid(geom)``: lines and points that a collapsed part leaves are dropped."""
    try:
        fixed = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    except TypeError:  # pragma: no cover - shapely < 2.1: the default method, then keep the polygons
        fixed = shapely.make_valid(geom)
    parts = shapely.get_parts(shapely.get_parts(fixed))  # a collection may hold a MultiPolygon
    return [q for q in parts if q.geom_type == "Polygon" and not q.is_empty]


def _valid_polygons(geoms: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Each of ``geoms`` as one valid Polygon: an invalid one (a simplified outline whose vertex came to touch or
    cross an edge, often only after reprojection) is repaired, keeping its polygonal parts and dropping slivers
    and collapsed lines; one that does not repair into a single Polygon is replaced by ``fallback`` (the exact
    pixel outline, valid by construction), as is an empty one."""
    out = np.asarray(geoms, dtype=object).copy()
    bad = np.flatnonzero(shapely.is_empty(out) | ~shapely.is_valid(out) | (shapely.get_type_id(out) != 3))
    for i in bad:
        g = out[i]
        if g is None or g.is_empty:
            out[i] = fallback[i]
            continue
        parts = _polygonal_parts(g)
        total = sum(q.area for q in parts)
        parts = [q for q in parts if q.area > _SLIVER * total]
        out[i] = parts[0] if len(parts) == 1 and parts[0].is_valid else fallback[i]
    return out


def _apply_affine(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def _fn(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(geoms, _fn)


def _fill_and_absorb(
    geoms: np.ndarray, stats: dict[str, np.ndarray], max_area: float, crs: CRS | None, scale: float,
    invalid: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fill small holes without nodata; polygons lying inside a filled hole are absorbed into the polygon around
    them."""
    geoms, filled = _fill_holes(geoms, max_area, crs, scale, invalid)
    if not filled:
        return geoms, stats
    tree = shapely.STRtree(geoms)
    holes = np.empty(len(filled), dtype=object)
    holes[:] = [h for _, h in filled]
    owner = np.array([k for k, _ in filled], dtype="int64")
    hole_idx, inner = tree.query(holes, predicate="contains_properly")
    into: dict[int, int] = {}
    for h, g in zip(hole_idx, inner, strict=True):
        if int(g) != int(owner[h]):
            into[int(g)] = int(owner[h])
    stats = {k: v.copy() for k, v in stats.items()}
    for g in into:
        root = into[g]
        while root in into:  # nested islands end in the outermost polygon that is kept
            root = into[root]
        stats["count"][root] += stats["count"][g]
        stats["psum"][root] += stats["psum"][g]
        stats["pn"][root] += stats["pn"][g]
        stats["pmax"][root] = max(stats["pmax"][root], stats["pmax"][g])
    keep = np.ones(len(geoms), dtype=bool)
    keep[list(into)] = False
    return geoms[keep], {k: v[keep] for k, v in stats.items()}

"""changedet.geodesy: geodesic areas and perimeters of polygons with holes, whatever the CRS."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely
from pyproj import Geod
from rasterio.transform import from_origin

from changedet.geodesy import geodesic_area_perimeter
from changedet.vectorize import vectorize

WGS84 = Geod(ellps="WGS84")


def _donut() -> tuple[np.ndarray, np.ndarray]:
    """A 60 x 60 px square with a 20 x 20 px hole, and the same square filled."""
    square = np.zeros((100, 100), "uint8")
    square[20:80, 20:80] = 1
    donut = square.copy()
    donut[40:60, 40:60] = 0
    return donut, square


@pytest.mark.parametrize(("crs", "transform"), [
    ("EPSG:32633", from_origin(500000, 6700000, 10, 10)),  # planar
    ("EPSG:4326", from_origin(15.0, 60.0, 0.0001, 0.0001)),  # geodesic
    ("EPSG:3857", from_origin(1113195, 8399738, 10, 10)),  # geodesic (stretches areas 4x at 60 N)
    ("EPSG:3413", from_origin(-300000, -600000, 10, 10)),  # geodesic (polar stereographic)
])
def test_perimeter_includes_the_hole_edges_in_every_crs(crs: str, transform) -> None:
    donut, square = _donut()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = vectorize(donut, transform=transform, crs=crs)
        s = vectorize(square, transform=transform, crs=crs)
    hole = vectorize(square - donut, transform=transform, crs=crs)
    assert len(d.geometry.iloc[0].interiors) == 1
    # the hole's edge is part of the perimeter (as shapely and QGIS measure it): 240 px of exterior + 80 px of hole
    assert d.perimeter_m.iloc[0] == pytest.approx(s.perimeter_m.iloc[0] + hole.perimeter_m.iloc[0], rel=1e-6)
    assert d.perimeter_m.iloc[0] == pytest.approx(s.perimeter_m.iloc[0] * 4 / 3, rel=0.01)
    assert d.area_m2.iloc[0] == pytest.approx(s.area_m2.iloc[0] - hole.area_m2.iloc[0], rel=1e-6)


def test_geodesic_perimeter_matches_the_rings_lengths_and_ignores_hole_orientation() -> None:
    ext = [(15.0, 60.0), (15.01, 60.0), (15.01, 60.01), (15.0, 60.01), (15.0, 60.0)]
    hole = [(15.004, 60.004), (15.006, 60.004), (15.006, 60.006), (15.004, 60.006), (15.004, 60.004)]
    ring_len = [WGS84.line_length(*zip(*shapely.segmentize(shapely.LineString(r), 0.0001).coords, strict=True))
                for r in (ext, hole)]
    ring_area = [abs(WGS84.polygon_area_perimeter(*zip(*r, strict=True))[0]) for r in (ext, hole)]
    # the hole wound like the exterior (as some writers leave it) or against it: the same answer
    for h in (hole, hole[::-1]):
        area, perim = geodesic_area_perimeter(np.array([shapely.Polygon(ext, [h])]), "EPSG:4326")
        assert perim[0] == pytest.approx(sum(ring_len), rel=1e-6)
        assert area[0] == pytest.approx(ring_area[0] - ring_area[1], rel=1e-4)
    # a MultiPolygon: every part's rings (the island is the hole's shape, moved out of the donut)
    island = shapely.affinity.translate(shapely.Polygon(hole), 0.02, 0.0)
    multi = shapely.MultiPolygon([shapely.Polygon(ext, [hole]), island])
    area, perim = geodesic_area_perimeter(np.array([multi]), "EPSG:4326")
    assert perim[0] == pytest.approx(sum(ring_len) + ring_len[1], rel=1e-4)
    assert area[0] == pytest.approx(ring_area[0], rel=1e-3)

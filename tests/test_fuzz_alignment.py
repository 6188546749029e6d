"""Property tests: random CRS / resolution / offset pairs keep their overlap, and the tiling invariants the
streaming engine relies on hold for any scene.

For a BEFORE and an AFTER raster placed around the same point in two CRSs drawn from UTM zones, Web Mercator and
WGS 84, with their own pixel sizes and offsets, :func:`~changedet.io.alignment.open_pair` must return a grid that
covers the intersection of the two footprints (measured independently: AFTER's outline densely sampled and
projected with pyproj) to within one BEFORE pixel, and the pixels valid in both dates must match the area of that
intersection up to the pixels along its outline.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyproj import CRS as PCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin

from changedet.inference import engine_grid, tile_rows_for
from changedet.io.alignment import open_pair
from changedet.testing import make_geotiff
from changedet.tiling import TileGrid

CRS_CHOICES = [32629, 32630, 32631, 32632, 32633, 3857, 4326]
SIZE = 40


def _place(epsg: int, lon: float, lat: float, res_m: float, dx: float, dy: float) -> tuple[CRS, object]:
    """A north-up grid of SIZE x SIZE pixels of ~res_m metres in ``epsg`` whose centre is (lon, lat) shifted by
    (dx, dy) grid widths."""
    crs = CRS.from_epsg(epsg)
    if epsg == 4326:
        res_x = res_m / (111_320.0 * math.cos(math.radians(lat)))
        res_y = res_m / 110_540.0
        cx, cy = lon, lat
    else:
        cx, cy = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        res_x = res_y = res_m
    cx += dx * SIZE * res_x
    cy += dy * SIZE * res_y
    return crs, from_origin(cx - SIZE / 2 * res_x, cy + SIZE / 2 * res_y, res_x, res_y)


def _outline(transform: object, n: int = 100) -> np.ndarray:
    """Points along the outline of a SIZE x SIZE grid, in its CRS."""
    t = np.linspace(0, SIZE, n)
    cols = np.concatenate([t, np.full(n, SIZE), t[::-1], np.zeros(n)])
    rows = np.concatenate([np.zeros(n), t, np.full(n, SIZE), t[::-1]])
    xs, ys = transform * (cols, rows)  # type: ignore[operator]
    return np.column_stack([xs, ys])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crs_b=st.sampled_from(CRS_CHOICES),
    crs_a=st.sampled_from(CRS_CHOICES),
    lon=st.floats(3.0, 9.0),
    lat=st.floats(-60.0, 60.0),
    res_b=st.sampled_from([5.0, 10.0, 20.0, 30.0]),
    res_ratio=st.floats(0.5, 2.0),
    dx=st.floats(-0.6, 0.6),
    dy=st.floats(-0.6, 0.6),
)
def test_random_crs_resolution_offset_pairs_keep_their_overlap(
    crs_b: int, crs_a: int, lon: float, lat: float, res_b: float, res_ratio: float, dx: float, dy: float
) -> None:
    if lat < 0:  # the UTM choices are northern zones: use their southern counterparts below the equator
        crs_b = crs_b + 100 if 32600 < crs_b < 32700 else crs_b
        crs_a = crs_a + 100 if 32600 < crs_a < 32700 else crs_a
    crs_before, t_before = _place(crs_b, lon, lat, res_b, 0.0, 0.0)
    crs_after, t_after = _place(crs_a, lon, lat, res_b * res_ratio, dx, dy)

    # the intersection of the footprints, measured independently of changedet (dense outline, pyproj, shapely)
    to_before = Transformer.from_crs(PCRS.from_user_input(crs_after.to_wkt()),
                                     PCRS.from_user_input(crs_before.to_wkt()), always_xy=True)
    ax, ay = to_before.transform(*_outline(t_after).T)
    after_poly = shapely.Polygon(np.column_stack([ax, ay]))
    before_poly = shapely.box(*shapely.Polygon(_outline(t_before)).bounds)
    inter = before_poly.intersection(after_poly)
    px = abs(t_before.a), abs(t_before.e)  # type: ignore[attr-defined]
    px_area = px[0] * px[1]
    assume(inter.area > 9 * px_area)  # at least a few pixels in common

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        before = make_geotiff(Path(tmp) / "before.tif", rng.integers(1, 3000, (2, SIZE, SIZE)).astype("uint16"),
                              crs=crs_before, transform=t_before)
        after = make_geotiff(Path(tmp) / "after.tif", rng.integers(1, 3000, (2, SIZE, SIZE)).astype("uint16"),
                             crs=crs_after, transform=t_after)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair = open_pair(before, after)
        with pair:
            assert pair.crs == crs_before
            left, bottom, right, top = pair.bounds
            il, ib, ir, it = inter.bounds
            # the grid covers the intersection (BEFORE pixels snapped outwards) ...
            tol = 0.05
            assert left <= il + tol * px[0] and right >= ir - tol * px[0]
            assert bottom <= ib + tol * px[1] and top >= it - tol * px[1]
            # ... and exceeds it by less than one pixel on each side
            assert il - left < px[0] + 1e-6 * px[0] and right - ir < px[0] + 1e-6 * px[0]
            assert ib - bottom < px[1] + 1e-6 * px[1] and top - it < px[1] + 1e-6 * px[1]
            _, _, valid = pair.read()
        # the valid pixels cover the intersection, up to the pixels along its outline
        expected = inter.area / px_area
        outline_px = inter.length / min(px)
        assert abs(int(valid.sum()) - expected) <= 1.5 * outline_px + 4, (int(valid.sum()), expected, outline_px)


# ---------------------------------------------------------------------------------------------------------------
# tiling (extends tests/test_tiling.py: what the streaming engine and block splitting rely on)
# ---------------------------------------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 300),
    multiple=st.sampled_from([1, 8, 16, 32]),
    tile=st.integers(16, 300),
    overlap=st.integers(0, 200),
    blend=st.sampled_from(["cosine", "mean", "center-crop"]),
)
def test_engine_grid_tiles_and_streaming_order(
    height: int, width: int, multiple: int, tile: int, overlap: int, blend: str
) -> None:
    grid = engine_grid(height, width, multiple=multiple, tile_size=tile, overlap=overlap, blend=blend)
    assert grid.tile_size % multiple == 0 and 0 <= grid.overlap < grid.tile_size
    # every tile but the last of a row or column starts at a multiple: the tiles pool in phase with each other
    assert grid.overlap % multiple == 0 and grid.overlap >= min(overlap, grid.tile_size - multiple)
    assert all(s % multiple == 0 for s in grid.row_starts[:-1] + grid.col_starts[:-1])
    count = np.zeros((height, width), np.int32)
    wsum = np.zeros((height, width), np.float64)
    for t in grid:
        rs, cs = t.slices
        assert 0 <= rs.start < rs.stop <= height and 0 <= cs.start < cs.stop <= width
        count[rs, cs] += 1
        w = grid.weights(t)
        assert w.shape == (t.height, t.width) and (w >= 0).all()
        wsum[rs, cs] += w
    assert count.min() >= 1
    if blend != "mean":
        np.testing.assert_allclose(wsum, 1.0, atol=1e-5)
    # rows_final_after: monotone, ends at the scene height, and no later tile touches a final row
    finals = [grid.rows_final_after(r) for r in range(len(grid.row_starts))]
    assert finals == sorted(finals) and finals[-1] == height
    for r, final in enumerate(finals):
        assert all(t.row_off >= final for t in grid if t.row > r)


@settings(max_examples=80, deadline=None)
@given(
    height=st.integers(2, 900),
    tile=st.sampled_from([32, 64, 128, 256]),
    overlap_frac=st.floats(0, 0.6),
    data=st.data(),
)
def test_tile_rows_for_selects_every_tile_touching_a_row_range(
    height: int, tile: int, overlap_frac: float, data: st.DataObject
) -> None:
    grid = TileGrid(height, 50, tile_size=tile, overlap=int(tile * overlap_frac))
    start = data.draw(st.integers(0, height - 1))
    stop = data.draw(st.integers(start + 1, height))
    first, last = tile_rows_for(grid, start, stop)
    touching = {t.row for t in grid if t.row_off < stop and t.row_off + t.height > start}
    assert set(range(first, last)) == touching


def test_tile_rows_for_rejects_rows_outside_the_grid() -> None:
    from changedet.errors import InputError

    grid = TileGrid(100, 100, tile_size=32, overlap=8)
    with pytest.raises(InputError, match=r"rows \[90, 101\) are not inside the grid's 100 rows"):
        tile_rows_for(grid, 90, 101)

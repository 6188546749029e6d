"""TileGrid: coverage, edge tiles moved inward, blending weights (known answers and properties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changedet.errors import InputError
from changedet.tiling import TileGrid, axis_starts


def _coverage(grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    count = np.zeros((grid.height, grid.width), np.int32)
    wsum = np.zeros((grid.height, grid.width), np.float64)
    for tile in grid:
        rs, cs = tile.slices
        count[rs, cs] += 1
        wsum[rs, cs] += grid.weights(tile)
    return count, wsum


def test_axis_starts_moves_the_last_tile_inward() -> None:
    assert axis_starts(1000, 256, 32) == [0, 224, 448, 672, 744]
    assert axis_starts(256, 256, 32) == [0]
    assert axis_starts(100, 256, 32) == [0]


def test_tiles_lie_inside_the_scene_and_have_the_tile_size() -> None:
    grid = TileGrid(1000, 700, tile_size=256, overlap=32, multiple=16)
    for tile in grid:
        assert tile.row_off >= 0 and tile.col_off >= 0
        assert tile.row_off + tile.height <= 1000 and tile.col_off + tile.width <= 700
        assert (tile.height, tile.width) == (256, 256)


@pytest.mark.parametrize("blend", ["cosine", "center-crop"])
def test_weights_form_a_partition_of_unity(blend: str) -> None:
    grid = TileGrid(300, 517, tile_size=128, overlap=40, blend=blend)  # type: ignore[arg-type]
    count, wsum = _coverage(grid)
    assert count.min() >= 1
    np.testing.assert_allclose(wsum, 1.0, atol=1e-6)


def test_cosine_weights_are_zero_next_to_internal_edges_only() -> None:
    grid = TileGrid(256, 256, tile_size=128, overlap=32, blend="cosine")
    first = grid.weights(grid.tiles[0])
    assert first[0, 0] == 1.0  # scene corner: no taper
    assert np.all(first[:, -8:] == 0.0)  # the 32 // 4 pixels next to the internal edge
    assert np.all(first[-8:, :] == 0.0)


def test_mean_weights_count_the_covering_tiles() -> None:
    grid = TileGrid(200, 200, tile_size=128, overlap=56, blend="mean")
    count, wsum = _coverage(grid)
    np.testing.assert_array_equal(count, wsum)


def test_bad_settings_are_input_errors() -> None:
    with pytest.raises(InputError, match="multiple of the model's required multiple 16"):
        TileGrid(100, 100, tile_size=250, overlap=10, multiple=16)
    with pytest.raises(InputError, match="overlap"):
        TileGrid(100, 100, tile_size=64, overlap=64)
    with pytest.raises(InputError, match="blend"):
        TileGrid(100, 100, tile_size=64, overlap=8, blend="max")  # type: ignore[arg-type]


def test_rows_final_after_streams_in_order() -> None:
    grid = TileGrid(1000, 300, tile_size=256, overlap=32)
    finals = [grid.rows_final_after(r) for r in range(grid.shape[0])]
    assert finals == sorted(finals) and finals[-1] == 1000
    for r, final in enumerate(finals[:-1]):
        # no tile of a later row touches a row above `final`
        assert all(t.row_off >= final for t in grid if t.row > r)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 400),
    width=st.integers(1, 400),
    tile=st.sampled_from([16, 32, 64, 128]),
    overlap_frac=st.floats(0, 0.75),
    blend=st.sampled_from(["cosine", "mean", "center-crop"]),
)
def test_property_tiles_cover_every_pixel_and_weights_normalise(
    height: int, width: int, tile: int, overlap_frac: float, blend: str
) -> None:
    overlap = int(tile * overlap_frac)
    grid = TileGrid(height, width, tile_size=tile, overlap=overlap, blend=blend)  # type: ignore[arg-type]
    count, wsum = _coverage(grid)
    assert count.min() >= 1, "a pixel is not covered by any tile"
    assert wsum.min() > 0, "a pixel has zero total blending weight"
    if blend != "mean":
        np.testing.assert_allclose(wsum, 1.0, atol=1e-5)
    # the engines divide by the grid's separable weight sums instead of accumulating every tile's weights
    rows, cols = grid.weight_sums
    np.testing.assert_allclose(np.outer(rows, cols), wsum, rtol=1e-5)


@given(
    h=st.integers(1, 3000),
    w=st.integers(1, 3000),
    tile=st.sampled_from([64, 128, 256, 512]),
    overlap=st.integers(0, 63),
    multiple=st.sampled_from([1, 16, 32]),
)
@settings(max_examples=300, deadline=None)
def test_property_balanced_grid_never_needs_more_tiles_nor_a_larger_tile(
    h: int, w: int, tile: int, overlap: int, multiple: int
) -> None:
    from changedet.inference import engine_grid

    fixed = engine_grid(h, w, multiple=multiple, tile_size=tile, overlap=overlap, balance=False)
    balanced = engine_grid(h, w, multiple=multiple, tile_size=tile, overlap=overlap)
    assert balanced.tile_size <= fixed.tile_size
    assert balanced.tile_size % multiple == 0
    if max(balanced.shape) > 1:  # (a single tile has no overlap to keep)
        assert balanced.overlap == fixed.overlap
    assert balanced.shape[0] <= fixed.shape[0] and balanced.shape[1] <= fixed.shape[1]
    computed = sum(t.height * t.width for t in balanced)
    assert computed <= sum(t.height * t.width for t in fixed)
    count, wsum = _coverage(balanced)
    assert count.min() >= 1
    np.testing.assert_allclose(wsum, 1.0, atol=1e-6)
    for a, b in zip(balanced.row_starts, balanced.row_starts[1:], strict=False):
        assert a + balanced.tiles[0].height - b >= balanced.overlap  # neighbours still overlap enough


def test_balanced_grid_saves_the_work_of_a_far_inward_edge_tile() -> None:
    from changedet.inference import engine_grid
    from changedet.tiling import balanced_tile_size

    # 2048 px in tiles of 512 overlapping by 32: 5 tiles per axis either way, but 448 px tiles suffice
    assert balanced_tile_size(2048, 2048, 512, 32, 16) == 448
    fixed = engine_grid(2048, 2048, multiple=16, tile_size=512, overlap=32, balance=False)
    balanced = engine_grid(2048, 2048, multiple=16, tile_size=512, overlap=32)
    assert fixed.shape == balanced.shape == (5, 5)
    work = sum(t.height * t.width for t in balanced) / sum(t.height * t.width for t in fixed)
    assert work == pytest.approx((448 / 512) ** 2)
    # a Sentinel-2 tile: 23 tiles of 512 per axis already fit tightly
    assert balanced_tile_size(10980, 10980, 512, 32, 16) == 512

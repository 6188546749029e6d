"""Overlapping tiles over a raster grid, blending weights, and stitching order.

A :class:`TileGrid` covers a ``height x width`` grid with windows of ``tile_size`` pixels that overlap by
``overlap`` pixels. Edge tiles are moved inward (never padded with zeros), so every tile lies entirely inside the
scene; only a scene smaller than one tile gives a smaller tile, which the engine pads by reflection up to the model's
``multiple``. Blending weights taper across the overlap so that stitched predictions have no seams:

* ``"cosine"`` (default): a raised-cosine (Hann) ramp across the overlap on every side shared with a neighbour,
  flat 1 inside the tile and along the scene border; the ``overlap // 4`` pixels next to an internal tile edge
  weigh 0, so a network's border effects (zero padding) never reach the output;
* ``"mean"``: every covered pixel weighs 1 (a plain average of overlapping predictions);
* ``"center-crop"``: each pixel is taken from exactly one tile, the one whose centre region holds it (no averaging).

Stitched output is ``sum(w * p) / sum(w)`` and the weights of overlapping tiles sum to one, so for a
translation-equivariant model whose receptive-field margin is at most ``overlap // 4`` pixels (``cosine``), or
``overlap // 2`` (``center-crop``), the tiled result equals the whole-image result. Arrays are (row, col); windows are :class:`rasterio.windows.Window`-compatible
``(col_off, row_off, width, height)`` tuples.

This module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from changedet.errors import InputError
from changedet.types import Blend

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE_SIZE", "Tile", "TileGrid", "axis_starts", "balanced_tile_size"]

BLENDS: tuple[str, ...] = ("cosine", "mean", "center-crop")

#: Default tile edge and overlap of ``changedet detect`` (and the Python API). With the cosine blend, 32 px of overlap
#: leaves 8 px of zero weight next to each internal tile edge and a 16 px ramp: on the OSCD beirut pair the bundled
#: s2-13band model's stitched probabilities (tiles of 416 px, in pooling phase: see
#: :func:`changedet.inference.engine_grid`) differ from a whole-image prediction by at most 0.0035 away from the scene
#: border (mean 3.4e-6, 3 mask pixels flip), s2-rgb's by 0.081 (mean 5.4e-5, 37 flips; ``scripts/seam_check.py``),
#: while 64 px costs 6-25 % more compute (4096 to 8192 px scenes, 512 px tiles).
DEFAULT_TILE_SIZE = 512
DEFAULT_OVERLAP = 32


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` along an axis of ``length`` pixels.

    Consecutive tiles overlap by at least ``overlap``; the last tile is moved inward so that it ends exactly at
    ``length``. A length shorter than a tile gives one tile at 0.

    >>> axis_starts(10, 4, 1)
    [0, 3, 6]
    >>> axis_starts(11, 4, 1)
    [0, 3, 6, 7]
    >>> axis_starts(3, 4, 1)
    [0]
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def balanced_tile_size(height: int, width: int, tile_size: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile edge (a multiple of ``multiple``, at most ``tile_size``) that needs no more tiles.

    :func:`axis_starts` moves the last tile inward, so with a fixed tile size the last two tiles of an axis can
    overlap by much more than ``overlap``: 2048 px in tiles of 512 overlapping by 32 take 5 tiles per axis (2560 px
    computed for 2048, 56 % extra work in 2-D). The same 5 tiles of 448 px cover it with 20 % extra. This returns
    that size: per axis longer than a tile, ``n`` tiles are needed at ``tile_size``, and the smallest edge with
    which ``n`` tiles still cover the axis with ``overlap``; the larger of the two axes' edges.

    >>> balanced_tile_size(2048, 2048, 512, 32, 16)
    448
    >>> balanced_tile_size(10980, 10980, 512, 32, 16)
    512
    >>> balanced_tile_size(300, 200, 512, 32, 16)  # one tile, padded by the engine to the multiple
    304
    """
    multiple = max(1, int(multiple))
    best = 0
    for length in (int(height), int(width)):
        if length <= tile_size:
            need = -(-length // multiple) * multiple
        else:
            n = -(-(length - overlap) // (tile_size - overlap))
            need = -(-(length + (n - 1) * overlap) // n)
            need = -(-need // multiple) * multiple
        best = max(best, need)
    return max(multiple, min(int(tile_size), best))


@dataclass(frozen=True)
class Tile:
    """One tile: its window in the grid and its index in row-major order."""

    index: int
    row: int  # tile row number
    col: int  # tile column number
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        """``(col_off, row_off, width, height)``, the argument order of ``rasterio.windows.Window``."""
        return (self.col_off, self.row_off, self.width, self.height)

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of the tile in the full grid."""
        return slice(self.row_off, self.row_off + self.height), slice(self.col_off, self.col_off + self.width)


def _ramp(n: int) -> np.ndarray:
    """Weights across an overlap of ``n`` pixels, rising from 0 to 1.

    The first ``n // 4`` pixels (next to the tile's edge, where zero padding disturbs a convolutional network)
    weigh 0, the last ``n // 4`` weigh 1, and a raised cosine joins them. The ramp and its mirror image sum to one,
    so two neighbouring tiles form a partition of unity across their overlap.

    >>> r = _ramp(8)
    >>> [round(float(x), 3) for x in r]
    [0.0, 0.0, 0.038, 0.309, 0.691, 0.962, 1.0, 1.0]
    >>> bool(np.allclose(r + r[::-1], 1.0))
    True
    """
    halo = n // 4
    m = n - 2 * halo
    out = np.ones(n, dtype=np.float64)
    out[:halo] = 0.0
    j = np.arange(m, dtype=np.float64)
    out[halo : halo + m] = 0.5 - 0.5 * np.cos(np.pi * (j + 0.5) / m)
    return out


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles over a ``height x width`` grid.

    Parameters
    ----------
    height, width
        Size of the grid (the aligned pair) in pixels.
    tile_size
        Tile edge in pixels; must be a multiple of ``multiple`` (the model's required input multiple).
    overlap
        Minimum overlap between neighbouring tiles in pixels (``0 <= overlap < tile_size``). For output identical
        to a whole-image pass, ``overlap // 4`` (cosine) must cover the model's border effects; in practice 32 (the
        default) leaves no visible seam with the bundled FC models (see :data:`DEFAULT_OVERLAP`).
    multiple
        The model's ``required_multiple``; tiles smaller than ``tile_size`` (scenes smaller than a tile) are padded
        to it by the engine.
    blend
        ``"cosine"``, ``"mean"`` or ``"center-crop"`` (see the module docstring).

    Examples
    --------
    >>> grid = TileGrid(1000, 700, tile_size=256, overlap=32, multiple=16)
    >>> len(grid), grid.shape
    (15, (5, 3))
    >>> grid.tiles[-1].window
    (444, 744, 256, 256)
    """

    height: int
    width: int
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    multiple: int = 1
    blend: Blend = "cosine"
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(f"the grid is empty ({self.height} x {self.width} pixels): nothing to tile")
        if self.multiple < 1:
            raise InputError(f"multiple must be >= 1, got {self.multiple}")
        if self.tile_size < self.multiple or self.tile_size % self.multiple:
            raise InputError(
                f"tile_size {self.tile_size} is not a multiple of the model's required multiple {self.multiple}; "
                f"use e.g. --tile-size {max(self.multiple, self.tile_size // self.multiple * self.multiple)}"
            )
        if not 0 <= self.overlap < self.tile_size:
            raise InputError(f"overlap must be in [0, tile_size) = [0, {self.tile_size}), got {self.overlap}")
        if self.blend not in BLENDS:
            raise InputError(f"unknown blend {self.blend!r}; choose one of {', '.join(BLENDS)}")

    @cached_property
    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.tile_size, self.overlap)

    @cached_property
    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.tile_size, self.overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and tile columns."""
        return len(self.row_starts), len(self.col_starts)

    @cached_property
    def tiles(self) -> list[Tile]:
        """All tiles in row-major order."""
        th, tw = min(self.tile_size, self.height), min(self.tile_size, self.width)
        out: list[Tile] = []
        for r, r0 in enumerate(self.row_starts):
            for c, c0 in enumerate(self.col_starts):
                out.append(Tile(len(out), r, c, r0, c0, th, tw))
        return out

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    # -- blending -----------------------------------------------------------------------------------------------
    def _axis_weights(self, starts: list[int], k: int, size: int, length: int) -> np.ndarray:
        """1-D weights of tile ``k`` along one axis, normalised so that all tiles sum to 1 (not for ``mean``)."""
        w = self._raw_axis_weights(starts, k, size)
        if self.blend == "mean":
            return w
        key = ("total", length, len(starts), size)
        total = self._cache.get(key)
        if total is None:
            total = np.zeros(length, dtype=np.float64)
            for j in range(len(starts)):
                total[starts[j] : starts[j] + size] += self._raw_axis_weights(starts, j, size)
            self._cache[key] = total
        seg = total[starts[k] : starts[k] + size]
        return np.divide(w, seg, out=np.zeros_like(w), where=seg > 0)

    def _raw_axis_weights(self, starts: list[int], k: int, size: int) -> np.ndarray:
        """1-D weights of tile ``k`` along one axis, tapered only where a neighbour overlaps it."""
        w = np.ones(size, dtype=np.float64)
        if self.blend == "mean":
            return w
        start = starts[k]
        if self.blend == "center-crop":
            # keep the pixels closer to this tile's centre than to the neighbour's: split each overlap in half
            lo = 0 if k == 0 else (starts[k - 1] + size - start) // 2 + (starts[k - 1] + size - start) % 2
            hi = size if k == len(starts) - 1 else size - (start + size - starts[k + 1]) // 2
            w[:] = 0.0
            w[lo:hi] = 1.0
            return w
        # cosine: ramp across the actual overlap with each neighbour
        if k > 0:
            ov = starts[k - 1] + size - start
            if ov > 0:
                w[:ov] *= _ramp(ov)
        if k < len(starts) - 1:
            ov = start + size - starts[k + 1]
            if ov > 0:
                w[size - ov :] *= _ramp(ov)[::-1]
        return w

    def weights(self, tile: Tile) -> np.ndarray:
        """Blending weights of ``tile``, float32 (row, col); with ``cosine`` or ``center-crop`` the weights of all
        tiles sum to 1 at every pixel (``mean``: to the number of tiles covering it)."""
        wr = self._cached_axis("row", self.row_starts, tile.row, tile.height, self.height)
        wc = self._cached_axis("col", self.col_starts, tile.col, tile.width, self.width)
        return np.outer(wr, wc).astype(np.float32)

    @cached_property
    def weight_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-row and per-column sums of the tiles' 1-D weights, float32 ``(height,)`` and ``(width,)``.

        The weights are separable (:meth:`weights` is an outer product) and the tiles form a full grid, so the sum
        of every tile's weight at pixel ``(r, c)`` is ``rows[r] * cols[c]``: 1 for ``cosine`` and ``center-crop``,
        the number of tiles covering the pixel for ``mean``. A stitching engine divides its weighted sum of
        predictions by it instead of accumulating the weights of every tile in a second full-width buffer.

        >>> g = TileGrid(100, 70, tile_size=40, overlap=8, blend="mean")
        >>> rows, cols = g.weight_sums
        >>> rows[:3].tolist(), rows[35:38].tolist(), float(TileGrid(100, 70, tile_size=40, overlap=8).weight_sums[0].max())
        ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], 1.0)
        """
        def total(axis: str, starts: list[int], size: int, length: int) -> np.ndarray:
            out = np.zeros(length, dtype=np.float64)
            for k, s0 in enumerate(starts):
                out[s0 : s0 + size] += self._cached_axis(axis, starts, k, size, length)
            return out.astype(np.float32)

        th, tw = min(self.tile_size, self.height), min(self.tile_size, self.width)
        return (total("row", self.row_starts, th, self.height), total("col", self.col_starts, tw, self.width))

    def _cached_axis(self, axis: str, starts: list[int], k: int, size: int, length: int) -> np.ndarray:
        key = (axis, k)
        w = self._cache.get(key)
        if w is None:
            w = self._cache[key] = self._axis_weights(starts, k, size, length)
        return w

    # -- streaming order ----------------------------------------------------------------------------------------
    def rows_final_after(self, tile_row: int) -> int:
        """Number of grid rows that no tile after tile row ``tile_row`` touches (rows ready to be written)."""
        if tile_row >= len(self.row_starts) - 1:
            return self.height
        return self.row_starts[tile_row + 1]

    def tiles_in_row(self, tile_row: int) -> list[Tile]:
        """The tiles of one tile row."""
        n = len(self.col_starts)
        return self.tiles[tile_row * n : (tile_row + 1) * n]

"""Connected regions of change found window by window (pixel coordinates) and joined across window edges with
a disjoint set, then merged into one polygon per region with its pixel statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from rasterio.features import shapes as _shapes
from scipy import ndimage

from changedet.vectorize.sources import _Source, _windows

if TYPE_CHECKING:  # pragma: no cover
    from affine import Affine

_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as rasterio.features.shapes(connectivity=4)


class _DisjointSet:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> None:
        self.parent.extend(range(len(self.parent), len(self.parent) + n))

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Pieces:
    """Polygons of connected components per window (pixel coordinates) and their pixel statistics."""

    geoms: list[Any] = field(default_factory=list)
    count: list[np.ndarray] = field(default_factory=list)
    psum: list[np.ndarray] = field(default_factory=list)
    pn: list[np.ndarray] = field(default_factory=list)
    pmax: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    links: _DisjointSet = field(default_factory=_DisjointSet)
    invalid: list[Any] = field(default_factory=list)  # nodata areas (pixel coordinates), when asked for
    above_one: float = 0.0  # the largest finite probability value above 1 read (not its nodata); 0 when none


def _edge_links(a: np.ndarray, b: np.ndarray, offset_a: int, offset_b: int, ds: _DisjointSet) -> None:
    """Join the pieces whose pixels face each other across a window edge (4-connectivity)."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return
    pairs = np.unique(np.stack([a[both], b[both]], axis=1), axis=0)
    for la, lb in pairs:
        ds.union(offset_a + int(la) - 1, offset_b + int(lb) - 1)


def _collect_pieces(msrc: _Source | None, psrc: _Source | None, threshold: float | None, size: int,
                    with_invalid: bool = False) -> _Pieces:
    """Vectorise window by window; join pieces across window edges with a disjoint set. With ``with_invalid`` the
    nodata areas are kept too (``pieces.invalid``, per window), for ``fill_holes``."""
    grid = (msrc or psrc).shape  # type: ignore[union-attr]
    height, width = grid
    pieces = _Pieces()
    dset = pieces.links
    # edge strips still needed: right column of the previous window, bottom rows of the previous window row
    prev_right: np.ndarray | None = None
    prev_right_offset = 0
    bottoms: dict[int, tuple[np.ndarray, int]] = {}
    pnodata = psrc.nodata if psrc is not None else None
    for _i, j, win in _windows(height, width, size):
        prob = None
        if psrc is not None:
            prob = psrc.read(win).astype("float64", copy=False)
            with np.errstate(invalid="ignore"):
                pvalid = np.isfinite(prob) & (prob >= 0.0) & (prob <= 1.0)
            if pnodata is not None and not (isinstance(pnodata, float) and math.isnan(pnodata)):
                pvalid &= prob != pnodata
                over = (prob > 1.0) & (prob != pnodata)
            else:
                over = prob > 1.0
            if over.any():  # not a probability: the caller decides (a float mask read as one is refused)
                pieces.above_one = max(pieces.above_one, float(prob[over & np.isfinite(prob)].max(initial=0.0)))
        if msrc is not None:
            m = msrc.read(win)
            change = m != 0
            if msrc.nodata is not None and not (isinstance(msrc.nodata, float) and math.isnan(msrc.nodata)):
                change &= m != msrc.nodata
            if np.issubdtype(m.dtype, np.floating):
                change &= np.isfinite(m)
        else:
            change = pvalid & (prob >= threshold)  # type: ignore[operator]
        shift = _affine_translation(int(win.col_off), int(win.row_off))  # window pixels -> scene pixels
        if with_invalid:
            invalid = np.zeros(change.shape, bool) if psrc is None else ~pvalid
            if msrc is not None:
                if msrc.nodata is not None and not (isinstance(msrc.nodata, float) and math.isnan(msrc.nodata)):
                    invalid |= m == msrc.nodata
                if np.issubdtype(m.dtype, np.floating):
                    invalid |= ~np.isfinite(m)
            if invalid.any():
                pieces.invalid.extend(shapely.geometry.shape(geom) for geom, _ in
                                      _shapes(invalid.astype("uint8"), mask=invalid, connectivity=4, transform=shift))
        labels, n = ndimage.label(change, structure=_FOUR)
        offset = pieces.n
        if j == 0:
            prev_right = None
        if n:
            labels = labels.astype("int32", copy=False)
            idx = np.arange(1, n + 1)
            pieces.count.append(np.bincount(labels.ravel(), minlength=n + 1)[1:])
            if prob is not None:
                w = np.where(pvalid, prob, 0.0)
                pieces.psum.append(np.bincount(labels.ravel(), weights=w.ravel(), minlength=n + 1)[1:])
                pieces.pn.append(
                    np.bincount(labels.ravel(), weights=pvalid.ravel().astype("float64"), minlength=n + 1)[1:]
                )
                pieces.pmax.append(
                    np.asarray(ndimage.maximum(np.where(pvalid, prob, -np.inf), labels, idx), dtype="float64")
                )
            else:
                pieces.psum.append(np.zeros(n))
                pieces.pn.append(np.zeros(n))
                pieces.pmax.append(np.full(n, -np.inf))
            geoms: list[Any] = [None] * n
            for geom, value in _shapes(labels, mask=change, connectivity=4, transform=shift):
                geoms[int(value) - 1] = shapely.geometry.shape(geom)
            pieces.geoms.extend(geoms)
            pieces.n += n
            dset.add(n)
        # joins with the left and upper neighbours
        if prev_right is not None and n:
            _edge_links(prev_right, labels[:, 0], prev_right_offset, offset, dset)
        up = bottoms.pop(j, None)
        if up is not None and n:
            _edge_links(up[0], labels[0, :], up[1], offset, dset)
        prev_right = labels[:, -1].copy() if n else None
        prev_right_offset = offset
        if n and int(win.row_off + win.height) < height:
            bottoms[j] = (labels[-1, :].copy(), offset)
    return pieces


def _affine_translation(col: int, row: int) -> Affine:
    from affine import Affine

    return Affine.translation(col, row)


def _merge_pieces(pieces: _Pieces) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Union the pieces of each connected region (exact, in pixel coordinates) and combine their statistics."""
    empty = {k: np.zeros(0) for k in ("count", "psum", "pn", "pmax")}
    if pieces.n == 0:
        return np.empty(0, dtype=object), empty
    dset = pieces.links
    roots = np.fromiter((dset.find(k) for k in range(pieces.n)), dtype="int64", count=pieces.n)
    uniq, inverse = np.unique(roots, return_inverse=True)
    geoms_in = np.empty(pieces.n, dtype=object)
    geoms_in[:] = pieces.geoms
    count = np.bincount(inverse, weights=np.concatenate(pieces.count))
    psum = np.bincount(inverse, weights=np.concatenate(pieces.psum))
    pn = np.bincount(inverse, weights=np.concatenate(pieces.pn))
    pmax = np.full(len(uniq), -np.inf)
    np.maximum.at(pmax, inverse, np.concatenate(pieces.pmax))
    sizes = np.bincount(inverse)
    out = np.empty(len(uniq), dtype=object)
    single = sizes[inverse] == 1
    out[inverse[single]] = geoms_in[single]
    multi = np.flatnonzero(sizes > 1)
    if len(multi):
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for g in multi:
            members = geoms_in[order[starts[g] : starts[g + 1]]]
            # exact in pixel coordinates; simplify(0) drops the collinear vertices left on the window seams
            merged = shapely.simplify(shapely.union_all(members), 0.0)
            if merged.geom_type != "Polygon":  # pragma: no cover - edge-connected pieces union to one polygon
                merged = max(getattr(merged, "geoms", [merged]), key=lambda p: p.area)
            out[g] = merged
    # top-to-bottom, then left-to-right (pixel coordinates)
    b = shapely.bounds(out)
    order = np.lexsort((b[:, 0], b[:, 1]))
    stats = {"count": count[order], "psum": psum[order], "pn": pn[order], "pmax": pmax[order]}
    return out[order], stats

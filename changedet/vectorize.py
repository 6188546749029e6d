"""Turn a change mask (or a change probability and a threshold) into polygons with attributes.

:func:`vectorize` reads the mask window by window (``rasterio.features.shapes`` on each window), so a mask of any
size is vectorised in bounded memory; polygons cut by window edges are merged back into one. Sizes given in
metres (``min_area``, ``simplify``, ``fill_holes``) stay in metres when the CRS is geographic (EPSG:4326, as in
OSCD) or a projection that stretches areas by more than 0.5 % over the scene (Web Mercator, EPSG:3857; see
:mod:`changedet.geodesy`): areas and perimeters are then geodesic on the CRS's ellipsoid and simplification runs in
the local UTM zone (an azimuthal equidistant projection beyond UTM's latitudes).

This module never imports torch: a QGIS or notebook user can vectorise without the ML stack.

>>> import numpy as np
>>> from rasterio.transform import from_origin
>>> mask = np.zeros((100, 100), dtype="uint8")
>>> mask[10:30, 40:60] = 1  # a 20 x 20 pixel block of change
>>> gdf = vectorize(mask, transform=from_origin(500000, 4600000, 10, 10), crs="EPSG:32631")
>>> len(gdf), float(gdf.area_m2[0])
(1, 40000.0)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import inspect
import logging
import math
import os
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import shapely
from rasterio.features import shapes as _shapes
from rasterio.windows import Window
from scipy import ndimage

from changedet.errors import ChangedetWarning, InputError, NotGeoreferencedWarning, RasterReadError
from changedet.geodesy import geodesic_area_perimeter, grid_bounds, local_metric_crs, needs_geodesic_area

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd
    from affine import Affine
    from pyproj import CRS

__all__ = ["COLUMNS", "vectorize"]

log = logging.getLogger(__name__)

#: Attribute columns of the GeoDataFrame returned by :func:`vectorize` (plus ``geometry``), in order.
#: ``area_m2``/``perimeter_m`` are in square metres/metres (geodesic for a geographic CRS or one that stretches areas,
#: such as Web Mercator; NaN when the input is not georeferenced); ``pixel_count`` is the number of changed pixels inside the polygon (holes filled by
#: ``fill_holes`` not counted); ``mean_prob``/``max_prob`` summarise the probability over those pixels (NaN
#: without a probability); dates are ISO strings (``YYYY-MM-DD``) or missing.
COLUMNS: tuple[str, ...] = (
    "id",
    "area_m2",
    "perimeter_m",
    "pixel_count",
    "mean_prob",
    "max_prob",
    "before_date",
    "after_date",
    "model",
    "threshold",
)

_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as rasterio.features.shapes(connectivity=4)


# ----------------------------------------------------------------------------------------------------- inputs
@dataclass
class _Source:
    """One single-band raster input, an in-memory array or an open dataset, read window by window."""

    name: str
    array: np.ndarray | None = None
    dataset: Any = None
    owned: bool = False
    nodata: float | None = None
    band: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        if self.array is not None:
            return self.array.shape  # type: ignore[return-value]
        return (self.dataset.height, self.dataset.width)

    @property
    def dtype(self) -> np.dtype:
        if self.array is not None:
            return self.array.dtype
        return np.dtype(self.dataset.dtypes[self.band - 1])

    def read(self, window: Window) -> np.ndarray:
        if self.array is not None:
            r, c = int(window.row_off), int(window.col_off)
            return np.asarray(self.array[r : r + int(window.height), c : c + int(window.width)])
        try:
            return self.dataset.read(self.band, window=window)
        except Exception as exc:  # rasterio raises RasterioIOError/CPLE_* for truncated or corrupt blocks
            raise RasterReadError(
                f"{self.name}: cannot read window {window!r} ({exc}); the file may be truncated or corrupt. "
                "Re-create it or check it with `gdalinfo -checksum`."
            ) from exc

    def close(self) -> None:
        if self.owned and self.dataset is not None:
            self.dataset.close()


#: ``nodata="auto"`` for an array: 255, the nodata of ``change.tif`` (and of :attr:`ChangeResult.mask`).
ARRAY_NODATA = 255


def _open_source(obj: Any, what: str, nodata: float | str | None) -> tuple[_Source, Any, Any]:
    """Wrap an array, a path or an open dataset; return it with the dataset's (transform, crs) if any.

    ``nodata``: ``"auto"`` (the dataset's declared nodata, none when it declares none; :data:`ARRAY_NODATA` for an
    array), None (no nodata value) or a number, which wins over what a dataset declares."""
    if isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and not hasattr(obj, "read")):
        arr = np.asarray(obj)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise InputError(
                f"{what}: expected a 2-D array (row, col) or a single-band (1, row, col) array, found shape "
                f"{arr.shape}; pass one band, e.g. array[0]."
            )
        return _Source(what, array=arr, nodata=ARRAY_NODATA if isinstance(nodata, str) else nodata), None, None
    if isinstance(obj, (str, os.PathLike)):
        from changedet.io.raster import open_raster

        path = os.fspath(obj)
        ds = open_raster(path)
        owned = True
    elif hasattr(obj, "read") and hasattr(obj, "transform"):
        ds, owned = obj, False
        path = getattr(obj, "name", what)
    else:
        raise InputError(
            f"{what}: expected a numpy array, a path or an open rasterio dataset, found {type(obj).__name__}."
        )
    if ds.count != 1:
        log.info("%s has %d bands; band 1 is used as the %s", path, ds.count, what)
    src = _Source(path, dataset=ds, owned=owned, nodata=ds.nodata if isinstance(nodata, str) else nodata)
    georef = ds.crs is not None
    return src, (ds.transform if georef or not ds.transform.is_identity else None), ds.crs


#: The values of the ``change.tif`` that detect writes: 0 no change, 1 change, 255 no data.
DETECT_MASK_VALUES = (0, 1, ARRAY_NODATA)


def _detect_encoded_nodata(src: _Source, size: int) -> int | None:
    """The number of 255 pixels when ``src`` (a file or dataset that declares no nodata) holds only the values 0, 1
    and 255 with both 1 and 255 present: detect's ``change.tif`` encoding (255 = no data) whose nodata tag was
    lost (``gdal_translate -a_nodata none``, a re-export); None otherwise (a 0/255 or 0/1 mask, any other value).
    Read window by window; stops at the first window holding another value."""
    if src.dataset is None or src.dtype.kind not in "uif":
        return None
    height, width = src.shape
    ones = n255 = 0
    for _i, _j, win in _windows(height, width, size):
        m = src.read(win)
        is0, is1, is255 = m == 0, m == 1, m == ARRAY_NODATA
        n1, n2 = int(np.count_nonzero(is1)), int(np.count_nonzero(is255))
        if int(np.count_nonzero(is0)) + n1 + n2 != m.size:  # another value (NaN included): not that encoding
            return None
        ones += n1
        n255 += n2
    return n255 if ones and n255 else None


def _source_tags(src: _Source | None) -> dict[str, str]:
    """The dataset tags of a path/dataset source, upper-cased keys; empty for arrays."""
    ds = getattr(src, "dataset", None)
    if ds is None:
        return {}
    try:
        return {str(k).upper(): str(v) for k, v in ds.tags().items()}
    except Exception:  # noqa: BLE001 - tags are a nicety
        return {}


def _iso(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()[:10] if not isinstance(value, _dt.datetime) else value.date().isoformat()
    text = str(value).strip()
    if not text:
        return None
    try:
        return _dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        return text


def _windows(height: int, width: int, size: int) -> Iterator[tuple[int, int, Window]]:
    for i, r in enumerate(range(0, height, size)):
        for j, c in enumerate(range(0, width, size)):
            yield i, j, Window(c, r, min(size, width - c), min(size, height - r))


# ------------------------------------------------------------------------------------------------ union-find
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


def _edge_links(a: np.ndarray, b: np.ndarray, offset_a: int, offset_b: int, ds: _DisjointSet) -> None:
    """Join the pieces whose pixels face each other across a window edge (4-connectivity)."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return
    pairs = np.unique(np.stack([a[both], b[both]], axis=1), axis=0)
    for la, lb in pairs:
        ds.union(offset_a + int(la) - 1, offset_b + int(lb) - 1)


# ------------------------------------------------------------------------------------------------ geometry
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


# ------------------------------------------------------------------------------------------------ vectorize
def vectorize(
    mask: Any,
    probability: Any = None,
    *,
    transform: Affine | None = None,
    crs: Any = None,
    threshold: float | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    fill_holes: float = 0.0,
    nodata: float | Literal["auto"] | None = "auto",
    window_size: int = 4096,
    before_date: Any = None,
    after_date: Any = None,
    model: str | None = None,
) -> gpd.GeoDataFrame:
    """Vectorise a change mask into polygons with attributes.

    Parameters
    ----------
    mask : numpy.ndarray, path, rasterio dataset or None
        Change mask (row, col) or (1, row, col): non-zero means change, ``nodata`` means no data (not change).
        ``None`` to derive it from ``probability >= threshold``.
    probability : numpy.ndarray, path, rasterio dataset, optional
        Change probability (0..1) on the same grid; gives ``mean_prob`` and ``max_prob`` (NaN without it).
        Non-finite values, values outside 0..1 and the dataset's nodata (``-1`` in ``probability.tif``) are
        ignored.
    transform, crs : optional
        Georeferencing of array inputs (rasterio ``Affine`` and anything ``pyproj.CRS`` accepts). Taken from the
        dataset when a path or dataset is given and these are None.
    threshold : float, optional
        Decision threshold: required when ``mask`` is None, otherwise only stored in the ``threshold`` column (a
        mask file tagged by ``detect`` stores its own ``THRESHOLD``; another value given here is a warning, since
        the polygons are the mask's: give the probability alone to threshold again).
    min_area : float
        Drop polygons smaller than this, in square metres (after ``fill_holes``; with ``simplify``, both before
        and after it, so that no polygon written is smaller).
    simplify : float
        Topology-preserving simplification tolerance in metres (polygons that share edges keep sharing them);
        0 keeps the exact pixel outlines. Every polygon stays one valid Polygon (in a geographic or Web Mercator
        CRS too, where it is simplified in UTM and taken back): a rounding error that makes an outline cross
        itself is repaired, slivers and collapsed lines are dropped, and the rare outline that would split into
        several parts keeps its exact pixel outline.
    fill_holes : float
        Fill holes smaller than this, in square metres; changed polygons inside a filled hole are absorbed.
    nodata : float, "auto" or None
        Value of ``mask`` that means no data (neither change nor polygon). ``"auto"`` (default): for a file or
        dataset, the nodata value it declares (255 in the ``change.tif`` that detect writes) and none when it
        declares none, so that a 0/255 mask (a LEVIR-CD label, an exported binary mask) is vectorised with 255 as
        change; but a file that declares none and holds only the values 0, 1 and 255 (both 1 and 255 present:
        detect's encoding, its nodata tag lost) has 255 as nodata, with a
        :class:`~changedet.errors.ChangedetWarning` that says so. For an array, 255 (the nodata of
        :attr:`changedet.ChangeResult.mask`). A number overrides what the file declares; None means every non-zero
        value is change.
    window_size : int
        Side of the square windows read one at a time (bounds the memory); polygons cut by window edges are
        merged, so the result does not depend on it.
    before_date, after_date : date, datetime or str, optional
        Stored as ISO strings.
    model : str, optional
        Model name stored in the ``model`` column.

    When the inputs are files (or datasets) that ``changedet detect`` wrote, ``model``, the dates and (for a mask)
    the ``threshold`` column default to their tags (``MODEL``, ``BEFORE_DATE``, ``AFTER_DATE``, ``THRESHOLD``; in a
    series, ``CHANGEDET_MODEL``, ``CHANGEDET_THRESHOLD`` and the first and last of ``DATES``). A series'
    ``change_count.tif``, ``first_change.tif`` or ``last_change.tif`` gives the polygons of the pixels that changed
    at least once: those of the series' ``changes.gpkg``, without its per-pair attributes.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per 4-connected region of change, columns :data:`COLUMNS` plus ``geometry`` (Polygons in the
        input CRS, exterior rings counter-clockwise), ordered top to bottom then left to right, ``id`` from 1.
        When the input has no CRS, coordinates are the ``transform``'s (pixel coordinates, column/row, without
        one), ``area_m2`` and ``perimeter_m`` are NaN, ``min_area``/``fill_holes``/``simplify`` are read in
        those units (pixels) and a :class:`~changedet.errors.NotGeoreferencedWarning` is issued.
        ``attrs["pixel_size"]`` holds the pixel size in CRS units, by which
        :func:`changedet.export.write_vectors` densifies edges before reprojecting them.

    Raises
    ------
    InputError
        Shapes differ, the threshold is missing, an option is negative, or an input is not a raster.
    RasterReadError
        A file cannot be opened or read.

    Examples
    --------
    Two blocks of change in a 10 m mask; ``min_area`` (square metres) drops the small one, ``probability`` gives
    the statistics columns:

    >>> import numpy as np
    >>> from rasterio.transform import from_origin
    >>> prob = np.zeros((60, 60), "float32")
    >>> prob[5:25, 10:30] = 0.9   # 20 x 20 pixels: 40 000 m2
    >>> prob[40:42, 40:42] = 0.7  # 2 x 2 pixels: 400 m2
    >>> gdf = vectorize(None, prob, threshold=0.5, min_area=1000, transform=from_origin(500000, 4600000, 10, 10),
    ...                 crs="EPSG:32631", after_date="2020-05-01")
    >>> gdf[["id", "area_m2", "mean_prob", "after_date"]]
       id  area_m2  mean_prob  after_date
    0   1  40000.0        0.9  2020-05-01
    >>> gdf.crs.to_epsg(), gdf.geometry.iloc[0].bounds
    (32631, (500100.0, 4599750.0, 500300.0, 4599950.0))
    """
    import geopandas as gpd
    from affine import Affine
    from pyproj import CRS as _CRS

    for name, value in (("min_area", min_area), ("simplify", simplify), ("fill_holes", fill_holes)):
        if not (value >= 0 and math.isfinite(value)):
            raise InputError(f"{name} must be a finite number >= 0 (in metres), found {value!r}.")
    if int(window_size) < 2:
        raise InputError(f"window_size must be >= 2 pixels, found {window_size!r}.")
    window_size = int(window_size)
    if mask is None and probability is None:
        raise InputError("vectorize needs a mask, or a probability and a threshold; both are None.")
    if nodata is not None and nodata != "auto":
        try:
            nodata = float(nodata)
        except (TypeError, ValueError):
            raise InputError(f"nodata must be a number, 'auto' or None, found {nodata!r}.") from None
    if mask is None and threshold is None:
        raise InputError(
            "vectorize: a probability without a mask needs a threshold (probability >= threshold is change); "
            "pass threshold=, e.g. 0.5 or the model's calibrated threshold from report.json."
        )
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise InputError(f"threshold must be between 0 and 1, found {threshold!r}.")

    sources: list[_Source] = []
    try:
        msrc = psrc = None
        ds_transform = ds_crs = None
        if mask is not None:
            msrc, ds_transform, ds_crs = _open_source(mask, "mask", nodata)
            sources.append(msrc)
            if nodata == "auto" and msrc.nodata is None:  # detect's 0/1/255 mask whose nodata tag was lost
                n_nodata = _detect_encoded_nodata(msrc, window_size)
                if n_nodata is not None:
                    msrc.nodata = float(ARRAY_NODATA)
                    warnings.warn(
                        f"{msrc.name}: declares no nodata value but holds only the values 0, 1 and 255, as the "
                        f"change.tif of changedet detect does (0 no change, 1 change, 255 no data): its {n_nodata} "
                        "pixels of 255 are read as no data, not as change; pass --nodata none (nodata=None) to count "
                        "them as change, or --nodata 255 (nodata=255) to say that they are no data",
                        ChangedetWarning,
                        stacklevel=2,
                    )
        if probability is not None:
            psrc, p_transform, p_crs = _open_source(probability, "probability", "auto")
            sources.append(psrc)
            if msrc is not None and psrc.shape != msrc.shape:
                raise InputError(
                    f"{psrc.name}: shape {psrc.shape} differs from the mask {msrc.name} {msrc.shape}; "
                    "the probability must be on the mask's grid (same height and width)."
                )
            if msrc is not None and (
                (ds_crs is not None and p_crs is not None and ds_crs != p_crs)
                or (ds_transform is not None and p_transform is not None
                    and not ds_transform.almost_equals(p_transform))
            ):
                raise InputError(
                    f"{psrc.name}: its grid (CRS {p_crs}, transform {tuple(p_transform or ())[:6]}) differs from the "
                    f"mask {msrc.name} ({ds_crs}, {tuple(ds_transform or ())[:6]}); the probability must be on the "
                    "mask's grid: give the probability.tif written beside the mask, or resample it with gdalwarp"
                )
            ds_transform = ds_transform if ds_transform is not None else p_transform
            ds_crs = ds_crs if ds_crs is not None else p_crs
        transform = transform if transform is not None else ds_transform
        crs = crs if crs is not None else ds_crs
        # what detect tagged its rasters with (MODEL, BEFORE_DATE, AFTER_DATE, THRESHOLD; in a series CHANGEDET_MODEL,
        # CHANGEDET_THRESHOLD and DATES, first to last) fills what is not given
        tags = _source_tags(msrc) or _source_tags(psrc)
        series_dates = [d.strip() for d in tags.get("DATES", "").split(",") if d.strip()]
        model = model if model is not None else (tags.get("MODEL") or tags.get("CHANGEDET_MODEL"))
        if before_date is None:
            before_date = tags.get("BEFORE_DATE") or (series_dates[0] if len(series_dates) > 1 else None)
        if after_date is None:
            after_date = tags.get("AFTER_DATE") or (series_dates[-1] if len(series_dates) > 1 else None)
        threshold_tag = tags.get("THRESHOLD") or tags.get("CHANGEDET_THRESHOLD")
        if msrc is not None and threshold_tag:
            with contextlib.suppress(ValueError):
                made_at = float(threshold_tag)  # the column only: the mask is already thresholded
                if threshold is not None and math.isclose(threshold, made_at, rel_tol=1e-5, abs_tol=1e-6):
                    made_at = threshold  # the same threshold (the tag keeps 6 significant digits)
                elif threshold is not None:
                    warnings.warn(
                        f"{msrc.name} was thresholded at {made_at:g}, not {threshold:g}: the polygons are those of the "
                        f"mask and their threshold column says {made_at:g}; to threshold again at {threshold:g}, give "
                        "the probability raster alone (changedet vectorize probability.tif OUT --threshold ...)",
                        ChangedetWarning, stacklevel=2)
                threshold = made_at
        crs_obj = _CRS.from_user_input(crs) if crs is not None else None
        georeferenced = crs_obj is not None
        if not georeferenced:
            warnings.warn(
                f"{(msrc or psrc).name}: no CRS; polygons are in "  # type: ignore[union-attr]
                f"{'the transform coordinates' if transform is not None else 'pixel coordinates (column, row)'}, "
                "area_m2/perimeter_m are NaN and min_area/fill_holes/simplify are read in those units. "
                "Pass crs= and transform= (or a georeferenced raster) to get metres.",
                NotGeoreferencedWarning,
                stacklevel=2,
            )
        affine = transform if transform is not None else Affine.identity()
        pieces = _collect_pieces(msrc, psrc, threshold, window_size, with_invalid=fill_holes > 0)
    finally:
        for s in sources:
            s.close()

    geoms, stats = _merge_pieces(pieces)
    geoms = _apply_affine(geoms, affine) if not affine.is_identity else geoms

    # scale: metres per map unit, NaN where areas are measured on the ellipsoid (geographic CRS, or a projection
    # that stretches areas, such as Web Mercator)
    height, width = (msrc or psrc).shape  # type: ignore[union-attr]
    geodesic = crs_obj is not None and needs_geodesic_area(crs_obj, grid_bounds(affine, width, height))
    if crs_obj is None:
        scale = 1.0
    elif geodesic:
        scale = float("nan")
    else:
        scale = _metres_per_unit(crs_obj)
        if not math.isfinite(scale):
            scale = 1.0
    if fill_holes > 0 and len(geoms):
        invalid = np.empty(len(pieces.invalid), dtype=object)  # never fill a hole over nodata
        invalid[:] = pieces.invalid
        if len(invalid) and not affine.is_identity:
            invalid = _apply_affine(invalid, affine)
        geoms, stats = _fill_and_absorb(geoms, stats, fill_holes, crs_obj, scale, invalid)

    def _areas(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if crs_obj is None:
            return shapely.area(g), shapely.length(g)
        if geodesic:
            return geodesic_area_perimeter(g, crs_obj)
        return shapely.area(g) * scale * scale, shapely.length(g) * scale

    def drop_small(g: np.ndarray, st: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if min_area <= 0 or not len(g):
            return g, st
        keep = _areas(g)[0] >= min_area
        return g[keep], {k: v[keep] for k, v in st.items()}

    geoms, stats = drop_small(geoms, stats)
    if simplify > 0 and len(geoms):
        if crs_obj is not None and geodesic:  # the tolerance is in metres on the ground: simplify in UTM
            local = gpd.GeoSeries(geoms, crs=crs_obj)
            metric = local_metric_crs(local, crs_obj)  # the UTM zone; near the poles an azimuthal projection
            simplified = _simplify(np.asarray(local.to_crs(metric).values), simplify)
            # valid in the metric CRS, a simplified outline can cross itself by a rounding error once taken back
            back = np.asarray(gpd.GeoSeries(simplified, crs=metric).to_crs(crs_obj).values)
            geoms = _valid_polygons(back, geoms)
        else:
            geoms = _simplify(geoms, simplify / scale)
        geoms, stats = drop_small(geoms, stats)  # simplifying can take a polygon under the minimum: it holds

    if hasattr(shapely, "orient_polygons"):
        geoms = shapely.orient_polygons(geoms)
    else:  # pragma: no cover - shapely < 2.1
        geoms = np.array([shapely.geometry.polygon.orient(g) for g in geoms], dtype=object)

    area, perim = _areas(geoms) if len(geoms) else (np.zeros(0), np.zeros(0))
    if not georeferenced:
        area = np.full(len(geoms), np.nan)
        perim = np.full(len(geoms), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(stats["pn"] > 0, stats["psum"] / np.maximum(stats["pn"], 1), np.nan)
    max_prob = np.where(stats["pn"] > 0, stats["pmax"], np.nan)
    n = len(geoms)
    data = {
        "id": np.arange(1, n + 1, dtype="int64"),
        "area_m2": np.asarray(area, dtype="float64"),
        "perimeter_m": np.asarray(perim, dtype="float64"),
        "pixel_count": stats["count"].astype("int64"),
        "mean_prob": mean_prob.astype("float64"),
        "max_prob": max_prob.astype("float64"),
        "before_date": np.full(n, _iso(before_date), dtype=object),
        "after_date": np.full(n, _iso(after_date), dtype=object),
        "model": np.full(n, model if model is None else str(model), dtype=object),
        "threshold": np.full(n, np.nan if threshold is None else float(threshold), dtype="float64"),
    }
    gdf = gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=crs_obj), crs=crs_obj)
    # the pixel size in CRS units: write_vectors densifies reprojected edges by it
    gdf.attrs["pixel_size"] = float(min(math.hypot(affine.a, affine.d), math.hypot(affine.b, affine.e)))
    return gdf


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


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`vectorize`.

    ``changedet.vectorize`` is re-exported lazily at the top level as the function; but importing the submodule
    ``changedet.vectorize`` (as :func:`changedet.detect` does) rebinds the package attribute to this module. Making
    the module callable keeps ``changedet.vectorize(mask, ...)`` working either way, while ``import
    changedet.vectorize`` and ``changedet.vectorize.vectorize`` still name the module and its function.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> gpd.GeoDataFrame:
        return vectorize(*args, **kwargs)


__signature__ = inspect.signature(vectorize)
sys.modules[__name__].__class__ = _CallableModule

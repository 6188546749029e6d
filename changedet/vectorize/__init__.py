"""Turn a change mask (or a change probability and a threshold) into polygons with attributes.

:func:`vectorize` reads the mask window by window (``rasterio.features.shapes`` on each window), so a mask of any
size is vectorised in bounded memory; polygons cut by window edges are merged back into one. Sizes given in
metres (``min_area``, ``simplify``, ``fill_holes``) stay in metres when the CRS is geographic (EPSG:4326, as in
OSCD) or a projection that stretches areas by more than 0.5 % over the scene (Web Mercator, EPSG:3857; see
:mod:`changedet.geodesy`): areas and perimeters are then geodesic on the CRS's ellipsoid and simplification runs in
the local UTM zone (an azimuthal equidistant projection beyond UTM's latitudes).

The inputs are read by :mod:`changedet.vectorize.sources`, the regions found and merged by
:mod:`~changedet.vectorize.pieces`, and the polygons measured, filled and simplified by
:mod:`~changedet.vectorize.geometry`.

This package never imports torch: a QGIS or notebook user can vectorise without the ML stack.

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
import sys
import types
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import shapely

from changedet.errors import ChangedetWarning, InputError, NotGeoreferencedWarning
from changedet.geodesy import geodesic_area_perimeter, grid_bounds, local_metric_crs, needs_geodesic_area
from changedet.vectorize.geometry import (
    _apply_affine,
    _fill_and_absorb,
    _metres_per_unit,
    _simplify,
    _valid_polygons,
)
from changedet.vectorize.geometry import _polygonal_parts as _polygonal_parts
from changedet.vectorize.pieces import _collect_pieces, _merge_pieces
from changedet.vectorize.sources import (
    ARRAY_NODATA,
    _detect_encoded_nodata,
    _float_values,
    _is_probability,
    _open_source,
    _Source,
    _source_tags,
    _tagged_threshold,
)
from changedet.vectorize.sources import DETECT_MASK_VALUES as DETECT_MASK_VALUES

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd
    from affine import Affine

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


def _not_a_probability(src: _Source, size: int) -> str:
    """Why a float mask holding values above 1 is refused (its whole range read again: an error path only). Above 1
    cannot be a probability (a count, a 0/3 class raster: at threshold 0.5 it would give no polygon); below 0 can
    (-1 is probability.tif's nodata, which an array or a file whose tag was lost still holds), and is ignored as the
    probability reader ignores it."""
    _binary, lo, hi = _float_values(src, size, stop_above_one=False)
    return (f"{src.name}: the mask is a float raster ({src.dtype}) holding values from {lo:g} to {hi:g}: "
            "neither a change probability (0 to 1) nor a 0/1 mask. Give the change mask as integers or "
            "booleans (e.g. (mask > 0).astype('uint8') for every non-zero pixel), or a probability from 0 to "
            "1 with a threshold.")


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
        ``None`` to derive it from ``probability >= threshold``. A float mask (such as ``probability.tif`` or
        :attr:`changedet.ChangeResult.probability`) is read as a change probability, as ``changedet vectorize``
        reads it: change is ``probability >= threshold``, the threshold given or the raster's tag (an
        :class:`~changedet.errors.InputError` without either, or with a ``probability`` too); give a mask as
        integers or booleans (``mask.astype("uint8")``) to vectorise its non-zero pixels. A float mask holding only
        0 and 1 (and NaN or nodata) without a threshold, or with a ``probability``, is read as a mask; one holding
        values above 1 is an :class:`~changedet.errors.InputError` (neither a probability nor a mask).
    probability : numpy.ndarray, path, rasterio dataset, optional
        Change probability (0..1) on the same grid; gives ``mean_prob`` and ``max_prob`` (NaN without it).
        Non-finite values, values outside 0..1 and the dataset's nodata (``-1`` in ``probability.tif``) are
        ignored.
    transform, crs : optional
        Georeferencing of array inputs (rasterio ``Affine`` and anything ``pyproj.CRS`` accepts). Taken from the
        dataset when a path or dataset is given and these are None. A ``crs`` without a ``transform`` for an input
        that has none is an :class:`~changedet.errors.InputError` (pixel coordinates labelled with a CRS).
    threshold : float, optional
        Decision threshold: required when ``mask`` is None or a float raster, unless the probability raster carries
        detect's ``THRESHOLD`` tag; otherwise only stored in the ``threshold`` column (a
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
        Shapes differ, the threshold is missing, an option is negative, an input is not a raster, or a ``crs`` is
        given without the ``transform`` the input lacks.
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
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise InputError(f"threshold must be between 0 and 1, found {threshold!r}.")

    sources: list[_Source] = []
    try:
        msrc = psrc = None
        ds_transform = ds_crs = None
        read_as_probability = False  # a float raster given as the mask: a change probability
        probability_nodata: float | str | None = "auto"
        if mask is not None:
            msrc, ds_transform, ds_crs = _open_source(mask, "mask", nodata)
            sources.append(msrc)
            # only 0s and 1s make a float mask a mask, which matters only without a threshold or beside a
            # probability: read ahead then; otherwise values above 1 are caught while vectorising (one pass)
            binary = False
            if _is_probability(msrc) and (threshold is None or probability is not None):
                binary, _lo, hi = _float_values(msrc, window_size)
                if hi > 1.0:
                    raise InputError(_not_a_probability(msrc, window_size))
            if binary:
                pass  # only 0s and 1s (a mask stored as floats): its non-zero pixels, as an integer mask's
            elif _is_probability(msrc):
                if probability is not None:
                    raise InputError(
                        f"{msrc.name}: the mask is a float raster ({msrc.dtype}), which is read as a change "
                        "probability, and a probability was given too (--probability); give the change mask as "
                        "integers or booleans (a change.tif, or mask.astype('uint8')) with the probability, or the "
                        "probability alone with a threshold."
                    )
                # as `changedet vectorize` reads it: change is probability >= threshold, not every non-zero pixel
                sources.remove(msrc)
                msrc.close()
                mask, probability, msrc, read_as_probability = None, mask, None, True
                probability_nodata = nodata  # the nodata given for the mask is the probability's
        if msrc is not None:
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
            psrc, p_transform, p_crs = _open_source(probability, "mask" if read_as_probability else "probability",
                                                    probability_nodata)
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
        if msrc is None and threshold is None:
            threshold = _tagged_threshold(threshold_tag)
            if threshold is None:
                raise InputError(
                    f"{psrc.name}: "  # type: ignore[union-attr]
                    + ("is a float raster, so it is read as a change probability (as changedet vectorize reads it), "
                       "and " if read_as_probability else "a probability without a mask ")
                    + "needs a threshold (change = probability >= threshold); none was given and the raster has no "
                    "'threshold' tag: pass threshold= (--threshold), e.g. 0.5 or the model's calibrated threshold "
                    "from report.json"
                    + (", or give a mask of integers or booleans (mask.astype('uint8')) to vectorise its non-zero "
                       "pixels." if read_as_probability else ".")
                )
        elif msrc is not None and threshold_tag:
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
        if crs is not None and transform is None:
            crs_text = crs.to_string() if hasattr(crs, "to_string") else str(crs)
            raise InputError(
                f"{(msrc or psrc).name}: crs={crs_text} was given without transform=, and the "  # type: ignore[union-attr]
                "input has no georeferencing of its own (an array, or a raster without a transform): its polygons "
                "would be in pixel coordinates (column, row) labelled with that CRS, their areas meaningless. Pass "
                "transform= too (ChangeResult.transform, the dataset's .transform, or "
                "rasterio.transform.from_origin(west, north, xres, yres)), or leave out crs= to get pixel coordinates."
            )
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
        if read_as_probability and pieces.above_one > 1.0:
            raise InputError(_not_a_probability(psrc, window_size))  # type: ignore[arg-type]
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

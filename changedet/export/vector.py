"""Write change polygons to GeoPackage and GeoJSON, atomically, with the QGIS style embedded.

The GeoPackage keeps the input CRS and is written as GeoPackage 1.2 (read in full by the GDAL of QGIS 3.22, which
only partly supports the 1.4 written by default by newer GDALs). GeoJSON follows RFC 7946 by default: WGS84
longitude/latitude, counter-clockwise exterior rings; ``geojson_crs=None`` keeps the input CRS instead (GDAL
writes it in a ``crs`` member, outside RFC 7946; a CRS without an authority code cannot be named there, and is
refused rather than written in a GeoJSON that readers would take for longitude/latitude). Every file is written under a temporary name in its folder and
renamed when complete, so a failure leaves nothing half-written.

Reprojected for the GeoJSON, the polygons keep their shape: their edges are first densified to a few pixels (edges
straight in the input CRS are curves in longitude/latitude: 2 km off on a 100 km polar-stereographic square
otherwise), a polygon that crosses the antimeridian is cut there and one that holds a pole is closed along the pole's
parallel (RFC 7946, section 3.1.9), and the coordinates keep enough decimals for a tenth of the shortest edge (one
pixel for pixel outlines; RFC 7946's usual 7 decimals, 1 cm, merge the vertices of centimetre pixels).
:func:`resolve_geojson_crs` decides, before any work, the CRS a GeoJSON can be written in; it and the other CRS
decisions are in :mod:`changedet.export.geojson_crs`, and stay importable from here.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from changedet.errors import ChangedetWarning, InputError, OutputError, OutputExistsError
from changedet.export.geojson_crs import (  # noqa: F401 - the CRS decisions stay importable from here
    _UNNAMEABLE_FIX,
    GEOJSON_CRS,
    _is_wgs84_lonlat,
    _keep_advice,
    _kept_crs_warning,
    _nameable,
    _pyproj,
    _transformer,
    _unnamed_crs_error,
    _unreachable,
    geojson_crs_option,
    plan_geojson,
    resolve_geojson_crs,
)

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd

__all__ = ["DEFAULT_LAYER", "GEOJSON_CRS", "GPKG_VERSION", "geojson_crs_option", "plan_geojson",
           "resolve_geojson_crs", "write_vectors"]

#: Layer name of the polygons in ``changes.gpkg``.
DEFAULT_LAYER = "changes"
#: GeoPackage version written (QGIS 3.22's GDAL reads 1.2 fully).
GPKG_VERSION = "1.2"
#: Edges longer than this many pixels (the shortest edge of the polygons) are densified before reprojection.
DENSIFY_PIXELS = 4
#: GeoJSON coordinates keep enough decimals for this fraction of the shortest edge (a pixel for pixel outlines).
PRECISION_FRACTION = 0.1


def _edge_extents(geoms: np.ndarray) -> np.ndarray:
    """max(|dx|, |dy|) of every non-zero edge of the polygons (a pixel's size for pixel outlines)."""
    import shapely

    rings = shapely.get_rings(geoms)
    coords, index = shapely.get_coordinates(rings, return_index=True)
    if len(coords) < 2:
        return np.zeros(0)
    same = index[1:] == index[:-1]
    d = np.abs(np.diff(coords, axis=0))[same].max(axis=1)
    return d[d > 0]


def _precision(geoms: np.ndarray) -> int:
    """Decimals that keep a tenth of the shortest edge of ``geoms`` (at least RFC 7946's usual 7, at most 15)."""
    d = _edge_extents(geoms)
    if not len(d):
        return 7
    return int(min(15, max(7, math.ceil(-math.log10(PRECISION_FRACTION * float(d.min()))))))


def _reproject(geoms: np.ndarray, src: Any, dst: Any, where: Path, pixel: float | None = None) -> np.ndarray:
    """``geoms`` (in ``src``) in ``dst``: edges densified first to :data:`DENSIFY_PIXELS` pixels of size ``pixel``
    (in ``src`` units; without it, to the shorter of 4 times the 5th percentile of the edges and 1/1024 of the
    polygons' extent), so that they stay within a fraction of a pixel of the straight edges they were; in
    longitude/latitude, cut at the antimeridian and closed at a pole they hold (:func:`_unwrap_lonlat`)."""
    import shapely

    tr = _transformer(src, dst)
    if tr is None:
        raise InputError(
            f"{where}: the polygons' CRS ({_pyproj(src).name!r}) cannot be transformed to {dst}"
            f"{_keep_advice(src, 'write_vectors')}"
        )
    if not len(geoms):
        return geoms
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    extent = max(x1 - x0, y1 - y0)
    if pixel is not None and math.isfinite(pixel) and pixel > 0:
        step = DENSIFY_PIXELS * pixel
    else:
        d = _edge_extents(geoms)
        step = min(DENSIFY_PIXELS * float(np.percentile(d, 5)), extent / 1024) if len(d) else 0.0
    step = max(step, extent / 2**16)  # bounds the vertices a scene-wide polygon gains
    if step > 0 and math.isfinite(step):
        geoms = shapely.segmentize(geoms, step)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out = shapely.transform(geoms, fn)
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise InputError(
            f"{where}: some polygons fall outside the area where {dst} is defined from their CRS "
            f"({_pyproj(src).name!r}){_keep_advice(src, 'write_vectors')}"
        )
    if _pyproj(dst).is_geographic:
        fix = np.zeros(len(out), bool)
        b = shapely.bounds(out)
        fix |= (b[:, 2] - b[:, 0]) > 180.0  # crosses the antimeridian
        back = _transformer(dst, src)
        for pole in (90.0, -90.0):  # holds a pole
            px, py = back.transform(0.0, pole) if back is not None else (np.nan, np.nan)
            if np.isfinite(px) and np.isfinite(py):
                fix |= shapely.contains_xy(geoms, px, py)
        for i in np.flatnonzero(fix):
            out[i] = _unwrap_lonlat(out[i])
    bad = np.flatnonzero(~shapely.is_valid(out))
    if len(bad):  # never written invalid, nor silently: repaired (polygonal parts kept) and said
        from changedet.vectorize import _polygonal_parts

        for i in bad:
            parts = _polygonal_parts(out[i])
            out[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        warnings.warn(
            f"{where}: {len(bad)} polygon(s) were no longer valid in {_pyproj(dst).name} (an outline that passes "
            "within a few pixels of a pole or of where that CRS is undefined); repaired with make_valid, so their "
            "shape there is approximate: keep the input CRS (--geojson-crs input) for exact outlines",
            ChangedetWarning,
            stacklevel=3,
        )
    return out


def _unwrap_lonlat(geom: Any) -> Any:
    """A lon/lat (Multi)Polygon whose rings jump across the antimeridian or go round a pole, as RFC 7946 wants it:
    longitudes unwrapped along each ring, a ring round a pole closed along the pole's parallel, the result cut
    into [-180, 180]."""
    import shapely
    import shapely.affinity

    from changedet.vectorize import _polygonal_parts

    def ring_polygon(ring: Any) -> Any:
        xy = np.asarray(ring.coords)
        lon = np.unwrap(xy[:, 0], period=360.0)
        lat = xy[:, 1]
        turn = lon[-1] - lon[0]
        pts = list(zip(lon, lat, strict=True))
        if abs(turn) > 180.0:  # goes round a pole: close it along the pole's parallel
            cap = 90.0 if float(np.mean(lat)) > 0 else -90.0
            pts += [(lon[-1], cap), (lon[0], cap)]
        parts = _polygonal_parts(shapely.Polygon(pts))
        return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)

    parts: list[Any] = []
    box = shapely.box(-180.0, -90.0, 180.0, 90.0)
    for part in shapely.get_parts(geom):
        shell = ring_polygon(part.exterior)
        for hole in part.interiors:
            h = ring_polygon(hole)  # taken out of every copy of the shell
            copies = shapely.union_all([shapely.affinity.translate(h, k * 360.0) for k in range(-2, 3)],
                                       grid_size=1e-12)
            shell = shapely.difference(shell, copies, grid_size=1e-12)
        for k in (-1, 0, 1):  # what lies beyond +-180 comes back from the other side
            piece = shapely.intersection(shapely.affinity.translate(shell, k * 360.0), box, grid_size=1e-12)
            parts.extend(q for q in shapely.get_parts(piece) if q.geom_type == "Polygon" and not q.is_empty)
    merged = shapely.union_all(parts, grid_size=1e-12) if parts else geom
    return shapely.orient_polygons(merged) if hasattr(shapely, "orient_polygons") else merged


def _geometry_type(gdf: gpd.GeoDataFrame) -> str:
    types = set(gdf.geometry.geom_type.dropna().unique())
    if not types or types == {"Polygon"}:
        return "Polygon"
    if types <= {"Polygon", "MultiPolygon"}:
        return "MultiPolygon"
    raise InputError(
        f"write_vectors: expected Polygon geometries (the output of changedet.vectorize), found {sorted(types)}."
    )


def write_vectors(
    gdf: gpd.GeoDataFrame,
    gpkg_path: str | os.PathLike[str] | None = None,
    geojson_path: str | os.PathLike[str] | None = None,
    *,
    geojson_crs: Any = "EPSG:4326",
    overwrite: bool = False,
    style: bool = True,
    layer: str = DEFAULT_LAYER,
) -> dict[str, Path]:
    """Write polygons to a GeoPackage and/or a GeoJSON file.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame
        Polygons, typically from :func:`changedet.vectorize.vectorize`; may be empty (a valid empty layer with
        the same fields is written).
    gpkg_path, geojson_path : path, optional
        Outputs; at least one. The GeoPackage keeps ``gdf``'s CRS.
    geojson_crs : CRS-like or None
        CRS of the GeoJSON: ``"EPSG:4326"`` (default) writes RFC 7946 GeoJSON; None keeps ``gdf``'s CRS (a
        ``crs`` member; a CRS that a GeoJSON cannot name, without an authority code, is an InputError). Reprojected polygons are densified first, cut at the antimeridian and closed at a pole
        (so a few may become MultiPolygons), and RFC 7946 coordinates keep enough decimals for a tenth of the
        shortest edge (see the module's notes). :func:`resolve_geojson_crs` tells beforehand whether ``gdf``'s
        CRS can be taken there.
    overwrite : bool
        Replace existing outputs; without it an existing output raises :class:`OutputExistsError` before
        anything is written.
    style : bool
        Embed the default QGIS style in the GeoPackage (``layer_styles`` table) and write a ``.qml`` sidecar next
        to it (see :mod:`changedet.export.qgis`).
    layer : str
        Layer name in the GeoPackage.

    Returns
    -------
    dict
        ``{"gpkg": path, "qml": path, "geojson": path}`` for what was written.

    Raises
    ------
    OutputExistsError
        An output exists and ``overwrite`` is False.
    InputError
        Nothing to write to, non-polygon geometries, GeoJSON in another CRS requested for data without a CRS,
        a ``geojson_crs`` that ``gdf``'s CRS cannot be transformed to (a local/engineering CRS), or
        ``geojson_crs=None`` for a CRS that a GeoJSON cannot name: raised before anything is written.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from rasterio.transform import from_origin
    >>> from changedet.vectorize import vectorize
    >>> mask = np.zeros((50, 50), "uint8"); mask[10:20, 10:30] = 1
    >>> gdf = vectorize(mask, transform=from_origin(500000, 4600000, 10, 10), crs="EPSG:32631")
    >>> d = tempfile.mkdtemp()
    >>> out = write_vectors(gdf, os.path.join(d, "changes.gpkg"), os.path.join(d, "changes.geojson"))
    >>> sorted(p.name for p in out.values())
    ['changes.geojson', 'changes.gpkg', 'changes.qml']
    """
    import pyogrio

    from changedet.export.qgis import embed_gpkg_style, polygon_style_qml
    from changedet.io.raster import atomic_output

    if gpkg_path is None and geojson_path is None:
        raise InputError("write_vectors: give gpkg_path and/or geojson_path; nothing would be written.")
    gpkg = Path(gpkg_path) if gpkg_path is not None else None
    geojson = Path(geojson_path) if geojson_path is not None else None
    qml = gpkg.with_suffix(".qml") if (gpkg is not None and style) else None
    if not overwrite:  # check every output before writing any, so nothing is half-done
        for p in (gpkg, qml, geojson):
            if p is not None and p.exists():
                raise OutputExistsError(f"{p}: exists already; pass overwrite=True (--overwrite) or choose another name.")
    geometry_type = _geometry_type(gdf)
    if geojson is not None and geojson_crs is not None and gdf.crs is None:
        raise InputError(
            f"{geojson}: the polygons have no CRS, so they cannot be written as WGS84 GeoJSON; "
            "pass geojson_crs=None (--geojson-crs input) to write them in their own coordinates."
        )
    if geojson is not None and geojson_crs is None and gdf.crs is not None and not _nameable(gdf.crs):
        raise _unnamed_crs_error(gdf.crs, f"{geojson}: the polygons", "geojson_crs=None",
                                 _UNNAMEABLE_FIX["write_vectors"], "give geojson_crs='EPSG:4326' (the default)")
    gdf = gdf.copy()
    for col in gdf.columns:  # all-None object columns: make them strings, not an unknown type
        if col != gdf.geometry.name and gdf[col].dtype == object:
            gdf[col] = gdf[col].astype("string").astype(object).where(gdf[col].notna(), None)
    out = gdf
    geojson_options: dict[str, str] = {"WRITE_NAME": "NO"}
    if geojson is not None:  # reprojected before anything is written: a CRS PROJ cannot take fails here
        if geojson_crs is not None and gdf.crs is not None and not gdf.crs.equals(_pyproj(geojson_crs)):
            import geopandas as gpd

            target = _pyproj(geojson_crs)
            pixel = gdf.attrs.get("pixel_size")  # set by changedet.vectorize
            moved = _reproject(np.asarray(gdf.geometry.values), gdf.crs, target, geojson,
                               float(pixel) if isinstance(pixel, (int, float)) else None)
            out = gpd.GeoDataFrame(gdf.drop(columns=gdf.geometry.name),
                                   geometry=gpd.GeoSeries(moved, index=gdf.index, crs=target), crs=target)
        if geojson_crs is not None and out.crs is not None and _is_wgs84_lonlat(out.crs):
            geojson_options = {"RFC7946": "YES",
                               "COORDINATE_PRECISION": str(_precision(np.asarray(out.geometry.values)))}

    written: dict[str, Path] = {}
    try:
        with warnings.catch_warnings():
            if gdf.crs is None:  # said already (polygons in pixel or transform coordinates): not pyogrio's too
                warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
            if gpkg is not None:
                with atomic_output(gpkg, overwrite=overwrite) as tmp:
                    pyogrio.write_dataframe(
                        gdf,
                        tmp,
                        layer=layer,
                        driver="GPKG",
                        geometry_type=geometry_type,
                        promote_to_multi=geometry_type == "MultiPolygon",
                        dataset_options={"VERSION": GPKG_VERSION},
                        layer_options={"SPATIAL_INDEX": "YES"},
                    )
                    if style:
                        embed_gpkg_style(tmp, polygon_style_qml(), layer=layer)
                written["gpkg"] = gpkg
                if qml is not None:
                    with atomic_output(qml, overwrite=overwrite) as tmp:
                        tmp.write_text(polygon_style_qml(), encoding="utf-8")
                    written["qml"] = qml
            if geojson is not None:
                with atomic_output(geojson, overwrite=overwrite) as tmp:
                    pyogrio.write_dataframe(
                        out,
                        tmp,
                        driver="GeoJSON",
                        layer=layer,  # the FeatureCollection's "name" (else the temporary file's stem)
                        geometry_type=_geometry_type(out),
                        layer_options=geojson_options,
                    )
                written["geojson"] = geojson
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        if isinstance(exc, (OutputExistsError, OutputError)):
            raise
        raise OutputError(f"cannot write the polygons ({exc}); check the output folder is writable.") from exc
    return written

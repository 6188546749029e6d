"""The CRS a GeoJSON of change polygons is written in, decided before any work.

RFC 7946 GeoJSON is WGS84 longitude/latitude (:data:`GEOJSON_CRS`); ``geojson_crs=None`` keeps the input CRS, named
in a ``crs`` member, which GDAL can write only for a CRS with an authority code. :func:`resolve_geojson_crs`
(``changedet vectorize``) and :func:`plan_geojson` (``changedet detect``) tell, before any prediction or writing,
whether the polygons can be taken to the CRS asked for and a GeoJSON can say where its coordinates are, and
otherwise fail or warn with what to do instead; :func:`geojson_crs_option` reads the ``--geojson-crs`` option. The
pyproj helpers here are shared with the writer in :mod:`changedet.export.vector`. No torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from changedet.errors import ChangedetWarning, InputError

__all__ = ["GEOJSON_CRS", "geojson_crs_option", "plan_geojson", "resolve_geojson_crs"]

#: The default CRS of the GeoJSON: WGS84 longitude/latitude, as RFC 7946 requires.
GEOJSON_CRS = "EPSG:4326"


def geojson_crs_option(value: str | None) -> str | None:
    """The ``geojson_crs`` asked for (``--geojson-crs``): None, meaning the raster's own CRS, for None, ``"input"``,
    ``"keep"`` or ``"none"``; any other value as given (a CRS).

    >>> geojson_crs_option("input") is None, geojson_crs_option("EPSG:4326")
    (True, 'EPSG:4326')
    """
    if isinstance(value, str) and value.strip().lower() in ("input", "keep", "none"):
        return None
    return value


def _pyproj(crs: Any) -> Any:
    from pyproj import CRS as PCRS

    return PCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def _is_wgs84_lonlat(crs: Any) -> bool:
    """Whether ``crs`` is RFC 7946's (EPSG:4326 or OGC:CRS84, whatever its axis order)."""
    pcrs = _pyproj(crs)
    return pcrs.to_epsg() == 4326 or pcrs.equals("OGC:CRS84", ignore_axis_order=True)


def _transformer(src: Any, dst: Any, bounds: Sequence[float] | None = None) -> Any:
    """A pyproj transformer from ``src`` to ``dst`` (x/y = lon/lat order), or None when PROJ has no way from one
    to the other (an engineering/local CRS, a datum without a known transformation) or, with ``bounds`` (left,
    bottom, right, top in ``src``), when their corners or centre do not transform to finite coordinates."""
    from pyproj import Transformer
    from pyproj.exceptions import ProjError

    try:
        tr = Transformer.from_crs(_pyproj(src), _pyproj(dst), always_xy=True)
        if bounds is not None:
            x0, y0, x1, y1 = (float(v) for v in bounds)
            xs, ys = tr.transform([x0, x1, x1, x0, (x0 + x1) / 2], [y0, y0, y1, y1, (y0 + y1) / 2])
            if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
                return None
    except (ProjError, ValueError, TypeError):
        return None
    return tr


def _nameable(crs: Any) -> bool:
    """Whether a GeoJSON names ``crs`` in its ``crs`` member: GDAL writes an authority code there (such as
    ``urn:ogc:def:crs:EPSG::32631``) when the CRS's definition carries one; a CRS without one (a local ``ENGCRS``,
    a custom WKT, a planetary CRS read back from a GeoTIFF) gets no member, and readers then take the coordinates
    for WGS84 longitude/latitude. Asked of GDAL itself, by writing an empty GeoJSON in memory."""
    import io

    import geopandas as gpd
    import pyogrio

    try:
        pcrs = _pyproj(crs)
    except Exception:  # noqa: BLE001 - not a CRS pyproj reads: no GeoJSON can name it
        return False
    try:
        buf = io.BytesIO()
        empty = gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=pcrs))
        pyogrio.write_dataframe(empty, buf, driver="GeoJSON", layer="probe", geometry_type="Polygon")
        return b'"crs"' in buf.getvalue()
    except Exception:  # noqa: BLE001 - a pyogrio that cannot write to memory: the definition's own code decides
        return "id" in pcrs.to_json_dict()


#: What to do instead of a GeoJSON in a CRS that no GeoJSON can name, as each caller can do it: the advice is
#: true for the command that gets it (detect skips changes.geojson; vectorize writes the OUT it is given).
_UNNAMEABLE_FIX = {
    "detect": ("leave --geojson-crs out (geojson_crs='EPSG:4326', the default); changes.geojson is then not "
               "written, with a warning, and the polygons are in changes.gpkg, which keeps the CRS"),
    "vectorize": "write a GeoPackage instead (an OUT ending in .gpkg), which keeps the CRS",
    "write_vectors": "write the GeoPackage alone (geojson_path=None), which keeps the CRS",
}


def _keep_advice(crs: Any, caller: str) -> str:
    """What to do when polygons in ``crs`` cannot be taken to the GeoJSON CRS asked for, with its leading
    separator: keep ``crs`` in the GeoJSON when a GeoJSON can name it, else what ``caller`` (a key of
    :data:`_UNNAMEABLE_FIX`) can do instead."""
    if _nameable(crs):
        return "; give --geojson-crs input (geojson_crs=None) to keep the input CRS, named in the GeoJSON's 'crs' member"
    return (", and a GeoJSON cannot name it either (no authority code: its readers would take the coordinates for "
            f"WGS84 longitude/latitude): {_UNNAMEABLE_FIX[caller]}")


def _unreachable(crs: Any, geojson_crs: Any, bounds: Sequence[float] | None, source: str,
                 caller: str) -> InputError | None:
    """None when polygons in ``crs`` can be taken to ``geojson_crs`` (or either is None), else the error that says
    why not and what ``caller`` (a key of :data:`_UNNAMEABLE_FIX`) can do."""
    if geojson_crs is None or crs is None or _transformer(crs, geojson_crs, bounds) is not None:
        return None
    target = "WGS84 longitude/latitude (RFC 7946)" if _is_wgs84_lonlat(geojson_crs) else f"{geojson_crs}"
    return InputError(
        f"{source}: its CRS ({_pyproj(crs).name!r}) cannot be transformed to {target} (a local or engineering CRS, "
        f"or no known transformation between the two){_keep_advice(crs, caller)}"
    )


def _unnamed_crs_error(crs: Any, where: str, option: str, fix: str, default: str,
                       bounds: Sequence[float] | None = None) -> InputError:
    """The error for a GeoJSON asked for in ``crs`` itself (``option``) when no GeoJSON can name ``crs``: ``fix``,
    and ``default`` (the way to the RFC 7946 default) when ``crs`` can be transformed to WGS84."""
    to_wgs84 = _transformer(crs, GEOJSON_CRS, bounds) is not None
    return InputError(
        f"{where}: its CRS ({_pyproj(crs).name!r}) cannot be named in a GeoJSON (no authority code: a custom or "
        f"local CRS), so with {option} the GeoJSON would have no 'crs' member and its readers would take the "
        f"coordinates for WGS84 longitude/latitude; {fix}"
        + (f", or {default} to write RFC 7946 longitude/latitude" if to_wgs84 else "")
    )


def _kept_crs_warning(crs: Any, source: str) -> None:
    warnings.warn(
        f"{source}: its CRS ({_pyproj(crs).name!r}) cannot be transformed to WGS84 longitude/latitude (a local or "
        "engineering CRS): the GeoJSON keeps that CRS, named in its 'crs' member (outside RFC 7946), as with "
        "--geojson-crs input (geojson_crs=None)",
        ChangedetWarning,
        stacklevel=3,
    )


def resolve_geojson_crs(crs: Any, geojson_crs: Any, *, bounds: Sequence[float] | None = None,
                        source: str = "the polygons") -> Any:
    """The CRS a GeoJSON of polygons in ``crs`` is written in when ``geojson_crs`` is asked for (``changedet
    vectorize``), decided before any work, so that a run does not fail at its very end.

    ``geojson_crs`` is returned as it is when the polygons can be transformed to it (over ``bounds``, their
    extent in ``crs``, when given), and when ``crs`` is None (:func:`write_vectors` refuses that case for a
    ``geojson_crs``; None writes the coordinates as they are). None (keep ``crs``) is returned as it is when a
    GeoJSON can name ``crs`` (an authority code, written in its ``crs`` member), and is an
    :class:`~changedet.errors.InputError` when it cannot (a custom WKT or a local CRS: readers would take the
    coordinates for WGS84 longitude/latitude), as :func:`plan_geojson` does not write one for ``changedet detect``.
    When PROJ cannot take ``crs`` to ``geojson_crs`` (a local or engineering CRS, ``ENGCRS`` in WKT): for the
    default :data:`GEOJSON_CRS` (WGS84, RFC 7946) and a ``crs`` that a GeoJSON can name, None (the GeoJSON keeps
    ``crs``), with a :class:`~changedet.errors.ChangedetWarning` that says so; otherwise an
    :class:`~changedet.errors.InputError` that says to write a GeoPackage instead.

    >>> resolve_geojson_crs("EPSG:32631", "EPSG:4326")
    'EPSG:4326'
    """
    if geojson_crs is None:
        if crs is not None and not _nameable(crs):
            raise _unnamed_crs_error(crs, source, "--geojson-crs input (geojson_crs=None)",
                                     _UNNAMEABLE_FIX["vectorize"], "leave --geojson-crs out (EPSG:4326)", bounds)
        return None
    error = _unreachable(crs, geojson_crs, bounds, source, "vectorize")
    if error is None:
        return geojson_crs
    if _is_wgs84_lonlat(geojson_crs) and _nameable(crs):
        _kept_crs_warning(crs, source)
        return None
    raise error


def plan_geojson(crs: Any, geojson_crs: Any, *, bounds: Sequence[float] | None = None,
                 source: str = "the input") -> tuple[bool, Any]:
    """``(write, geojson_crs)`` for the ``changes.geojson`` of a run on a grid in ``crs`` (``changedet detect``),
    decided before the prediction.

    A GeoJSON is written when it can say where its coordinates are: in ``geojson_crs`` when ``crs`` can be
    transformed to it, else, for the default WGS84, in ``crs`` itself (named in a ``crs`` member) with a
    :class:`~changedet.errors.ChangedetWarning`. It is not written, with a warning, when readers would take its
    coordinates for WGS84 longitude/latitude: without a CRS (pixel coordinates), or in a CRS that a GeoJSON cannot
    name (a local/engineering CRS without an authority code); ``changes.gpkg`` holds the polygons then. An
    explicit ``geojson_crs`` other than WGS84 longitude/latitude (which is treated as the default) that ``crs``
    cannot be transformed to is an :class:`~changedet.errors.InputError`
    whose advice is detect's (``--geojson-crs input``, or leaving ``--geojson-crs`` out where no GeoJSON can name
    ``crs``).

    >>> plan_geojson("EPSG:32631", "EPSG:4326")
    (True, 'EPSG:4326')
    """
    from changedet.errors import NotGeoreferencedWarning

    if crs is None:
        warnings.warn(
            f"{source}: not georeferenced: changes.geojson is not written (GeoJSON readers take coordinates without "
            "a CRS for WGS84 longitude/latitude); the polygons, in pixel coordinates, are in changes.gpkg",
            NotGeoreferencedWarning,
            stacklevel=2,
        )
        return False, None
    error = _unreachable(crs, geojson_crs, bounds, source, "detect")
    if error is not None and not _is_wgs84_lonlat(geojson_crs):
        raise error
    if (error is not None or geojson_crs is None) and not _nameable(crs):
        why = "cannot be transformed to WGS84 longitude/latitude (a local or engineering CRS) and " if error else ""
        warnings.warn(
            f"{source}: its CRS ({_pyproj(crs).name!r}) {why}cannot be named in a GeoJSON (no authority code): "
            "changes.geojson is not written (its readers would take the coordinates for longitude/latitude); the "
            "polygons are in changes.gpkg, which keeps the CRS",
            ChangedetWarning,
            stacklevel=2,
        )
        return False, None
    if error is not None:
        _kept_crs_warning(crs, source)
        return True, None
    return True, geojson_crs

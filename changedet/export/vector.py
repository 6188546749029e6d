"""Write change polygons to GeoPackage and GeoJSON, atomically, with the QGIS style embedded.

The GeoPackage keeps the input CRS and is written as GeoPackage 1.2 (read in full by the GDAL of QGIS 3.22, which
only partly supports the 1.4 written by default by newer GDALs). GeoJSON follows RFC 7946 by default: WGS84
longitude/latitude, counter-clockwise exterior rings; ``geojson_crs=None`` keeps the input CRS instead (GDAL
writes it in a ``crs`` member, outside RFC 7946). Every file is written under a temporary name in its folder and
renamed when complete, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changedet.errors import InputError, OutputError, OutputExistsError

if TYPE_CHECKING:  # pragma: no cover
    import geopandas as gpd

__all__ = ["DEFAULT_LAYER", "GPKG_VERSION", "geojson_crs_option", "write_vectors"]

#: Layer name of the polygons in ``changes.gpkg``.
DEFAULT_LAYER = "changes"
#: GeoPackage version written (QGIS 3.22's GDAL reads 1.2 fully).
GPKG_VERSION = "1.2"


def geojson_crs_option(value: str | None) -> str | None:
    """The ``geojson_crs`` asked for (``--geojson-crs``): None, meaning the raster's own CRS, for None, ``"input"``,
    ``"keep"`` or ``"none"``; any other value as given (a CRS).

    >>> geojson_crs_option("input") is None, geojson_crs_option("EPSG:4326")
    (True, 'EPSG:4326')
    """
    if isinstance(value, str) and value.strip().lower() in ("input", "keep", "none"):
        return None
    return value


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
        CRS of the GeoJSON: ``"EPSG:4326"`` (default) writes RFC 7946 GeoJSON; None keeps ``gdf``'s CRS.
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
        Nothing to write to, non-polygon geometries, or GeoJSON in WGS84 requested for data without a CRS.

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
    gdf = gdf.copy()
    for col in gdf.columns:  # all-None object columns: make them strings, not an unknown type
        if col != gdf.geometry.name and gdf[col].dtype == object:
            gdf[col] = gdf[col].astype("string").astype(object).where(gdf[col].notna(), None)

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
                out = gdf if geojson_crs is None else gdf.to_crs(geojson_crs)
                rfc = geojson_crs is not None and out.crs is not None and out.crs.to_epsg() == 4326
                with atomic_output(geojson, overwrite=overwrite) as tmp:
                    pyogrio.write_dataframe(
                        out,
                        tmp,
                        driver="GeoJSON",
                        layer=layer,  # the FeatureCollection's "name" (else the temporary file's stem)
                        geometry_type=geometry_type,
                        promote_to_multi=geometry_type == "MultiPolygon",
                        layer_options={"RFC7946": "YES"} if rfc else {"WRITE_NAME": "NO"},
                    )
                written["geojson"] = geojson
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        if isinstance(exc, (OutputExistsError, OutputError)):
            raise
        raise OutputError(f"cannot write the polygons ({exc}); check the output folder is writable.") from exc
    return written

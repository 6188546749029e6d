"""QGIS deliverables: layer styles (``.qml``, and embedded in the GeoPackage) and a ``.qgs`` project.

Everything is written with the standard library (:mod:`xml.etree`, :mod:`sqlite3`) and rasterio; no PyQGIS is
needed (QGIS's Python is usually not the one changedet runs in). The XML follows what QGIS 3.22 writes itself,
and the tests open the results in a real QGIS.

- the polygons: red outlines over a faint red fill, embedded as the layer's default style in the GeoPackage's
  ``layer_styles`` table (where QGIS looks first, with QGIS's own schema) and as a ``changes.qml`` sidecar;
- ``probability.tif``: a yellow-orange-red colour ramp from the threshold to 1, transparent below the threshold
  (``probability.qml``);
- ``change.tif``: change pixels in one colour, no-change transparent (``change.qml``);
- ``project.qgs``: BEFORE and AFTER as RGB composites (Sentinel-2 13 bands: B04/B03/B02; RGB: 1/2/3; stretched
  between the 2 % and 98 % cumulative cut of a decimated read), then probability, mask and polygons on top, in the
  data's CRS and extent, with paths relative to the project so the folder can be moved.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import sqlite3
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import InputError, OutputError

__all__ = [
    "CHANGE_COLOR",
    "POLYGON_COLOR",
    "change_style_qml",
    "embed_gpkg_style",
    "export_qgis",
    "polygon_style_qml",
    "probability_style_qml",
    "rgb_bands",
    "write_qgis_project",
]

log = logging.getLogger(__name__)

QGIS_VERSION = "3.22.0-Białowieża"
DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
#: Outline colour of the change polygons (R, G, B).
POLYGON_COLOR = (227, 26, 28)
#: Colour of change pixels in ``change.tif`` (R, G, B).
CHANGE_COLOR = (0, 229, 255)
#: Colour ramp of the probability above the threshold (YlOrRd): (position 0..1 between threshold and 1, colour).
PROBABILITY_RAMP = ((0.0, "#ffffb2"), (0.25, "#fecc5c"), (0.5, "#fd8d3c"), (0.75, "#f03b20"), (1.0, "#bd0026"))
CUMULATIVE_CUT = (0.02, 0.98)


# ----------------------------------------------------------------------------------------------- XML helpers
def _el(parent: ET.Element | None, tag: str, text: Any = None, **attrib: Any) -> ET.Element:
    attrs = {k.rstrip("_"): str(v) for k, v in attrib.items()}
    e = ET.Element(tag, attrs) if parent is None else ET.SubElement(parent, tag, attrs)
    if text is not None:
        e.text = str(text)
    return e


def _options(parent: ET.Element, tag: str, values: dict[str, str]) -> ET.Element:
    """QGIS's ``<Option type="Map">`` property map (and the older ``<prop k v>`` list, which 3.x also reads)."""
    opt = _el(_el(parent, tag) if tag else parent, "Option", type="Map")
    for k, v in values.items():
        _el(opt, "Option", type="QString", name=k, value=v)
    return opt


def _to_string(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


def _qgis_root(**attrib: Any) -> ET.Element:
    return _el(None, "qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories", **attrib)


def _color(rgb: Sequence[int], alpha: int = 255) -> str:
    return ",".join(str(int(c)) for c in (*rgb[:3], alpha))


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


# ------------------------------------------------------------------------------------------------- styles
def _polygon_renderer(parent: ET.Element | None = None) -> ET.Element:
    r = _el(parent, "renderer-v2", type="singleSymbol", symbollevels="0", forceraster="0", enableorderby="0",
            referencescale="-1")
    symbols = _el(r, "symbols")
    sym = _el(symbols, "symbol", type="fill", name="0", alpha="1", clip_to_extent="1", force_rhr="0")
    layer = _el(sym, "layer", **{"class": "SimpleFill"}, enabled="1", locked="0", pass_="0")
    props = {
        "color": _color(POLYGON_COLOR, 40),
        "style": "solid",
        "outline_color": _color(POLYGON_COLOR),
        "outline_style": "solid",
        "outline_width": "0.6",
        "outline_width_unit": "MM",
        "joinstyle": "miter",
        "offset": "0,0",
        "offset_unit": "MM",
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
    }
    _options(layer, "", props)
    for k, v in props.items():
        _el(layer, "prop", k=k, v=v)
    _el(r, "rotation")
    _el(r, "sizescale")
    return r


def polygon_style_qml() -> str:
    """QGIS style (QML) of the change polygons: red outlines (0.6 mm) over a faint red fill.

    >>> polygon_style_qml().count('type="singleSymbol"')
    1
    """
    root = _qgis_root(hasScaleBasedVisibilityFlag="0", minScale="100000000", maxScale="0", labelsEnabled="0")
    _polygon_renderer(root)
    _el(root, "blendMode", 0)
    _el(root, "featureBlendMode", 0)
    _el(root, "layerOpacity", 1)
    _el(root, "previewExpression", '"id"')
    _el(root, "mapTip", '[% "id" %]: [% round("area_m2") %] m²')
    _el(root, "layerGeometryType", 2)
    return _to_string(root)


def polygon_style_sld(name: str = "changes") -> str:
    """The same style as SLD 1.1 (stored next to the QML in ``layer_styles`` for non-QGIS clients)."""
    r, g, b = POLYGON_COLOR
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:se="http://www.opengis.net/se" '
        'version="1.1.0"><NamedLayer><se:Name>'
        f"{name}</se:Name><UserStyle><se:Name>{name}</se:Name><se:FeatureTypeStyle><se:Rule>"
        "<se:Name>change</se:Name><se:PolygonSymbolizer><se:Fill>"
        f'<se:SvgParameter name="fill">{_hex(POLYGON_COLOR)}</se:SvgParameter>'
        '<se:SvgParameter name="fill-opacity">0.16</se:SvgParameter></se:Fill><se:Stroke>'
        f'<se:SvgParameter name="stroke">{_hex((r, g, b))}</se:SvgParameter>'
        '<se:SvgParameter name="stroke-width">2</se:SvgParameter>'
        "</se:Stroke></se:PolygonSymbolizer></se:Rule></se:FeatureTypeStyle></UserStyle></NamedLayer>"
        "</StyledLayerDescriptor>\n"
    )


def _pipe(parent: ET.Element, renderer: ET.Element) -> ET.Element:
    pipe = _el(parent, "pipe")
    prov = _el(pipe, "provider")
    _el(prov, "resampling", enabled="false", zoomedInResamplingMethod="nearestNeighbour",
        zoomedOutResamplingMethod="nearestNeighbour", maxOversampling="2")
    pipe.append(renderer)
    _el(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    _el(pipe, "huesaturation", saturation="0", grayscaleMode="0", invertColors="0", colorizeOn="0",
        colorizeRed="255", colorizeGreen="128", colorizeBlue="128", colorizeStrength="100")
    _el(pipe, "rasterresampler", maxOversampling="2")
    _el(pipe, "resamplingStage", "resamplingFilter")
    return pipe


def _minmax_origin(parent: ET.Element, limits: str) -> None:
    o = _el(parent, "minMaxOrigin")
    _el(o, "limits", limits)
    _el(o, "extent", "WholeRaster")
    _el(o, "statAccuracy", "Estimated")
    _el(o, "cumulativeCutLower", CUMULATIVE_CUT[0])
    _el(o, "cumulativeCutUpper", CUMULATIVE_CUT[1])
    _el(o, "stdDevFactor", 2)


def _probability_renderer(threshold: float) -> ET.Element:
    t = float(threshold)
    r = _el(None, "rasterrenderer", type="singlebandpseudocolor", band="1", opacity="0.85", alphaBand="-1",
            nodataColor="", classificationMin=repr(t), classificationMax="1")
    _minmax_origin(r, "None")
    shader = _el(r, "rastershader")
    ramp = _el(shader, "colorrampshader", colorRampType="INTERPOLATED", classificationMode="1", clip="1",
               minimumValue=repr(t), maximumValue="1", labelPrecision="2")
    for pos, color in PROBABILITY_RAMP:
        value = t + pos * (1.0 - t)
        _el(ramp, "item", value=repr(value), color=color, alpha="255", label=f"{value:.2f}")
    return r


def probability_style_qml(threshold: float) -> str:
    """QGIS style of ``probability.tif``: YlOrRd ramp from ``threshold`` to 1, transparent below ``threshold``.

    >>> 'clip="1"' in probability_style_qml(0.4)
    True
    """
    _check_threshold(threshold)
    root = _qgis_root(hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0")
    _pipe(root, _probability_renderer(threshold))
    _el(root, "blendMode", 0)
    return _to_string(root)


def _change_renderer() -> ET.Element:
    r = _el(None, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor="")
    _minmax_origin(r, "None")
    pal = _el(r, "colorPalette")
    _el(pal, "paletteEntry", value="0", color="#000000", alpha="0", label="no change")
    _el(pal, "paletteEntry", value="1", color=_hex(CHANGE_COLOR), alpha="255", label="change")
    _el(r, "colorramp", name="[source]", type="randomcolors")
    return r


def change_style_qml() -> str:
    """QGIS style of ``change.tif``: change (1) in one colour, no change (0) and nodata transparent.

    >>> 'type="paletted"' in change_style_qml()
    True
    """
    root = _qgis_root(hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0")
    _pipe(root, _change_renderer())
    _el(root, "blendMode", 0)
    return _to_string(root)


def _check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a number between 0 and 1, found {threshold!r}.") from None
    if not 0.0 <= t <= 1.0:
        raise InputError(f"threshold must be between 0 and 1, found {t}.")
    return t


# ---------------------------------------------------------------------------------------- GeoPackage style
_LAYER_STYLES_SQL = (
    'CREATE TABLE IF NOT EXISTS "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)


def embed_gpkg_style(
    gpkg_path: str | os.PathLike[str],
    qml: str,
    *,
    layer: str = "changes",
    name: str = "changedet",
    sld: str | None = None,
    description: str = "changedet default style",
) -> None:
    """Store ``qml`` as the default style of ``layer`` in the GeoPackage's ``layer_styles`` table.

    The table has QGIS's full schema and is registered in ``gpkg_contents`` (as an attributes table, as QGIS
    does), so QGIS applies the style when the layer is added. A style of the same name is replaced and any other
    default style of the layer is demoted. Works on a closed file with :mod:`sqlite3` (no PyQGIS).

    Raises
    ------
    InputError
        The file is not a GeoPackage or has no layer ``layer``.
    """
    path = Path(gpkg_path)
    try:
        con = sqlite3.connect(path)
    except sqlite3.Error as exc:
        raise OutputError(f"{path}: cannot open the GeoPackage to embed its style ({exc}).") from exc
    try:
        with con:
            try:
                row = con.execute(
                    "SELECT column_name FROM gpkg_geometry_columns WHERE lower(table_name) = lower(?)", (layer,)
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                raise InputError(f"{path}: not a GeoPackage ({exc}); expected a file written as GPKG.") from exc
            if row is None:
                raise InputError(f"{path}: has no geometry layer {layer!r}; cannot attach a style to it.")
            geom_col = row[0]
            con.execute(_LAYER_STYLES_SQL)
            now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            if con.execute("SELECT 1 FROM gpkg_contents WHERE table_name = 'layer_styles'").fetchone() is None:
                con.execute(
                    "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
                    "srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', '', ?, 0)",
                    (now,),
                )
            con.execute(
                "DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (layer, name)
            )
            con.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
                "VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL, ?)",
                (layer, geom_col, name, qml, sld if sld is not None else polygon_style_sld(layer), description, now),
            )
            has_ogr = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
            ).fetchone()
            if has_ogr:  # GDAL's cached feature counts: keep the one of layer_styles right
                n = con.execute("SELECT count(*) FROM layer_styles").fetchone()[0]
                con.execute("DELETE FROM gpkg_ogr_contents WHERE lower(table_name) = 'layer_styles'")
                con.execute("INSERT INTO gpkg_ogr_contents (table_name, feature_count) VALUES ('layer_styles', ?)",
                            (n,))
    finally:
        con.close()


# -------------------------------------------------------------------------------------------------- project
def _srs(parent: ET.Element, crs: Any) -> ET.Element:
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    s = _el(parent, "spatialrefsys", nativeFormat="Wkt")
    _el(s, "wkt", c.to_wkt("WKT2_2019"))
    proj4 = ""
    with warnings.catch_warnings():  # "you will likely lose information": QGIS reads the WKT first
        warnings.simplefilter("ignore", UserWarning)
        try:
            proj4 = c.to_proj4() or ""
        except Exception:  # noqa: BLE001 - some CRSs have no PROJ.4 form; the WKT is enough for QGIS
            proj4 = ""
    _el(s, "proj4", proj4)
    auth = c.to_authority()
    _el(s, "srsid", 0)
    _el(s, "srid", auth[1] if auth and auth[0] == "EPSG" else 0)
    _el(s, "authid", f"{auth[0]}:{auth[1]}" if auth else "")
    _el(s, "description", c.name)
    match = re.search(r"\+proj=(\w+)", proj4)
    proj = "longlat" if c.is_geographic else (match.group(1) if match else "")
    _el(s, "projectionacronym", proj)
    _el(s, "ellipsoidacronym", _ellipsoid_acronym(c))
    _el(s, "geographicflag", "true" if c.is_geographic else "false")
    return s


def rgb_bands(count: int, descriptions: Sequence[str | None] | None = None) -> tuple[int, int, int] | None:
    """1-based (red, green, blue) band indexes for a true-colour composite, or None for one grey band.

    Band descriptions win (``B04``/``B4``/``red``, ``B03``/``green``, ``B02``/``blue``); else 13 bands are
    taken as Sentinel-2 L1C (B04, B03, B02 = bands 4, 3, 2) and 3 or more as RGB (1, 2, 3).

    >>> rgb_bands(13), rgb_bands(3), rgb_bands(4, ["B02", "B03", "B04", "B08"]), rgb_bands(1)
    ((4, 3, 2), (1, 2, 3), (3, 2, 1), None)
    """
    names = [str(d or "").strip().lower() for d in (descriptions or [])]
    aliases = {
        "red": ("b04", "b4", "red", "r"),
        "green": ("b03", "b3", "green", "g"),
        "blue": ("b02", "b2", "blue", "b"),
    }
    found: dict[str, int] = {}
    for key, alias in aliases.items():
        for i, n in enumerate(names):
            if n in alias:
                found[key] = i + 1
                break
    if len(found) == 3:
        return (found["red"], found["green"], found["blue"])
    if count == 13:
        return (4, 3, 2)
    if count >= 3:
        return (1, 2, 3)
    return None


def _stretch(ds: Any, bands: Sequence[int]) -> list[tuple[float, float]]:
    """(min, max) of each band at the 2 %/98 % cumulative cut of a decimated read (nodata ignored)."""
    from rasterio.enums import Resampling

    scale = max(1.0, max(ds.width, ds.height) / 1024)
    shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
    out = []
    for b in bands:
        a = ds.read(b, out_shape=shape, masked=True, resampling=Resampling.nearest)
        v = np.asarray(a.compressed(), dtype="float64")
        v = v[np.isfinite(v)]
        if v.size == 0:
            out.append((0.0, 1.0))
            continue
        lo, hi = np.quantile(v, CUMULATIVE_CUT)
        if hi <= lo:
            hi = lo + 1.0
        out.append((float(lo), float(hi)))
    return out


def _rgb_renderer(ds: Any, mapping: tuple[int, int, int] | None) -> ET.Element:
    if mapping is None:
        (lo, hi), = _stretch(ds, [1])
        r = _el(None, "rasterrenderer", type="singlebandgray", grayBand="1", gradient="BlackToWhite",
                opacity="1", alphaBand="-1", nodataColor="")
        _minmax_origin(r, "CumulativeCut")
        ce = _el(r, "contrastEnhancement")
        _el(ce, "minValue", repr(lo))
        _el(ce, "maxValue", repr(hi))
        _el(ce, "algorithm", "StretchToMinimumMaximum")
        return r
    for b in mapping:
        if not 1 <= b <= ds.count:
            raise InputError(f"{ds.name}: band {b} of the RGB mapping {mapping} is not in 1..{ds.count}.")
    r = _el(None, "rasterrenderer", type="multibandcolor", redBand=mapping[0], greenBand=mapping[1],
            blueBand=mapping[2], opacity="1", alphaBand="-1", nodataColor="")
    _minmax_origin(r, "CumulativeCut")
    for (lo, hi), colour in zip(_stretch(ds, mapping), ("red", "green", "blue"), strict=True):
        ce = _el(r, f"{colour}ContrastEnhancement")
        _el(ce, "minValue", repr(lo))
        _el(ce, "maxValue", repr(hi))
        _el(ce, "algorithm", "StretchToMinimumMaximum")
    return r


def _relpath(target: Path, start: Path) -> str:
    try:
        rel = os.path.relpath(target.resolve(), start.resolve())
    except ValueError:  # another drive on Windows: keep it absolute
        return target.resolve().as_posix()
    rel = Path(rel).as_posix()
    return rel if rel.startswith("../") else f"./{rel}"


def _layer_id(name: str) -> str:
    return re.sub(r"\W", "_", name) + "_" + uuid.uuid4().hex


def _extent(parent: ET.Element, extent: Sequence[float], tag: str = "extent") -> None:
    e = _el(parent, tag)
    for k, v in zip(("xmin", "ymin", "xmax", "ymax"), extent, strict=True):
        _el(e, k, repr(float(v)))


def _maplayer(
    layers: ET.Element, kind: str, lid: str, name: str, source: str, provider: str, crs: Any, **attrib: Any
) -> ET.Element:
    m = _el(layers, "maplayer", type=kind, hasScaleBasedVisibilityFlag="0", minScale="1e+08", maxScale="0",
            styleCategories="AllStyleCategories", **attrib)
    _el(m, "id", lid)
    _el(m, "datasource", source)
    _el(m, "layername", name)
    _srs(_el(m, "srs"), crs)
    if provider == "ogr":
        _el(m, "provider", provider, encoding="UTF-8")
    else:
        _el(m, "provider", provider)
    return m


def _resolve(outdir: Path, value: Any) -> Path | None:
    if value is None:
        return None
    p = Path(os.fspath(value))
    return p if p.is_absolute() else (outdir / p if (outdir / p).exists() or not p.exists() else p)


def write_qgis_project(
    outdir: str | os.PathLike[str],
    *,
    before: str | os.PathLike[str] | None = None,
    after: str | os.PathLike[str] | None = None,
    probability: str | os.PathLike[str] | None = "probability.tif",
    change: str | os.PathLike[str] | None = "change.tif",
    polygons: str | os.PathLike[str] | None = "changes.gpkg",
    threshold: float | None = None,
    crs: Any = None,
    extent: Sequence[float] | None = None,
    band_mapping: Sequence[int] | None = None,
    path: str | os.PathLike[str] = "project.qgs",
    title: str | None = None,
    polygons_layer: str = "changes",
    overwrite: bool = True,
) -> Path:
    """Write a QGIS project (``.qgs``) showing a change detection result.

    Layers, top to bottom: the change polygons, the change mask, the probability (transparent below the
    threshold), AFTER and BEFORE as RGB composites. Paths are stored relative to the project, so the folder can
    be moved or zipped.

    Parameters
    ----------
    outdir : path
        The result folder; relative layer paths (and ``path``) are resolved against it. BEFORE and AFTER are
        looked up in ``outdir`` first, then relative to the working directory.
    before, after : path, optional
        The input rasters, shown as RGB composites (bands from :func:`rgb_bands` or ``band_mapping``,
        stretched between the 2 % and 98 % cumulative cut).
    probability, change, polygons : path or None
        Result layers; None or a missing file leaves the layer out (at least one layer must exist).
    threshold : float, optional
        Where the probability ramp starts; default the ``threshold`` tag of the probability raster, else 0.5.
    crs, extent : optional
        Project CRS and extent (xmin, ymin, xmax, ymax in that CRS); default those of the first raster layer
        found (probability, change, after, before), else the polygons'.
    band_mapping : (red, green, blue), optional
        1-based bands of BEFORE and AFTER for the composites.
    path : path
        The project file, relative to ``outdir`` unless absolute.
    title : str, optional
        Project title.
    polygons_layer : str
        Layer name inside the GeoPackage.
    overwrite : bool
        Replace an existing project file (default True: the project is derived from the folder's content).

    Returns
    -------
    pathlib.Path
        The project file.
    """
    import rasterio

    from changedet.io.raster import atomic_output

    out = Path(outdir)
    if not out.is_dir():
        raise InputError(f"{out}: not a folder; give the output folder of `changedet detect`.")
    proj_path = Path(path) if Path(path).is_absolute() else out / path
    proj_dir = proj_path.parent
    threshold_val = None if threshold is None else _check_threshold(threshold)

    entries: list[dict[str, Any]] = []  # top to bottom
    data_crs, data_extent = None, None

    poly_p = _resolve(out, polygons)
    if poly_p is not None and poly_p.exists():
        import pyogrio

        info = pyogrio.read_info(poly_p, layer=polygons_layer)
        entries.append({"kind": "vector", "name": "change polygons", "path": poly_p, "info": info})
    for key, value in (("change", change), ("probability", probability), ("after", after), ("before", before)):
        p = _resolve(out, value)
        if p is None:
            continue
        if not p.exists():
            if key in ("before", "after"):
                raise InputError(f"{p}: the {key.upper()} raster does not exist; check the path (or omit it).")
            log.info("%s not found: the %s layer is left out of the project", p, key)
            continue
        with rasterio.open(p) as ds:
            if ds.crs is None:
                raise InputError(f"{p}: has no CRS; a QGIS project needs georeferenced layers.")
            if key == "probability":
                if threshold_val is None:
                    tag = ds.tags().get("threshold") or ds.tags().get("THRESHOLD")
                    threshold_val = _check_threshold(tag) if tag is not None else 0.5
                renderer = _probability_renderer(threshold_val)
            elif key == "change":
                renderer = _change_renderer()
            else:
                mapping = (tuple(int(b) for b in band_mapping) if band_mapping is not None
                           else rgb_bands(ds.count, ds.descriptions))
                if mapping is not None and len(mapping) != 3:
                    raise InputError(f"band_mapping must be three 1-based bands (red, green, blue), found {mapping}.")
                renderer = _rgb_renderer(ds, mapping)  # type: ignore[arg-type]
            if data_crs is None:
                data_crs, data_extent = ds.crs, tuple(ds.bounds)
            names = {"change": "change mask", "probability": "change probability", "after": "AFTER",
                     "before": "BEFORE"}
            entries.append({"kind": "raster", "name": names[key], "path": p, "renderer": renderer,
                            "crs": ds.crs})
    if not entries:
        raise InputError(
            f"{out}: none of {probability}, {change}, {polygons} exists; nothing to put in a QGIS project. "
            "Run `changedet detect` into this folder first."
        )
    for e in entries:
        if e["kind"] == "vector":
            info = e["info"]
            e["crs"] = info["crs"]
            if data_crs is None and info["crs"] is not None:
                data_crs = info["crs"]
                bounds = pyogrio.read_bounds(e["path"], layer=polygons_layer)[1]
                if bounds.size:
                    data_extent = (bounds[0].min(), bounds[1].min(), bounds[2].max(), bounds[3].max())
    crs = crs if crs is not None else data_crs
    extent = tuple(extent) if extent is not None else data_extent
    if crs is None:
        raise InputError(f"{out}: the layers have no CRS; pass crs= to write a QGIS project.")
    if extent is None:
        raise InputError(f"{out}: cannot tell the extent of the layers; pass extent=(xmin, ymin, xmax, ymax).")

    from pyproj import CRS as _CRS

    crs_obj = _CRS.from_user_input(crs)
    root = _el(None, "qgis", projectname=title or "changedet", version=QGIS_VERSION,
               saveDateTime=_dt.datetime.now().replace(microsecond=0).isoformat(), saveUser="changedet")
    _el(root, "homePath", path="")
    _el(root, "title", title or "changedet change detection")
    _srs(_el(root, "projectCrs"), crs_obj)

    ids = [_layer_id(e["name"]) for e in entries]
    tree = _el(root, "layer-tree-group")
    _el(_el(tree, "customproperties"), "Option")
    for e, lid in zip(entries, ids, strict=True):
        source = _relpath(e["path"], proj_dir)
        e["source"] = source + (f"|layername={polygons_layer}" if e["kind"] == "vector" else "")
        node = _el(tree, "layer-tree-layer", id=lid, name=e["name"], source=e["source"],
                   providerKey="ogr" if e["kind"] == "vector" else "gdal", checked="Qt::Checked", expanded="1",
                   legend_exp="", patch_size="-1,-1", legend_split_behavior="0")
        _el(_el(node, "customproperties"), "Option")
    order = _el(tree, "custom-order", enabled="0")
    for lid in ids:
        _el(order, "item", lid)

    canvas = _el(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
    _el(canvas, "units", "degrees" if crs_obj.is_geographic else "meters")
    _extent(canvas, extent)
    _el(canvas, "rotation", 0)
    _srs(_el(canvas, "destinationsrs"), crs_obj)
    _el(canvas, "rendermaptile", 0)

    layers = _el(root, "projectlayers")
    for e, lid in zip(entries, ids, strict=True):
        if e["kind"] == "raster":
            m = _maplayer(layers, "raster", lid, e["name"], e["source"], "gdal", e["crs"])
            _pipe(m, e["renderer"])
            _el(m, "blendMode", 0)
        else:
            geom = e["info"]["geometry_type"] or "Polygon"
            m = _maplayer(layers, "vector", lid, e["name"], e["source"], "ogr", e["crs"] or crs_obj,
                          geometry="Polygon", wkbType=geom.replace(" ", ""), labelsEnabled="0", readOnly="0")
            _polygon_renderer(m)
            _el(m, "blendMode", 0)
            _el(m, "featureBlendMode", 0)
            _el(m, "layerOpacity", 1)
            _el(m, "previewExpression", '"id"')
            _el(m, "layerGeometryType", 2)
    lo = _el(root, "layerorder")
    for lid in ids:
        _el(lo, "layer", id=lid)

    props = _el(root, "properties")
    paths = _el(props, "Paths")
    _el(paths, "Absolute", "false", type="bool")
    srs_props = _el(props, "SpatialRefSys")
    _el(srs_props, "ProjectionsEnabled", 1, type="int")
    measure = _el(props, "Measurement")
    _el(measure, "DistanceUnits", "meters", type="QString")
    _el(measure, "AreaUnits", "m2", type="QString")
    _el(_el(props, "Measure"), "Ellipsoid", _ellipsoid_acronym(crs_obj), type="QString")

    view = _el(root, "ProjectViewSettings", UseProjectScales="0", rotation="0")
    _el(view, "Scales")
    dve = _el(view, "DefaultViewExtent", xmin=repr(float(extent[0])), ymin=repr(float(extent[1])),
              xmax=repr(float(extent[2])), ymax=repr(float(extent[3])))
    _srs(dve, crs_obj)

    text = _to_string(root)
    try:
        with atomic_output(proj_path, overwrite=overwrite) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except PermissionError as exc:
        raise OutputError(f"{proj_path}: cannot write the QGIS project ({exc}).") from exc
    return proj_path


def _ellipsoid_acronym(crs: Any) -> str:
    """QGIS's ellipsoid id (``EPSG:7030`` for WGS 84), from the ellipsoid's ID in the CRS's PROJJSON."""
    ell = crs.ellipsoid
    if ell is None:
        return "NONE"
    ident = ell.to_json_dict().get("id") or {}
    if ident.get("authority") and ident.get("code"):
        return f"{ident['authority']}:{ident['code']}"
    return "NONE"


# --------------------------------------------------------------------------------------------- everything
def _read_report(outdir: Path) -> dict[str, Any]:
    p = outdir / "report.json"
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: not valid JSON ({exc}); fix or delete it.") from exc
    return data if isinstance(data, dict) else {}


def _find(report: dict[str, Any], *keys: str) -> Any:
    """First value found under any of the dotted ``keys`` (report.json layouts vary between versions)."""
    for key in keys:
        node: Any = report
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                node = None
                break
        if isinstance(node, dict) and "path" in node:
            node = node["path"]
        if node is not None:
            return node
    return None


def export_qgis(
    outdir: str | os.PathLike[str],
    *,
    before: str | os.PathLike[str] | None = None,
    after: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
    band_mapping: Sequence[int] | None = None,
    project: str | os.PathLike[str] = "project.qgs",
    probability: str = "probability.tif",
    change: str = "change.tif",
    polygons: str = "changes.gpkg",
    polygons_layer: str = "changes",
) -> dict[str, Path]:
    """Write every QGIS deliverable of a result folder: style sidecars, the GeoPackage style and the project.

    Missing options are read from ``outdir/report.json`` when present (``threshold``, ``before``/``after``
    input paths, dates for the title). Styles and project are rewritten (they derive from the folder).

    Returns
    -------
    dict
        Written files by role: ``probability_qml``, ``change_qml``, ``polygons_qml``, ``project``.
    """
    from changedet.io.raster import atomic_output

    out = Path(outdir)
    if not out.is_dir():
        raise InputError(f"{out}: not a folder; give the output folder of `changedet detect`.")
    report = _read_report(out)
    if threshold is None:
        threshold = _find(report, "threshold", "options.threshold", "result.threshold", "model.threshold")
    for which, given in (("before", before), ("after", after)):  # asked for by name: it must be there
        if given is not None and not (out / given).exists() and not Path(given).exists():
            raise InputError(f"{given}: the {which.upper()} raster given (--{which}) does not exist; check the path "
                             "or leave the option out (the path in report.json is used)")
    before = before if before is not None else _find(report, "inputs.before", "before")
    after = after if after is not None else _find(report, "inputs.after", "after")
    dates = [_find(report, f"inputs.{k}.date", f"dates.{k}", f"{k}_date") for k in ("before", "after")]
    if before is not None and not (out / before).exists() and not Path(before).exists():
        log.warning("BEFORE raster %s (from report.json) not found: left out of the project", before)
        before = None
    if after is not None and not (out / after).exists() and not Path(after).exists():
        log.warning("AFTER raster %s (from report.json) not found: left out of the project", after)
        after = None
    written: dict[str, Path] = {}
    prob_p = out / probability
    if threshold is None and prob_p.exists():
        import rasterio

        with rasterio.open(prob_p) as ds:
            tag = ds.tags().get("threshold") or ds.tags().get("THRESHOLD")
        threshold = float(tag) if tag is not None else None
    if threshold is None:
        log.warning("no threshold given nor found in report.json: the probability style starts at 0.5")
        threshold = 0.5
    threshold = _check_threshold(threshold)

    def _write(path: Path, text: str) -> None:
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")

    title = "changedet"
    if any(dates):
        title = f"changedet: {dates[0] or '?'} → {dates[1] or '?'}"
    # the project first: it checks the layers and the band mapping, so a bad option leaves the folder untouched
    project_path = write_qgis_project(
        out,
        before=before,
        after=after,
        probability=probability,
        change=change,
        polygons=polygons,
        threshold=threshold,
        band_mapping=band_mapping,
        path=project,
        title=title,
        polygons_layer=polygons_layer,
    )
    if prob_p.exists():
        written["probability_qml"] = prob_p.with_suffix(".qml")
        _write(written["probability_qml"], probability_style_qml(threshold))
    change_p = out / change
    if change_p.exists():
        written["change_qml"] = change_p.with_suffix(".qml")
        _write(written["change_qml"], change_style_qml())
    poly_p = out / polygons
    if poly_p.exists():
        embed_gpkg_style(poly_p, polygon_style_qml(), layer=polygons_layer)
        written["polygons_qml"] = poly_p.with_suffix(".qml")
        _write(written["polygons_qml"], polygon_style_qml())
    written["project"] = project_path
    return written

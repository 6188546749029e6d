"""QGIS layer styles, written without PyQGIS: the XML building blocks of QGIS 3.22's files, the ``.qml`` styles of
the change polygons, ``probability.tif`` and ``change.tif`` (and the polygons' SLD), and their embedding as the
default style in a GeoPackage's ``layer_styles`` table. Used by :mod:`changedet.export.qgis`."""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from changedet.errors import InputError, OutputError

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


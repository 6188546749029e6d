"""The QGIS project (``.qgs``) of a result folder, written without PyQGIS: :func:`write_qgis_project` with its
layers (BEFORE and AFTER as stretched RGB composites, :func:`rgb_bands`), CRS, extent and paths relative to the
project. Used by :mod:`changedet.export.qgis`."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changedet.errors import InputError, OutputError
from changedet.export.qgis_styles import (
    CUMULATIVE_CUT,
    QGIS_VERSION,
    _change_renderer,
    _check_threshold,
    _el,
    _minmax_origin,
    _pipe,
    _polygon_renderer,
    _probability_renderer,
    _to_string,
)

log = logging.getLogger("changedet.export.qgis")


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


def rgb_bands(
    count: int,
    descriptions: Sequence[str | None] | None = None,
    *,
    colorinterp: Sequence[Any] | None = None,
    dtypes: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[int, int, int] | None:
    """1-based (red, green, blue) band indexes for a true-colour composite, or None for one grey band.

    The bands a true-colour model reads (:func:`changedet.io.bands.display_bands`, shared with the figures of
    :mod:`changedet.plotting`): named ``B04``/``B4``/``red``/``SR_B4``, ``B03``..., ``B02``... (Landsat 4-7 or
    8/9 numbering as the ``SPACECRAFT_ID`` tag or the band set says), or marked red, green, blue by the colour
    interpretation; else 13 bands are taken as Sentinel-2 L1C (B04, B03, B02 = bands 4, 3, 2) and 3 or more as
    RGB (1, 2, 3).

    >>> rgb_bands(13), rgb_bands(3), rgb_bands(4, ["B02", "B03", "B04", "B08"]), rgb_bands(1)
    ((4, 3, 2), (1, 2, 3), (3, 2, 1), None)
    >>> rgb_bands(3, colorinterp=["blue", "green", "red"])
    (3, 2, 1)
    """
    from changedet.io.bands import display_bands_of

    return display_bands_of(count, descriptions, colorinterp=colorinterp, dtypes=dtypes, tags=tags)


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


def _project_inputs(path: str | os.PathLike[str]) -> dict[str, Path]:
    """The BEFORE and AFTER rasters of an existing project written by :func:`write_qgis_project` that exist.

    Their paths are stored relative to the project, so they still resolve after the folder was moved together
    with its inputs (e.g. a whole site folder), when the absolute paths in ``report.json`` no longer do.
    Returns ``{"before": path, "after": path}`` for those found; an absent or unreadable project gives ``{}``.
    """
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        root = ET.parse(p).getroot()
    except (OSError, ET.ParseError) as exc:
        log.info("%s: not a readable QGIS project (%s); its BEFORE/AFTER paths are not used", p, exc)
        return {}
    found: dict[str, Path] = {}
    for layer in root.iter("maplayer"):
        name = (layer.findtext("layername") or "").strip()
        source = (layer.findtext("datasource") or "").split("|")[0].strip()
        if name not in ("BEFORE", "AFTER") or not source:
            continue
        f = Path(source) if Path(source).is_absolute() else p.parent / source
        if f.is_file():
            found[name.lower()] = f.resolve()
    return found


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

    from changedet.io.bands import display_bands
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
                           else display_bands(ds))  # what a true-colour model reads: names, colours, Landsat
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


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

The styles are built in :mod:`changedet.export.qgis_styles` and the project in
:mod:`changedet.export.qgis_project`; :func:`export_qgis` writes them all, and every name is importable from here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from changedet.errors import InputError
from changedet.export.qgis_project import _project_inputs, rgb_bands, write_qgis_project
from changedet.export.qgis_styles import (
    CHANGE_COLOR,
    POLYGON_COLOR,
    _check_threshold,
    change_style_qml,
    embed_gpkg_style,
    polygon_style_qml,
    probability_style_qml,
)
from changedet.export.qgis_styles import CUMULATIVE_CUT as CUMULATIVE_CUT
from changedet.export.qgis_styles import DOCTYPE as DOCTYPE
from changedet.export.qgis_styles import PROBABILITY_RAMP as PROBABILITY_RAMP
from changedet.export.qgis_styles import QGIS_VERSION as QGIS_VERSION
from changedet.export.qgis_styles import _el as _el
from changedet.export.qgis_styles import _minmax_origin as _minmax_origin
from changedet.export.qgis_styles import _pipe as _pipe
from changedet.export.qgis_styles import _qgis_root as _qgis_root
from changedet.export.qgis_styles import _to_string as _to_string
from changedet.export.qgis_styles import polygon_style_sld as polygon_style_sld

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
    input paths, dates for the title). Styles and project are rewritten (they derive from the folder). When
    report.json's absolute input path no longer exists (the folder was moved with its inputs), the path relative
    to the folder that the existing project records is used if it resolves; else the input is left out.

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
    inputs: dict[str, Any] = {"before": before, "after": after}
    previous: dict[str, Path] | None = None
    for which, value in inputs.items():
        if value is None or (out / value).exists() or Path(value).exists():
            continue
        # report.json's absolute path is gone: the folder was moved (with its inputs, e.g. a whole site folder);
        # the existing project stores the input's path relative to the folder, which may still resolve
        if previous is None:
            previous = _project_inputs(Path(project) if Path(project).is_absolute() else out / project)
        relative = _find(report, f"inputs.{which}.path_from_output")
        if which in previous:
            log.info("%s raster %s (from report.json) not found: using %s (its path relative to %s in the "
                     "existing project)", which.upper(), value, previous[which], out)
            inputs[which] = previous[which]
        elif isinstance(relative, str) and (out / relative).exists():
            log.info("%s raster %s (from report.json) not found: using %s (its path relative to %s when detect "
                     "ran)", which.upper(), value, out / relative, out)
            inputs[which] = str(out / relative)
        else:
            log.warning("%s raster %s (from report.json) not found: left out of the project (give it with "
                        "--%s)", which.upper(), value, which)
            inputs[which] = None
    before, after = inputs["before"], inputs["after"]
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

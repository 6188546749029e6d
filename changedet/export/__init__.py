"""Deliverables of a change detection: polygons as GeoPackage/GeoJSON, QGIS styles and a QGIS project.

No torch here (nor anywhere below): a QGIS or notebook user can export without the ML stack.

- :func:`write_vectors`: GeoPackage (input CRS, GeoPackage 1.2, QGIS style embedded) and GeoJSON (RFC 7946).
- :func:`export_qgis`: ``.qml`` sidecars, the style in the GeoPackage and ``project.qgs`` for a result folder.
- :func:`write_qgis_project`: the project alone.
"""

from __future__ import annotations

from changedet.export.qgis import (
    change_style_qml,
    embed_gpkg_style,
    export_qgis,
    polygon_style_qml,
    probability_style_qml,
    rgb_bands,
    write_qgis_project,
)
from changedet.export.vector import write_vectors

__all__ = [
    "change_style_qml",
    "embed_gpkg_style",
    "export_qgis",
    "polygon_style_qml",
    "probability_style_qml",
    "rgb_bands",
    "write_qgis_project",
    "write_vectors",
]

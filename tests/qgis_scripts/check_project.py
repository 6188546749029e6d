"""Open a changedet QGIS project in a real QGIS (run under Debian's /usr/bin/python3) and report what it sees.

Usage: python3 check_project.py PROJECT.qgs OUT.png [GPKG RASTER ...]

Prints one JSON object on stdout: whether the project read, each layer (name, type, valid, CRS, renderer type,
feature count, source), the rendered image's statistics, and for each extra file given the style that QGIS
applies when the file is added on its own (the GeoPackage's embedded style, the rasters' .qml sidecars).
The assertions are made by the pytest side (tests/test_qgis.py), which runs in the project's venv.
"""

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (
    QgsApplication,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def describe(layer):
    info = {
        "name": layer.name(),
        "type": "vector" if isinstance(layer, QgsVectorLayer) else "raster",
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
        "source": layer.source(),
    }
    renderer = layer.renderer()
    info["renderer"] = renderer.type() if renderer is not None else None
    if isinstance(layer, QgsVectorLayer):
        info["feature_count"] = layer.featureCount()
        info["fields"] = [f.name() for f in layer.fields()]
        symbol = renderer.symbol() if renderer is not None and renderer.type() == "singleSymbol" else None
        if symbol is not None:
            sl = symbol.symbolLayer(0)
            info["fill_color"] = sl.color().name(QColor.HexArgb)
            info["stroke_color"] = sl.strokeColor().name(QColor.HexArgb)
    else:
        info["band_count"] = layer.bandCount()
        if renderer is not None and renderer.type() == "multibandcolor":
            info["rgb_bands"] = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
        if renderer is not None and renderer.type() == "singlebandpseudocolor":
            shader = renderer.shader().rasterShaderFunction()
            info["ramp_min"] = shader.minimumValue()
            info["ramp_clip"] = shader.clip()
    return info


def image_stats(image):
    w, h = image.width(), image.height()
    colours = set()
    non_background = 0
    step = max(1, min(w, h) // 200)
    sampled = 0
    for y in range(0, h, step):
        for x in range(0, w, step):
            rgba = image.pixel(x, y)
            colours.add(rgba)
            sampled += 1
            if rgba != 0xFFFFFFFF:
                non_background += 1
    return {"width": w, "height": h, "distinct_colours": len(colours), "non_background": non_background / sampled}


def main():
    project_path, png = sys.argv[1], sys.argv[2]
    extra = sys.argv[3:]
    app = QgsApplication([], False)
    app.initQgis()
    report = {"qgis_version": __import__("qgis.core").core.Qgis.QGIS_VERSION}
    try:
        project = QgsProject.instance()
        report["read"] = project.read(project_path)
        report["project_crs"] = project.crs().authid()
        report["title"] = project.title()
        ext = project.viewSettings().defaultViewExtent()
        report["extent"] = [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()]
        ordered = project.layerTreeRoot().layerOrder()
        report["layers"] = [describe(layer) for layer in ordered]

        settings = QgsMapSettings()
        settings.setLayers(ordered)
        settings.setDestinationCrs(project.crs())
        settings.setExtent(ext)
        settings.setOutputSize(QSize(400, 400))
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererSequentialJob(settings)
        job.start()
        job.waitForFinished()
        image = job.renderedImage()
        report["saved_png"] = image.save(png, "PNG")
        report["image"] = image_stats(image)
        report["render_errors"] = [e.message for e in job.errors()]
        del job, image, settings, ordered

        report["standalone"] = []
        for path in extra:
            if path.endswith(".gpkg"):
                layer = QgsVectorLayer(path + "|layername=changes", "standalone", "ogr")
            else:
                layer = QgsRasterLayer(path, "standalone")
            report["standalone"].append(dict(describe(layer), path=path))
            del layer
        project.clear()
    finally:
        print(json.dumps(report))
        sys.stdout.flush()
        app.exitQgis()


if __name__ == "__main__":
    main()

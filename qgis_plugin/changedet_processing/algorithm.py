"""Processing algorithm ``changedet:detect``: run ``changedet detect`` on two raster layers.

QGIS's Python is not the environment changedet (torch, rasterio...) is installed in, so the algorithm runs the
``changedet`` executable in a subprocess: ``changedet detect BEFORE AFTER -o OUTPUT --overwrite [options]``.
The executable is the "changedet executable" parameter, else the ``CHANGEDET_EXECUTABLE`` environment variable,
else ``changedet`` found on PATH. The probability, the change mask and the polygons are added to the project
when the algorithm finishes, each with its style (:class:`StylePostProcessor`: the style embedded in the
GeoPackage, else the layer's ``.qml`` sidecar; QGIS 3.22's Processing loads result layers without their default
style).
"""

import os
import re
import shutil
import subprocess
import time
from collections import deque

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFile,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

METHODS = ["model", "cva", "irmad", "dsfa"]
ENV_EXECUTABLE = "CHANGEDET_EXECUTABLE"
_PERCENT = re.compile(r"(\d{1,3})%\|")  # tqdm's progress bar on changedet's stderr
_PENDING_STYLES = set()  # StylePostProcessor objects not yet called: Python must keep them alive until then


def find_executable(explicit=None):
    """The changedet executable: ``explicit``, else $CHANGEDET_EXECUTABLE, else ``changedet`` on PATH."""
    for candidate, origin in ((explicit, "the 'changedet executable' parameter"),
                              (os.environ.get(ENV_EXECUTABLE), f"${ENV_EXECUTABLE}")):
        if candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            raise QgsProcessingException(
                f"{candidate} (from {origin}) is not an executable file; give the path of the `changedet` "
                "command of the environment changedet is installed in, e.g. /path/to/venv/bin/changedet."
            )
    found = shutil.which("changedet")
    if found:
        return found
    raise QgsProcessingException(
        "the `changedet` command was not found: install changedet (pip install changedet) and set the "
        f"algorithm's 'changedet executable' parameter or the {ENV_EXECUTABLE} environment variable to its "
        "path (e.g. /path/to/venv/bin/changedet)."
    )


def _file_source(layer, name):
    """The file behind a raster layer (GDAL provider), or a clear error."""
    if layer is None:
        raise QgsProcessingException(f"{name}: no raster layer given.")
    source = layer.source().split("|")[0]
    if layer.providerType() != "gdal" or not os.path.exists(source):
        raise QgsProcessingException(
            f"{name}: layer {layer.name()!r} is not a raster file ({layer.providerType()}: {layer.source()}); "
            "save it as a GeoTIFF first (Export > Save As...)."
        )
    return source


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies a result layer's own style when Processing adds it to the project.

    QGIS 3.22 loads result layers without their default style (rasters come out grey, polygons in a random
    colour), so this loads it: ``layer.loadDefaultStyle()`` (the GeoPackage's ``layer_styles`` default, a raster's
    ``.qml`` sidecar), else the ``.qml`` sidecar next to the file by name.

    The context takes ownership of the C++ object, but the Python object implementing ``postProcessLayer`` must
    outlive the run: every instance is kept in ``_PENDING_STYLES`` until it has styled its layer (an instance
    that Python collected earlier is never called, and the layer stays unstyled).
    """

    def __init__(self, qml):
        super().__init__()
        self.qml = qml
        _PENDING_STYLES.add(self)

    def postProcessLayer(self, layer, context, feedback):
        try:
            message, loaded = layer.loadDefaultStyle()
            if not loaded and os.path.exists(self.qml):
                message, loaded = layer.loadNamedStyle(self.qml)
            if loaded:
                layer.triggerRepaint()
            elif feedback is not None:
                feedback.reportError(f"{layer.name()}: its style could not be loaded ({message}); "
                                     f"load {self.qml} from the layer's properties (Style > Load Style).")
        finally:
            _PENDING_STYLES.discard(self)


class DetectAlgorithm(QgsProcessingAlgorithm):
    BEFORE = "BEFORE"
    AFTER = "AFTER"
    MODEL = "MODEL"
    METHOD = "METHOD"
    THRESHOLD = "THRESHOLD"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    EXECUTABLE = "EXECUTABLE"
    OUTPUT = "OUTPUT"
    PROBABILITY = "PROBABILITY"
    CHANGE = "CHANGE"
    POLYGONS = "POLYGONS"
    REPORT = "REPORT"
    PROJECT = "PROJECT"

    def name(self):
        return "detect"

    def displayName(self):
        return "Detect change between two rasters"

    def group(self):
        return "Change detection"

    def groupId(self):
        return "changedetection"

    def shortHelpString(self):
        return (
            "Runs <code>changedet detect BEFORE AFTER -o OUTPUT --overwrite</code> (a fully convolutional Siamese "
            "network, or an unsupervised method) and adds the change probability, the change mask and the change "
            "polygons (area_m2, perimeter_m, mean_prob, max_prob, dates, model, threshold) to the project. "
            "BEFORE and AFTER must be raster files; AFTER is aligned onto BEFORE's grid if needed. "
            "changedet runs in its own Python environment: set 'changedet executable' (or the "
            f"{ENV_EXECUTABLE} environment variable) unless `changedet` is on PATH."
        )

    def createInstance(self):
        return DetectAlgorithm()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "BEFORE raster (earlier date)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "AFTER raster (later date)"))
        self.addParameter(QgsProcessingParameterString(
            self.MODEL, "Model (bundled name or checkpoint path; empty: chosen from bands and pixel size)",
            optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, "Method", options=METHODS, defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Probability threshold (empty: the model's calibrated threshold)",
            type=QgsProcessingParameterNumber.Double, minValue=0.0, maxValue=1.0, optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, "Minimum polygon area (m²)", type=QgsProcessingParameterNumber.Double, minValue=0.0,
            defaultValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplification tolerance (m)", type=QgsProcessingParameterNumber.Double,
            minValue=0.0, defaultValue=0.0))
        exe = QgsProcessingParameterFile(
            self.EXECUTABLE, "changedet executable (empty: $CHANGEDET_EXECUTABLE, else `changedet` on PATH)",
            behavior=QgsProcessingParameterFile.File, optional=True,
            # QGIS 3.22's default filter "All files (*.*)" refuses a path without an extension (bin/changedet)
            fileFilter="All files (*)")
        exe.setFlags(exe.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(exe)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.PROBABILITY, "Change probability"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.CHANGE, "Change mask"))
        self.addOutput(QgsProcessingOutputVectorLayer(
            self.POLYGONS, "Change polygons", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputFile(self.REPORT, "Report (report.json)"))
        self.addOutput(QgsProcessingOutputFile(self.PROJECT, "QGIS project (project.qgs)"))

    def processAlgorithm(self, parameters, context, feedback):
        before = _file_source(self.parameterAsRasterLayer(parameters, self.BEFORE, context), "BEFORE")
        after = _file_source(self.parameterAsRasterLayer(parameters, self.AFTER, context), "AFTER")
        outdir = self.parameterAsString(parameters, self.OUTPUT, context)
        exe = find_executable(self.parameterAsFile(parameters, self.EXECUTABLE, context) or None)
        cmd = [exe, "detect", before, after, "-o", outdir, "--overwrite", "--qgis-project"]
        model = (self.parameterAsString(parameters, self.MODEL, context) or "").strip()
        if model:
            cmd += ["--model", model]
        method = METHODS[self.parameterAsEnum(parameters, self.METHOD, context)]
        if method != "model":
            cmd += ["--method", method]
        if parameters.get(self.THRESHOLD) not in (None, ""):
            cmd += ["--threshold", repr(self.parameterAsDouble(parameters, self.THRESHOLD, context))]
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        if min_area > 0:
            cmd += ["--min-area", repr(min_area)]
        simplify = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        if simplify > 0:
            cmd += ["--simplify", repr(simplify)]
        feedback.pushCommandInfo(" ".join(cmd))
        try:
            self._run(cmd, feedback)
        except QgsProcessingException:
            if feedback.isCanceled():  # (a run that finished anyway returns normally)
                # changedet keeps the finished blocks for `--resume`; this algorithm always reruns with
                # --overwrite, so they would only take disk space
                shutil.rmtree(os.path.join(outdir, ".changedet-partial"), ignore_errors=True)
            raise

        outputs = {
            self.OUTPUT: outdir,
            self.PROBABILITY: os.path.join(outdir, "probability.tif"),
            self.CHANGE: os.path.join(outdir, "change.tif"),
            self.POLYGONS: os.path.join(outdir, "changes.gpkg"),
            self.REPORT: os.path.join(outdir, "report.json"),
            self.PROJECT: os.path.join(outdir, "project.qgs"),
        }
        for key in (self.PROBABILITY, self.CHANGE, self.REPORT):
            if not os.path.exists(outputs[key]):
                raise QgsProcessingException(f"changedet finished but {outputs[key]} is missing.")
        layers = [(self.POLYGONS, "change polygons"), (self.CHANGE, "change mask"),
                  (self.PROBABILITY, "change probability")]
        for key, name in reversed(layers):  # added bottom first: polygons end on top
            if os.path.exists(outputs[key]):
                context.addLayerToLoadOnCompletion(
                    outputs[key], QgsProcessingContext.LayerDetails(name, context.project(), key))
                context.layerToLoadOnCompletionDetails(outputs[key]).setPostProcessor(
                    StylePostProcessor(os.path.splitext(outputs[key])[0] + ".qml"))
        if not os.path.exists(outputs[self.POLYGONS]):
            outputs[self.POLYGONS] = None
        if not os.path.exists(outputs[self.PROJECT]):
            outputs[self.PROJECT] = None
        return outputs

    @staticmethod
    def _run(cmd, feedback):
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", env=env, bufsize=1)
        except OSError as exc:
            raise QgsProcessingException(f"cannot start {cmd[0]}: {exc}") from exc
        tail = deque(maxlen=40)
        try:
            for line in proc.stdout:
                line = line.rstrip("\r\n")
                progress = _PERCENT.search(line)
                if progress:
                    feedback.setProgress(min(100, int(progress.group(1))))
                elif line:
                    tail.append(line)
                    feedback.pushConsoleInfo(line)
                if feedback.isCanceled():
                    proc.terminate()
                    break
        finally:
            while proc.poll() is None:
                if feedback.isCanceled():
                    proc.terminate()
                time.sleep(0.1)
            proc.stdout.close()
        if feedback.isCanceled() and proc.returncode == 0:  # it finished before the cancel reached it
            feedback.pushInfo("changedet had finished when the cancel arrived: its outputs are complete")
        elif feedback.isCanceled():
            raise QgsProcessingException("cancelled: changedet was stopped; no new output was written (outputs of an "
                                         "earlier run in the folder are left as they were).")
        if proc.returncode != 0:
            raise QgsProcessingException(
                f"changedet detect failed (exit code {proc.returncode}):\n" + "\n".join(tail)
            )

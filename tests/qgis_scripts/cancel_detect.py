"""Run the changedet:detect Processing algorithm headless and cancel it at its first progress report.

Usage: /usr/bin/python3 cancel_detect.py PLUGIN_DIR BEFORE AFTER OUTDIR. Prints one JSON line: whether the run
raised (and its message) and what is left in OUTDIR.
"""

import json
import os
import sys

from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject

plugin_dir, before, after, outdir = sys.argv[1:5]
sys.path.insert(0, plugin_dir)
sys.path.insert(0, "/usr/share/qgis/python/plugins")
app = QgsApplication([], False)
app.initQgis()
import processing  # noqa: E402
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
from changedet_processing.provider import ChangedetProvider  # noqa: E402

provider = ChangedetProvider()  # keep a reference: the registry does not own the Python object
QgsApplication.processingRegistry().addProvider(provider)


class CancelAtFirstProgress(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.progressChanged.connect(lambda p: self.cancel() if p > 0 else None)


context = QgsProcessingContext()
context.setProject(QgsProject.instance())
result = {"raised": None}
try:
    processing.run("changedet:detect", {"BEFORE": before, "AFTER": after, "METHOD": 1, "OUTPUT": outdir},
                   feedback=CancelAtFirstProgress(), context=context)
except Exception as exc:  # noqa: BLE001 - reported to the test
    result["raised"] = str(exc)
result["left"] = sorted(os.listdir(outdir)) if os.path.isdir(outdir) else []
print(json.dumps(result))

"""The plugin object: registers the Processing provider (in the desktop and in qgis_process)."""

from qgis.core import QgsApplication

from .provider import ChangedetProvider


class ChangedetPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        if self.provider is None:
            self.provider = ChangedetProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

"""Processing provider ``changedet``."""

from qgis.core import QgsProcessingProvider

from .algorithm import DetectAlgorithm


class ChangedetProvider(QgsProcessingProvider):
    def id(self):
        return "changedet"

    def name(self):
        return "changedet"

    def longName(self):
        return "changedet: change detection between two rasters"

    def loadAlgorithms(self):
        self.addAlgorithm(DetectAlgorithm())

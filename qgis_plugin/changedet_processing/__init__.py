"""QGIS plugin: the changedet Processing provider (algorithm ``changedet:detect``).

Install by copying this folder into the QGIS plugins folder (or point ``QGIS_PLUGINPATH`` at its parent) and
enable it; headless: ``qgis_process plugins enable changedet_processing`` then
``qgis_process run changedet:detect --BEFORE=before.tif --AFTER=after.tif --OUTPUT=outdir``.
"""


def classFactory(iface):
    """QGIS entry point."""
    from .plugin import ChangedetPlugin

    return ChangedetPlugin(iface)
